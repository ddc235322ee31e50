"""The rank's progress as events (shared by every trainer's callback), and transformers' TrainerCallback over it."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

from transformers import TrainerCallback

from ..events import EventWriter
from ..private import write_atomic
from ..rundir import RunFolder, current_attempt, mark_checkpoint_complete, prune_checkpoints


class RankProgress:
    """What a trainer's callback tells gaudi_nb, whichever trainer it is (transformers, Lightning):
    step timing and the step event, the stop step every rank agrees on, and complete checkpoints.

    A stop is agreed without an extra collective: rank 0 sees the agent's request
    at the end of step s and writes stop_at = s + 2. DDP keeps ranks within one
    step of each other (each step's gradient all-reduce waits for every rank), so
    every rank reads stop_at before it finishes step s + 1 and all stop after s + 2
    with a checkpoint.
    """

    def __init__(
        self,
        writer: Optional[EventWriter],
        folder: RunFolder,
        *,
        tokens_per_step: Optional[int],
        samples_per_step: Optional[int],
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

    def train_started(self) -> None:
        self._last_step_end = time.perf_counter()

    def step_ended(self, step: int) -> Tuple[bool, bool]:
        """After optimizer step `step` on this rank: (save a checkpoint now, stop training now)."""
        now = time.perf_counter()
        if self._last_step_end is not None:
            self._step_time_s = now - self._last_step_end
        self._last_step_end = now
        if self.stop_at is None:
            if self.is_main and self.folder.stop_request.exists():
                self._decide_stop(step)
            elif self._stop_at_path.exists():
                self._read_stop_at()
        if self.stop_at is not None and step >= self.stop_at:
            return True, True
        return step >= self.max_steps, False  # the final checkpoint

    def _decide_stop(self, step: int) -> None:
        try:
            request = json.loads(self.folder.stop_request.read_text())
        except (OSError, json.JSONDecodeError):
            request = {}
        self.stop_at = min(step + 2, self.max_steps)
        self.stop_reason = request.get("reason", "stopped")
        write_atomic(self._stop_at_path, json.dumps({"step": self.stop_at, "reason": self.stop_reason}))

    def _read_stop_at(self) -> None:
        try:
            decided = json.loads(self._stop_at_path.read_text())
        except (OSError, json.JSONDecodeError):
            return  # being replaced right now: read it at the next step
        self.stop_at = int(decided["step"])
        self.stop_reason = decided.get("reason")

    def emit_step(self, step: int, loss: float, *, learning_rate: Any = None, grad_norm: Any = None,
                  tokens: Optional[int] = None, samples: Optional[int] = None) -> None:
        """The step event (rank 0); tokens and samples default to the fixed per-step counts."""
        if not self.is_main or self.writer is None:
            return
        step_time = self._step_time_s
        tokens = self.tokens_per_step if tokens is None else tokens
        samples = self.samples_per_step if samples is None else samples
        fields: Dict[str, Any] = {
            "attempt": self.attempt,
            "step": step,
            "loss": float(loss),
            "learning_rate": _float(learning_rate),
            "grad_norm": _float(grad_norm),
            "step_time_s": step_time,
            "tokens": tokens,
            "samples": samples,
            "tokens_per_second": tokens / step_time if tokens and step_time else None,
            "samples_per_second": samples / step_time if samples and step_time else None,
            "warmup": step <= self.warmup_steps,
            "memory": self.memory_stats(),
        }
        self.writer.emit("step", **fields)

    def emit_eval(self, step: int, eval_loss: float) -> None:
        if self.is_main and self.writer is not None:
            self.writer.emit("eval", attempt=self.attempt, step=step, eval_loss=float(eval_loss))

    def checkpoint_saved(self, path: Path, step: int) -> None:
        """Rank 0, once every file of checkpoint-N is written: flush it, mark it complete, then prune
        and tell. A rank killed before the marker leaves a folder nobody resumes from."""
        if not self.is_main or self.writer is None:
            return
        mark_checkpoint_complete(Path(path), step)
        prune_checkpoints(self.folder, self.keep_checkpoints)
        reason = self.stop_reason if (self.stop_at is not None and step >= self.stop_at) else ("final" if step >= self.max_steps else "periodic")
        self.writer.emit("checkpoint", attempt=self.attempt, step=step, path=str(path), reason=reason)


class EventCallback(TrainerCallback):
    """transformers' Trainer → RankProgress: step, eval and checkpoint events (rank 0), and the agreed stop."""

    def __init__(self, writer: Optional[EventWriter], folder: RunFolder, **settings: Any) -> None:
        self.progress = RankProgress(writer, folder, **settings)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.progress.train_started()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        save, stop = self.progress.step_ended(state.global_step)
        if save:
            control.should_save = True
        if stop:
            control.should_training_stop = True

    def on_log(self, args: Any, state: Any, control: Any, logs: Optional[Dict[str, Any]] = None, **kwargs: Any) -> None:
        if not logs:
            return
        if "loss" in logs:
            self.progress.emit_step(state.global_step, float(logs["loss"]), learning_rate=logs.get("learning_rate"), grad_norm=logs.get("grad_norm"))
        if "eval_loss" in logs:
            self.progress.emit_eval(state.global_step, float(logs["eval_loss"]))

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """After the Trainer wrote checkpoint-N (trainer_state.json last).

        The other ranks' rng_state_K.pth files are written beside rank 0's at the same time; one
        missing on resume is a warning to the Trainer, not a failure, so rank 0 does not wait for them.
        """
        step = state.global_step
        self.progress.checkpoint_saved(Path(os.path.join(args.output_dir, f"checkpoint-{step}")), step)


def _float(value: Any) -> Optional[float]:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


class LazyModeMarkStep(TrainerCallback):
    """Gaudi's lazy mode runs the accumulated graph only at htcore.mark_step(), which GaudiTrainer calls after
    backward and after the optimizer step and transformers' Trainer does not. Its on_pre_optimizer_step comes
    after backward (and gradient clipping), on_optimizer_step after the optimizer's step (transformers 4.55,
    trainer.py's inner loop): the same two places."""

    def _mark_step(self) -> None:
        import habana_frameworks.torch.core as htcore  # only in lazy mode on a Gaudi node

        htcore.mark_step()

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._mark_step()

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._mark_step()
