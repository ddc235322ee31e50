"""What a target is: a place that starts a run's agent and gives back its event stream."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Protocol, Tuple

from ..spec import RunSpec


class Target(Protocol):
    name: str
    max_nodes: int  # how many nodes one run may use here

    def check(self, spec: RunSpec) -> None:
        """What only the target can check before anything is written (a remote node's preflight); SpecError if not ready."""

    def run_dir(self, run_id: str) -> Path:
        """The local folder that holds (or mirrors) the run."""

    def launch(self, spec: RunSpec, run_id: str) -> Path:
        """Create the run folder, start the agent detached; return the local folder that mirrors the run."""

    def fail_launch(self, run_id: str, reason: str) -> None:
        """Record that launch() raised: the run ends failed with this reason, and nothing is left running."""

    def read_events(self, run_id: str, offset: int) -> Tuple[List[Dict[str, Any]], int]:
        """Complete events from a byte offset, and the offset to resume from."""

    def check_lost(self, run_id: str) -> bool:
        """If the run's agent is gone, end the run as lost (an event); True if this call did."""

    def stop(self, run_id: str, reason: str = "stopped") -> bool:
        """Ask the run to stop after a checkpoint; a run whose agent is gone ends as stopped at once."""

    def resume(self, run_id: str, *, max_steps: Optional[int] = None, budget_usd: Optional[float] = None) -> Dict[str, Any]:
        """Start the next attempt of an ended run from its newest complete checkpoint, where it ran; returns the
        attempt and the checkpoint. SpecError (one line that says what to do) if it cannot be resumed."""

    def log_path(self, run_id: str, node: Optional[str] = None, wait_s: float = 0.0) -> Path:
        """The run's training log on this machine (mirrored from its node): node 0's, or `node`'s. For a run
        that has ended, wait up to wait_s for every byte of it to be here."""
