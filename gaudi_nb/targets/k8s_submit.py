"""What a run on a Kubernetes cluster submits: `manifests_for()`, the one call from the target to a manifest builder.

Until `gaudi_nb.k8s.render(spec, run_id, kind=..., cluster=...)` (the one builder, shared with `gaudi-nb k8s
render`) takes this place, the objects are built here: a Secret with the values of --env and the trackers'
settings (never in the manifest), a ConfigMap with the run's inputs (spec.json, each node's run.json, the
script, the working directory's archive), a ReadWriteMany claim for the run folders
unless one is given, a headless Service for the pods' names, and an Indexed Job, one pod per node.

What the target needs of whatever builds them (the contract the builder keeps):
- every pod mounts one shared volume at GAUDI_NB_HOME, and node K's run folder is `part_path(run_id, job, K)`;
- container `agent` writes the node's events.jsonl, and only it, on stdout (the target follows that log);
- container `log` writes the node's logs/train.log on stdout (`gaudi-nb logs`);
- every object carries the label `gaudi-nb/run: <run_id>` and the pods also `job-name` and the completion index.
"""
from __future__ import annotations

import base64
import re
from typing import Any, Dict, List

from ..errors import SpecError
from ..spec import RunSpec

HOME = "/gaudi-nb"  # where the run folders' shared volume is mounted in every pod (GAUDI_NB_HOME there)
INPUTS = "/gaudi-nb-inputs"  # the ConfigMap's files
CONFIGMAP_LIMIT = 1_000_000  # a ConfigMap holds at most 1 MiB; larger inputs go on the shared volume
RUN_LABEL = "gaudi-nb/run"


def job_name(run_id: str) -> str:
    """A DNS-1123 name for the run's objects (pods add -<index>-xxxxx, so 52 characters at most)."""
    name = re.sub(r"[^a-z0-9-]+", "-", run_id.lower()).strip("-")
    return ("gnb-" + name)[:52].rstrip("-")


def part_path(run_id: str, job: str, index: int) -> str:
    """Node `index`'s run folder as its pod sees it."""
    return f"{HOME}/runs/{run_id}/nodes/{job}-{index}"


def _start_script(run_id: str, job: str) -> str:
    """The agent container: put the inputs in the node's folder, start the agent, and stream its events.jsonl on stdout
    until the run has ended there (the pod's log is the node's stream, read from any offset by the client)."""
    folder = f'{HOME}/runs/{run_id}/nodes/{job}-"$JOB_COMPLETION_INDEX"'
    return "\n".join([
        "set -e",
        f"D={folder}",
        'mkdir -p "$D/logs" "$D/control"',
        f'cp {INPUTS}/spec.json "$D/spec.json"',
        f'cp {INPUTS}/run-"$JOB_COMPLETION_INDEX".json "$D/run.json"',
        f'if [ -f {INPUTS}/script.py ]; then cp {INPUTS}/script.py "$D/script.py"; fi',
        f'if [ -f {INPUTS}/code.tar ]; then mkdir -p "$D/code" && tar -xf {INPUTS}/code.tar -C "$D/code"; fi',
        'python -m gaudi_nb.agent --run-dir "$D" >> "$D/logs/agent.log" 2>&1 &',
        'exec python -m gaudi_nb.agent.commands tail --path "$D/events.jsonl" --offset 0 --follow --run-dir "$D"',
    ])


def _log_script(run_id: str, job: str) -> str:
    folder = f'{HOME}/runs/{run_id}/nodes/{job}-"$JOB_COMPLETION_INDEX"'
    return f'D={folder}\nexec python -m gaudi_nb.agent.commands tail --path "$D/logs/train.log" --offset 0 --follow --run-dir "$D"'


