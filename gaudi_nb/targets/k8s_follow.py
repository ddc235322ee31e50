"""Following a run's pods on a Kubernetes cluster: their events through the pod log, and what the cluster says of them.

Each node's pod is found by the run label and the node index its kind's controller gives it
(`pod_selector`: the Job's completion index, the Training Operator's replica type and index, an
MPIJob's one launcher). Its events come through the pod's log (the kind's agent container, whose
stdout is the node's events.jsonl: targets/k8s_submit.py), mirrored into runs/<id>/nodes/<pod>/events.jsonl here. The
log stream, not an exec of `tail` in the pod, because the log is still there once the container
has ended (until the pod is deleted), so the node's last bytes, its run_end, are never lost to a
race with the container's exit; and reading pods/log is a narrower right than creating pods/exec.
The log has no byte offset: after a dropped stream the mirror asks for the log again and skips the
bytes it has, so nothing is lost or written twice. One process at a time mirrors a file (a lock on it).

`pod_verdict()` reads one pod as Kubernetes reports it: waiting for the scheduler (and why), or
ended behind the run's back (evicted, OOM-killed, failed) with Kubernetes's reason.
"""
from __future__ import annotations

import fcntl
import re
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..events import ended_in_file
from ..k8s import AGENT_CONTAINER, RUN_LABEL

BACKOFF_S = (0.5, 1.0, 2.0, 5.0)
INDEX = "batch.kubernetes.io/job-completion-index"  # the Job controller's (a TrainJob's JobSet makes indexed Jobs too)
REPLICA_TYPE = "training.kubeflow.org/replica-type"  # the Training Operator's: master, worker
REPLICA_INDEX = "training.kubeflow.org/replica-index"
ROLE = "gaudi-nb/role"  # the builder's, on every pod template: node, master, worker, launcher

_mirrors: Dict[str, threading.Thread] = {}
_mirrors_lock = threading.Lock()


def pod_selector(run_id: str, kind: str, index: Optional[int] = None) -> str:
    """The label selector of the run's agent pods (node `index`'s alone with one), for the kind submitted. Every pod of
    the run carries the builder's run label; where a pod stands comes from what each kind's controller sets: the
    completion index (Job, TrainJob), the replica type and index (PyTorchJob: the master is node 0, worker K node K+1),
    and for an MPIJob its launcher, the one pod that runs the agent (node 0; the workers only run sshd)."""
    base = f"{RUN_LABEL}={run_id}"
    if kind == "mpijob":
        return f"{base},{ROLE}=launcher"
    if kind == "pytorchjob":
        if index is None:
            return base  # the master and the workers each run a node's agent
        return f"{base},{REPLICA_TYPE}=master" if index == 0 else f"{base},{REPLICA_TYPE}=worker,{REPLICA_INDEX}={index - 1}"
    return base + (f",{INDEX}={index}" if index is not None else "")


def index_of(pod: Dict[str, Any], kind: str) -> int:
    """The node index of one of the run's agent pods (pod_selector's inverse)."""
    meta = pod.get("metadata", {})
    labels = meta.get("labels") or {}
    if kind == "mpijob":
        return 0
    if kind == "pytorchjob":
        return 0 if labels.get(REPLICA_TYPE) == "master" else int(labels.get(REPLICA_INDEX) or 0) + 1
    return int(labels.get(INDEX) or (meta.get("annotations") or {}).get(INDEX) or 0)


def mirror(cluster: Any, selector: str, container: str, path: Path, finished: Callable[[], bool]) -> None:
    """Start (once per process and file) mirroring the event stream of the pod `selector` finds (its `container`'s
    log) into path until it has ended there, or `finished()` says the run has (a pod that never started writes nothing more)."""
    with _mirrors_lock:
        running = _mirrors.get(str(path))
        if running is not None and running.is_alive():
            return
        thread = threading.Thread(target=_mirror, args=(cluster, selector, container, path, finished), daemon=True, name=f"k8s-mirror-{path.parent.name}")
        _mirrors[str(path)] = thread
        thread.start()


