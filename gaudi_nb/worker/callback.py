"""The one TrainerCallback that turns training into events, and obeys stop requests."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from transformers import TrainerCallback

from ..events import BackgroundEventWriter
from ..rundir import RunFolder, current_attempt, mark_checkpoint_complete, prune_checkpoints


class EventCallback(TrainerCallback):
    """Writes step, eval and checkpoint events (rank 0) and stops all ranks at the same step.

    A stop is agreed without an extra collective: rank 0 sees the agent's request
    at the end of step s and writes stop_at = s + 2. DDP keeps ranks within one
    step of each other (each step's gradient all-reduce waits for every rank), so
    every rank reads stop_at before it finishes step s + 1 and all stop after s + 2
    with a checkpoint.
    """

    def __init__(
        self,
        writer: Optional[BackgroundEventWriter],
        folder: RunFolder,
        *,
        tokens_per_step: int,
        samples_per_step: int,
        warmup_steps: int,
        max_steps: int,
        memory_stats: Callable[[], Dict[str, int]],
        is_main: bool,
        keep_checkpoints: Optional[int] = None,
    ) -> None:
        self.writer = writer
        self.folder = folder
        self.tokens_per_step = tokens_per_step
        self.samples_per_step = samples_per_step
        self.warmup_steps = warmup_steps
        self.max_steps = max_steps
        self.memory_stats = memory_stats
        self.is_main = is_main
        self.keep_checkpoints = keep_checkpoints
        self.attempt = current_attempt()
        self.stop_at: Optional[int] = None
        self.stop_reason: Optional[str] = None
        self._last_step_end: Optional[float] = None
        self._step_time_s: Optional[float] = None
        self._stop_at_path = folder.stop_at

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._last_step_end = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        now = time.perf_counter()
        if self._last_step_end is not None:
            self._step_time_s = now - self._last_step_end
        self._last_step_end = now
        step = state.global_step
        if self.stop_at is None:
            if self.is_main and self.folder.stop_request.exists():
                self._decide_stop(step)
            elif self._stop_at_path.exists():
                self._read_stop_at()
        if self.stop_at is not None and step >= self.stop_at:
            control.should_save = True
            control.should_training_stop = True
        elif step >= self.max_steps:
            control.should_save = True  # the final checkpoint

    def _decide_stop(self, step: int) -> None:
        try:
            request = json.loads(self.folder.stop_request.read_text())
        except (OSError, json.JSONDecodeError):
            request = {}
        self.stop_at = min(step + 2, self.max_steps)
        self.stop_reason = request.get("reason", "stopped")
        tmp = self._stop_at_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"step": self.stop_at, "reason": self.stop_reason}))
        os.replace(tmp, self._stop_at_path)

    def _read_stop_at(self) -> None:
        try:
            decided = json.loads(self._stop_at_path.read_text())
        except (OSError, json.JSONDecodeError):
            return  # being replaced right now: read it at the next step
        self.stop_at = int(decided["step"])
        self.stop_reason = decided.get("reason")

    def on_log(self, args: Any, state: Any, control: Any, logs: Optional[Dict[str, Any]] = None, **kwargs: Any) -> None:
        if not self.is_main or self.writer is None or not logs:
            return
        step = state.global_step
        if "loss" in logs:
            step_time = self._step_time_s
            fields: Dict[str, Any] = {
                "attempt": self.attempt,
                "step": step,
                "loss": float(logs["loss"]),
                "learning_rate": _float(logs.get("learning_rate")),
                "grad_norm": _float(logs.get("grad_norm")),
                "step_time_s": step_time,
                "tokens": self.tokens_per_step,
                "samples": self.samples_per_step,
                "tokens_per_second": self.tokens_per_step / step_time if step_time else None,
                "samples_per_second": self.samples_per_step / step_time if step_time else None,
                "warmup": step <= self.warmup_steps,
                "memory": self.memory_stats(),
            }
            self.writer.emit("step", **fields)
        if "eval_loss" in logs:
            self.writer.emit("eval", attempt=self.attempt, step=step, eval_loss=float(logs["eval_loss"]))

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """After the Trainer wrote checkpoint-N (trainer_state.json last): flush it, mark it complete,
        then prune and tell. A rank killed before the marker leaves a folder nobody resumes from.

        The other ranks' rng_state_K.pth files are written beside rank 0's at the same time; one
        missing on resume is a warning to the Trainer, not a failure, so rank 0 does not wait for them.
        """
        if not self.is_main or self.writer is None:
            return
        step = state.global_step
        path = os.path.join(args.output_dir, f"checkpoint-{step}")
        mark_checkpoint_complete(Path(path), step)
        prune_checkpoints(self.folder, self.keep_checkpoints)
        reason = self.stop_reason if (self.stop_at is not None and step >= self.stop_at) else ("final" if step >= self.max_steps else "periodic")
        self.writer.emit("checkpoint", attempt=self.attempt, step=step, path=path, reason=reason)


def _float(value: Any) -> Optional[float]:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None
