"""The local node: the agent runs here, detached in its own session."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

from ..events import read_events
from ..paths import run_dir
from ..rundir import request_stop
from ..spec import RunSpec


class LocalTarget:
    name = "local"

    def launch(self, spec: RunSpec, run_id: str) -> Path:
        folder = run_dir(run_id)
        (folder / "logs").mkdir(parents=True, exist_ok=False)
        (folder / "control").mkdir()
        (folder / "spec.json").write_text(spec.model_dump_json(indent=2))
        if spec.script:
            # the run keeps its own copy: editing the file later cannot change a running or finished run
            shutil.copyfile(Path(spec.script).expanduser(), folder / "script.py")
        (folder / "run.json").write_text(json.dumps({"run_id": run_id, "node": "local", "hostname": socket.gethostname(), "target": "local", "created_at": time.time()}))
        with open(folder / "logs" / "agent.log", "ab") as log:
            subprocess.Popen(
                [sys.executable, "-m", "gaudi_nb.agent", "--run-dir", str(folder)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # survives the notebook kernel or the CLI that started it
                close_fds=True,
            )
        return folder

    def read_events(self, run_id: str, offset: int) -> Tuple[List[Dict[str, Any]], int]:
        return read_events(run_dir(run_id) / "events.jsonl", offset)

    def stop(self, run_id: str, reason: str = "stopped") -> bool:
        return request_stop(run_dir(run_id), reason)

    def log_path(self, run_id: str) -> Path:
        return run_dir(run_id) / "logs" / "train.log"
