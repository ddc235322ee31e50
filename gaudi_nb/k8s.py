"""Kubernetes manifests for a run: a pure renderer from RunSpec to plain dicts.

One node becomes a ConfigMap (the spec as JSON) and a batch/v1 Job; several
nodes become an MPIJob (kubeflow.org/v2beta1) or a PyTorchJob (kubeflow.org/v1)
for Kubeflow's training operator. The pod settings follow Intel's Gaudi
Kubernetes examples: ``habana.ai/gaudi`` limits, ``hostIPC``, ``SYS_NICE``,
hugepages and a memory-backed ``/dev/shm``. Nothing here needs the kubernetes
SDK except :func:`validate`, which imports it lazily.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from .errors import SpecError, require
from .spec import RunSpec

__all__ = [
    "SPEC_DIR",
    "SPEC_FILE",
    "GAUDI_RESOURCE",
    "render",
    "to_yaml",
    "validate",
    "run_name",
    "workload_kind",
]

SPEC_DIR = "/etc/gaudi-nb"
SPEC_FILE = f"{SPEC_DIR}/spec.json"
GAUDI_RESOURCE = "habana.ai/gaudi"
RUNS_DIR = "/var/lib/gaudi-nb"
# The MPI operator mounts the hostfile here and points OpenMPI at it.
MPI_HOSTFILE = "/etc/mpi/hostfile"

_MAX_NAME = 52  # leaves room for the operator's "-launcher" / "-worker-12" suffixes within 63


def run_name(spec: RunSpec) -> str:
    """A DNS-1123 name for the run's objects: its label (or model) plus a short hash of the spec."""
    base = spec.name or f"gaudi-nb-{spec.model.rsplit('/', 1)[-1]}"
    slug = re.sub(r"[^a-z0-9-]+", "-", base.lower()).strip("-") or "gaudi-nb"
    digest = hashlib.sha256(json.dumps(spec.to_json_dict(), sort_keys=True).encode()).hexdigest()[:8]
    slug = slug[: _MAX_NAME - len(digest) - 1].rstrip("-")
    if not slug[0].isalpha():
        slug = f"r-{slug}"[: _MAX_NAME - len(digest) - 1].rstrip("-")
    return f"{slug}-{digest}"


def workload_kind(spec: RunSpec) -> str:
    """Job for one node; MPIJob for mpirun/deepspeed (auto on Gaudi); PyTorchJob for torchrun."""
    if spec.nodes == 1:
        return "Job"
    # Several Gaudi nodes train through DeepSpeed or MPI (optimum-habana's
    # gaudi_spawn); both need the hostfile and SSH that the MPI operator sets up.
    if spec.launcher in ("auto", "mpirun", "deepspeed"):
        return "MPIJob"
    return "PyTorchJob"


def render(
    spec: RunSpec,
    *,
    image: str,
    namespace: str = "default",
    metrics_port: int = 9400,
    memory: str = "400Gi",
    hugepages_2mi: Optional[str] = "42000Mi",
    shm_size: str = "64Gi",
    service_account: Optional[str] = None,
) -> List[Dict[str, Any]]:
    """Manifests that run ``spec`` on a Kubernetes cluster with Gaudi nodes.

    ``memory`` and ``hugepages_2mi`` are per-pod limits (Intel's examples use
    about 400-690 GiB and 42000Mi on 8-card nodes); pass ``hugepages_2mi=None``
    on clusters that do not reserve hugepages.
    """
    if not image or not image.strip():
        raise SpecError("image: give the container image to run, e.g. --image registry.example.com/gaudi-nb:0.1.0")
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", namespace):
        raise SpecError(f"namespace: must be a DNS-1123 label (lower-case letters, digits, '-'), got {namespace!r}")
    if not 1 <= metrics_port <= 65535:
        raise SpecError(f"metrics_port: must be 1-65535, got {metrics_port}")

    name = run_name(spec)
    labels = {
        "app.kubernetes.io/name": "gaudi-nb",
        "app.kubernetes.io/managed-by": "gaudi-nb",
        "app.kubernetes.io/instance": name,
        "gaudi-nb/run": name,
    }
    # Inside the pod the run executes where it is: target local.
    pod_spec_json = spec.model_copy(update={"target": "local"}).to_json_dict()
    config_map_name = f"{name}-spec"
    config_map: Dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": config_map_name, "namespace": namespace, "labels": dict(labels)},
        "data": {"spec.json": json.dumps(pod_spec_json, indent=2, sort_keys=True) + "\n"},
    }
    settings = _PodSettings(
        name=name,
        image=image.strip(),
        spec=spec,
        labels=labels,
        metrics_port=metrics_port,
        memory=memory,
        hugepages_2mi=hugepages_2mi,
        shm_size=shm_size,
        service_account=service_account,
        config_map=config_map_name,
    )
    kind = workload_kind(spec)
    if kind == "Job":
        workload = _job(settings, namespace)
    elif kind == "MPIJob":
        workload = _mpi_job(settings, namespace)
    else:
        workload = _pytorch_job(settings, namespace)
    return [config_map, workload]


