"""What a target is: a way of reaching machines that starts a run's agents and brings their events here.

`Target` owns a run's life on its machines, as papermill's Engine owns a notebook's execution
and an engine fills in one method: `launch()` writes the run's record here, sends each node its
inputs, spec.json and run.json, starts the agents (node 0 first), follows their events, and
ends the run as failed when any of that raises; `stop()`, `resume()`, `check_lost()` and
`log_path()` are written once too. A way of reaching machines implements the transport hooks:

  place(run_id)                 each node's share of the run (`Part`): its name, rank, and the run
                                folder there, node 0 first; one folder per node, even where nodes
                                share a filesystem
  put_file(part, local, rel)    copy a file into the node's run folder (made if missing)
  put_bytes(part, rel, data)    write bytes there
  node_call(part, *argv, files) run `python -m gaudi_nb.agent.commands ARGV` on the node (files: written
                                into the run folder in the same call); its JSON answer, SpecError for
                                a refusal, UnreachableError when the node does not answer
  follow(run_id, parts)         (re)start bringing these parts' events.jsonl here (mirror_of)
  fetch_log(run_id, part, path) bring a part's train.log to `path`; wait_fetched(path, s) waits for it

and, where several nodes need more than one node's plan: node_runs() (each node's run.json),
local_run() (this machine's record), gather() (the run's one stream from the parts'),
part_ended(). Local, one SSH node and several SSH nodes implement these (local.py, ssh.py);
a batch scheduler (Slurm: sbatch and squeue through a login node) or a cluster (Kubernetes:
a Job, its pods' logs) is one more implementation: docs/architecture.md, "Adding a target".
"""
from __future__ import annotations

import contextlib
import json
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

from .. import workdir
from ..errors import SpecError
from ..events import ended_in_file, read_events
from ..paths import run_dir
from ..private import write_atomic
from ..rundir import RunFolder, heartbeat_timeout_s
from ..spec import RunSpec

Files = Dict[str, Dict[str, Any]]  # relative path in a node's run folder -> {"text": ..., "mode": ...} (agent/commands.py)


def sent_environment(spec: RunSpec) -> Dict[str, str]:
    """What a node's agent gets from this environment (the SSH session there has none of it): the settings
    of the trackers --report-to names, and the variables --env names."""
    import os

    from ..agent import tracker_backends

    return {**tracker_backends.settings_for(spec.trackers()), **{name: os.environ[name] for name in spec.env_names() if name in os.environ}}


@dataclass(frozen=True)
class Part:
    """One node's share of a run: the node, its rank, and the run's folder there as the node sees it."""

    name: str
    rank: int
    path: str
    node: Dict[str, Any] = field(default_factory=dict, compare=False)  # the node's record (empty for this machine)


