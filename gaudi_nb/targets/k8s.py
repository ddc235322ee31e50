"""A Kubernetes cluster attached by name (`gaudi-nb nodes attach k8s://CONTEXT/NS --name NAME`): a run is one job there.

`launch()` submits the kind the cluster has (TrainJob, PyTorchJob, MPIJob, else an indexed Job; kept in
the run's run.json) with the objects `k8s_submit.manifests_for()` builds (an agent pod per node, every node's
run folder on one shared volume); the pods start the agents, so there is no start command per node.
Each pod's events come here through its log (k8s_follow.py) and are merged into the run's one
stream as for several SSH nodes (nodes/link.py's MergedStream), ending with one run_end here.

Kubernetes's word is read at every sync (`gather`, at most every POLL_S): a pod the scheduler cannot
place keeps the run `pending` with the scheduler's reason (a `queued` event; no agent runs, so
nothing is billed); a pod evicted, OOM-killed, deleted or failed behind the run's back ends the run
(lost or failed) with Kubernetes's reason. A node command (stop, check-lost) is an exec in that
node's pod. Once the run has ended, the pods' training logs are copied here and the workload (its
pods go with it), ConfigMap and Secret are deleted; the claim with the run folders (checkpoints) is kept.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

from ..errors import GaudiNbError, SpecError
from ..spec import RunSpec, looks_like_path
from .base import Files, Part, Target
from .k8s_follow import ended_verdict, index_of, mirror, mirroring, pod_selector, scheduling_events, short_reason, waiting_reason
from .k8s_submit import (
    AGENT_CONTAINER,
    LOG_CONTAINER,
    RUN_LABEL,
    agent_nodes,
    choose_kind,
    describe,
    facts_of,
    job_name,
    manifests_for,
    master_address,
    owned_objects,
    part_path,
)

POLL_S = 2.0  # how often a sync asks the cluster about the run's pods
UNPLACED_S = 120.0  # a pod the job never made in this long (and no reason given) ends the run as lost


class K8sTarget(Target):
    """Runs on an attached Kubernetes cluster, one pod per node."""

    lost_check_every_s = 5.0
    max_nodes = 64  # the scheduler decides what fits; more than there is waits as pending, with its reason

    def __init__(self, name: str, record: Dict[str, Any]) -> None:
        from ..nodes.kube import cluster_facts

        self.name, self.record, self.facts = name, record, cluster_facts(record)
        self._cluster: Any = None
        self._asked: Dict[str, float] = {}
        self._cleaned: set = set()

    @property
    def cluster(self) -> Any:
        if self._cluster is None:
            from ..nodes.kube import of_record

            self._cluster = of_record(self.record)
        return self._cluster

    # -- where the run is --------------------------------------------------------------------
    def _nodes(self, run_id: str) -> int:
        try:
            return int(json.loads(self.folder(run_id).spec.read_text()).get("nodes") or 1)
        except (OSError, ValueError):
            return 1

    def kind_of(self, run_id: str) -> str:
        """The kind the run submitted (launch records it; a run from before kinds were chosen was a Job)."""
        try:
            return str((json.loads(self.folder(run_id).run.read_text()).get("kubernetes") or {}).get("kind") or "job")
        except (OSError, ValueError):
            return "job"

    def place(self, run_id: str, nodes: Optional[int] = None) -> List[Part]:
        """A part per pod that runs a node agent (an MPIJob's launcher is the one agent of every node)."""
        job = job_name(run_id)
        return [Part(f"{job}-{i}", i, part_path(run_id, i), self.record) for i in range(nodes or agent_nodes(self.kind_of(run_id), self._nodes(run_id)))]

    def stream(self, run_id: str) -> Any:
        from ..nodes.link import MergedStream

        return MergedStream(self.run_dir(run_id), [part.name for part in self.place(run_id)], run_id)

    def mirror_of(self, run_id: str, part: Part) -> Path:
        return Path(self.stream(run_id).node_events(part.name))

    def check(self, spec: RunSpec) -> None:
        if looks_like_path(spec.model):
            raise SpecError(f"model: {spec.model} is a folder on this machine: put it on the cluster's volume and give its path there, or a hub id")
        if not self.facts.get("image") and choose_kind(facts_of(self.facts), spec.nodes) == "mpijob":
            raise SpecError(f"cluster {self.name} has only the MPI Operator and no --image: an MPIJob's workers start their ranks over ssh, which does not carry "
                            f"a gaudi_nb installed at pod start; attach again with --image IMAGE (one with gaudi_nb: infra/docker builds one), or train on one node")

    # -- launch ------------------------------------------------------------------------------
    def node_runs(self, parts: List[Part], run_id: str, created: float, kind: str = "job") -> List[Dict[str, Any]]:
        """Each pod's run.json; across nodes with the `cluster` block: node 0's name as the kind's Service names it."""
        runs = [{"run_id": run_id, "node": part.name, "hostname": part.name, "target": self.name, "created_at": created, "client": socket.gethostname()} for part in parts]
        if len(parts) == 1:
            return runs
        from ..agent.commands import free_ports

        job = job_name(run_id)
        # any port is free in a pod's own network; two free here serve a stand-in whose pods share this machine's
        ports = free_ports(2)
        cluster = {"nodes": [p.name for p in parts], "master_addr": os.environ.get("GAUDI_NB_MASTER_ADDR") or master_address(run_id, kind),
                   "master_port": ports[0], "control_port": ports[1], "token": secrets.token_hex(16), "hosts": [f"{p.name}.{job}" for p in parts]}
        return [{**run, "cluster": {**cluster, "node_rank": part.rank}} for part, run in zip(parts, runs, strict=True)]

    def launch(self, spec: RunSpec, run_id: str) -> Path:
        """Write the run's record here, submit its objects, follow its pods; a failure deletes what was made and ends the run failed."""
        folder = self.folder(run_id)
        try:
            folder.create()
            if spec.price_per_hour is None and self.record.get("price_per_hour") is not None:
                spec = spec.model_copy(update={"price_per_hour": float(self.record["price_per_hour"])})  # per node, as the cluster was attached
            kind = choose_kind(facts_of(self.facts), spec.nodes)  # what the cluster has: TrainJob, PyTorchJob, MPIJob, else a Job
            parts = self.place(run_id, agent_nodes(kind, spec.nodes))
            runs = self.node_runs(parts, run_id, time.time(), kind)
            folder.spec.write_text(spec.model_dump_json(indent=2))
            folder.run.write_text(json.dumps(self.local_run(parts, runs, kind)))
            objects = manifests_for(spec, run_id, kind=kind, runs=runs, cluster=self.facts, target=self.name)
            for obj in objects:
                self.create(obj)
            (folder.path / "nodes").mkdir(exist_ok=True)
            (folder.path / "nodes" / "submitted.txt").write_text(describe(objects) + "\n")
            self.follow(run_id, parts)
        except Exception as exc:
            self.fail_launch(run_id, f"the run could not start: {type(exc).__name__}: {exc}")
            raise
        return folder.path

    def create(self, obj: Dict[str, Any]) -> None:
        """Create one object; the client's wheel ConfigMap is shared by the runs of one build, so one already there is it."""
        from ..nodes.kube import ApiError

        try:
            self.cluster.create(obj)
        except ApiError as exc:
            if exc.status != 409 or RUN_LABEL in (obj["metadata"].get("labels") or {}):
                raise

    def local_run(self, parts: List[Part], runs: List[Dict[str, Any]], kind: str = "job") -> Dict[str, Any]:
        public = {k: v for k, v in (runs[0].get("cluster") or {}).items() if k not in ("token", "node_rank")}
        return {"run_id": runs[0]["run_id"], "node": self.name, "target": self.name, "created_at": runs[0]["created_at"], "client": socket.gethostname(),
                "cluster": public, "remote_dirs": {part.name: part.path for part in parts},
                "kubernetes": {"context": self.facts.get("context"), "namespace": self.facts.get("namespace"), "job": job_name(runs[0]["run_id"]), "kind": kind}}

    def fail_launch(self, run_id: str, reason: str) -> None:
        from ..agent import liveness

        self._delete_objects(run_id)  # the job's pods go with it: no agent trains alone
        with self.writing(run_id):
            liveness.fail_unstarted(self.folder(run_id), {"run_id": run_id, "node": self.name, "target": self.name}, reason)

    # -- following -----------------------------------------------------------------------------
    def follow(self, run_id: str, parts: List[Part]) -> None:
        kind = self.kind_of(run_id)
        for part in parts:
            mirror(self.cluster, pod_selector(run_id, kind, part.rank), AGENT_CONTAINER[kind], self.mirror_of(run_id, part), lambda: bool(self.stream(run_id).state()["final"]))

    def gather(self, run_id: str) -> None:
        state = self.stream(run_id).merge()
        if not state["final"] and time.monotonic() - self._asked.get(run_id, -1e9) >= POLL_S:
            self._asked[run_id] = time.monotonic()
            try:
                self._read_cluster(run_id, state)
            except (GaudiNbError, OSError):
                pass  # the cluster does not answer now: the run is not lost for that (the link's state, not the run's)
            state = self.stream(run_id).state()
        if state["final"] and run_id not in self._cleaned:
            self._clean_up(run_id)

    def part_ended(self, run_id: str, part: Part) -> bool:
        state = self.stream(run_id).state()
        return bool(state["final"]) or part.name in state["ends"]

    @contextlib.contextmanager
    def writing(self, run_id: str) -> Iterator[None]:
        with self.stream(run_id).locked():
            yield

    def _read_cluster(self, run_id: str, state: Dict[str, Any]) -> None:
        """Kubernetes's word on the run's pods: still waiting for the scheduler (why), or ended behind the run's back."""
        parts, kind = self.place(run_id), self.kind_of(run_id)
        pods = {index_of(p, kind): p for p in self.cluster.pods(pod_selector(run_id, kind))}
        seen_path = self.run_dir(run_id) / "nodes" / "pods.json"
        seen = json.loads(seen_path.read_text()) if seen_path.exists() else {}  # node index -> a pod of it was seen
        if not isinstance(seen, dict) or any(str(i) not in seen for i in pods):
            seen = {**(seen if isinstance(seen, dict) else {}), **{str(i): p["metadata"]["name"] for i, p in pods.items()}}
            seen_path.write_text(json.dumps(seen))
        created = float(json.loads(self.folder(run_id).run.read_text()).get("created_at") or time.time())
        waiting = []
        for part in parts:
            if part.name in state["ends"]:
                continue
            pod = pods.get(part.rank)
            if pod is None:
                if str(part.rank) in seen:
                    self.end(run_id, "lost", f"pod of {part.name} was deleted behind the run's back (not by gaudi-nb)")
                    return
                if time.time() - created > UNPLACED_S:
                    self.end(run_id, "lost", f"the job made no pod for {part.name} in {UNPLACED_S:.0f} s")
                    return
                continue
            verdict = ended_verdict(pod, kind)
            if verdict is not None and (verdict[2] or not mirroring(self.mirror_of(run_id, part))):
                self.end(run_id, verdict[0], verdict[1])
                return
            if waiting_reason(pod):
                waiting.append(pod)
        if waiting:
            self._queued(run_id, waiting)

    def _queued(self, run_id: str, waiting: List[Dict[str, Any]]) -> None:
        """The run waits for the scheduler: a `job` event (PENDING) when its reason is new."""
        from ..events import EventWriter, read_events

        message = scheduling_events(self.cluster, waiting) or waiting_reason(waiting[0]) or "Unschedulable"
        reason = f"FailedScheduling: {message}"
        with self.writing(run_id):
            events, _ = read_events(self.folder(run_id).events)
            if any(e.get("type") in ("run_start", "run_end") for e in events):
                return
            last = next((e for e in reversed(events) if e.get("type") == "job"), None)
            if last is not None and last.get("reason") == reason:
                return
            writer = EventWriter(self.folder(run_id).events, run_id, node=self.name)
            writer.emit("job", scheduler="kubernetes", state="PENDING", job_id=job_name(run_id), reason=reason, short=short_reason(message), waiting=[p["metadata"]["name"] for p in waiting])
            writer.close()

    def end(self, run_id: str, status: str, reason: str) -> bool:
        """End the run here with Kubernetes's reason (its pods cannot): one run_end, then the job deleted. False if it had ended."""
        from ..events import EventWriter, read_events
        from ..events.ended import has_ended
        from ..fold import run_spend

        with self.writing(run_id):
            events, _ = read_events(self.folder(run_id).events)
            if has_ended(events):
                return False
            latest: Dict[str, Any] = {}
            for e in events:
                if e.get("type") == "cost":
                    latest[str(e.get("node"))] = e.get("usd")
            steps = max((int(e["step"]) for e in events if e.get("type") == "step"), default=0)
            writer = EventWriter(self.folder(run_id).events, run_id, node=self.name)
            writer.emit("run_end", status=status, exit_code=None, reason=reason, steps_completed=steps, usd=run_spend(latest) if latest else None, ended_by="client")
            writer.close()
        self.stream(run_id).merge()  # the stream takes the client's run_end as the run's own
        self._clean_up(run_id)
        return True

    def _clean_up(self, run_id: str) -> None:
        """The run has ended: its pods' training logs here, then the job and what came with it deleted (the claim is kept)."""
        self._cleaned.add(run_id)
        for part in self.place(run_id):
            self.fetch_log(run_id, part, self.local_log(run_id, part))
        self._delete_objects(run_id)

    def _delete_objects(self, run_id: str) -> None:
        for kind, name in owned_objects(run_id, self.kind_of(run_id)):
            try:
                self.cluster.delete(kind, name)
            except (GaudiNbError, OSError):
                pass  # away now: the next sync of an ended run does not come back here; the objects stay (gaudi-nb names them in the log)

    # -- node commands: an exec in the node's pod ----------------------------------------------------
    def node_call(self, part: Part, *argv: str, files: Optional[Files] = None, timeout: float = 120.0) -> Dict[str, Any]:
        from ..agent.commands import REFUSED
        from ..nodes.ssh import UnreachableError

        if files:
            raise SpecError(f"{argv[0] if argv else 'this'}: not for a run on a cluster in this version")
        run_id = Path(part.path).parent.parent.name  # part_path: .../runs/<run id>/nodes/<part>
        kind = self.kind_of(run_id)
        running = [p for p in self.cluster.pods(pod_selector(run_id, kind, part.rank)) if (p.get("status") or {}).get("phase") == "Running"]
        if not running:
            raise UnreachableError(f"pod {part.name} is not running")
        status, out, err = self.cluster.exec(running[0]["metadata"]["name"], AGENT_CONTAINER[kind], ["python3", "-m", "gaudi_nb.agent.commands", *argv], timeout=timeout)
        last = (err.strip().splitlines() or [f"exit status {status}"])[-1]
        if status == REFUSED:
            raise SpecError(last)
        if status != 0:
            raise GaudiNbError(f"pod {part.name}: {argv[0] if argv else ''} failed: {last}")
        answer: Dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return answer

    def _started(self, run_id: str, part: Part) -> bool:
        """The node's agent has written something (its pod was placed and ran)."""
        mirror = self.mirror_of(run_id, part)
        return mirror.exists() and mirror.stat().st_size > 0

    def _due(self, run_id: str, part: Part) -> bool:
        return self._started(run_id, part) and super()._due(run_id, part)  # no agent there yet: nothing to be lost

    def stop(self, run_id: str, reason: str = "stopped") -> bool:
        """Node 0's agent stops every node after a checkpoint; the job is deleted once the run has ended. A run whose
        agent does not run (still pending, or gone) ends here as stopped, and its job is deleted now."""
        from ..nodes.ssh import UnreachableError

        self.gather(run_id)
        parts = self.place(run_id)
        part = parts[0]
        try:  # across nodes node 0's agent picks the step every node stops after; one node's agent stops itself
            answer = self.node_call(part, "stop-all" if len(parts) > 1 else "stop", "--run-dir", part.path, "--reason", reason)
        except (UnreachableError, GaudiNbError):
            answer = {"alive": False}
        if answer.get("alive", True):
            return bool(answer.get("first"))
        return self.end(run_id, "stopped", "stopped on request after its agent was gone" if self._started(run_id, part) else "stopped on request before Kubernetes placed it")

    def resume(self, run_id: str, *, max_steps: Optional[int] = None, budget_usd: Optional[float] = None) -> Dict[str, Any]:
        raise SpecError(f"run {run_id} ran on the cluster {self.name}: resume is not there in this version; start a new run with gaudi-nb train --target {self.name}")

    # -- logs ----------------------------------------------------------------------------------
    def fetch_log(self, run_id: str, part: Part, path: Path) -> None:
        """The pod's training log (container `log`) here; kept as it was once the pod is gone."""
        try:
            pods = self.cluster.pods(pod_selector(run_id, self.kind_of(run_id), part.rank))
            if not pods:
                return
            data = b"".join(self.cluster.log(pods[0]["metadata"]["name"], LOG_CONTAINER, follow=False))
        except (GaudiNbError, OSError):
            return
        if data or not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)


def k8s_target(name: str, record: Dict[str, Any]) -> K8sTarget:
    return K8sTarget(name, record)
