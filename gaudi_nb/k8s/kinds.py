"""The four workload kinds, each from the same pod pieces (pod.py).

TrainJob, PyTorchJob and the indexed Job run one agent per node pod, each starting its node's ranks with
torchrun's static rendezvous at node 0 (the operator or the Job says where this pod stands: RANK and
MASTER_ADDR, read by launch/cluster.py). An MPIJob runs one agent on its cardless launcher, which starts the
ranks on every worker through DeepSpeed over ssh (Intel's documented multi-node path); the workers run sshd.
"""
from __future__ import annotations

from typing import Any, Dict, List

from .names import RUN_LABEL
from .pod import MPI_HOSTFILE, RENDEZVOUS_PORT, Doc, RunPods, container, log_container, pod_template, start_command

TRAINER_GROUP = "trainer.kubeflow.org"
NODE = "node"  # Trainer v2's name for the training container and its replicated job
# The container whose log is a node's event stream, in each kind (the operators fix some of the names);
# every such pod also has the "log" sidecar (pod.LOG_CONTAINER).
AGENT_CONTAINER = {"trainjob": NODE, "pytorchjob": "pytorch", "mpijob": "launcher", "job": "agent"}
# Where each kind's pod finds its node index: the Job controller's completion index (a JobSet's jobs are
# indexed too), the Training Operator's RANK, and the MPIJob's one agent on its launcher.
NODE_INDEX = {"trainjob": "$JOB_COMPLETION_INDEX", "pytorchjob": "$RANK", "mpijob": "0", "job": "$JOB_COMPLETION_INDEX"}


def _metadata(r: RunPods, name: str) -> Doc:
    return {"name": name, "namespace": r.facts.namespace, "labels": dict(r.labels), "annotations": {"gaudi-nb/run-id": r.run_id}}