class Target:
    """A way of reaching machines; subclasses fill in the transport hooks below."""

    name: str = ""
    max_nodes: int = 1  # how many nodes one run may use here
    lost_check_every_s = 0.0  # how often check_lost may ask a node (a round trip for a remote one)
    takes_time_limit = False  # --time-limit: a scheduler's (Slurm's) job limit

    # -- transport hooks ---------------------------------------------------------------------
    def place(self, run_id: str) -> List[Part]:
        raise NotImplementedError

    def put_file(self, part: Part, local: Path, relative: str) -> None:
        raise NotImplementedError

    def put_bytes(self, part: Part, relative: str, data: bytes) -> None:
        raise NotImplementedError

    def node_call(self, part: Part, *argv: str, files: Optional[Files] = None, timeout: float = 120.0) -> Dict[str, Any]:
        raise NotImplementedError

    def follow(self, run_id: str, parts: List[Part]) -> None:
        """Nothing to bring: the run's folder is here."""

    def mirror_of(self, run_id: str, part: Part) -> Path:
        return self.folder(run_id).events

    def fetch_log(self, run_id: str, part: Part, path: Path) -> None:
        """Nothing to bring: the log is here."""

    def wait_fetched(self, path: Path, timeout: float) -> bool:
        return True

    # -- what one node's run needs; several nodes override ------------------------------------------
    def node_runs(self, parts: List[Part], run_id: str, created: float) -> List[Dict[str, Any]]:
        """Each node's run.json."""
        return [{"run_id": run_id, "node": part.name, "hostname": part.node.get("host") or socket.gethostname(), "target": self.name,
                 "created_at": created, "client": socket.gethostname()} for part in parts]

    def local_run(self, parts: List[Part], runs: List[Dict[str, Any]]) -> Dict[str, Any]:
        """This machine's run.json: node 0's, and where each node keeps the run (what later calls find it by)."""
        return {**runs[0], "remote_dirs": {part.name: part.path for part in parts}}

    def inputs(self, spec: RunSpec, part: Part) -> Tuple[List[Tuple[Path, str]], RunSpec]:
        """The files a run needs in the node's folder (its script) and the spec as the node reads it."""
        uploads = [(Path(spec.script).expanduser(), "script.py")] if spec.script else []  # the run's own copy: a later edit cannot change it
        return uploads, spec

    def put_workdir(self, part: Part, root: Path) -> None:
        """The working directory as git would keep it: one archive that the node unpacks into code/ when it starts the agent."""
        with tempfile.TemporaryDirectory(prefix="gaudi-nb-workdir-") as folder:
            archive = Path(folder) / "code.tar"
            workdir.pack(root, archive)
            self.put_file(part, archive, "code.tar")  # agent/commands.py's CODE_ARCHIVE, streamed from the file

    def sent_files(self, spec: RunSpec) -> Files:
        """What the run's agent gets from this client's environment (--report-to's settings, --env's variables),
        in a file only its owner reads; the agent deletes it when it starts."""
        sent = sent_environment(spec)
        return {"control/environment.json": {"text": json.dumps(sent), "mode": 0o600}} if sent else {}

    def gather(self, run_id: str) -> None:
        """Bring what arrived from the parts into the run's one events.jsonl here (one part: it is that file)."""

    def part_ended(self, run_id: str, part: Part) -> bool:
        """The part's events here end with a run_end that no restart follows."""
        return ended_in_file(self.mirror_of(run_id, part))

    @contextlib.contextmanager
    def writing(self, run_id: str) -> Iterator[None]:
        """Held while this client writes into the run's events.jsonl itself."""
        yield

    # -- the run's life: the same for every target ------------------------------------------------
    def check(self, spec: RunSpec) -> None:
        """What only the target can check before anything is written (a remote node's preflight); SpecError if not ready."""

    def run_dir(self, run_id: str) -> Path:
        """The local folder that holds (or mirrors) the run."""
        return run_dir(run_id)

    def folder(self, run_id: str) -> RunFolder:
        return RunFolder(self.run_dir(run_id))

    def launch(self, spec: RunSpec, run_id: str) -> Path:
        """Create the run's folders, start its agents detached, follow their events; return the local folder.
        A launch that raises has ended the run as failed (fail_launch) and left nothing running."""
        folder = self.folder(run_id)
        try:
            folder.create()
            parts = self.place(run_id)
            specs = [self._send_inputs(spec, part) for part in parts]
            runs = self.node_runs(parts, run_id, time.time())
            write_atomic(folder.spec, spec.model_dump_json(indent=2))
            write_atomic(folder.run, json.dumps(self.local_run(parts, runs)))
            sent = self.sent_files(spec)
            for part, node_spec, run in zip(parts, specs, runs, strict=True):  # node 0 first: it hosts the rendezvous
                files = {"spec.json": {"text": node_spec.model_dump_json(indent=2)}, "run.json": {"text": json.dumps(run)}, **sent}
                self.node_call(part, "start", "--run-dir", part.path, "--files-stdin", files=files)
            self.follow(run_id, parts)
        except Exception as exc:
            self.fail_launch(run_id, f"the run could not start: {type(exc).__name__}: {exc}")
            raise
        return folder.path

    def _send_inputs(self, spec: RunSpec, part: Part) -> RunSpec:
        uploads, node_spec = self.inputs(spec, part)
        for local, relative in uploads:
            self.put_file(part, local, relative)
        if spec.workdir:
            self.put_workdir(part, Path(spec.workdir))
        return node_spec

    def fail_launch(self, run_id: str, reason: str) -> None:
        """The run ends failed with this reason, here and on every node an agent may have started on."""
        from ..agent import liveness

        try:
            parts = self.place(run_id)
        except Exception:  # the nodes are not known (not attached): nothing started anywhere
            parts = []
        for part in parts:  # an agent that did start must not train alone: end it and its ranks
            try:
                self.node_call(part, "end-started", "--run-dir", part.path, "--reason", reason, timeout=30)
            except Exception:  # the node cannot be reached: its ranks wait for the others in vain and give up
                pass
        with self.writing(run_id):
            liveness.fail_unstarted(self.folder(run_id), {"run_id": run_id, "node": self.name, "target": self.name}, reason)

    def read_events(self, run_id: str, offset: int) -> Tuple[List[Dict[str, Any]], int]:
        """Complete events from a byte offset, and the offset to resume from; brings what the nodes wrote first."""
        self.gather(run_id)
        going = [part for part in self.place(run_id) if not self.part_ended(run_id, part)]
        if going:
            self.follow(run_id, going)  # a new process (a restarted kernel, another CLI call) resumes each mirror from its size
        return read_events(self.folder(run_id).events, offset)

    def check_lost(self, run_id: str) -> bool:
        """If a node's agent is gone, end its part as lost there (only the node can tell); True if this call did.
        A node that cannot be reached is not a lost run."""
        from ..nodes.ssh import UnreachableError

        self.gather(run_id)
        lost = False
        for part in self.place(run_id):
            if self.part_ended(run_id, part) or not self._due(run_id, part):
                continue
            mirror = self.mirror_of(run_id, part)
            last = mirror.stat().st_mtime if mirror.exists() else 0.0
            if time.time() - last < heartbeat_timeout_s():
                continue  # its events moved recently: the agent beats (cost events every second)
            try:
                lost = bool(self.node_call(part, "check-lost", "--run-dir", part.path, timeout=30).get("lost")) or lost
            except UnreachableError:
                continue
        return lost

    def _due(self, run_id: str, part: Part) -> bool:
        asked = self.__dict__.setdefault("_lost_asked", {})
        now = time.monotonic()
        if now - asked.get((run_id, part.name), -1e9) < self.lost_check_every_s:
            return False
        asked[(run_id, part.name)] = now
        return True

    def stop(self, run_id: str, reason: str = "stopped") -> bool:
        """Ask the run to stop after a checkpoint; a run whose agent is gone ends as stopped at once."""
        part = self.place(run_id)[0]
        return bool(self.node_call(part, "stop", "--run-dir", part.path, "--reason", reason).get("first"))

    def resume(self, run_id: str, *, max_steps: Optional[int] = None, budget_usd: Optional[float] = None) -> Dict[str, Any]:
        """Start the next attempt of an ended run from its newest complete checkpoint, where it ran, with what this
        client sends a run's agent sent again; returns the attempt and the checkpoint. SpecError (one line that
        says what to do) if it cannot be resumed."""
        part = self.place(run_id)[0]
        folder = self.folder(run_id)
        spec = RunSpec.model_validate_json(folder.spec.read_text())
        argv = ["resume", "--run-dir", part.path, "--files-stdin"]
        argv += ["--max-steps", str(max_steps)] if max_steps is not None else []
        argv += ["--budget-usd", repr(budget_usd)] if budget_usd is not None else []
        request = self.node_call(part, *argv, files=self.sent_files(spec))
        changes = {k: v for k, v in (("max_steps", max_steps), ("budget_usd", budget_usd)) if v is not None}
        if changes:  # this machine's copy of the spec says what the node's now says
            folder.spec.write_text(spec.model_copy(update=changes).model_dump_json(indent=2))
        self.follow(run_id, [part])
        return request

    def log_path(self, run_id: str, node: Optional[str] = None, wait_s: float = 0.0) -> Path:
        """The run's training log on this machine: node 0's (rank 0 writes it), or `node`'s. For a run that has
        ended, wait up to wait_s for every byte of it to be here."""
        parts = self.place(run_id)
        names = [part.name for part in parts]
        if node not in (None, *names):
            if len(names) == 1:
                raise SpecError(f"the run {run_id} ran on one node, '{names[0]}': leave out --node")
            raise SpecError(f"the run {run_id} ran on {', '.join(names)}, not on '{node}': --node {names[0]} (or {', '.join(names[1:])})")
        chosen = None
        for part in parts:  # every node's log comes here, so a later --node NAME finds it
            path = self.local_log(run_id, part)
            self.fetch_log(run_id, part, path)
            if part.name == (node or names[0]):
                chosen = path
        assert chosen is not None
        if wait_s:
            self.wait_fetched(chosen, wait_s)
        return chosen

    def local_log(self, run_id: str, part: Part) -> Path:
        """Node 0's log is the run's (logs/train.log); another node's goes to nodes/<name>/train.log."""
        folder = self.folder(run_id)
        return folder.train_log if part.rank == 0 else folder.path / "nodes" / part.name / "train.log"
