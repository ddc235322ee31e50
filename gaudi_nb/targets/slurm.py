"""A Slurm cluster (`--target NAME` of a cluster attached with `gaudi-nb nodes attach slurm:...`): one sbatch job a run.

The run's folder lives on the cluster's shared filesystem, `<run root>/runs/<run_id>`; the
client puts the run's inputs there (spec.json, a run.json template, the script) and submits one
job whose srun step starts agent/slurm_task.py on every allocated node. Each node's task makes
its own part, `nodes/<Slurm node name>/`, and runs the agent there; the parts' events come here
as an SSH run's do (mirrored, or read in place where the run root is this machine's
GAUDI_NB_HOME) and merge into the run's one stream (nodes/link.py's MergedStream).

The client adds what only Slurm knows, as `job` events in that stream: the job's id, its
state, why it waits (Slurm's reason: Resources, Priority, ...) and its nodes once allocated;
and a run_end when the job ends behind the agents' back (scancel, preemption, a node failure),
with Slurm's state in the reason. Queue time is never billed: each agent meters its node from
its own start.
"""
from __future__ import annotations

import json
import posixpath
import secrets
import socket
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..errors import GaudiNbError, SpecError
from ..events import EventWriter, has_ended, read_events
from ..launch.slurm import BAD_ENDS, ENDED_STATES, JobRequest, ended_by_slurm
from ..nodes.link import MergedStream
from ..nodes.slurm import Login, job, partition_gres, slurm_message
from ..rundir import heartbeat_timeout_s
from ..spec import RunSpec
from .base import Files, Part, Target

STOP_GRACE_S = 330.0  # after a stop request, how long the agents get before the job is cancelled (their own grace is 300 s)
ENDS_AS_LOST = ("NODE_FAIL", "PREEMPTED", "BOOT_FAIL")  # the machine went away; the others are the job's own end
JOBS_OWN_ENDS = ("COMPLETED", "FAILED", "GONE")  # the batch script exited by itself: where every agent wrote its end, that end is the run's
QUERY_EVERY_S = 1.0


