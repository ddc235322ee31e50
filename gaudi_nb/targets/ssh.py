"""Attached nodes over SSH: the agent runs there, detached; the run's events are mirrored here from an offset.

Every view reads the local mirror (runs/<run_id>/events.jsonl here) exactly as for a local
run; the node's own file stays the source of truth. Every command goes through this process's
links (nodes/link.py: one connection per node), as a node CLI command (agent/commands.py).

`SshNode` (`--target NAME`): the run's folder on the node is <home>/runs/<run_id>.
`SshNodes` (`--target NAME1,NAME2 --nodes 2`): one training across them, node 0 (the first
name) hosting the rendezvous. Each node keeps its part in <home>/runs/<run_id>/nodes/<name>/,
so nodes that share a home (NFS) never share a folder. An agent runs on every node, metering
and sampling its own; each node's events.jsonl is mirrored into runs/<run_id>/nodes/<name>/
here and merged into the run's one stream by arrival (nodes/link.py's MergedStream), which ends
with one run_end written here once every node has ended. Stops go to node 0's agent, which
picks the step every rank stops after and sends it to the other agents (agent/supervisor.py).
"""
from __future__ import annotations

import contextlib
import json
import os
import posixpath
import secrets
import socket
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

from ..errors import GaudiNbError, NotFoundError, SpecError
from ..spec import RunSpec, looks_like_path
from .base import Files, Part, Target


class SshTarget(Target):
    """Runs on attached nodes (names from `gaudi-nb nodes list`), node 0 first: the SSH transport."""

    lost_check_every_s = 5.0  # a question to the node is a round trip; the mirror's heartbeat answers most of them

    def __init__(self, target: str) -> None:
        self.names = [name.strip() for name in target.split(",") if name.strip()]
        self.name = ",".join(self.names)
        self.max_nodes = len(self.names)
        self._records: Dict[str, Dict[str, Any]] = {}
        self._places: Dict[str, List[Part]] = {}

    # -- the nodes -------------------------------------------------------------------------
    def record(self, name: str) -> Dict[str, Any]:
        if name not in self._records:
            from ..store import RunStore, check_node_paths

            try:
                self._records[name] = check_node_paths(RunStore().get_node(name))  # its home and python go into command lines
            except NotFoundError:
                raise SpecError(
                    f"target: no attached node '{name}': gaudi-nb nodes list shows them; attach one with gaudi-nb nodes attach ssh://USER@HOST --name {name}"
                ) from None
        return self._records[name]

    @property
    def nodes(self) -> List[Dict[str, Any]]:
        return [self.record(name) for name in self.names]

    def folder_on(self, record: Dict[str, Any], run_id: str) -> str:
        """Where a new run keeps its folder on the node."""
        raise NotImplementedError

    def _links(self) -> Any:
        from ..nodes.link import links

        return links()

    def check(self, spec: RunSpec) -> None:
        """The nodes are attached and ready for this run (each node's preflight, one line if not); nothing is written yet."""
        from ..nodes.preflight import preflight

        if spec.nodes != len(self.names):
            raise SpecError(f"nodes: --target {self.name} names {len(self.names)} nodes: give --nodes {len(self.names)} (one node per name)")
        kinds = {record.get("accelerator") for record in self.nodes}
        if len(kinds) > 1:
            found = ", ".join(f"{record['name']}: {record.get('accelerator')}" for record in self.nodes)
            raise SpecError(f"target: the nodes of one run need the same accelerator ({found}): pick nodes of one kind")
        for index, record in enumerate(self.nodes):
            preflight(record, spec, first=index == 0)  # node 0 starts DeepSpeed's other nodes (pdsh)

    # -- the transport hooks ---------------------------------------------------------------
    def place(self, run_id: str) -> List[Part]:
        """Where the run is on each node: as this machine's record of the run says (a run keeps its folders
        whatever a later version would choose), else where a new run goes."""
        if run_id not in self._places:
            try:
                recorded = self.folder(run_id).read_run()
            except (OSError, ValueError):
                recorded = {}
            where = recorded.get("remote_dirs") or ({self.names[0]: recorded["remote_dir"]} if recorded.get("remote_dir") else None)
            parts = [Part(name, rank, where[name] if where else self.folder_on(self.record(name), run_id), self.record(name)) for rank, name in enumerate(self.names)]
            if not where:
                return parts  # not recorded yet (a launch): asked again once it is
            self._places[run_id] = parts
        return self._places[run_id]

    def put_file(self, part: Part, local: Path, relative: str) -> None:
        self._links().put_file(part.node, local, posixpath.join(part.path, relative))

    def put_bytes(self, part: Part, relative: str, data: bytes) -> None:
        self._links().put_bytes(part.node, posixpath.join(part.path, relative), data)

    def node_call(self, part: Part, *argv: str, files: Optional[Files] = None, timeout: float = 120.0) -> Dict[str, Any]:
        from ..agent.commands import REFUSED
        from ..nodes.link import node_command

        what = argv[0] if argv else ""
        status, out, err = self._links().run(part.node, node_command(part.node, *argv), timeout=timeout, input=None if files is None else json.dumps(files))
        last = (err.strip().splitlines() or [f"exit status {status}"])[-1]
        if status == REFUSED:
            raise SpecError(last)  # the node's one line, which says what to do
        if status != 0:
            raise GaudiNbError(f"node {part.name}: {what} failed: {last}")
        answer: Dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return answer

    def follow(self, run_id: str, parts: List[Part]) -> None:
        links = self._links()
        for part in parts:
            links.mirror(part.node, f"{part.path}/events.jsonl", self.mirror_of(run_id, part))

    def fetch_log(self, run_id: str, part: Part, path: Path) -> None:
        self._links().mirror(part.node, f"{part.path}/logs/train.log", path, remote_run_dir=part.path)

    def wait_fetched(self, path: Path, timeout: float) -> bool:
        return bool(self._links().wait_mirrored(path, timeout))

    def inputs(self, spec: RunSpec, part: Part) -> Tuple[List[Tuple[Path, str]], RunSpec]:
        """The files a run needs on the node (its script, local dataset files) and the spec with their node paths."""
        from .. import workdir

        uploads: List[Tuple[Path, str]] = []

        def upload(path: str, name: str) -> str:
            local = Path(path).expanduser()
            workdir.check_size(local, str(local))
            uploads.append((local, name))
            return posixpath.join(part.path, name)

        changes: Dict[str, Any] = {}
        if spec.script:
            upload(spec.script, "script.py")  # the run's own copy, as a local run keeps one
        parts = [p.strip() for p in spec.dataset.split(",")]
        if any(looks_like_path(p) for p in parts):
            changes["dataset"] = ",".join(upload(p, f"inputs/{i}-{Path(p).name}") if looks_like_path(p) else p for i, p in enumerate(parts))
        if looks_like_path(spec.model) or Path(spec.model).expanduser().is_dir():
            raise SpecError(f"model: {spec.model} is a folder on this machine; a model folder is not copied to a node: put it on {self.name} and give its path there")
        return uploads, spec.model_copy(update=changes)

    def link_state(self, run_id: str) -> str:
        """up | unreachable: the link's state, not the run's (unreachable while any node of the run is)."""
        links = self._links()
        return "up" if all(links.state(name).up for name in self.names) else "unreachable"


