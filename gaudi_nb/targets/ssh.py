"""Attached nodes over SSH: the agent runs there, detached; the run's events are mirrored here from an offset.

Every view reads the local mirror (runs/<run_id>/events.jsonl here) exactly as for a local
run; the node's own file stays the source of truth.

Several nodes (`--target NAME1,NAME2 --nodes 2`): one training across them, node 0 (the first
name) hosting the rendezvous. An agent runs on every node, each metering and sampling its own;
each node's events.jsonl is mirrored into runs/<run_id>/nodes/<name>/ here and merged into the
run's one stream by arrival (nodes/link.py's MergedStream), which ends with one run_end
written here once every node has ended. Stops go to node 0's agent, which picks the step every
rank stops after and sends it to the other agents (agent/supervisor.py).
"""
from __future__ import annotations

import json
import os
import posixpath
import secrets
import shlex
import socket
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from .. import workdir
from ..agent import trackers
from ..errors import GaudiNbError, NotFoundError, SpecError
from ..events import read_events
from ..paths import run_dir
from ..rundir import RunFolder, heartbeat_timeout_s
from ..spec import RunSpec, looks_like_path

LOST_CHECK_EVERY_S = 5.0
STOP_NODES = "stop_nodes.json"  # agent/supervisor.py reads it in node 0's control/ folder

# Run with the node's Python: a free TCP port for the rendezvous and one for the agents' own channel.
_FREE_PORTS = "import json,socket\nss=[socket.socket() for _ in range(2)]\nfor s in ss: s.bind(('',0))\nprint(json.dumps({'ports': [s.getsockname()[1] for s in ss]}))"
# Run with node 0's Python: ask its agent to stop every node (first request wins); say if the agent is gone.
_STOP_ALL = """import json,os,sys,time
from gaudi_nb.rundir import RunFolder
from gaudi_nb.agent import liveness
folder = RunFolder(sys.argv[1])
alive, first = liveness.agent_alive(folder), False
if alive:
    folder.control.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(folder.control / sys.argv[3], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, json.dumps({"reason": sys.argv[2], "t": time.time()}).encode())
        os.close(fd)
        first = True
    except FileExistsError:
        pass
print(json.dumps({"first": first, "alive": alive}))"""



def sent_environment(spec: RunSpec) -> Dict[str, str]:
    """What a node's agent gets from this environment (the SSH session there has none of it): the settings
    of the trackers --report-to names, and the variables --env names."""
    return {**trackers.settings_for(spec.trackers()), **{name: os.environ[name] for name in spec.env_names() if name in os.environ}}

