"""render(): every object one run submits, for the job kind a cluster has; the one builder behind
`gaudi-nb k8s render` and the Kubernetes target.

What is refused here is refused before anything reaches a cluster, in one line: a launcher the launch
builders would refuse at run time, a launcher the kind cannot start, several nodes without a shared volume.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from ..errors import SpecError
from ..launch import choose_modules
from ..launch.habana import check_nodes
from ..spec import RunSpec, looks_like_path
from .facts import INTEL_IMAGE, ClusterFacts, check_kind
from .kinds import BUILDERS
from .names import RUN_LABEL, check_run_id, object_name
from .pod import Doc, RunPods

# A ConfigMap holds at most 1 MiB; the spec and the keys' names need some of it.
MAX_FILES_BYTES = 900 * 1024
_KEY = re.compile(r"[^-._a-zA-Z0-9]+")  # what a ConfigMap key may not hold


def pod_launcher(spec: RunSpec, kind: str) -> str:
    """The launcher the pods run, resolved here: a pod's agent would otherwise pick by what it detects
    (a cardless MPIJob launcher detects a CPU; torchrun pods on Gaudi would pick DeepSpeed)."""
    launcher = spec.launcher
    check_nodes(spec, launcher)  # the launch builders' own refusal, at render time (mpirun across nodes, ...)
    if kind == "mpijob":
        if spec.nodes == 1:
            raise SpecError("kind mpijob: its launcher pod has no card, so one node would train on nothing: use --kind job for one node")
        if launcher not in ("auto", "deepspeed"):
            raise SpecError(f"kind mpijob starts the ranks from its launcher through DeepSpeed over ssh, not {launcher}: use --launcher deepspeed (or auto), or --kind pytorchjob|trainjob|job for torchrun")
        return "deepspeed"
    if launcher == "deepspeed" and spec.nodes > 1:
        raise SpecError(f"launcher deepspeed starts every node from node 0 over ssh, which only an MPIJob sets up: use --kind mpijob, or --launcher torchrun with --kind {kind}")
    return "torchrun" if launcher == "auto" else launcher


def _claim(run_name: str, spec: RunSpec, facts: ClusterFacts) -> Optional[str]:
    """The run volume's claim: the cluster's shared one, else one made for this run (None: render it)."""
    if facts.claim:
        return facts.claim
    if spec.nodes > 1 and not facts.storage_class:
        raise SpecError("across nodes every pod reads the run folder, so the run needs a ReadWriteMany volume: give --storage-class SC (a class that makes ReadWriteMany claims) or --claim NAME (one already there)")
    return None


def _labels(name: str, run_id: str) -> Dict[str, str]:
    return {"app.kubernetes.io/name": "gaudi-nb", "app.kubernetes.io/managed-by": "gaudi-nb",
            "app.kubernetes.io/instance": name, RUN_LABEL: run_id}


def sent_values(spec: RunSpec, environ: Mapping[str, str]) -> Dict[str, str]:
    """What the run takes from this environment, as an SSH node gets it: --env's variables and the settings of
    the trackers --report-to names (MLFLOW_TRACKING_URI, WANDB_API_KEY, ...)."""
    from ..agent.tracker_backends import settings_for

    unset = [name for name in spec.env_names() if name not in environ]
    if unset:
        raise SpecError(f"--env {','.join(unset)}: not set in this environment; set it here (the value travels in the run's Secret), or leave it out of --env")
    return {**settings_for(spec.trackers(), environ), **{name: environ[name] for name in spec.env_names()}}


def _secret(r: RunPods, values: Mapping[str, str]) -> Optional[Doc]:
    if not values:
        return None
    data = {name: base64.b64encode(value.encode()).decode() for name, value in values.items()}
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": r.secret, "namespace": r.facts.namespace, "labels": dict(r.labels)}, "data": data}


def local_inputs(spec: RunSpec) -> Tuple[Dict[str, Any], Dict[str, bytes]]:
    """Dataset files on this machine travel with the run, as they do to an SSH node: (the spec's changes,
    the ConfigMap's `input-<i>-<name>` keys). Each pod copies them into its run folder's inputs/, where the
    ranks (whose working directory is the run folder) read them; a path not on this machine is the container's."""
    parts = [p.strip() for p in spec.dataset.split(",")]
    files: Dict[str, bytes] = {}
    named = []
    for i, part in enumerate(parts):
        local = Path(part).expanduser()
        if looks_like_path(part) and local.is_file():
            name = f"{i}-{_KEY.sub('-', local.name)}"
            files[f"input-{name}"] = local.read_bytes()
            part = f"inputs/{name}"
        named.append(part)
    return ({"dataset": ",".join(named)} if files else {}), files


def _files(r: RunPods, spec: RunSpec, inputs: Dict[str, bytes], runs: List[Dict[str, Any]]) -> Doc:
    """The ConfigMap every pod copies its run folder's inputs from: the spec, and the script, the dataset files
    and the working directory's archive when they fit (a ConfigMap holds 1 MiB)."""
    data = {"spec.json": json.dumps(r.spec.to_json_dict(), indent=2, sort_keys=True) + "\n"}
    data.update({f"run-{i}.json": json.dumps(run, sort_keys=True) + "\n" for i, run in enumerate(runs)})
    binary = {key: base64.b64encode(value).decode() for key, value in inputs.items()}
    size = sum(len(v.encode()) for v in data.values()) + sum(len(v) for v in inputs.values())
    if spec.script:
        data["script.py"] = _read(spec.script, "--script")
        size += len(data["script.py"].encode())
    if spec.workdir:
        import tempfile

        from .. import workdir

        with tempfile.TemporaryDirectory() as scratch:  # a ConfigMap holds under 1 MiB: reading it back whole is fine
            workdir.pack(Path(spec.workdir).expanduser(), Path(scratch) / "code.tar")
            archive = (Path(scratch) / "code.tar").read_bytes()
        binary["code.tar"] = base64.b64encode(archive).decode()
        size += len(archive)
    if size > MAX_FILES_BYTES:
        raise SpecError(f"the script, dataset files and --workdir come to {size // 1024} KiB, more than a ConfigMap holds ({MAX_FILES_BYTES // 1024} KiB): "
                        "keep large files out of the working directory (.gitignore), or put them on the run's claim and give their path there")
    doc: Doc = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": r.files, "namespace": r.facts.namespace, "labels": dict(r.labels)}, "data": data}
    if binary:
        doc["binaryData"] = binary
    return doc


def _read(path: str, option: str) -> str:
    try:
        return Path(path).expanduser().read_text()
    except OSError as exc:
        raise SpecError(f"{option} {path}: cannot read it here ({exc.strerror}); give a file on this machine") from None
    except UnicodeDecodeError:
        raise SpecError(f"{option} {path}: not a text file; give the Python script") from None


def client_files(facts: ClusterFacts, kind: str) -> Optional[Doc]:
    """The ConfigMap with the client's wheel that pods install at start (where the image has no gaudi_nb), named by the
    build so runs of one build share it (made once, kept after the run); None where the image has gaudi_nb."""
    if not facts.client_wheel:
        return None
    if kind == "mpijob":
        raise SpecError("kind mpijob: its workers' ranks start over ssh, which does not carry a gaudi_nb installed at pod start: give --image with gaudi_nb (infra/docker builds one), or use --kind pytorchjob|trainjob|job")
    wheel = Path(facts.client_wheel)
    data = wheel.read_bytes()
    if len(data) > 1024 * 1024:
        raise SpecError(f"this client's build ({wheel.name}) is {len(data) // 1024} KiB, more than a ConfigMap holds (1 MiB): give --image with gaudi_nb (infra/docker builds one)")
    build = hashlib.sha256(data).hexdigest()[:16]
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": f"gaudi-nb-client-{build}", "namespace": facts.namespace, "labels": {"app.kubernetes.io/name": "gaudi-nb", "app.kubernetes.io/managed-by": "gaudi-nb"}},
            "binaryData": {wheel.name: base64.b64encode(data).decode()}}


