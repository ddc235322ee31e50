"""An attached node over SSH: the agent runs there, detached; the run's events are mirrored here from an offset.

Every view reads the local mirror (runs/<run_id>/events.jsonl here) exactly as for a local
run; the node's own file stays the source of truth.
"""
from __future__ import annotations

import json
import os
import posixpath
import socket
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..errors import GaudiNbError, NotFoundError, SpecError
from ..events import read_events
from ..paths import run_dir
from ..rundir import RunFolder, heartbeat_timeout_s
from ..spec import RunSpec, looks_like_path

# Files a run needs are copied to the node; a bigger one is refused unless the limit is raised.
SYNC_LIMIT_MB = float(os.environ.get("GAUDI_NB_SYNC_LIMIT_MB", "512"))
LOST_CHECK_EVERY_S = 5.0


class SshTarget:
    """A run on one attached node (`--target NAME`, a name from `gaudi-nb nodes list`)."""

    max_nodes = 1

    def __init__(self, node_name: str) -> None:
        self.name = node_name
        self._node: Optional[Dict[str, Any]] = None
        self._last_lost_check: Dict[str, float] = {}
        self._complete: set = set()  # runs whose mirror holds their run_end

    # -- the node ------------------------------------------------------------------
    @property
    def node(self) -> Dict[str, Any]:
        if self._node is None:
            from ..store import RunStore

            try:
                self._node = RunStore().get_node(self.name)
            except NotFoundError:
                raise SpecError(
                    f"target: no attached node '{self.name}': gaudi-nb nodes list shows them; attach one with gaudi-nb nodes attach ssh://USER@HOST --name {self.name}"
                ) from None
        return self._node

    def remote_dir(self, run_id: str) -> str:
        return posixpath.join(self.node["home"], "runs", run_id)

    def _links(self) -> Any:
        from ..nodes.link import links

        return links()

    def _node_call(self, *args: str, timeout: float = 120.0) -> Dict[str, Any]:
        from ..nodes.link import node_command

        status, out, err = self._links().run(self.node, node_command(self.node, *args), timeout=timeout)
        if status != 0:
            last = (err.strip().splitlines() or [f"exit status {status}"])[-1]
            raise GaudiNbError(f"node {self.name}: {' '.join(args[:1])} failed: {last}")
        answer: Dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return answer

    # -- Target --------------------------------------------------------------------------
    def run_dir(self, run_id: str) -> Path:
        return run_dir(run_id)

    def folder(self, run_id: str) -> RunFolder:
        return RunFolder(run_dir(run_id))

    def check(self, spec: RunSpec) -> None:
        """The node is attached and ready for this run (the preflight, one line if not); nothing is written yet."""
        from ..nodes.preflight import preflight

        preflight(self.node, spec)

    def launch(self, spec: RunSpec, run_id: str) -> Path:
        links = self._links()
        remote = self.remote_dir(run_id)
        uploads, remote_spec = self._inputs(spec, remote)
        status, _, err = links.run(self.node, f"mkdir -p {remote}/logs {remote}/control {remote}/inputs")
        if status != 0:
            raise GaudiNbError(f"node {self.name}: cannot create the run folder {remote}: {err.strip()}")
        for local, there in uploads:
            links.put_file(self.node, local, there)
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

    def _inputs(self, spec: RunSpec, remote: str) -> Tuple[List[Tuple[Path, str]], RunSpec]:
        """The files a run needs on the node (its script, local dataset files) and the spec with their node paths."""
        uploads: List[Tuple[Path, str]] = []

        def upload(path: str, name: str) -> str:
            local = Path(path).expanduser()
            size_mb = local.stat().st_size / 2**20
            if size_mb > SYNC_LIMIT_MB:
                raise SpecError(f"{local} is {size_mb:,.0f} MiB, above the {SYNC_LIMIT_MB:,.0f} MiB sync limit: put it on the node, or raise GAUDI_NB_SYNC_LIMIT_MB")
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

        folder = self.folder(run_id)
        folder.control.mkdir(parents=True, exist_ok=True)
        if not folder.run.exists():
            folder.run.write_text(json.dumps({"run_id": run_id, "node": self.name, "target": self.name, "created_at": time.time()}))
        liveness.end_run(folder, "failed", reason)

    def read_events(self, run_id: str, offset: int) -> Tuple[List[Dict[str, Any]], int]:
        folder = self.folder(run_id)
        events, end = read_events(folder.events, offset)
        if any(e.get("type") == "run_end" for e in events):
            self._complete.add(run_id)
        if run_id not in self._complete and not self._links().mirroring(folder.events):
            # a new process (a restarted kernel, another CLI call): resume the mirror from its size
            self._links().mirror(self.node, f"{self.remote_dir(run_id)}/events.jsonl", folder.events)
        return events, end

    def link_state(self, run_id: str) -> str:
        """up | unreachable: the link's state, not the run's."""
        return "up" if self._links().state(self.name).up else "unreachable"

    def check_lost(self, run_id: str) -> bool:
        """Ask the node (only the node can tell that its agent is gone); an unreachable node is not a lost run."""
        now = time.monotonic()
        if now - self._last_lost_check.get(run_id, 0.0) < LOST_CHECK_EVERY_S:
            return False
        self._last_lost_check[run_id] = now
        last = self.folder(run_id).events.stat().st_mtime if self.folder(run_id).events.exists() else 0.0
        if time.time() - last < heartbeat_timeout_s():
            return False  # the mirror moved recently: the agent beats (cost events every second)
        from ..nodes.link import UnreachableError

        try:
            return bool(self._node_call("check-lost", "--run-dir", self.remote_dir(run_id), timeout=30).get("lost"))
        except UnreachableError:
            return False

    def stop(self, run_id: str, reason: str = "stopped") -> bool:
        return bool(self._node_call("stop", "--run-dir", self.remote_dir(run_id), "--reason", reason).get("first"))

    def log_path(self, run_id: str) -> Path:
        folder = self.folder(run_id)
        self._links().mirror(self.node, f"{self.remote_dir(run_id)}/logs/train.log", folder.train_log, remote_run_dir=self.remote_dir(run_id))
        return folder.train_log

