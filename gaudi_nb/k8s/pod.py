"""The pieces every pod of a run shares: its container, volumes, environment, security context and start command.

A card pod follows Intel's example (facts.py): the cards, hugepages and memory as limits, hostIPC and
SYS_NICE. No pod sets HABANA_VISIBLE_DEVICES: the device plugin sets it to the cards it allocated, and a
value set here would override that (a pod could reach every card of the node).
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from ..spec import RunSpec
from .facts import GAUDI_RESOURCE, ClusterFacts
from .names import object_name

FILES_DIR = "/etc/gaudi-nb"  # the run's ConfigMap: spec.json, and the script and working directory when small
HOME_DIR = "/var/lib/gaudi-nb"  # GAUDI_NB_HOME on the run volume, shared by every pod of the run
MPI_HOSTFILE = "/etc/mpi/hostfile"  # where the MPI operator mounts the hostfile on the launcher
RENDEZVOUS_PORT = 29500  # torchrun's static rendezvous on node 0 (indexed Job)
LOG_CONTAINER = "log"  # every agent pod's sidecar: its log is the node's train.log
CLIENT_DIR = "/etc/gaudi-nb-client"  # the client's wheel (its own ConfigMap), where the image has no gaudi_nb

Doc = Dict[str, Any]


@dataclass(frozen=True)
class RunPods:
    """One rendering's shared settings: names, the spec the pods read, the cluster's facts."""

    name: str  # the workload's name (a DNS label); the other objects add a suffix
    run_id: str
    spec: RunSpec  # as the pods read it: target local, the launcher resolved
    facts: ClusterFacts
    image: str
    labels: Dict[str, str]
    claim: str
    env_names: List[str] = field(default_factory=list)  # what the run takes from the client (--env, trackers' settings): the Secret's keys
    client: Optional[str] = None  # the ConfigMap with the client's wheel, installed at start (None: the image has gaudi_nb)
    build: str = ""  # the client's build id: the install's folder on the run volume

    @property
    def secret(self) -> str:
        return f"{self.name}-env"

    @property
    def files(self) -> str:
        return f"{self.name}-files"


def part_path(run_id: str, index: int, home: str = HOME_DIR) -> str:
    """Node `index`'s part of the run on the shared volume, as its pods see it: one folder per node, as SSH
    nodes keep one each (the MPIJob's launcher is node 0, where every rank of the run writes)."""
    return f"{home}/runs/{run_id}/nodes/{object_name(run_id)}-{index}"


def client_path(build: str) -> str:
    """Where pods install the client's build on the run volume (once per build; PYTHONPATH names it)."""
    return f"{HOME_DIR}/env/{build}"


def install_lines(r: RunPods) -> List[str]:
    """Install the client's wheel on the run volume unless a pod did it already (pip --no-deps: the image brings the
    dependencies, torch among them); into a fresh folder, moved into place whole, so containers and pods that start
    together never see half an install. Every container runs it: the log sidecar and an exec need gaudi_nb too."""
    if not r.client:
        return []
    into = client_path(r.build)
    # pip's words go to a file beside the install: the agent container's stdout is the node's event stream
    return [f'if [ ! -d {into} ]; then mkdir -p {HOME_DIR}/env && fresh="$(mktemp -d {into}.XXXXXX)" && '
            f'python3 -m pip install --quiet --disable-pip-version-check --no-input --no-deps --no-compile --target "$fresh" {CLIENT_DIR}/*.whl >> {into}.log 2>&1 '
            f'&& mv -T "$fresh" {into} 2>/dev/null || rm -rf "$fresh"; fi']


def _folder_line(r: RunPods, node: str) -> List[str]:
    # `node`: the shell expression of this pod's node index, which the operator or the Job controller sets
    return [f'node="{node}"', f'run="$GAUDI_NB_HOME/runs/{r.run_id}/nodes/{r.name}-$node"']


def start_command(r: RunPods, node: str, before: Optional[List[str]] = None) -> List[str]:
    """The training container's command: lay out this node's run folder from the ConfigMap, start the node
    agent, and stream the node's events.jsonl on stdout until the run has ended there (the container's log is
    the node's event stream). `before`: shell lines that set the node's place (RANK, MASTER_ADDR). Paths come
    from the container's environment (GAUDI_NB_HOME, GAUDI_NB_FILES)."""
    minimal_run = (
        f'printf \'{{"run_id": "%s", "node": "%s", "hostname": "%s", "target": "k8s"}}\\n\' '
        f'{shlex.quote(r.run_id)} "{r.name}-$node" "$HOSTNAME" > "$run/run.json"'
    )
    lines = ["set -eu"] + list(before or []) + install_lines(r) + _folder_line(r, node) + [
        'mkdir -p "$run/logs" "$run/control"',
        'cp "$GAUDI_NB_FILES/spec.json" "$run/spec.json"',
        # each node's run.json as the client wrote it (the agents' shared settings), else the one-node form
        f'if [ -f "$GAUDI_NB_FILES/run-$node.json" ]; then cp "$GAUDI_NB_FILES/run-$node.json" "$run/run.json"; else {minimal_run}; fi',
        'if [ -f "$GAUDI_NB_FILES/script.py" ]; then cp "$GAUDI_NB_FILES/script.py" "$run/script.py"; fi',
        'if [ -f "$GAUDI_NB_FILES/code.tar" ]; then mkdir -p "$run/code" && tar -xf "$GAUDI_NB_FILES/code.tar" -C "$run/code"; fi',
        'for f in "$GAUDI_NB_FILES"/input-*; do if [ -f "$f" ]; then mkdir -p "$run/inputs" && cp "$f" "$run/inputs/${f##*/input-}"; fi; done',
        'python3 -m gaudi_nb.agent --run-dir "$run" >> "$run/logs/agent.log" 2>&1 &',
        'exec python3 -m gaudi_nb.agent.commands tail --path "$run/events.jsonl" --offset 0 --follow --run-dir "$run"',
    ]
    return ["/bin/bash", "-c", "\n".join(lines)]


def log_container(r: RunPods, node: str) -> Doc:
    """A sidecar whose log is the node's train.log (`gaudi-nb logs`), until the run has ended there."""
    lines = install_lines(r) + _folder_line(r, node) + ['exec python3 -m gaudi_nb.agent.commands tail --path "$run/logs/train.log" --offset 0 --follow --run-dir "$run"']
    security: Doc = {"allowPrivilegeEscalation": False}
    return {
        "name": LOG_CONTAINER,
        "image": r.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["/bin/bash", "-c", "\n".join(lines)],
        "env": [{"name": "GAUDI_NB_HOME", "value": HOME_DIR}, {"name": "PYTHONUNBUFFERED", "value": "1"}, *_client_env(r)],
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"cpu": "500m", "memory": "256Mi"}},
        "volumeMounts": [{"name": "runs", "mountPath": HOME_DIR}, *_client_mount(r)],
        "securityContext": security,
    }


