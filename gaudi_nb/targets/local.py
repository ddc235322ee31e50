"""The local node: the agent runs here, detached in its own session."""
from __future__ import annotations

import json
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from .. import workdir
from ..agent import liveness, node
from ..errors import SpecError
from ..events import read_events
from ..paths import run_dir
from ..rundir import RunFolder
from ..spec import RunSpec


class LocalTarget:
    name = "local"
    max_nodes = 1

    def check(self, spec: RunSpec) -> None:
        """Nothing to ask of this machine beyond api.check()."""

    def run_dir(self, run_id: str) -> Path:
        return run_dir(run_id)

    def folder(self, run_id: str) -> RunFolder:
        return RunFolder(run_dir(run_id))

    def launch(self, spec: RunSpec, run_id: str) -> Path:
        folder = self.folder(run_id).create()
        folder.spec.write_text(spec.model_dump_json(indent=2))
        if spec.script:
            # the run keeps its own copy: editing the file later cannot change a running or finished run
            shutil.copyfile(Path(spec.script).expanduser(), folder.script)
        if spec.workdir:
            workdir.copy_into(Path(spec.workdir), workdir.code_dir(folder.path))
        folder.run.write_text(json.dumps({"run_id": run_id, "node": "local", "hostname": socket.gethostname(), "target": "local", "created_at": time.time()}))
        node.start_agent(folder)  # detached: survives the notebook kernel or the CLI that started it
        return folder.path

    def fail_launch(self, run_id: str, reason: str) -> None:
        liveness.fail_unstarted(self.folder(run_id), {"run_id": run_id, "node": "local", "target": "local"}, reason)

    def read_events(self, run_id: str, offset: int) -> Tuple[List[Dict[str, Any]], int]:
        return read_events(self.folder(run_id).events, offset)

    def check_lost(self, run_id: str) -> bool:
        return liveness.mark_if_lost(self.folder(run_id))

    def stop(self, run_id: str, reason: str = "stopped") -> bool:
        return node.stop_run(self.folder(run_id), reason)

    def resume(self, run_id: str, *, max_steps: Optional[int] = None, budget_usd: Optional[float] = None) -> Dict[str, Any]:
        from ..agent.resume import resume_run

        return resume_run(self.folder(run_id), max_steps=max_steps, budget_usd=budget_usd)

    def log_path(self, run_id: str, node: Optional[str] = None, wait_s: float = 0.0) -> Path:
        if node not in (None, self.name):
            raise SpecError(f"the run {run_id} ran on one node, '{self.name}': leave out --node")
        return self.folder(run_id).train_log