def mirroring(path: Path) -> bool:
    thread = _mirrors.get(str(path))
    return thread is not None and thread.is_alive()


def _mirror(cluster: Any, selector: str, container: str, path: Path, finished: Callable[[], bool]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    failures = 0
    with open(path, "ab") as held:
        while not ended_in_file(path) and not finished():
            try:
                fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # another process mirrors it: take over if it goes away
                time.sleep(1.0)
                continue
            try:
                before = path.stat().st_size
                _mirror_once(cluster, selector, container, path, held)
                if path.stat().st_size > before:
                    failures = 0
            finally:
                fcntl.flock(held.fileno(), fcntl.LOCK_UN)
            time.sleep(BACKOFF_S[min(failures, len(BACKOFF_S) - 1)])
            failures += 1


def _mirror_once(cluster: Any, selector: str, container: str, path: Path, out: Any) -> None:
    """One pass of the pod's log from its start, skipping the bytes the mirror has; returns when it ends or drops."""
    try:
        pods = [p for p in cluster.pods(selector) if (p.get("status") or {}).get("phase") in ("Running", "Succeeded", "Failed")]
        if not pods:
            return  # not placed yet, or gone: the target's watch of the pods says which
        skip = path.stat().st_size
        for chunk in cluster.log(pods[0]["metadata"]["name"], container, follow=True):
            if skip:
                dropped = min(skip, len(chunk))
                chunk, skip = chunk[dropped:], skip - dropped
            if chunk:
                out.write(chunk)
                out.flush()
    except Exception:  # a dropped stream, a container not started yet (400), the API away: the next pass goes on
        return


# -- what Kubernetes says of a pod --------------------------------------------------------------
def waiting_reason(pod: Dict[str, Any]) -> Optional[str]:
    """The scheduler's message for a pod it could not place, else None."""
    status = pod.get("status") or {}
    if status.get("phase") != "Pending":
        return None
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return str(condition.get("message") or condition.get("reason") or "Unschedulable")
    return None


def short_reason(message: str) -> str:
    """'0/4 nodes are available: 4 Insufficient habana.ai/gaudi. preemption: …' → 'Insufficient habana.ai/gaudi'."""
    found = [word.rstrip(".") for word in re.findall(r"\d+ (Insufficient [\w./-]+)", message)]
    return ", ".join(dict.fromkeys(found)) if found else message.split(". ")[0]


def ended_verdict(pod: Dict[str, Any], kind: str = "job") -> Optional[Tuple[str, str, bool]]:
    """A pod that ended behind the run's back: (status, Kubernetes's reason, certain). `certain` is False for a
    container that merely failed: its last events may still be on their way, so the caller waits for them first."""
    status, name = pod.get("status") or {}, pod["metadata"]["name"]
    if status.get("phase") != "Failed":
        return None
    if status.get("reason") == "Evicted":
        return "lost", f"Kubernetes evicted pod {name}: {status.get('message') or 'Evicted'}", True
    agent = AGENT_CONTAINER[kind]
    for container in status.get("containerStatuses") or []:
        terminated = (container.get("state") or {}).get("terminated") or {}
        if container.get("name") == agent and terminated:
            reason = terminated.get("reason") or "Error"
            detail = f"pod {name}: container {agent} {reason} (exit code {terminated.get('exitCode')})" + (f": {terminated['message']}" if terminated.get("message") else "")
            return ("failed", detail, True) if reason == "OOMKilled" else ("failed", detail, False)
    return "failed", f"pod {name} failed: {status.get('reason') or ''} {status.get('message') or ''}".strip(), False


def scheduling_events(cluster: Any, pods: List[Dict[str, Any]]) -> Optional[str]:
    """The newest FailedScheduling event's message among these pods (what `kubectl describe pod` shows)."""
    newest: Tuple[str, Optional[str]] = ("", None)
    for pod in pods:
        for event in cluster.events_of(pod["metadata"]["name"]):
            if event.get("reason") == "FailedScheduling" and str(event.get("lastTimestamp") or "") >= newest[0]:
                newest = (str(event.get("lastTimestamp") or ""), str(event.get("message") or ""))
    return newest[1]