def _client_env(r: RunPods) -> List[Doc]:
    # the installed build first on Python's path, in every process of the container (an exec's too)
    return [{"name": "PYTHONPATH", "value": client_path(r.build)}] if r.client else []


def _client_mount(r: RunPods) -> List[Doc]:
    return [{"name": "client", "mountPath": CLIENT_DIR, "readOnly": True}] if r.client else []


def environment(r: RunPods, extra: Optional[Dict[str, str]] = None, *, cards: bool = True) -> List[Doc]:
    values = {
        "GAUDI_NB_HOME": HOME_DIR,
        "GAUDI_NB_FILES": FILES_DIR,
        "PYTHONUNBUFFERED": "1",
        # loopback only: /metrics has no auth; `kubectl port-forward pod/NAME PORT` reaches it (docs/kubernetes.md)
        "GAUDI_NB_METRICS_HOST": "127.0.0.1",
        "GAUDI_NB_METRICS_PORT": str(r.facts.metrics_port),
    }
    if cards:
        # Intel's container settings for MPI and HCCL inside containers
        values["OMPI_MCA_btl_vader_single_copy_mechanism"] = "none"
        values["PT_HPU_LAZY_MODE"] = "1" if r.spec.lazy_mode else "0"
    values.update(extra or {})
    env: List[Doc] = [{"name": key, "value": value} for key, value in values.items()] + _client_env(r)
    # --env and the trackers' settings: the values live in the run's Secret, never in the workload
    env += [{"name": name, "valueFrom": {"secretKeyRef": {"name": r.secret, "key": name}}} for name in r.env_names]
    return env