def _volume_claim(r: RunPods, spec: RunSpec) -> Doc:
    claim: Doc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": r.claim, "namespace": r.facts.namespace, "labels": dict(r.labels)},
        # several pods on several nodes mount it at once; one node's pods need only ReadWriteOnce
        "spec": {"accessModes": ["ReadWriteMany" if spec.nodes > 1 else "ReadWriteOnce"], "resources": {"requests": {"storage": r.facts.volume_size}}},
    }
    if r.facts.storage_class:
        claim["spec"]["storageClassName"] = r.facts.storage_class
    return claim


def render(spec: RunSpec, run_id: str, *, kind: str, cluster: Optional[ClusterFacts] = None,
           environ: Optional[Mapping[str, str]] = None, runs: Optional[List[Dict[str, Any]]] = None) -> List[Dict[str, Any]]:
    """Every object to submit for one run, in the order to create them: the Secret with --env's values (and the
    trackers' settings), the
    ConfigMap with the run's inputs, the run volume's claim (unless the cluster's is given), then the workload
    (with its Service or TrainingRuntime). `environ`: where --env's values are read (default: this process's).
    `runs`: each node's run.json as the client writes it (node 0 first); without, each pod writes a one-node one."""
    facts = cluster or ClusterFacts()
    kind = check_kind(kind)
    client = client_files(facts, kind)
    image = (facts.image or "").strip() or (INTEL_IMAGE if client else "")  # Intel's image, with this client's build installed at start
    if not image:
        raise SpecError("image: give a container image with gaudi_nb installed, e.g. --image registry.example.com/gaudi-nb:0.1.0 (infra/docker builds one)")
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", facts.namespace):
        raise SpecError(f"namespace: must be a DNS-1123 label (lower-case letters, digits, '-'), got {facts.namespace!r}")
    check_run_id(run_id)
    name = object_name(run_id)
    launcher = pod_launcher(spec, kind)
    if facts.gaudi_nodes:
        choose_modules(spec.devices)  # a card count Intel does not support is refused on the node at run time: here, before
    claim = _claim(name, spec, facts)
    # inside a pod the run executes where it is (target local), with the launcher chosen here
    changes, inputs = local_inputs(spec)
    pod_spec = spec.model_copy(update={"target": "local", "launcher": launcher, **changes})
    sent = sent_values(spec, os.environ if environ is None else environ)
    r = RunPods(name=name, run_id=run_id, spec=pod_spec, facts=facts, image=image, labels=_labels(name, run_id),
                claim=claim or f"{name}-runs", env_names=list(sent), client=client["metadata"]["name"] if client else None,
                build=client["metadata"]["name"].rsplit("-", 1)[1] if client else "")
    objects = [doc for doc in (client, _secret(r, sent), _files(r, spec, inputs, runs or [])) if doc]
    if claim is None:
        objects.append(_volume_claim(r, spec))
    return objects + BUILDERS[kind](r)


def to_yaml(manifests: List[Dict[str, Any]]) -> str:
    """One YAML stream (documents separated by ``---``) ready for ``kubectl apply -f -``."""
    import yaml

    class _Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:  # a shared dict is written out twice, never as &id001
            return True

    def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
        # the spec JSON and the pods' start script read as blocks, not as escaped lines
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)

    _Dumper.add_representer(str, _str)
    return yaml.dump_all(manifests, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1000)
