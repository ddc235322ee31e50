"""A Slurm job that Slurm started again (`--requeue`, after a preemption or a node failure; --max-restarts on one node).

No client is needed: the job's task on the node decides, as the agent decides a crashed rank's restart. The
attempt that Slurm ended (its agent was killed, or stopped at Slurm's SIGTERM with a checkpoint) goes on from the
part's newest complete checkpoint as the run's next attempt, with a `restart` event (cause `requeue`, Slurm's
reason: PREEMPTED, NODE_FAIL, or REQUEUED for an operator's `scontrol requeue`) before the agent starts; the
agent's crash restarts and Slurm's requeues share --max-restarts. A run that had ended by itself (succeeded,
failed, budget) before Slurm requeued the job stays ended, and one whose restarts are used ends `lost`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

from ..events import EventWriter, read_marks, this_attempt
from ..launch.slurm import ended_by_slurm
from ..rundir import RunFolder
from ..spec import RunSpec
from .attempts import restarts_used
from .resume import begin_attempt, next_attempt_number

STAYS_ENDED = ("succeeded", "failed", "budget_exceeded")  # the run's own ends: Slurm's requeue does not undo them


def why_requeued(output: str, job_id: str) -> str:
    """Slurm's state for the start it ended, from the line slurmstepd wrote into the job's output (none: the node
    went away with its slurmstepd, a node failure)."""
    return ended_by_slurm(output, job_id, start=-2) or "NODE_FAIL"


def go_on(part: RunFolder, job_id: str, restart: int, output: str, host: str) -> bool:
    """Prepare this node's part for Slurm's start number `restart` + 1 of the job; True: the agent starts the next attempt."""
    marks = read_marks(part.events)
    if not any(e.get("type") == "run_start" for e in marks.events):
        return True  # the first start never reached its agent: this start is the run's first attempt
    run: Dict[str, Any] = part.read_run()
    spec = RunSpec.model_validate_json(part.spec.read_text())
    end: Optional[Dict[str, Any]] = next((e for e in reversed(this_attempt(marks.events)) if e.get("type") == "run_end"), None)
    if end is not None and end.get("status") in STAYS_ENDED:
        return False
    why = why_requeued(output, job_id)
    used = restarts_used(marks.events)
    if used >= spec.max_restarts:
        message = f"Slurm job {job_id} {why}: Slurm started it again, but no restarts are left ({used} of --max-restarts {spec.max_restarts} used)"
        writer = EventWriter(part.events, run["run_id"], node=run.get("node", "local"))
        if end is None:
            attempt = next_attempt_number(marks.events) - 1
            writer.emit("run_end", status="lost", reason=message, exit_code=None, steps_completed=marks.highest_step, usd=marks.spent(),
                        **({"attempt": attempt} if attempt > 1 else {}))
        else:
            writer.emit("log", level="error", message=message)
        writer.close()
        return False
    moved = f", on node {host}" if host != run.get("node") else ""
    begin_attempt(part, run, attempt=next_attempt_number(marks.events), checkpoint=part.last_checkpoint(), after=str((end or {}).get("status") or "lost"),
                  cause="requeue", reason=f"Slurm job {job_id} {why}: Slurm started it again (restart {restart}{moved})",
                  restarts_left=spec.max_restarts - used - 1)
    return True


def output_of(root: Path, job_id: str) -> str:
    try:
        return (root / "job" / f"slurm-{job_id}.out").read_text(errors="replace")
    except OSError:
        return ""