def uses_cards(r: RunPods, role_has_cards: bool = True) -> bool:
    return role_has_cards and r.facts.gaudi_nodes


def resources(r: RunPods, node: bool) -> Doc:
    """Limits (requests follow them): the cards, hugepages and memory on a node's pod; a little for a cardless launcher."""
    if not node:
        return {"limits": {"cpu": "2", "memory": "8Gi"}}
    limits: Doc = {"memory": r.facts.memory}
    if r.facts.gaudi_nodes:
        limits[GAUDI_RESOURCE] = str(r.spec.devices)  # a Quantity: the API takes strings
        if r.facts.hugepages:
            limits["hugepages-2Mi"] = r.facts.hugepages
    return {"limits": limits}


def container(r: RunPods, name: str, command: List[str], *, cards: bool = True, root: bool = False, env: Optional[Dict[str, str]] = None) -> Doc:
    """`cards`: this pod trains (a node); False for the MPIJob's launcher, which only starts the ranks."""
    node, cards = cards, uses_cards(r, cards)
    mounts = [
        {"name": "files", "mountPath": FILES_DIR, "readOnly": True},
        {"name": "runs", "mountPath": HOME_DIR},
        {"name": "dshm", "mountPath": "/dev/shm"},
        *_client_mount(r),
    ]
    if cards and r.facts.hugepages:
        mounts.append({"name": "hugepages", "mountPath": "/hugepages"})
    security: Doc = {"allowPrivilegeEscalation": False}
    if cards:
        security["capabilities"] = {"add": ["SYS_NICE"]}  # Intel's example: the runtime pins threads
    if not root and r.facts.run_as_user:
        security.update(runAsNonRoot=True, runAsUser=r.facts.run_as_user)
    return {
        "name": name,
        "image": r.image,
        "imagePullPolicy": "IfNotPresent",
        "command": command,
        "env": environment(r, env, cards=cards),
        "resources": resources(r, node),
        "volumeMounts": mounts,
        "securityContext": security,
    }


def volumes(r: RunPods, cards: bool = True) -> List[Doc]:
    found: List[Doc] = [
        {"name": "files", "configMap": {"name": r.files}},
        {"name": "runs", "persistentVolumeClaim": {"claimName": r.claim}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "64Gi"}},
    ]
    if r.client:
        found.append({"name": "client", "configMap": {"name": r.client}})
    if uses_cards(r, cards) and r.facts.hugepages:
        found.append({"name": "hugepages", "emptyDir": {"medium": "HugePages"}})
    return found


def pod_template(r: RunPods, containers: List[Doc], *, role: str, cards: bool = True, root: bool = False, restart: str = "Never",
                 labels: Optional[Dict[str, str]] = None) -> Doc:
    pod: Doc = {"restartPolicy": restart, "containers": containers, "volumes": volumes(r, cards)}
    if uses_cards(r, cards):
        pod["hostIPC"] = True  # HCCL and the data loader's workers share memory across processes (Intel's example)
    if not root and r.facts.run_as_user:
        # the run volume is written by the image's user; fsGroup makes a fresh claim writable for it
        pod["securityContext"] = {"runAsNonRoot": True, "runAsUser": r.facts.run_as_user, "fsGroup": r.facts.run_as_user}
    return {"metadata": {"labels": {**r.labels, "gaudi-nb/role": role, **(labels or {})}}, "spec": pod}
