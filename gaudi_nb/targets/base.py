"""What a target is: a place that starts a run's agent and gives back its event stream."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Protocol, Tuple

from ..spec import RunSpec


class Target(Protocol):
    name: str

    def launch(self, spec: RunSpec, run_id: str) -> Path:
        """Create the run folder, start the agent detached; return the local folder that mirrors the run."""

    def read_events(self, run_id: str, offset: int) -> Tuple[List[Dict[str, Any]], int]:
        """Complete events from a byte offset, and the offset to resume from."""

    def stop(self, run_id: str, reason: str = "stopped") -> bool:
        """Ask the run to stop after a checkpoint."""

    def log_path(self, run_id: str) -> Path: ...
