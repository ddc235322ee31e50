"""RunFolder: the run folder's layout, its control files and the agent's liveness, shared by agent, ranks and targets."""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional


def heartbeat_timeout_s() -> float:
    """Seconds without an agent heartbeat (and no agent process) before a run counts as lost; one setting."""
    return float(os.environ.get("GAUDI_NB_HEARTBEAT_TIMEOUT_S", "15"))


@dataclass(frozen=True)
class RunFolder:
    """runs/<run_id>/ on the node that runs it (and, for remote runs, its local mirror)."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    # -- layout ------------------------------------------------------------------
    @property
    def spec(self) -> Path:
        return self.path / "spec.json"

    @property
    def run(self) -> Path:
        return self.path / "run.json"

    @property
    def events(self) -> Path:
        return self.path / "events.jsonl"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    @property
    def train_log(self) -> Path:
        return self.logs / "train.log"

    @property
    def agent_log(self) -> Path:
        return self.logs / "agent.log"

    @property
    def control(self) -> Path:
        return self.path / "control"

    @property
    def stop_request(self) -> Path:
        """Written by the agent (budget) or a client (user stop); the first request wins."""
        return self.control / "stop_request.json"

    @property
    def stop_at(self) -> Path:
        """Written by rank 0: the step every rank stops after."""
        return self.control / "stop_at.json"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def script(self) -> Path:
        """The run's own copy of a user script (%%gaudi_train --script)."""
        return self.path / "script.py"

    @property
    def agent_pid(self) -> Path:
        return self.path / "agent.pid"

    @property
    def heartbeat(self) -> Path:
        return self.path / "heartbeat"

    def create(self) -> "RunFolder":
        """Make a new run folder; refuses one that exists (run ids are unique)."""
        self.logs.mkdir(parents=True, exist_ok=False)
        self.control.mkdir()
        return self

    def read_run(self) -> Dict[str, Any]:
        data: Dict[str, Any] = json.loads(self.run.read_text())
        return data

    # -- stop requests -------------------------------------------------------------
    def request_stop(self, reason: str) -> bool:
        """Ask the run to stop after saving a checkpoint; True if this request was the first."""
        self.control.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.stop_request, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            json.dump({"reason": reason, "t": time.time()}, fh)
        return True

    def stop_reason(self) -> Optional[str]:
        """Why a stop was requested, or None if none was."""
        try:
            return str(json.loads(self.stop_request.read_text()).get("reason", "stopped"))
        except (OSError, json.JSONDecodeError):
            return "stopped" if self.stop_request.exists() else None

    # -- the agent's liveness ------------------------------------------------------------
    def beat(self) -> None:
        self.heartbeat.write_text(str(time.time()))

    def last_beat(self) -> Optional[float]:
        """When the agent last beat (or, before its first beat, when it wrote its pid)."""
        for path in (self.heartbeat, self.agent_pid):
            try:
                return path.stat().st_mtime
            except OSError:
                continue
        return None

    def agent_process_id(self) -> Optional[int]:
        try:
            return int(self.agent_pid.read_text().strip())
        except (OSError, ValueError):
            return None

