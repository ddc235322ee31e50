"""What a run on a Kubernetes cluster submits: `manifests_for()`, the target's one call to the manifest builder.

The builder is `gaudi_nb.k8s.render` (the one behind `gaudi-nb k8s render`): a Secret with --env's values and
the trackers' settings, a ConfigMap with the run's inputs (spec.json, each node's run.json, the script, dataset
files, the working directory's archive), a claim for the run folders unless the cluster has one, and the job.
Here only the attached cluster's record becomes the builder's `ClusterFacts`.

What the target relies on (the builder keeps it): every pod mounts one shared volume at GAUDI_NB_HOME and node
K's run folder is `part_path(run_id, K)`; the agent container writes the node's events.jsonl, and only it, on
stdout; the `log` container writes the node's logs/train.log; every object carries `gaudi-nb/run: <run_id>`.
"""
from __future__ import annotations

import json
from typing import Any, Dict, List

from ..k8s import AGENT_CONTAINER, LOG_CONTAINER, RUN_LABEL, ClusterFacts, choose_kind, object_name, part_path, render
from ..spec import RunSpec

# The workload each kind submits, beside the ConfigMap and Secret every run has: (kind, name suffix)
WORKLOAD = {"job": [("Job", ""), ("Service", "")], "pytorchjob": [("PyTorchJob", "")], "mpijob": [("MPIJob", "")],
            "trainjob": [("TrainJob", ""), ("TrainingRuntime", "")]}


def job_name(run_id: str) -> str:
    """The run's objects' name on the cluster (the job, its Service; the ConfigMap and Secret add a suffix)."""
    return object_name(run_id)


def facts_of(cluster: Dict[str, Any], *, wheel: bool = False) -> ClusterFacts:
    """The builder's view of an attached cluster (nodes/cluster.py's record facts). Attached without --image, the pods
    run Intel's image and install this client's build at start (`wheel`: build it here, as SSH attach sends it)."""
    image = cluster.get("image") or None
    client_wheel = None
    if image is None and wheel:
        from ..nodes.bootstrap import build_wheel

        client_wheel = str(build_wheel())
    return ClusterFacts(kinds=tuple(k for k in cluster.get("job_kinds") or () if k != "job"), image=image, namespace=cluster.get("namespace") or "default",
                        storage_class=cluster.get("storage_class"), claim=cluster.get("claim"), gaudi_nodes=bool(cluster.get("gaudi_nodes")),
                        run_as_user=0 if image is None or "vault.habana.ai" in image else ClusterFacts.run_as_user,  # Intel's image runs as root
                        client_wheel=client_wheel)


def manifests_for(spec: RunSpec, run_id: str, *, kind: str, runs: List[Dict[str, Any]], cluster: Dict[str, Any], target: str) -> List[Dict[str, Any]]:
    """Every object to submit for the run, in order (the builder's one-line SpecError for what it refuses).

    `target`: the attached cluster's name, put back into the pods' spec.json (the builder writes `local` there):
    the run's record takes its target from the agent's run_start, and every later call finds the run through it."""
    objects = render(spec, run_id, kind=kind, cluster=facts_of(cluster, wheel=True), runs=runs)
    for obj in objects:
        if obj["kind"] == "ConfigMap" and "spec.json" in (obj.get("data") or {}):
            pod_spec = json.loads(obj["data"]["spec.json"])
            obj["data"]["spec.json"] = json.dumps({**pod_spec, "target": target}, indent=2, sort_keys=True) + "\n"
    return objects


def owned_objects(run_id: str, kind: str = "job") -> List[tuple]:
    """(kind, name) of what the run made that goes once it has ended; the claim stays (it holds the checkpoints).
    Deleting the workload deletes its pods: the operator's (or the Job's) pods carry it as their owner."""
    name = object_name(run_id)
    return [(k, name + suffix) for k, suffix in WORKLOAD[kind]] + [("ConfigMap", f"{name}-files"), ("Secret", f"{name}-env")]


def agent_nodes(kind: str, nodes: int) -> int:
    """How many pods run a node agent (and write events): one per node, but an MPIJob's one launcher starts every node's ranks."""
    return 1 if kind == "mpijob" else nodes


def master_address(run_id: str, kind: str) -> str:
    """Node 0's name as the other pods reach it, from what each kind makes: the Job's headless Service
    (`<job>-0.<job>`), the Training Operator's Service for the master (`<job>-master-0`), Trainer v2's JobSet
    (`<job>-node-0-0.<job>`: PET_MASTER_ADDR)."""
    name = object_name(run_id)
    return {"pytorchjob": f"{name}-master-0", "trainjob": f"{name}-node-0-0.{name}"}.get(kind, f"{name}-0.{name}")


def describe(objects: List[Dict[str, Any]]) -> str:
    """One line: what was submitted."""
    return ", ".join(f"{o['kind']} {o['metadata']['name']}" for o in objects)


__all__ = ["AGENT_CONTAINER", "LOG_CONTAINER", "RUN_LABEL", "agent_nodes", "choose_kind", "describe", "facts_of", "job_name", "manifests_for", "master_address", "owned_objects", "part_path"]
