"""Attempts of one run: a crashed rank restarts the ranks from the last complete checkpoint (--max-restarts),
`gaudi-nb resume` starts the next attempt of an ended run, and the run's final status.

`final_status` is a pure function of what the agent saw: the loop hands it the facts, it returns
the run_end's status and fields, so every way a run can end is one table, tested without a run.
"""
from __future__ import annotations

import json
import os
import re
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..events import EventWriter, read_marks
from ..rundir import RunFolder

LOG_TAIL_LINES = 20
ATTEMPT_MARK = "--- gaudi_nb: attempt "  # the line the agent writes into train.log before each later attempt
_FAILED_RANK = re.compile(r"^\s*rank\s*:\s*(\d+)")
_EXIT_CODE = re.compile(r"^\s*exitcode\s*:\s*(-?\d+)")


def tail_lines(path: Path, n: int = LOG_TAIL_LINES) -> List[str]:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            lines = fh.read().decode(errors="replace").splitlines()
    except OSError:
        return []
    return [line for line in lines if line.strip()][-n:]


def failure_reason(lines: Sequence[str], exit_code: int) -> str:
    """The most telling line of a failed run's log: the last exception, else the exit code."""
    for line in reversed(lines):
        text = line.split("]: ", 1)[-1].strip()  # torchrun prefixes rank lines with "[rankN]: "
        if ("Error" in text or "Exception" in text) and not text.startswith(("File ", "Traceback", "raise ")) and "ChildFailedError" not in text:
            return text[:300]
    return f"the launcher exited with code {exit_code}"


def crash_details(lines: List[str], exit_code: Optional[int], one_rank: bool = False) -> Dict[str, Any]:
    """Which rank ended an attempt and how, from torchrun's failure summary ("Root Cause" block:
    rank, exitcode; a negative exit code is the signal). A rank started without a launcher (one_rank) is
    rank 0 and its own exit code says how it ended."""
    attempt = max((i for i, line in enumerate(lines) if line.startswith(ATTEMPT_MARK)), default=-1)
    lines = lines[attempt + 1:]  # an earlier attempt's summary says nothing about this one
    start = max((i for i, line in enumerate(lines) if "Root Cause" in line), default=-1)
    rank = code = None
    for line in lines[start + 1:]:
        text = line.split("]: ", 1)[-1]
        if rank is None and _FAILED_RANK.match(text):
            rank = int(_FAILED_RANK.match(text).group(1))  # type: ignore[union-attr]
        elif code is None and _EXIT_CODE.match(text):
            code = int(_EXIT_CODE.match(text).group(1))  # type: ignore[union-attr]
    if one_rank and start < 0:
        rank, code = 0, exit_code
    name = None
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
    who = f"rank {rank}" if rank is not None else "a rank"
    if name is not None:
        reason = f"{who} was killed by {name}"
    elif code is not None:
        reason = f"{who} exited with code {code}"
    else:
        reason = f"the launcher exited with code {exit_code}"
    return {"rank": rank, "exit_code": code if code is not None else exit_code, "signal": name, "reason": reason}


def restarts_used(marks: Sequence[Dict[str, Any]]) -> int:
    """The restarts (a crashed rank's, Slurm's requeue) since the run's start or its last `gaudi-nb resume`: what
    --max-restarts bounds (a resume by hand gives the run its restarts again)."""
    used = 0
    for event in marks:
        if event.get("type") == "restart":
            used = 0 if event.get("cause") == "resume" else used + 1
    return used


# -- how the run ends --------------------------------------------------------------------------


@dataclass
class Ending:
    """What the agent knows when its ranks are gone; `final_status` turns it into the run_end."""

    exit_code: Optional[int]
    steps: int = 0
    usd: Optional[float] = None
    error: Optional[str] = None  # the agent itself failed
    stop: Optional[str] = None  # the stop reason that counts: this folder's, the one every node agreed on, or a signal's
    stop_note: str = ""  # how the stop went, when it needed more than the ranks' own checkpoint (stop_description)
    failure: Optional[str] = None  # another node's end, else a rank's own exception
    crash: Optional[Dict[str, Any]] = None  # the last attempt's crash, when restarts ran out
    restarts: Optional[Tuple[int, int]] = None  # (used, --max-restarts) where restarts apply
    attempt: int = 1
    log_lines: List[str] = field(default_factory=list)


def stop_description(stop: str, killed_with: Optional[str], grace_s: float, signalled: Optional[str] = None, why: Optional[str] = None) -> str:
    """The run_end reason of a stopped run: a clean stop, or one whose ranks had to be ended. why: what asked
    the stop where it was not a person (Slurm's time limit: "stopped before Slurm's time limit")."""
    what = "budget reached" if stop == "budget_exceeded" else f"stopped {why}" if why else "stopped on request"
    if killed_with is None:
        return f"{what}: stopped after a checkpoint"
    if signalled is not None:
        return f"stopped by {signalled} to the agent: the ranks were ended with {killed_with}, no checkpoint at the stop"
    return f"{what}, but the ranks did not stop within {grace_s:.0f} s: killed with {killed_with}, no checkpoint at the stop"