def trainjob(r: RunPods) -> List[Doc]:
    """A TrainJob with a TrainingRuntime of its own: the pod settings a Gaudi pod needs (hostIPC, SYS_NICE, the
    run volume) are not among what a TrainJob may patch into a cluster's runtime. numProcPerNode is always set:
    Trainer v2's `auto` counts only resource names with "gpu" in them, so it would start one process per CPU."""
    # Trainer v2's torch plugin names the node's place PET_*; launch/cluster.py reads the operators' names
    place = ['export RANK="$PET_NODE_RANK" MASTER_ADDR="$PET_MASTER_ADDR" MASTER_PORT="$PET_MASTER_PORT" WORLD_SIZE="$PET_NNODES"']
    node = container(r, NODE, start_command(r, NODE_INDEX["trainjob"], place))
    template = pod_template(r, [node, log_container(r, NODE_INDEX["trainjob"])], role="node")
    runtime = {
        "apiVersion": f"{TRAINER_GROUP}/v1alpha1",
        "kind": "TrainingRuntime",
        "metadata": _metadata(r, r.name),
        "spec": {
            "mlPolicy": {"numNodes": r.spec.nodes, "torch": {}},
            "template": {"spec": {"replicatedJobs": [{
                "name": NODE,
                "replicas": 1,
                "template": {
                    "metadata": {"labels": {"trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}},
                    "spec": {"backoffLimit": 0, "template": template},
                },
            }]}},
        },
    }
    job = {
        "apiVersion": f"{TRAINER_GROUP}/v1alpha1",
        "kind": "TrainJob",
        "metadata": _metadata(r, r.name),
        "spec": {
            "runtimeRef": {"apiGroup": TRAINER_GROUP, "kind": "TrainingRuntime", "name": r.name},
            "trainer": {
                "image": r.image,
                "numNodes": r.spec.nodes,
                "numProcPerNode": r.spec.devices,
                "resourcesPerNode": node["resources"],
            },
        },
    }
    return [runtime, job]


def pytorchjob(r: RunPods) -> List[Doc]:
    """The Training Operator's PyTorchJob: a Master and Workers, each a node; the operator requires the
    container name "pytorch" and sets RANK (the node rank), MASTER_ADDR, MASTER_PORT and WORLD_SIZE."""

    def replica(count: int, role: str) -> Doc:
        node = container(r, AGENT_CONTAINER["pytorchjob"], start_command(r, NODE_INDEX["pytorchjob"]))
        # the operator reads MASTER_PORT from this port (a missing one fails the job where no webhook adds it)
        node["ports"] = [{"name": "pytorchjob-port", "containerPort": 23456, "protocol": "TCP"}]
        return {"replicas": count, "restartPolicy": "Never", "template": pod_template(r, [node, log_container(r, NODE_INDEX["pytorchjob"])], role=role)}

    replicas = {"Master": replica(1, "master")}
    if r.spec.nodes > 1:
        replicas["Worker"] = replica(r.spec.nodes - 1, "worker")
    return [{
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": _metadata(r, r.name),
        "spec": {
            "nprocPerNode": str(r.spec.devices),
            "runPolicy": {"cleanPodPolicy": "None", "backoffLimit": 0},
            "pytorchReplicaSpecs": replicas,
        },
    }]


def mpijob(r: RunPods) -> List[Doc]:
    """The MPI Operator's MPIJob (kubeflow.org/v2beta1). The launcher has no card, so it is told it trains on
    Gaudi (GAUDI_NB_ACCELERATOR=hpu: detecting would find a CPU and pick torchrun on the launcher) and its spec
    names DeepSpeed, which reads the operator's hostfile and starts each worker's ranks over ssh. sshd and
    the operator's ssh keys (sshAuthMountPath) need root in these pods, as in Intel's and the operator's examples."""
    env = {"GAUDI_NB_HOSTFILE": MPI_HOSTFILE}
    if r.facts.gaudi_nodes:
        env["GAUDI_NB_ACCELERATOR"] = "hpu"
    launcher = container(r, AGENT_CONTAINER["mpijob"], start_command(r, NODE_INDEX["mpijob"]), cards=False, root=True, env=env)
    worker = container(r, "worker", ["/bin/bash", "-c", "/usr/bin/ssh-keygen -A && exec /usr/sbin/sshd -De"], root=True)
    return [{
        "apiVersion": "kubeflow.org/v2beta1",
        "kind": "MPIJob",
        "metadata": _metadata(r, r.name),
        "spec": {
            "slotsPerWorker": r.spec.devices,
            "mpiImplementation": "OpenMPI",
            "sshAuthMountPath": "/root/.ssh",
            # DeepSpeed dials every worker at once: the launcher starts when they are ready, not before
            "launcherCreationPolicy": "WaitForWorkersReady",
            "runPolicy": {"cleanPodPolicy": "None", "backoffLimit": 0},
            "mpiReplicaSpecs": {
                "Launcher": {"replicas": 1, "restartPolicy": "Never",
                             "template": pod_template(r, [launcher, log_container(r, NODE_INDEX["mpijob"])], role="launcher", cards=False, root=True)},
                "Worker": {"replicas": r.spec.nodes, "restartPolicy": "Never",
                           "template": pod_template(r, [worker], role="worker", root=True)},
            },
        },
    }]


def job(r: RunPods) -> List[Doc]:
    """An indexed Job: one pod per node, each pod's index its node rank, node 0 reached by name through a
    headless Service (a pod of an indexed Job with a subdomain is `<job>-<index>.<service>`)."""
    env = {"MASTER_ADDR": f"{r.name}-0.{r.name}", "MASTER_PORT": str(RENDEZVOUS_PORT), "WORLD_SIZE": str(r.spec.nodes)}
    node = container(r, AGENT_CONTAINER["job"], start_command(r, NODE_INDEX["job"], ['export RANK="$JOB_COMPLETION_INDEX"']), env=env if r.spec.nodes > 1 else None)
    template = pod_template(r, [node, log_container(r, NODE_INDEX["job"])], role="node")
    template["spec"]["subdomain"] = r.name
    workload: Dict[str, Any] = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(r, r.name),
        "spec": {
            "completionMode": "Indexed",
            "completions": r.spec.nodes,
            "parallelism": r.spec.nodes,
            # a retried pod would spend the budget twice; the run's own checkpoints are the way to resume
            "backoffLimit": 0,
            "template": template,
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(r, r.name),
        "spec": {
            "clusterIP": "None",
            "selector": {RUN_LABEL: r.run_id},
            # node 0's name must resolve before it is ready: the other nodes dial it at once
            "publishNotReadyAddresses": True,
            "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT}],
        },
    }
    return [service, workload] if r.spec.nodes > 1 else [workload]


BUILDERS = {"trainjob": trainjob, "pytorchjob": pytorchjob, "mpijob": mpijob, "job": job}
