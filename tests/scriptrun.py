"""A torch-free run for plumbing tests (stop, lost, unreachable, mirror, budgets, several nodes, views).

The run is real: the client, the detached agent, the launcher, the run folder, the events and the store,
as for any `--script` run. Only the training is a plain Python loop that reports steps through
gaudi_nb.worker.script, so a rank starts in well under a second instead of importing torch and
transformers and building a model. What only a real trainer can show (the loss falls, checkpoints
a Trainer saves, optimum-habana) stays with the few real runs marked slow.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import gaudi_nb

# Steps at a fixed pace; a checkpoint every spec().save_steps, one when asked to stop (with the
# stop's reason: stopped, budget_exceeded) and a final one, as the built-in trainer does; a resumed attempt goes on
# from the step of its checkpoint. 2 sequences of 32 tokens a step (tokens are counted for the cost
# views). The rank never imports torch.
LOOP = """\
import time

from gaudi_nb.rundir import RunFolder
from gaudi_nb.worker.script import checkpoint_dir, checkpoint_saved, report, resume_from, run_dir, should_stop, spec

STEP_S = {step_s!r}


def save(step, reason):
    (checkpoint_dir(step) / "state.txt").write_text(str(step))
    checkpoint_saved(step, reason=reason)


start = int(resume_from().name.split("-")[-1]) if resume_from() else 0
every = spec().save_steps
for step in range(start + 1, spec().max_steps + 1):
    time.sleep(STEP_S)
    report(step=step, loss=10.0 / step, tokens=64, samples=2)
    if should_stop():
        save(step, RunFolder(run_dir()).stop_reason() or "stopped")
        break
    if every and step % every == 0 and step < spec().max_steps:
        save(step, "periodic")
else:
    save(spec().max_steps, "final")
"""


def write_loop(folder: Path, step_s: float = 0.05) -> Path:
    """The loop as a script file in folder (a run copies it into its run folder)."""
    path = folder / "plumbing_loop.py"
    path.write_text(LOOP.format(step_s=step_s))
    return path


class ScriptRuns:
    """gaudi_nb.train with the loop as its script: train(max_steps=..., **any other train option)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def script(self, step_s: float = 0.05) -> Path:
        return write_loop(self.folder, step_s)

    def train(self, *, step_s: float = 0.05, **options: Any) -> Any:
        return gaudi_nb.train(script=str(self.script(step_s)), **options)