class SshTarget:
    """A run on attached nodes: `--target NAME` (a name from `gaudi-nb nodes list`), or `NAME1,NAME2` for one
    run across several (node 0 first)."""

    def __init__(self, target: str) -> None:
        self.names = [name.strip() for name in target.split(",") if name.strip()]
        self.name = ",".join(self.names)
        self.max_nodes = len(self.names)
        self._records: Dict[str, Dict[str, Any]] = {}
        self._last_lost_check: Dict[Tuple[str, str], float] = {}
        self._complete: set = set()  # runs whose mirror holds their run_end

    @property
    def several(self) -> bool:
        return len(self.names) > 1

    # -- the nodes -------------------------------------------------------------------------
    def record(self, name: str) -> Dict[str, Any]:
        if name not in self._records:
            from ..store import RunStore

            try:
                self._records[name] = RunStore().get_node(name)
            except NotFoundError:
                raise SpecError(
                    f"target: no attached node '{name}': gaudi-nb nodes list shows them; attach one with gaudi-nb nodes attach ssh://USER@HOST --name {name}"
                ) from None
        return self._records[name]

    @property
    def node(self) -> Dict[str, Any]:
        """Node 0 (the only node of a one-node run)."""
        return self.record(self.names[0])

    @property
    def nodes(self) -> List[Dict[str, Any]]:
        return [self.record(name) for name in self.names]

    def remote_dir(self, run_id: str, node: Optional[Dict[str, Any]] = None) -> str:
        return posixpath.join((node or self.node)["home"], "runs", run_id)

    def _links(self) -> Any:
        from ..nodes.link import links

        return links()

    def _node_call(self, *args: str, timeout: float = 120.0, node: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        from ..nodes.link import node_command

        node = node or self.node
        status, out, err = self._links().run(node, node_command(node, *args), timeout=timeout)
        return self._answer(node, args[0] if args else "", status, out, err)

    def _node_python(self, node: Dict[str, Any], code: str, *args: str, timeout: float = 60.0) -> Dict[str, Any]:
        """Run a few lines with the node's own Python (which has this gaudi_nb); one JSON line back."""
        command = " ".join([shlex.quote(node.get("python") or "python3"), "-c", shlex.quote(code), *map(shlex.quote, args)])
        status, out, err = self._links().run(node, command, timeout=timeout)
        return self._answer(node, "python", status, out, err)

    @staticmethod
    def _answer(node: Dict[str, Any], what: str, status: int, out: str, err: str) -> Dict[str, Any]:
        if status != 0:
            last = (err.strip().splitlines() or [f"exit status {status}"])[-1]
            raise GaudiNbError(f"node {node['name']}: {what} failed: {last}")
        answer: Dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return answer

    # -- Target --------------------------------------------------------------------------
    def run_dir(self, run_id: str) -> Path:
        return run_dir(run_id)

    def folder(self, run_id: str) -> RunFolder:
        return RunFolder(run_dir(run_id))

    def stream(self, run_id: str) -> Any:
        """The merged stream of a run across nodes (nodes/link.py)."""
        from ..nodes.link import MergedStream

        return MergedStream(self.run_dir(run_id), self.names, run_id)

    def check(self, spec: RunSpec) -> None:
        """The nodes are attached and ready for this run (each node's preflight, one line if not); nothing is written yet."""
        from ..nodes.preflight import preflight

        if self.several and spec.nodes != len(self.names):
            raise SpecError(f"nodes: --target {self.name} names {len(self.names)} nodes: give --nodes {len(self.names)} (one node per name)")
        kinds = {record.get("accelerator") for record in self.nodes}
        if len(kinds) > 1:
            found = ", ".join(f"{record['name']}: {record.get('accelerator')}" for record in self.nodes)
            raise SpecError(f"target: the nodes of one run need the same accelerator ({found}): pick nodes of one kind")
        for record in self.nodes:
            preflight(record, spec)

    def launch(self, spec: RunSpec, run_id: str) -> Path:
        if self.several:
            return self._launch_across(spec, run_id)
        links = self._links()
        remote = self.remote_dir(run_id)
        uploads, remote_spec = self._inputs(spec, remote)
        self._prepare(self.node, remote, uploads, spec)
        run = {"run_id": run_id, "node": self.name, "hostname": self.node.get("host"), "target": self.name, "created_at": time.time(), "client": socket.gethostname()}
        links.put_text(self.node, f"{remote}/spec.json", remote_spec.model_dump_json(indent=2))
        links.put_text(self.node, f"{remote}/run.json", json.dumps(run))
        # the local mirror: the same layout, so every view works unchanged
        folder = self.folder(run_id).create()
        folder.spec.write_text(spec.model_dump_json(indent=2))
        folder.run.write_text(json.dumps({**run, "remote_dir": remote}))
        self._node_call("start", "--run-dir", remote)
        links.mirror(self.node, f"{remote}/events.jsonl", folder.events)
        return folder.path

    def _prepare(self, node: Dict[str, Any], remote: str, uploads: List[Tuple[Path, str]], spec: RunSpec) -> None:
        links = self._links()
        status, _, err = links.run(node, f"mkdir -p {remote}/logs {remote}/control {remote}/inputs")
        if status != 0:
            raise GaudiNbError(f"node {node['name']}: cannot create the run folder {remote}: {err.strip()}")
        for local, there in uploads:
            links.put_file(node, local, there)
        if spec.workdir:
            self._sync_workdir(node, remote, Path(spec.workdir))
        self._send_environment(node, remote, spec)

    def _send_environment(self, node: Dict[str, Any], remote: str, spec: RunSpec) -> bool:
        """What the run's agent gets from this client (sent_environment), in a file only its owner reads; the
        agent deletes it when it starts. False when there is nothing to send."""
        sent = sent_environment(spec)
        if sent:
            self._links().put_text(node, f"{remote}/control/environment.json", json.dumps(sent), mode=0o600)
        return bool(sent)

    def _sync_workdir(self, node: Dict[str, Any], remote: str, root: Path) -> None:
        """The working directory as git would keep it, in one archive unpacked into the run's code/ folder there."""
        links = self._links()
        archive, _ = workdir.pack(root)
        code = workdir.code_dir(Path(remote)).as_posix()
        links.put_bytes(node, f"{remote}/code.tar", archive)
        status, _, err = links.run(node, f"mkdir -p {code} && tar -xf {remote}/code.tar -C {code} && rm {remote}/code.tar")
        if status != 0:
            raise GaudiNbError(f"node {node['name']}: cannot unpack the working directory into {code}: {err.strip()}")

    def _launch_across(self, spec: RunSpec, run_id: str) -> Path:
        """Every node's folder and inputs first, then the agents (node 0 first), then one mirror per node."""
        links = self._links()
        nodes = self.nodes
        remotes = {record["name"]: self.remote_dir(run_id, record) for record in nodes}
        specs = {}
        for record in nodes:
            uploads, specs[record["name"]] = self._inputs(spec, remotes[record["name"]])
            self._prepare(record, remotes[record["name"]], uploads, spec)
        ports = [int(port) for port in self._node_python(nodes[0], _FREE_PORTS)["ports"]]
        cluster = {
            "nodes": self.names,
            # node 0's address as the other nodes reach it: the address it was attached by, unless set
            "master_addr": os.environ.get("GAUDI_NB_MASTER_ADDR") or nodes[0]["host"],
            "master_port": ports[0],
            "control_port": ports[1],
            "token": secrets.token_hex(16),  # only this run's agents talk to each other
            "hosts": [record["host"] for record in nodes],  # DeepSpeed's hostfile, node 0 first
        }
        created = time.time()
        for rank, record in enumerate(nodes):
            name = record["name"]
            run = {"run_id": run_id, "node": name, "hostname": record.get("host"), "target": self.name, "created_at": created, "client": socket.gethostname(),
                   "cluster": {**cluster, "node_rank": rank}}
            links.put_text(record, f"{remotes[name]}/spec.json", specs[name].model_dump_json(indent=2))
            links.put_text(record, f"{remotes[name]}/run.json", json.dumps(run))
        folder = self.folder(run_id).create()
        folder.spec.write_text(spec.model_dump_json(indent=2))
        public_cluster = {k: v for k, v in cluster.items() if k != "token"}
        folder.run.write_text(json.dumps({"run_id": run_id, "node": self.name, "target": self.name, "created_at": created, "client": socket.gethostname(),
                                          "cluster": public_cluster, "remote_dirs": remotes}))
        stream = self.stream(run_id)
        for name in self.names:
            stream.node_dir(name).mkdir(parents=True, exist_ok=True)
        for record in nodes:
            self._node_call("start", "--run-dir", remotes[record["name"]], node=record)
        for record in nodes:
            links.mirror(record, f"{remotes[record['name']]}/events.jsonl", stream.node_events(record["name"]))
        return folder.path

    def _inputs(self, spec: RunSpec, remote: str) -> Tuple[List[Tuple[Path, str]], RunSpec]:
        """The files a run needs on the node (its script, local dataset files) and the spec with their node paths."""
        uploads: List[Tuple[Path, str]] = []

        def upload(path: str, name: str) -> str:
            local = Path(path).expanduser()
            workdir.check_size(local, str(local))
            there = posixpath.join(remote, name)
            uploads.append((local, there))
            return there

        changes: Dict[str, Any] = {}
        if spec.script:
            upload(spec.script, "script.py")  # the run's own copy, as a local run keeps one
        parts = [p.strip() for p in spec.dataset.split(",")]
        if any(looks_like_path(p) for p in parts):
            changes["dataset"] = ",".join(upload(p, f"inputs/{i}-{Path(p).name}") if looks_like_path(p) else p for i, p in enumerate(parts))
        if looks_like_path(spec.model) or Path(spec.model).expanduser().is_dir():
            raise SpecError(f"model: {spec.model} is a folder on this machine; a model folder is not copied to a node: put it on {self.name} and give its path there")
        return uploads, spec.model_copy(update=changes)

    def fail_launch(self, run_id: str, reason: str) -> None:
        from ..agent import liveness

        run = {"run_id": run_id, "node": self.name, "target": self.name}
        folder = self.folder(run_id)
        if not self.several:
            liveness.fail_unstarted(folder, run, reason)
            return
        for record in self.nodes:  # an agent that did start must not train alone: end it and its ranks
            try:
                self._node_python(record, _END_STARTED, self.remote_dir(run_id, record), reason)
            except Exception:  # the node cannot be reached: its agent's ranks wait for the others in vain and its launcher gives up
                pass
        with self.stream(run_id).locked():
            liveness.fail_unstarted(folder, run, reason)
        self._complete.add(run_id)

    def read_events(self, run_id: str, offset: int) -> Tuple[List[Dict[str, Any]], int]:
        folder = self.folder(run_id)
        if self.several:
            self._merge(run_id)
            return read_events(folder.events, offset)
        events, end = read_events(folder.events, offset)
        for event in events:  # complete at a run_end, unless a restart (gaudi-nb resume) follows it
            if event.get("type") == "run_end":
                self._complete.add(run_id)
            elif event.get("type") == "restart":
                self._complete.discard(run_id)
        if run_id not in self._complete and not self._links().mirroring(folder.events):
            # a new process (a restarted kernel, another CLI call): resume the mirror from its size
            self._links().mirror(self.node, f"{self.remote_dir(run_id)}/events.jsonl", folder.events)
        return events, end

    def _merge(self, run_id: str) -> Dict[str, Any]:
        """Append what every node's mirror brought to the run's stream; (re)start the mirror of a node that has not ended."""
        if run_id in self._complete:
            return {"final": True, "ends": {}}
        stream = self.stream(run_id)
        state: Dict[str, Any] = stream.merge()
        if state["final"]:
            self._complete.add(run_id)
            return state
        links = self._links()
        for record in self.nodes:
            name = record["name"]
            if name not in state["ends"] and not links.mirroring(stream.node_events(name)):
                links.mirror(record, f"{self.remote_dir(run_id, record)}/events.jsonl", stream.node_events(name))
        return state

    def link_state(self, run_id: str) -> str:
        """up | unreachable: the link's state, not the run's (unreachable while any node of the run is)."""
        links = self._links()
        return "up" if all(links.state(name).up for name in self.names) else "unreachable"

    def check_lost(self, run_id: str) -> bool:
        """Ask each node (only a node can tell that its agent is gone); an unreachable node is not a lost run.

        Across nodes, a node whose agent is gone ends as lost there; the run ends when every
        node has (the others' ranks fail without it), as lost.
        """
        from ..nodes.link import UnreachableError

        ended = self._merge(run_id)["ends"] if self.several else {}
        lost = False
        for record in self.nodes:
            name = record["name"]
            if name in ended:
                continue
            now = time.monotonic()
            if now - self._last_lost_check.get((run_id, name), 0.0) < LOST_CHECK_EVERY_S:
                continue
            self._last_lost_check[(run_id, name)] = now
            mirror = self.stream(run_id).node_events(name) if self.several else self.folder(run_id).events
            last = mirror.stat().st_mtime if mirror.exists() else 0.0
            if time.time() - last < heartbeat_timeout_s():
                continue  # the mirror moved recently: the agent beats (cost events every second)
            try:
                lost = bool(self._node_call("check-lost", "--run-dir", self.remote_dir(run_id, record), timeout=30, node=record).get("lost")) or lost
            except UnreachableError:
                continue
        return lost

    def stop(self, run_id: str, reason: str = "stopped") -> bool:
        if not self.several:
            return bool(self._node_call("stop", "--run-dir", self.remote_dir(run_id), "--reason", reason).get("first"))
        # node 0's agent picks the step every rank stops after and sends it to the other nodes
        answer = self._node_python(self.node, _STOP_ALL, self.remote_dir(run_id), reason, STOP_NODES)
        if answer.get("alive"):
            return bool(answer.get("first"))
        # node 0's agent is gone: each node ends its own part (a lost one as stopped, its ranks killed)
        first = False
        for record in self.nodes:
            try:
                first = bool(self._node_call("stop", "--run-dir", self.remote_dir(run_id, record), "--reason", reason, node=record).get("first")) or first
            except GaudiNbError:
                continue
        return first

    def resume(self, run_id: str, *, max_steps: Optional[int] = None, budget_usd: Optional[float] = None) -> Dict[str, Any]:
        """Resume on the node (agent/resume.py there), with what this client sends a run's agent sent again
        (the node deleted it when the first attempt started); then mirror the new attempt's events."""
        from ..agent.node import REFUSED
        from ..nodes.link import node_command

        if self.several:
            raise SpecError(f"run {run_id} ran across nodes ({self.name}): resume works for runs on one node in this version; start a new run with gaudi-nb train --target {self.name}")
        links, remote, folder = self._links(), self.remote_dir(run_id), self.folder(run_id)
        spec = RunSpec.model_validate_json(folder.spec.read_text())
        sent = self._send_environment(self.node, remote, spec)
        args = ["resume", "--run-dir", remote]
        args += ["--max-steps", str(max_steps)] if max_steps is not None else []
        args += ["--budget-usd", repr(budget_usd)] if budget_usd is not None else []
        status, out, err = links.run(self.node, node_command(self.node, *args))
        if status != 0 and sent:  # no agent started to read (and delete) what was sent: it does not stay there
            links.run(self.node, f"rm -f {shlex.quote(remote)}/control/environment.json")
        if status == REFUSED:
            raise SpecError((err.strip().splitlines() or [f"node {self.name} refused to resume run {run_id}"])[-1])
        request = self._answer(self.node, "resume", status, out, err)
        changes = {k: v for k, v in (("max_steps", max_steps), ("budget_usd", budget_usd)) if v is not None}
        if changes:  # the mirror's copy of the spec says what the node's now says
            folder.spec.write_text(spec.model_copy(update=changes).model_dump_json(indent=2))
        self._complete.discard(run_id)
        links.mirror(self.node, f"{remote}/events.jsonl", folder.events)
        return request

    def log_path(self, run_id: str, node: Optional[str] = None, wait_s: float = 0.0) -> Path:
        """The training log of node 0 (rank 0's), or of `node`; across nodes, the others' go to nodes/<name>/train.log.
        A run that has ended: wait up to wait_s for the log to be here whole (its mirror copies it in the background)."""
        names = [record["name"] for record in self.nodes]
        if node not in (None, *names):
            raise SpecError(f"the run {run_id} ran on {', '.join(names)}, not on '{node}': --node {names[0]}" + (f" (or {', '.join(names[1:])})" if len(names) > 1 else ""))
        folder = self.folder(run_id)
        links = self._links()
        links.mirror(self.node, f"{self.remote_dir(run_id)}/logs/train.log", folder.train_log, remote_run_dir=self.remote_dir(run_id))
        if self.several:
            stream = self.stream(run_id)
            for record in self.nodes[1:]:
                remote = self.remote_dir(run_id, record)
                links.mirror(record, f"{remote}/logs/train.log", stream.node_dir(record["name"]) / "train.log", remote_run_dir=remote)
            if node not in (None, names[0]):
                path = stream.node_dir(str(node)) / "train.log"
                if wait_s:
                    links.wait_mirrored(path, wait_s)
                return path
        if wait_s:
            links.wait_mirrored(folder.train_log, wait_s)
        return folder.train_log


# Run with a node's Python when a launch across nodes failed: kill the run's agent there if it
# started (its ranks follow it: worker/watchdog.py), and end the node's part as failed.
_END_STARTED = """import os,signal,sys
from gaudi_nb.rundir import RunFolder
from gaudi_nb.agent import liveness
folder = RunFolder(sys.argv[1])
if folder.path.exists():
    pid = folder.agent_process_id()
    if liveness.agent_alive(folder) and pid:
        os.kill(pid, signal.SIGKILL)
    if folder.run.exists():
        liveness.end_run(folder, "failed", sys.argv[2])
print("{}")"""
