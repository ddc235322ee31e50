"""The stand-in's operators: what the Kubeflow Training Operator does with a PyTorchJob and Kubeflow Trainer v2 with a
TrainJob, reduced to the pods they make (labels, hostnames, environment), owned by the custom resource so that
deleting it deletes them (the garbage collector's work, Cluster.delete).

- PyTorchJob (training-operator pkg/controller.v1/pytorch): one pod per replica, `<job>-master-0`,
  `<job>-worker-K`, labelled `training.kubeflow.org/replica-type` (master, worker, lower case) and
  `training.kubeflow.org/replica-index`; every container gets MASTER_ADDR (the master's Service,
  `<job>-master-0`), MASTER_PORT (the `pytorchjob-port` container port), WORLD_SIZE (the replicas, i.e. nodes)
  and RANK (the master 0, worker K K+1), as envvar.go's setPodEnv does.
- TrainJob (trainer pkg/runtime/framework/plugins/torch/torch.go, over a JobSet): the runtime's replicated job
  `node` becomes an indexed Job `<job>-node-0` with numNodes pods `<job>-node-0-<index>-xxxxx`, labelled
  `jobset.sigs.k8s.io/jobset-name`, `jobset.sigs.k8s.io/replicatedjob-name`, `jobset.sigs.k8s.io/job-index` and the
  Job controller's `batch.kubernetes.io/job-completion-index` (also an annotation, and JOB_COMPLETION_INDEX in
  the environment); the `node` container gets PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK (from the
  completion-index annotation), PET_MASTER_ADDR (`<job>-node-0-0.<job>`) and PET_MASTER_PORT (29400). The stand-in
  makes no JobSet or Job object: the pods are owned by the TrainJob itself.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, List

from .objects import Obj, Objects

TRAINER_PORT = 29400  # Trainer v2's constants.ContainerTrainerPort
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"


def _owner(obj: Obj) -> List[Dict[str, Any]]:
    return [{"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": obj["metadata"]["name"], "uid": obj["metadata"]["uid"], "controller": True}]


def _pod(template: Obj, meta: Obj, spec_extra: Obj, env: Dict[str, List[Obj]]) -> Obj:
    """A pod from a template: `meta` adds labels, annotations and the name; `env` adds each container's variables
    (key "*" for every container)."""
    template = copy.deepcopy(template)
    labels = {**(template.get("metadata", {}).get("labels") or {}), **meta.pop("labels", {})}
    spec = {**template["spec"], **spec_extra}
    for container in spec["containers"]:
        container["env"] = [*container.get("env", []), *env.get("*", []), *env.get(container["name"], [])]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {**meta, "labels": labels}, "spec": spec, "status": {"phase": "Pending", "conditions": []}}


def pytorchjob_created(objects: Objects, job: Obj) -> None:
    name, ns = job["metadata"]["name"], job["metadata"]["namespace"]
    replicas = job["spec"]["pytorchReplicaSpecs"]
    total = sum(int(r.get("replicas") or 1) for r in replicas.values())
    master = replicas["Master"]["template"]["spec"]["containers"]
    port = next((p["containerPort"] for c in master if c["name"] == "pytorch" for p in c.get("ports", []) if p.get("name") == "pytorchjob-port"), 23456)
    for rtype, replica in replicas.items():
        kind = rtype.lower()
        for index in range(int(replica.get("replicas") or 1)):
            rank = index + (1 if kind == "worker" else 0)
            env = [{"name": "PYTHONUNBUFFERED", "value": "0"}, {"name": "MASTER_PORT", "value": str(port)}, {"name": "MASTER_ADDR", "value": f"{name}-master-0"},
                   {"name": "WORLD_SIZE", "value": str(total)}, {"name": "RANK", "value": str(rank)}]
            labels = {"training.kubeflow.org/job-name": name, "training.kubeflow.org/operator-name": "pytorchjob-controller",
                      "training.kubeflow.org/replica-type": kind, "training.kubeflow.org/replica-index": str(index)}
            if kind == "master":
                labels["training.kubeflow.org/job-role"] = "master"
            pod = _pod(replica["template"], {"name": f"{name}-{kind}-{index}", "labels": labels, "ownerReferences": _owner(job)},
                       {"hostname": f"{name}-{kind}-{index}"}, {"*": env})
            objects.create("pods", ns, pod)


def trainjob_created(objects: Objects, job: Obj) -> None:
    name, ns = job["metadata"]["name"], job["metadata"]["namespace"]
    ref = job["spec"]["runtimeRef"]
    runtime = objects.get("trainingruntimes", ns, ref["name"])
    if runtime is None:
        return  # the real controller reports the missing runtime in the TrainJob's conditions; no pods
    trainer = job["spec"].get("trainer") or {}
    nodes = int(trainer.get("numNodes") or runtime["spec"]["mlPolicy"].get("numNodes") or 1)
    (replicated,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    template = replicated["template"]["spec"]["template"]
    pet = [{"name": "PET_NNODES", "value": str(nodes)}, {"name": "PET_NPROC_PER_NODE", "value": str(trainer.get("numProcPerNode", "auto"))},
           {"name": "PET_NODE_RANK", "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX}']"}}},
           {"name": "PET_MASTER_ADDR", "value": f"{name}-node-0-0.{name}"}, {"name": "PET_MASTER_PORT", "value": str(TRAINER_PORT)}, *trainer.get("env", [])]
    for index in range(nodes):
        labels = {"jobset.sigs.k8s.io/jobset-name": name, "jobset.sigs.k8s.io/replicatedjob-name": replicated["name"], "jobset.sigs.k8s.io/job-index": "0",
                  "job-name": f"{name}-{replicated['name']}-0", COMPLETION_INDEX: str(index)}
        meta = {"generateName": f"{name}-{replicated['name']}-0-{index}-", "labels": labels, "annotations": {COMPLETION_INDEX: str(index)}, "ownerReferences": _owner(job)}
        pod = _pod(template, meta, {"hostname": f"{name}-{replicated['name']}-0-{index}", "subdomain": name},
                   {"*": [{"name": "JOB_COMPLETION_INDEX", "value": str(index)}], "node": pet})
        objects.create("pods", ns, pod)


OPERATORS = {"pytorchjobs": pytorchjob_created, "trainjobs": trainjob_created}