def to_yaml(manifests: List[Dict[str, Any]]) -> str:
    """One YAML stream (documents separated by ``---``) ready for ``kubectl apply -f -``."""
    import yaml

    class _Dumper(yaml.SafeDumper):
        pass

    def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
        # The spec JSON reads as a block, not as one escaped line.
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    _Dumper.add_representer(str, _str)
    return yaml.dump_all(manifests, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1000)


def validate(manifests: List[Dict[str, Any]]) -> None:
    """Check manifests against the kubernetes client's models; raise SpecError on the first problem.

    Built-in kinds (ConfigMap, Job) must deserialize into their models and
    serialize back unchanged, so a misspelt or misplaced field is caught, not
    dropped. For the training operator's kinds, each replica's pod template is
    checked the same way and the required fields of the CRD are checked by hand.
    """
    require("kubernetes", "k8s", "validating Kubernetes manifests")
    for manifest in manifests:
        kind = manifest.get("kind")
        where = f"{kind} {manifest.get('metadata', {}).get('name', '?')}"
        if kind in ("ConfigMap", "Job"):
            _round_trip(manifest, f"V1{kind}", where)
        elif kind == "MPIJob":
            _check_mpi_job(manifest, where)
        elif kind == "PyTorchJob":
            _check_pytorch_job(manifest, where)
        else:
            raise SpecError(f"{where}: unknown kind {kind!r}")


# ------------------------------------------------------------------ internals --


@dataclass(frozen=True)
class _PodSettings:
    """What every pod template of one rendering shares."""

    name: str
    image: str
    spec: RunSpec
    labels: Dict[str, str]
    metrics_port: int
    memory: Optional[str]
    hugepages_2mi: Optional[str]
    shm_size: str
    service_account: Optional[str]
    config_map: str


def _env(s: _PodSettings, extra: Optional[Dict[str, str]] = None) -> List[Dict[str, str]]:
    values = {
        # Intel's container settings for Gaudi; the device plugin narrows
        # "all" to the cards this pod was given.
        "HABANA_VISIBLE_DEVICES": "all",
        "OMPI_MCA_btl_vader_single_copy_mechanism": "none",
        "PT_HPU_LAZY_MODE": "1" if s.spec.lazy_mode else "0",
        "GAUDI_NB_HOME": RUNS_DIR,
        # The agent serves /metrics on loopback by default; in a pod,
        # Prometheus scrapes the pod IP.
        "GAUDI_NB_METRICS_HOST": "0.0.0.0",
        "GAUDI_NB_METRICS_PORT": str(s.metrics_port),
    }
    values.update(extra or {})
    return [{"name": key, "value": value} for key, value in values.items()]


