"""Has this run ended: the one rule, which liveness, the node's tail, the mirror and autostop call; and the few
events that say where a run stands (`read_marks`), read from a stream of any length in bounded memory."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from .. import jsontext

END_TAIL_BYTES = 64 * 1024  # a run_end is among a stream's last lines: the checks that poll read only this much


def this_attempt(events: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The events since the last restart: a resumed run's earlier run_end belongs to an attempt that is over."""
    starts = [i for i, e in enumerate(events) if e.get("type") == "restart"]
    return events[starts[-1] + 1 :] if starts else events


def has_ended(events: List[Dict[str, Any]]) -> bool:
    """The run has a run_end that no restart follows (`gaudi-nb resume` writes a restart before its agent starts)."""
    return any(e.get("type") == "run_end" for e in this_attempt(events))


def ended_in_file(path: Path, tail_bytes: int = END_TAIL_BYTES) -> bool:
    """has_ended over an events file's last `tail_bytes`; only the run_end and restart lines there are parsed."""
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, os.fstat(fh.fileno()).st_size - tail_bytes))
            tail = fh.read()
    except OSError:
        return False
    marks: List[Dict[str, Any]] = []
    for line in tail.splitlines():
        if b'"run_end"' in line or b'"restart"' in line:
            try:
                value = jsontext.loads(line)
            except ValueError:
                continue  # the tail's torn first line, or a line still being written
            if isinstance(value, dict):
                marks.append(value)
    return has_ended(marks)


# What decides where a run stands: its starts, its ranks' pids, its attempts, a stop, its trackers and its ends.
MARK_TYPES = ("run_start", "worker_start", "restart", "stop_requested", "tracker", "run_end")


@dataclass
class Marks:
    """A run's stream as the agent and a client ending or resuming a run need it: the marks in order, the
    highest step and each node's last spend, without the steps, telemetry and logs in between."""

    events: List[Dict[str, Any]] = field(default_factory=list)
    highest_step: int = 0
    last_cost: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # by node: its last cost event

    def spent(self) -> Optional[float]:
        """The newest spend any node reported (a run on one node: its spend)."""
        costs = [e for e in self.last_cost.values() if e.get("usd") is not None]
        return float(max(costs, key=lambda e: e.get("t") or 0)["usd"]) if costs else None


def read_marks(path: Path) -> Marks:
    """The run's marks, read a bounded chunk at a time (a week's run is gigabytes of steps and telemetry)."""
    from .stream import iter_events

    marks = Marks()
    for e in iter_events(path):
        kind = e.get("type")
        if kind == "step":
            marks.highest_step = max(marks.highest_step, int(e["step"]))
        elif kind == "cost":
            marks.last_cost[str(e.get("node"))] = e
        elif kind in MARK_TYPES:
            marks.events.append(e)
    return marks
