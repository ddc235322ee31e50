"""Has this run ended: the one rule, which liveness, the node's tail, the mirror and autostop call."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List

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