class SshNode(SshTarget):
    """A run on one attached node."""

    def folder_on(self, record: Dict[str, Any], run_id: str) -> str:
        return posixpath.join(record["home"], "runs", run_id)


class SshNodes(SshTarget):
    """One run across several attached nodes, node 0 first."""

    def folder_on(self, record: Dict[str, Any], run_id: str) -> str:
        # its own folder under the run's: nodes that share a home (NFS) would otherwise share one run.json
        return posixpath.join(record["home"], "runs", run_id, "nodes", record["name"])

    def stream(self, run_id: str) -> Any:
        """The merged stream of a run across nodes (nodes/link.py)."""
        from ..nodes.link import MergedStream

        return MergedStream(self.run_dir(run_id), self.names, run_id)

    def mirror_of(self, run_id: str, part: Part) -> Path:
        return Path(self.stream(run_id).node_events(part.name))

    def node_runs(self, parts: List[Part], run_id: str, created: float) -> List[Dict[str, Any]]:
        """Each node's run.json with its `cluster` block: the names, its rank, node 0's address and two ports free there."""
        ports = [int(port) for port in self.node_call(parts[0], "free-ports", "--count", "2")["ports"]]
        cluster = {
            "nodes": self.names,
            # node 0's address as the other nodes reach it: the address it was attached by, unless set
            "master_addr": os.environ.get("GAUDI_NB_MASTER_ADDR") or parts[0].node["host"],
            "master_port": ports[0],
            "control_port": ports[1],
            "token": secrets.token_hex(16),  # only this run's agents talk to each other
            "hosts": [part.node["host"] for part in parts],  # DeepSpeed's hostfile, node 0 first
        }
        return [{**run, "cluster": {**cluster, "node_rank": part.rank}} for part, run in zip(parts, super().node_runs(parts, run_id, created), strict=True)]

    def local_run(self, parts: List[Part], runs: List[Dict[str, Any]]) -> Dict[str, Any]:
        public = {k: v for k, v in runs[0]["cluster"].items() if k not in ("token", "node_rank")}
        return {"run_id": runs[0]["run_id"], "node": self.name, "target": self.name, "created_at": runs[0]["created_at"], "client": socket.gethostname(),
                "cluster": public, "remote_dirs": {part.name: part.path for part in parts}}

    def gather(self, run_id: str) -> None:
        state = self.__dict__.setdefault("_merged", {})
        if not state.get(run_id, {}).get("final"):
            state[run_id] = self.stream(run_id).merge()

    def part_ended(self, run_id: str, part: Part) -> bool:
        state = self.__dict__.get("_merged", {}).get(run_id) or self.stream(run_id).state()
        return bool(state["final"]) or part.name in state["ends"]

    @contextlib.contextmanager
    def writing(self, run_id: str) -> Iterator[None]:
        with self.stream(run_id).locked():
            yield

    def stop(self, run_id: str, reason: str = "stopped") -> bool:
        """Node 0's agent picks the step every rank stops after and sends it to the other nodes; if it is gone,
        each node ends its own part (a lost one as stopped, its ranks killed)."""
        parts = self.place(run_id)
        answer = self.node_call(parts[0], "stop-all", "--run-dir", parts[0].path, "--reason", reason)
        if answer.get("alive"):
            return bool(answer.get("first"))
        first = False
        for part in parts:
            try:
                first = bool(self.node_call(part, "stop", "--run-dir", part.path, "--reason", reason).get("first")) or first
            except GaudiNbError:
                continue
        return first

    def resume(self, run_id: str, *, max_steps: Optional[int] = None, budget_usd: Optional[float] = None) -> Dict[str, Any]:
        raise SpecError(f"run {run_id} ran across nodes ({self.name}): resume works for runs on one node in this version; start a new run with gaudi-nb train --target {self.name}")


def ssh_target(target: str) -> SshTarget:
    """`NAME` → SshNode, `NAME1,NAME2` → SshNodes."""
    names = [name for name in target.split(",") if name.strip()]
    return SshNodes(target) if len(names) > 1 else SshNode(target)