class SlurmTarget(Target):
    lost_check_every_s = 0.0
    takes_time_limit = True

    def __init__(self, record: Dict[str, Any]) -> None:
        self.cluster = record
        self.name = record["name"]
        self.slurm = (record.get("resources") or {}).get("slurm") or {}
        self.max_nodes = len(self.slurm.get("nodes") or []) or 1
        self.login = Login(record)
        self._asked: Dict[str, float] = {}
        self._jobs: Dict[str, Dict[str, Any]] = {}

    # -- where the run is --------------------------------------------------------------------------
    def root(self, run_id: str) -> str:
        return posixpath.join(self.cluster["home"], "runs", run_id)

    def job_record(self, run_id: str) -> Dict[str, Any]:
        """This machine's record of the job: {job_id, partition, nodes} (run.json's `slurm`)."""
        try:
            return dict(self.folder(run_id).read_run().get("slurm") or {})
        except (OSError, ValueError):
            return {}

    def _remember(self, run_id: str, **fields: Any) -> None:
        folder = self.folder(run_id)
        run = folder.read_run()
        run["slurm"] = {**(run.get("slurm") or {}), **fields}
        folder.run.write_text(json.dumps(run))

    def place(self, run_id: str) -> List[Part]:
        """One part per allocated node, node 0 first; none while the job waits."""
        root = self.root(run_id)
        return [Part(name, rank, posixpath.join(root, "nodes", name), self.cluster) for rank, name in enumerate(self.job_record(run_id).get("nodes") or [])]

    def stream(self, run_id: str) -> MergedStream:
        return MergedStream(self.run_dir(run_id), self.job_record(run_id).get("nodes") or [], run_id)

    def mirror_of(self, run_id: str, part: Part) -> Path:
        return self.stream(run_id).node_events(part.name)

    # -- the transport: the login node ------------------------------------------------------------
    def put_file(self, part: Part, local: Path, relative: str) -> None:
        self.login.put_file(local, posixpath.join(part.path, relative))

    def put_bytes(self, part: Part, relative: str, data: bytes) -> None:
        self.login.put_bytes(posixpath.join(part.path, relative), data)

    def node_call(self, part: Part, *argv: str, files: Optional[Files] = None, timeout: float = 120.0) -> Dict[str, Any]:
        """A node command run where Slurm's commands run (it acts on the shared filesystem only)."""
        from ..agent.commands import REFUSED

        command = [self.cluster.get("python") or "python3", "-m", "gaudi_nb.agent.commands", *argv]
        status, out, err = self.login.run(command, input=None if files is None else json.dumps(files), timeout=timeout)
        if status == REFUSED:
            raise SpecError((err.strip().splitlines() or [""])[-1])
        if status != 0:
            raise GaudiNbError(f"{self.name}: {argv[0]} failed: {(err.strip().splitlines() or [f'exit status {status}'])[-1]}")
        return dict(json.loads(out.strip().splitlines()[-1]))

    def follow(self, run_id: str, parts: List[Part]) -> None:
        for part in parts:
            self.login.mirror(posixpath.join(part.path, "events.jsonl"), self.mirror_of(run_id, part))

    def fetch_log(self, run_id: str, part: Part, path: Path) -> None:
        self.login.mirror(posixpath.join(part.path, "logs", "train.log"), path)

    # -- checks and the launch ---------------------------------------------------------------------
    def request(self, spec: RunSpec, run_id: str) -> JobRequest:
        """The job this run asks for (JobRequest: its sbatch options)."""
        gres = partition_gres(self.slurm.get("nodes") or [])
        limit = spec.time_limit_s()
        return JobRequest(run_id=run_id, root=self.root(run_id), nodes=spec.nodes, devices=spec.devices, partition=self.slurm.get("partition") or "",
                          gres=gres, exclusive=gres is not None and spec.devices >= gres.count, account=self.slurm.get("account"), qos=self.slurm.get("qos"),
                          time_limit_s=limit, requeue=spec.max_restarts > 0 and spec.nodes == 1)  # restarts apply to one-node runs

    def check(self, spec: RunSpec) -> None:
        """Slurm says whether the job could ever run (sbatch --test-only): nothing is queued and nothing recorded when not."""
        argv = ["sbatch", "--test-only", *self.request(spec, "check").options(), "--wrap", "true"]
        argv = [a for a in argv if not a.startswith(("--output=", "--chdir="))]
        status, _, err = self.login.run(argv)
        if status != 0:
            raise SpecError(f"{self.name}: Slurm refused the job: {slurm_message(err) or 'sbatch exited ' + str(status)} (--nodes {spec.nodes} --devices {spec.devices}; gaudi-nb nodes check {self.name} shows what each node has)")

    def launch(self, spec: RunSpec, run_id: str) -> Path:
        """The run's inputs on the shared filesystem, then one sbatch; the job's id in the run's record and its first `job` event."""
        folder = self.folder(run_id)
        try:
            folder.create()
            root = Part("", 0, self.root(run_id), self.cluster)
            node_spec = self._send_inputs(spec, root)
            if node_spec.price_per_hour is None and self.cluster.get("price_per_hour") is not None:
                node_spec = node_spec.model_copy(update={"price_per_hour": self.cluster["price_per_hour"]})  # a node-hour's price
            created = time.time()
            template = {"run_id": run_id, "target": self.name, "created_at": created, "client": socket.gethostname(), "token": secrets.token_hex(16)}
            job = posixpath.join(root.path, "job")  # what every node's task reads (agent/slurm_task.py); the run root may be this machine's run folder
            self.login.put_bytes(posixpath.join(job, "spec.json"), node_spec.model_dump_json(indent=2).encode())
            self.login.put_bytes(posixpath.join(job, "run.json"), json.dumps(template).encode(), 0o600)  # the token: this run's agents only
            for relative, item in self.sent_files(spec).items():
                self.login.put_bytes(posixpath.join(job, relative), str(item["text"]).encode(), 0o600)
            folder.spec.write_text(spec.model_dump_json(indent=2))
            partition = self.slurm.get("partition")
            request = self.request(spec, run_id)
            folder.run.write_text(json.dumps({"run_id": run_id, "node": self.name, "target": self.name, "created_at": created, "client": socket.gethostname(),
                                              "remote_root": root.path, "slurm": {"job_id": None, "partition": partition, "nodes": [], "requeue": request.requeue}}))
            script = request.script(self.cluster.get("python") or "python3", self.cluster.get("home"))
            self.login.put_bytes(posixpath.join(job, "job.sh"), script.encode(), 0o755)
            job_id = self.login.slurm("sbatch", "--parsable", posixpath.join(job, "job.sh")).strip().split(";")[0]
            self._remember(run_id, job_id=job_id)
            self.gather(run_id)
        except Exception as exc:
            self.fail_launch(run_id, f"the run could not start: {type(exc).__name__}: {exc}")
            raise
        return folder.path

    def fail_launch(self, run_id: str, reason: str) -> None:
        job_id = self.job_record(run_id).get("job_id")
        if job_id:
            self.login.run(["scancel", str(job_id)])
        self._end(run_id, "failed", reason)

    # -- the job's life -----------------------------------------------------------------------------
    def _job(self, run_id: str, fresh: bool = False) -> Dict[str, Any]:
        """The job's state (asked at most once a second unless fresh)."""
        now = time.monotonic()
        if fresh or now - self._asked.get(run_id, -1e9) >= QUERY_EVERY_S or run_id not in self._jobs:
            self._jobs[run_id] = job(self.login, str(self.job_record(run_id)["job_id"]))
            self._asked[run_id] = now
        return self._jobs[run_id]

    def gather(self, run_id: str) -> None:
        """What Slurm says (queue events, the nodes once allocated, an end behind our back), then the parts' events."""
        known = self.job_record(run_id)
        final = self._final(run_id)
        if not known.get("job_id") or (final and not known.get("resuming")):  # resuming: the restart is on its way from the node
            return
        if known.get("resuming") and not final:
            self._remember(run_id, resuming=False)
        state = self._job(run_id, fresh=self._a_node_ended(run_id))
        if state["nodes"] and not known.get("nodes"):
            self._remember(run_id, nodes=state["nodes"])
        self._note(run_id, state)
        parts = self.place(run_id)
        if parts:
            self.follow(run_id, parts)
        left = state["state"] in (*ENDED_STATES, "GONE")
        if state["state"] == "COMPLETING" and not known.get("requeue"):  # squeue hides how it ends: Slurm's own line in the job's output says it
            # (a job Slurm may requeue: whether a preemption or a node failure ends it or starts it again, its next state says)
            ended = ended_by_slurm(self.login.read_text(posixpath.join(self.root(run_id), "job", f"slurm-{known['job_id']}.out")), str(known["job_id"]))
            state = {**state, "state": ended} if ended else state
        if state["state"] in (*BAD_ENDS, "GONE", "COMPLETED"):
            if parts:  # the nodes' ends so far (the run's end waits for the check below)
                self.stream(run_id).merge(may_end=False)
            if not (state["state"] in JOBS_OWN_ENDS and parts and all(self.part_ended(run_id, part) for part in parts)):
                self._ended_behind(run_id, state)  # else the nodes' ends say how the run ended (the merge below)
        if parts:  # a requeue-able job's node ends are the run's once Slurm has let the job go (else it may start it again)
            self.stream(run_id).merge(may_end=left or not known.get("requeue"))

    def _a_node_ended(self, run_id: str) -> bool:
        return any(has_ended(read_events(self.mirror_of(run_id, part), 0)[0]) for part in self.place(run_id))

    def _final(self, run_id: str) -> bool:
        return has_ended(read_events(self.folder(run_id).events, 0)[0])

    def _note(self, run_id: str, state: Dict[str, Any]) -> None:
        """A job event when the job's state, reason or nodes changed since the last one."""
        known = self.job_record(run_id)
        said = (state["state"], state["reason"], state["nodes"])
        if known.get("said") == list(said) or state["state"] == "GONE":
            return
        self._remember(run_id, said=list(said))
        with self.writing(run_id):
            writer = EventWriter(self.folder(run_id).events, run_id, node=self.name)
            writer.emit("job", scheduler="slurm", job_id=str(known["job_id"]), partition=known.get("partition"), state=state["state"],
                        reason=state["reason"] if state["state"] == "PENDING" else None, nodes=state["nodes"] or None)
            writer.close()

    def _ended_behind(self, run_id: str, state: Dict[str, Any]) -> None:
        """The job ended and the run has no end: Slurm ended it (scancel, a node failure, the time limit) or our stop's grace ran out."""
        known = self.job_record(run_id)
        slurm_state = state["state"] if state["state"] != "GONE" else "ended (Slurm no longer knows the job)"
        if known.get("stop_requested_at"):
            self._end(run_id, "stopped", f"stopped on request; Slurm job {known['job_id']} {slurm_state}")
            return
        if state["state"] in ("GONE", "COMPLETED"):  # the job ended by itself: the agents' ends are on their way,
            quiet = [part.name for part in self.place(run_id) if not self.part_ended(run_id, part) and self._quiet(run_id, part)]
            if quiet:  # unless a node's agent went without one (killed): nobody meters it now
                self._end(run_id, "lost", f"Slurm job {known['job_id']} {slurm_state}, and node {', '.join(quiet)} wrote no end")
            return
        status = "lost" if state["state"] in ENDS_AS_LOST else "failed"
        reason = f"Slurm job {known['job_id']} {slurm_state}" + (f" ({state['reason']})" if state.get("reason") else "")
        reason += ": its time limit ran out before the run stopped" if state["state"] == "TIMEOUT" else ""
        self._end(run_id, status, reason)

    def _quiet(self, run_id: str, part: Part) -> bool:
        """The part's events have not moved for the heartbeat timeout (its agent beats every second while it lives)."""
        mirror = self.mirror_of(run_id, part)
        last = mirror.stat().st_mtime if mirror.exists() else 0.0
        return time.time() - last > heartbeat_timeout_s()

    def _end(self, run_id: str, status: str, reason: str) -> None:
        """The run's own run_end, written here once (the merge keeps it as the run's end and adds the nodes' as log lines)."""
        folder = self.folder(run_id)
        with self.writing(run_id):
            events, _ = read_events(folder.events, 0)
            if has_ended(events):
                return
            steps = max((int(e["step"]) for e in self._all_node_events(run_id) if e.get("type") == "step"), default=0)
            writer = EventWriter(folder.events, run_id, node=self.name)
            writer.emit("run_end", status=status, exit_code=None, reason=reason, steps_completed=steps, usd=self._spent(run_id), ended_by="client")
            writer.close()

    def _all_node_events(self, run_id: str) -> List[Dict[str, Any]]:
        return [e for part in self.place(run_id) for e in read_events(self.mirror_of(run_id, part), 0)[0]]

    def _spent(self, run_id: str) -> Optional[float]:
        latest: Dict[str, Any] = {}
        for event in self._all_node_events(run_id):
            if event.get("type") == "cost":
                latest[event["node"]] = event.get("usd")
        return None if not latest or any(v is None for v in latest.values()) else float(sum(latest.values()))

    def part_ended(self, run_id: str, part: Part) -> bool:
        state = self.stream(run_id).state()
        return bool(state["final"]) or part.name in state["ends"]

    def writing(self, run_id: str) -> Any:
        return MergedStream(self.run_dir(run_id), [], run_id).locked()

    def check_lost(self, run_id: str) -> bool:
        """Slurm answers for the agents: a job that ended behind their back ends the run (gather); a stop whose grace ran out is cancelled."""
        known = self.job_record(run_id)
        asked = known.get("stop_requested_at")
        if asked and time.time() - float(asked) > STOP_GRACE_S and self._job(run_id)["state"] not in ENDED_STATES:
            self.login.run(["scancel", str(known["job_id"])])
        before = self._final(run_id)
        self.gather(run_id)
        return not before and self._final(run_id)

    def stop(self, run_id: str, reason: str = "stopped") -> bool:
        """The agents' checkpoint-then-stop road (node 0 picks the step); a job still queued is cancelled at once."""
        known = self.job_record(run_id)
        first = not known.get("stop_requested_at")
        if first:
            self._remember(run_id, stop_requested_at=time.time())
        state = self._job(run_id, fresh=True)
        parts = self.place(run_id)
        if state["state"] == "PENDING" or not parts:
            self.login.run(["scancel", str(known["job_id"])])
            self._end(run_id, "stopped", f"stopped on request while Slurm job {known['job_id']} was {state['state'].lower()}")
            return first
        self.node_call(parts[0], "slurm-stop", "--run-dir", parts[0].path, "--reason", reason, "--nodes", str(len(parts)))
        return first

    def resume(self, run_id: str, *, max_steps: Optional[int] = None, budget_usd: Optional[float] = None) -> Dict[str, Any]:
        """The next attempt of an ended one-node run: the node's resume request and restart event (agent/resume.py,
        without starting an agent), then a new job on the same node (its part holds the checkpoints) whose task
        reads the request. The run's stream takes the attempt's events as it took the first's."""
        parts = self.place(run_id)
        if len(parts) != 1:
            raise SpecError(f"run {run_id} ran across nodes: resume works for runs on one node in this version; start a new run with --max-steps")
        if not self._final(run_id) or self._job(run_id, fresh=True)["state"] not in (*ENDED_STATES, "GONE"):
            raise SpecError(f"run {run_id} is still running: stop it first (gaudi-nb stop {run_id}), then resume it")
        stream = self.stream(run_id)
        stream.merge()  # what the ended attempt left, before the stream's end is reopened
        argv = ["resume", "--run-dir", parts[0].path, "--no-start"]
        argv += ["--max-steps", str(max_steps)] if max_steps is not None else []
        argv += ["--budget-usd", repr(budget_usd)] if budget_usd is not None else []
        request = self.node_call(parts[0], *argv)  # its restart event reopens the run's stream (MergedStream.merge)
        changes = {k: v for k, v in (("max_steps", max_steps), ("budget_usd", budget_usd)) if v is not None}
        if changes:
            folder = self.folder(run_id)
            folder.spec.write_text(RunSpec.model_validate_json(folder.spec.read_text()).model_copy(update=changes).model_dump_json(indent=2))
        job_id = self.login.slurm("sbatch", "--parsable", f"--nodelist={parts[0].name}", posixpath.join(self.root(run_id), "job", "job.sh")).strip().split(";")[0]
        self._remember(run_id, job_id=job_id, said=None, stop_requested_at=None, resuming=True)
        self._jobs.pop(run_id, None)
        self.gather(run_id)
        return request