def manifests_for(spec: RunSpec, run_id: str, *, kind: str, runs: List[Dict[str, Any]], inputs: Dict[str, bytes], environment: Dict[str, str],
                  cluster: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Every object to submit for the run, in order: Secret, ConfigMap, claim, Service, job.

    kind: the job kind attach chose (trainjob | pytorchjob | mpijob | job); built here as the Indexed Job
    whatever it is, until the shared builder renders each kind. runs: each node's run.json; inputs: the
    run's files by ConfigMap key; environment: what the agents get from this client (a Secret); cluster:
    the attached cluster's facts (image, storage class)."""
    import json

    job = job_name(run_id)
    labels = {RUN_LABEL: run_id, "app.kubernetes.io/managed-by": "gaudi-nb"}
    meta = lambda name: {"name": name, "labels": dict(labels)}  # noqa: E731
    files = {"spec.json": spec.model_dump_json(indent=2).encode(), **{f"run-{i}.json": json.dumps(run).encode() for i, run in enumerate(runs)}, **inputs}
    if sum(len(v) for v in files.values()) > CONFIGMAP_LIMIT:
        raise SpecError("the run's inputs (script, --workdir) are over 1 MB, what a ConfigMap holds: put them on the cluster's shared volume and give their paths there")
    objects: List[Dict[str, Any]] = []
    if environment:
        objects.append({"apiVersion": "v1", "kind": "Secret", "metadata": meta(f"{job}-env"), "type": "Opaque", "stringData": dict(environment)})
    objects.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta(f"{job}-inputs"),
                    "binaryData": {key: base64.b64encode(value).decode() for key, value in files.items()}})
    claim = cluster.get("claim") or f"{job}-runs"
    if not cluster.get("claim"):
        storage = {"storageClassName": cluster["storage_class"]} if cluster.get("storage_class") else {}
        objects.append({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta(claim),
                        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "50Gi"}}, **storage}})
    objects.append({"apiVersion": "v1", "kind": "Service", "metadata": meta(job),
                    "spec": {"clusterIP": "None", "selector": {"job-name": job}, "ports": [{"name": "rendezvous", "port": int(runs[0].get("cluster", {}).get("master_port") or 29500)}]}})
    objects.append(_job(spec, job, labels, claim, bool(environment), cluster.get("image") or "", run_id))
    return objects


def _job(spec: RunSpec, job: str, labels: Dict[str, str], claim: str, secret: bool, image: str, run_id: str) -> Dict[str, Any]:
    cards = str(spec.devices)
    env = [{"name": "GAUDI_NB_HOME", "value": HOME}, {"name": "PYTHONUNBUFFERED", "value": "1"}]
    mounts = [{"name": "runs", "mountPath": HOME}, {"name": "inputs", "mountPath": INPUTS, "readOnly": True}]
    secure = {"allowPrivilegeEscalation": False, "capabilities": {"add": ["SYS_NICE"]}}
    agent: Dict[str, Any] = {
        "name": "agent", "image": image, "command": ["/bin/sh", "-c", _start_script(run_id, job)], "env": env, "volumeMounts": mounts, "securityContext": secure,
        "resources": {"limits": {"habana.ai/gaudi": cards, "hugepages-2Mi": "9800Mi", "memory": "200Gi"}, "requests": {"habana.ai/gaudi": cards, "hugepages-2Mi": "9800Mi", "memory": "200Gi", "cpu": "8"}},
    }
    if secret:
        agent["envFrom"] = [{"secretRef": {"name": f"{job}-env"}}]
    log = {"name": "log", "image": image, "command": ["/bin/sh", "-c", _log_script(run_id, job)], "env": env, "volumeMounts": mounts[:1],
           "securityContext": {"allowPrivilegeEscalation": False}, "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}}}
    pod = {"metadata": {"labels": dict(labels)},
           "spec": {"restartPolicy": "Never", "subdomain": job, "hostIPC": True, "containers": [agent, log],
                    "volumes": [{"name": "runs", "persistentVolumeClaim": {"claimName": claim}}, {"name": "inputs", "configMap": {"name": f"{job}-inputs"}}]}}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": job, "labels": dict(labels)},
            "spec": {"completionMode": "Indexed", "completions": spec.nodes, "parallelism": spec.nodes, "backoffLimit": 0, "template": pod}}


def describe(objects: List[Dict[str, Any]]) -> str:
    """One line: what was submitted."""
    return ", ".join(f"{o['kind']} {o['metadata']['name']}" for o in objects)

