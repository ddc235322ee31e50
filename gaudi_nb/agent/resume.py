"""`gaudi-nb resume`, on the node: continue an ended run from its newest complete checkpoint as the next attempt of the same run."""
from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, List, Optional

from pydantic import ValidationError

from ..errors import SpecError
from ..events import EventWriter, read_marks, this_attempt
from ..private import write_atomic
from ..rundir import Checkpoint, RunFolder
from ..spec import RunSpec, describe_validation_error
from . import commands, liveness
from .stop import STOP_NODES
from .trackers import flush_seconds


def wait_for_trackers(folder: RunFolder) -> None:
    """An ended run's agent may still be sending it to its --report-to trackers (for at most
    GAUDI_NB_TRACKER_FLUSH_S): let it finish, so the next attempt reopens a tracker run the
    last one has closed, and nobody is told to stop a run that has ended."""
    deadline = time.monotonic() + flush_seconds() + 5
    while liveness.agent_alive(folder) and time.monotonic() < deadline:
        time.sleep(0.2)


def resume_run(folder: RunFolder, *, max_steps: Optional[int] = None, budget_usd: Optional[float] = None, start: bool = True) -> Dict[str, Any]:
    """Start the next attempt of an ended run from its newest complete checkpoint; returns the attempt,
    the step and the checkpoint. Refusals are one-line SpecErrors that say what to do instead. start=False: a Slurm
    job started by the client runs the agent (agent/slurm_task.py), which reads the request as this agent would."""
    run = folder.read_run()
    run_id = run["run_id"]
    if run.get("cluster"):
        raise SpecError(f"run {run_id} ran across nodes: resume works for runs on one node in this version; start a new run with --max-steps")
    liveness.mark_if_lost(folder)  # an agent that died unnoticed: the run is lost, and resumable
    marks = read_marks(folder.events)  # a bounded read at a time, whatever the stream's length
    attempt_events = this_attempt(marks.events)
    end = next((e for e in reversed(attempt_events) if e.get("type") == "run_end"), None)
    if end is not None:
        wait_for_trackers(folder)
    if end is None or liveness.agent_alive(folder):
        raise SpecError(f"run {run_id} is still running: stop it first (gaudi-nb stop {run_id}), then resume it")
    status = str(end.get("status"))
    checkpoint = folder.last_checkpoint()
    if checkpoint is None:
        raise SpecError(f"run {run_id} has no complete checkpoint to resume from (it ended {status} before its first): start it again, with --save-steps N to save checkpoints")

    spec = RunSpec.model_validate_json(folder.spec.read_text())
    changes = {k: v for k, v in (("max_steps", max_steps), ("budget_usd", budget_usd)) if v is not None}
    if changes:
        try:
            spec = RunSpec.model_validate({**spec.model_dump(), **changes})
        except ValidationError as exc:
            raise SpecError(describe_validation_error(exc)) from None
    if checkpoint.step >= spec.max_steps:
        raise SpecError(f"run {run_id} ended {status} with its last checkpoint at step {checkpoint.step} of max_steps {spec.max_steps}: nothing left to train; resume with --max-steps above {checkpoint.step} to train further")
    spent = marks.spent()
    if spec.budget_usd is not None and spent is not None and spent >= spec.budget_usd:
        raise SpecError(f"run {run_id} has spent ${spent:.4f} of its ${spec.budget_usd:g} budget: resume with a higher --budget-usd")

    attempt = next_attempt_number(marks.events)
    try:  # one resume per attempt: a second `gaudi-nb resume` at the same moment stops here
        os.close(os.open(folder.control / f"resumed.{attempt}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    except FileExistsError:
        raise SpecError(f"run {run_id} is being resumed already: gaudi-nb show {run_id}") from None
    if changes:
        write_atomic(folder.spec, spec.model_dump_json(indent=2))
    request = begin_attempt(folder, run, attempt=attempt, checkpoint=checkpoint, after=status, cause="resume", reason=f"resumed after it ended {status}",
                            max_steps=spec.max_steps, budget_usd=spec.budget_usd)
    if start:
        commands.start_agent(folder)
    return request


def next_attempt_number(marks: List[Dict[str, Any]]) -> int:
    """The attempt that comes after the run's restarts so far (the first is 1)."""
    return 1 + sum(1 for e in marks if e.get("type") == "restart") + 1


def begin_attempt(folder: RunFolder, run: Dict[str, Any], *, attempt: int, checkpoint: Optional[Checkpoint], after: str, cause: str, reason: str,
                  **fields: Any) -> Dict[str, Any]:
    """The next attempt of an ended (or killed) attempt, as the agent that starts next reads it: what the last attempt
    left cleared, the request (control/resume.json: the attempt, the checkpoint), and the `restart` event, written
    before the agent starts, so that from it on every view shows the run active again. Returns the request."""
    # what the ended attempt left would stop the new one at once, or keep it from ever ending as lost
    stale = [folder.stop_request, folder.stop_at, folder.control / STOP_NODES, folder.heartbeat, *folder.control.glob("ended.*")]
    for path in stale:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
    folder.discard_unfinished_checkpoints()
    from_step = checkpoint.step if checkpoint is not None else 0
    where = str(checkpoint.path) if checkpoint is not None else None
    request = {"attempt": attempt, "from_step": from_step, "checkpoint": where, "after": after}
    write_atomic(folder.resume_request, json.dumps(request))
    writer = EventWriter(folder.events, run["run_id"], node=run.get("node", "local"))
    writer.emit("restart", attempt=attempt, cause=cause, from_step=from_step, checkpoint=where, reason=reason, **fields)
    writer.close()
    return request