def final_status(end: Ending) -> Tuple[str, Dict[str, Any]]:
    """The run_end's status and fields (exit_code, steps_completed, usd, reason, last_log_lines, attempt)."""
    fields: Dict[str, Any] = {"exit_code": end.exit_code, "steps_completed": end.steps, "usd": end.usd}
    if end.error is not None:
        status = "failed"
        fields["reason"] = end.error
        fields["last_log_lines"] = end.log_lines
    elif end.stop in ("budget_exceeded", "stopped"):
        status = end.stop
        fields["reason"] = end.stop_note or stop_description(end.stop, None, 0)
    elif end.exit_code == 0:
        status = "succeeded"
    else:
        status = "failed"
        fields["reason"] = end.failure or failure_reason(end.log_lines, end.exit_code or 0)
        if end.crash is not None and end.restarts is not None and end.restarts[1]:
            used, most = end.restarts
            fields["reason"] = f"{end.crash['reason']}; no restarts left ({used} of --max-restarts {most} used)"
        fields["last_log_lines"] = end.log_lines
    if end.attempt > 1:
        fields["attempt"] = end.attempt
    return status, fields


# -- the attempts of one agent ------------------------------------------------------------------


class Attempts:
    """This agent's attempt number, restarts used and the checkpoint the current attempt continues from."""

    def __init__(self, folder: RunFolder, max_restarts: int, node: str) -> None:
        self.folder = folder
        self.max_restarts = max_restarts
        self.node = node
        self.attempt = 1
        self.restarts_used = 0
        self.resume_from: Optional[str] = None  # the checkpoint folder this attempt's ranks continue from
        self.from_step = 0
        self.crash: Optional[Dict[str, Any]] = None  # how the last attempt ended, when a rank crashed
        self.metered_before_s = 0.0  # a resumed run: the wall clock its earlier agents metered
        self.resumed: Optional[Dict[str, Any]] = self._resume_request()

    def _resume_request(self) -> Optional[Dict[str, Any]]:
        """What `gaudi-nb resume` asked of this agent (control/resume.json), or None for a fresh run."""
        try:
            request = json.loads(self.folder.resume_request.read_text())
        except (OSError, ValueError):
            return None
        return request if isinstance(request, dict) else None

    def take_resume(self) -> None:
        """A resumed run: `gaudi-nb resume` wrote the restart event and chose the checkpoint."""
        assert self.resumed is not None
        self.attempt = int(self.resumed.get("attempt") or 2)
        self.resume_from = self.resumed.get("checkpoint")
        self.from_step = int(self.resumed.get("from_step") or 0)
        self.metered_before_s = self._metered_so_far()
        self.restarts_used = restarts_used(read_marks(self.folder.events).events)  # Slurm's requeue counts against --max-restarts

    def _metered_so_far(self) -> float:
        """The wall clock this node's earlier agents metered: a resumed run's spend goes on from there."""
        last = read_marks(self.folder.events).last_cost.get(str(self.node)) or {}
        return float(last.get("elapsed_s") or 0.0)

    def crashed(self, exit_code: int, rank_errors: Dict[int, str], worker_error: Optional[str], one_rank: bool = False) -> Optional[Dict[str, Any]]:
        """How a rank crashed (the caller has ruled out a stop), or None when the attempt ended well."""
        if exit_code == 0:
            return None
        crash = crash_details(tail_lines(self.folder.train_log, 200), exit_code, one_rank)
        error = rank_errors.get(crash["rank"]) if crash["rank"] is not None else worker_error
        if error:  # the failed rank's own exception; the others' are echoes of it (a peer reset the connection)
            crash["reason"] += f": {error}"
        return crash

    def may_restart(self) -> bool:
        return self.restarts_used < self.max_restarts

    def next_attempt(self, crash: Dict[str, Any], events: EventWriter) -> int:
        """Start counting the next attempt from the newest complete checkpoint; returns the step it resumes from."""
        checkpoint = self.folder.last_checkpoint()
        self.folder.discard_unfinished_checkpoints()  # a half-written folder would confuse the Trainer's rotation
        self.restarts_used += 1
        self.attempt += 1
        self.from_step = checkpoint.step if checkpoint is not None else 0
        self.resume_from = str(checkpoint.path) if checkpoint is not None else None
        events.emit(
            "restart",
            attempt=self.attempt,
            cause="crash",
            from_step=self.from_step,
            checkpoint=self.resume_from,
            reason=crash["reason"],
            failed_rank=crash.get("rank"),
            exit_code=crash.get("exit_code"),
            signal=crash.get("signal"),
            restarts_left=self.max_restarts - self.restarts_used,
        )
        return self.from_step
