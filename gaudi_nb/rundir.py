"""The run folder's layout and its control files, shared by the agent, the ranks and the targets."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Optional

SPEC = "spec.json"
RUN = "run.json"
EVENTS = "events.jsonl"
CONTROL = "control"
STOP_REQUEST = "stop_request.json"  # written by the agent (budget) or a client (user stop)
STOP_AT = "stop_at.json"  # written by rank 0: the step every rank stops after


def request_stop(run_dir: Path, reason: str) -> bool:
    """Ask a run to stop after saving a checkpoint; the first request wins. Returns True if this one was recorded."""
    control = Path(run_dir) / CONTROL
    control.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(control / STOP_REQUEST, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        json.dump({"reason": reason, "t": time.time()}, fh)
    return True


def stop_reason(run_dir: Path) -> Optional[str]:
    """Why a stop was requested, or None if none was."""
    path = Path(run_dir) / CONTROL / STOP_REQUEST
    try:
        return json.loads(path.read_text()).get("reason", "stopped")
    except (OSError, json.JSONDecodeError):
        return "stopped" if path.exists() else None