def _container(
    s: _PodSettings,
    name: str,
    *,
    command: List[str],
    gaudi: bool = True,
    metrics: bool = True,
    env: Optional[Dict[str, str]] = None,
) -> Dict[str, Any]:
    limits: Dict[str, Any] = {"memory": s.memory}
    if gaudi:
        limits[GAUDI_RESOURCE] = str(s.spec.devices)  # a Quantity: the API and its models take strings
        if s.hugepages_2mi:
            limits["hugepages-2Mi"] = s.hugepages_2mi
    mounts = [
        {"name": "spec", "mountPath": SPEC_DIR, "readOnly": True},
        {"name": "runs", "mountPath": RUNS_DIR},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    if gaudi and s.hugepages_2mi:
        mounts.append({"name": "hugepages", "mountPath": "/hugepages"})
    container: Dict[str, Any] = {
        "name": name,
        "image": s.image,
        "imagePullPolicy": "IfNotPresent",
        "command": command,
        "env": _env(s, env),
        "resources": {"limits": limits},
        "volumeMounts": mounts,
        # Intel's examples add SYS_NICE: the runtime pins threads.
        "securityContext": {"capabilities": {"add": ["SYS_NICE"]}},
    }
    if metrics:
        container["ports"] = [{"name": "metrics", "containerPort": s.metrics_port, "protocol": "TCP"}]
    return container


def _volumes(s: _PodSettings, gaudi: bool = True) -> List[Dict[str, Any]]:
    volumes: List[Dict[str, Any]] = [
        {"name": "spec", "configMap": {"name": s.config_map}},
        # Run folders (events.jsonl, checkpoints) live for the pod's life;
        # mount a PersistentVolumeClaim here to keep them.
        {"name": "runs", "emptyDir": {}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": s.shm_size}},
    ]
    if gaudi and s.hugepages_2mi:
        volumes.append({"name": "hugepages", "emptyDir": {"medium": "HugePages"}})
    return volumes


def _pod_template(
    s: _PodSettings,
    containers: List[Dict[str, Any]],
    *,
    restart_policy: str,
    role: str,
    gaudi: bool = True,
    metrics: bool = True,
    run_as_root: bool = False,
) -> Dict[str, Any]:
    pod: Dict[str, Any] = {
        # HCCL and the data loader's workers share memory across processes.
        "hostIPC": True,
        "restartPolicy": restart_policy,
        "containers": containers,
        "volumes": _volumes(s, gaudi),
    }
    if s.service_account:
        pod["serviceAccountName"] = s.service_account
    if run_as_root:
        pod["securityContext"] = {"runAsUser": 0, "runAsGroup": 0}
    annotations = {}
    if metrics:
        annotations = {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(s.metrics_port),
            "prometheus.io/path": "/metrics",
        }
    metadata: Dict[str, Any] = {"labels": {**s.labels, "gaudi-nb/role": role}}
    if annotations:
        metadata["annotations"] = annotations
    return {"metadata": metadata, "spec": pod}


def _train_command() -> List[str]:
    return ["gaudi-nb", "train", "--spec-file", SPEC_FILE, "--json"]


def _job(s: _PodSettings, namespace: str) -> Dict[str, Any]:
    container = _container(s, "train", command=_train_command())
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": s.name, "namespace": namespace, "labels": dict(s.labels)},
        "spec": {
            # A retried run would spend the budget twice; the run's own
            # checkpoints are the way to resume.
            "backoffLimit": 0,
            "ttlSecondsAfterFinished": 7 * 24 * 3600,
            "template": _pod_template(s, [container], restart_policy="Never", role="node"),
        },
    }


def _mpi_job(s: _PodSettings, namespace: str) -> Dict[str, Any]:
    # The launcher runs the agent (events, cost meter, /metrics) and starts
    # the ranks on the workers through mpirun / deepspeed over SSH, reading the
    # hostfile the MPI operator mounts.
    launcher = _container(
        s,
        "launcher",
        command=_train_command(),
        gaudi=False,
        env={"GAUDI_NB_HOSTFILE": MPI_HOSTFILE},
    )
    launcher["resources"] = {"limits": {"memory": "8Gi", "cpu": "2"}}
    # Workers only run sshd, as in Intel's MPIJob examples.
    worker = _container(
        s,
        "worker",
        command=["/bin/bash", "-c", "/usr/bin/ssh-keygen -A && exec /usr/sbin/sshd -De"],
        metrics=False,
    )
    return {
        "apiVersion": "kubeflow.org/v2beta1",
        "kind": "MPIJob",
        "metadata": {"name": s.name, "namespace": namespace, "labels": dict(s.labels)},
        "spec": {
            "slotsPerWorker": s.spec.devices,
            "mpiImplementation": "OpenMPI",
            # sshd and mpirun's remote start need root, as in Intel's and the
            # MPI operator's examples; the image's non-root user is for Jupyter.
            "sshAuthMountPath": "/root/.ssh",
            "runPolicy": {"cleanPodPolicy": "Running", "backoffLimit": 0},
            "mpiReplicaSpecs": {
                "Launcher": {
                    "replicas": 1,
                    "restartPolicy": "Never",
                    "template": _pod_template(
                        s, [launcher], restart_policy="Never", role="launcher", gaudi=False, run_as_root=True
                    ),
                },
                "Worker": {
                    "replicas": s.spec.nodes,
                    "restartPolicy": "Never",
                    "template": _pod_template(
                        s, [worker], restart_policy="Never", role="worker", metrics=False, run_as_root=True
                    ),
                },
            },
        },
    }


def _pytorch_job(s: _PodSettings, namespace: str) -> Dict[str, Any]:
    # The training operator requires the container to be named "pytorch" and
    # sets MASTER_ADDR, MASTER_PORT, WORLD_SIZE (nodes) and RANK (node rank).
    def replica(count: int, role: str) -> Dict[str, Any]:
        container = _container(s, "pytorch", command=_train_command())
        return {
            "replicas": count,
            "restartPolicy": "Never",
            "template": _pod_template(s, [container], restart_policy="Never", role=role),
        }

    replicas = {"Master": replica(1, "master")}
    if s.spec.nodes > 1:
        replicas["Worker"] = replica(s.spec.nodes - 1, "worker")
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": s.name, "namespace": namespace, "labels": dict(s.labels)},
        "spec": {
            "nprocPerNode": str(s.spec.devices),
            "runPolicy": {"cleanPodPolicy": "Running", "backoffLimit": 0},
            "pytorchReplicaSpecs": replicas,
        },
    }


def _round_trip(data: Dict[str, Any], model: str, where: str) -> Any:
    from kubernetes.client import ApiClient

    client = ApiClient()
    try:
        obj = client._ApiClient__deserialize(data, model)  # type: ignore[attr-defined]
    except (ValueError, TypeError) as exc:
        raise SpecError(f"{where}: not a valid {model}: {exc}") from None
    back = client.sanitize_for_serialization(obj)
    if back != data:
        raise SpecError(f"{where}: fields the {model} model does not know: {_diff(data, back)}")
    return obj


def _diff(given: Any, known: Any, path: str = "") -> str:
    if isinstance(given, dict) and isinstance(known, dict):
        for key, value in given.items():
            if key not in known:
                return f"{path}.{key}".lstrip(".")
            found = _diff(value, known[key], f"{path}.{key}")
            if found:
                return found
        return ""
    if isinstance(given, list) and isinstance(known, list):
        for i, (a, b) in enumerate(zip(given, known, strict=False)):
            found = _diff(a, b, f"{path}[{i}]")
            if found:
                return found
        return ""
    return "" if given == known else f"{path.lstrip('.')} ({given!r} became {known!r})"


def _require_fields(data: Dict[str, Any], where: str, *paths: str) -> None:
    for path in paths:
        node: Any = data
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                raise SpecError(f"{where}: missing required field {path}")
            node = node[part]


def _check_replicas(replicas: Dict[str, Any], roles: tuple, where: str) -> None:
    for role, replica in replicas.items():
        if role not in roles:
            raise SpecError(f"{where}: unknown replica type {role!r} (expected one of {', '.join(roles)})")
        _require_fields(replica, f"{where} {role}", "replicas", "template.spec.containers")
        if not isinstance(replica["replicas"], int) or replica["replicas"] < 1:
            raise SpecError(f"{where} {role}: replicas must be a positive integer")
        if replica.get("restartPolicy") not in (None, "Always", "OnFailure", "Never", "ExitCode"):
            raise SpecError(f"{where} {role}: bad restartPolicy {replica.get('restartPolicy')!r}")
        _round_trip(replica["template"], "V1PodTemplateSpec", f"{where} {role}")


def _check_mpi_job(manifest: Dict[str, Any], where: str) -> None:
    if manifest.get("apiVersion") != "kubeflow.org/v2beta1":
        raise SpecError(f"{where}: apiVersion must be kubeflow.org/v2beta1")
    _require_fields(manifest, where, "metadata.name", "spec.mpiReplicaSpecs.Launcher", "spec.mpiReplicaSpecs.Worker")
    spec = manifest["spec"]
    if spec["mpiReplicaSpecs"]["Launcher"].get("replicas") != 1:
        raise SpecError(f"{where}: the Launcher must have exactly 1 replica")
    if not isinstance(spec.get("slotsPerWorker", 1), int) or spec.get("slotsPerWorker", 1) < 1:
        raise SpecError(f"{where}: slotsPerWorker must be a positive integer")
    if spec.get("mpiImplementation", "OpenMPI") not in ("OpenMPI", "Intel", "MPICH"):
        raise SpecError(f"{where}: unknown mpiImplementation {spec.get('mpiImplementation')!r}")
    _check_replicas(spec["mpiReplicaSpecs"], ("Launcher", "Worker"), where)


def _check_pytorch_job(manifest: Dict[str, Any], where: str) -> None:
    if manifest.get("apiVersion") != "kubeflow.org/v1":
        raise SpecError(f"{where}: apiVersion must be kubeflow.org/v1")
    _require_fields(manifest, where, "metadata.name", "spec.pytorchReplicaSpecs.Master")
    replicas = manifest["spec"]["pytorchReplicaSpecs"]
    if replicas["Master"].get("replicas") != 1:
        raise SpecError(f"{where}: the Master must have exactly 1 replica")
    _check_replicas(replicas, ("Master", "Worker"), where)
    for role, replica in replicas.items():
        names = [c.get("name") for c in replica["template"]["spec"]["containers"]]
        if "pytorch" not in names:
            raise SpecError(f"{where} {role}: the training operator needs a container named 'pytorch'")
