"""Helpers for a user's training script (%%gaudi_train --script) and its runner: python -m gaudi_nb.worker.script --run-dir DIR.

Every rank runs the script in a fresh process started by the launcher (torchrun), never a fork
of the kernel. Inside the script:

    from gaudi_nb.worker.script import device, precision, report, should_stop
    model.to(device())
    for step in range(1, spec().max_steps + 1):
        ...
        report(step=step, loss=loss.item(), tokens=tokens_in_this_step)
        if should_stop():
            break

Restarts (--max-restarts) and `gaudi-nb resume` start the script again as a new attempt. To
continue rather than start over, save checkpoints where gaudi_nb can find them and load one at
the start: `resume_from()` is the newest complete checkpoint ($GAUDI_NB_RESUME_FROM, None on a
first attempt), `checkpoint_dir(step)` the folder to save into, and `checkpoint_saved(step)`
(rank 0, after everything is written) marks it complete; a folder never marked is never resumed from.
"""
from __future__ import annotations

import argparse
import importlib.abc
import importlib.metadata
import importlib.util
import json
import os
import runpy
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Dict, List, Optional

from ..events import BackgroundEventWriter, EventWriter
from ..rundir import RESUME_FROM_ENV, RunFolder, current_attempt, mark_checkpoint_complete, prune_checkpoints
from ..spec import RunSpec
from . import agent_watch
from .rank import exit_cleanly, rank_info, report_error, writer_for

RUN_DIR_ENV = "GAUDI_NB_RUN_DIR"


class _Context:
    """What the helpers know about this rank, read once from the run folder and the launcher's variables."""

    def __init__(self, run_dir: Path) -> None:
        self.folder = RunFolder(run_dir)
        self.run_dir = self.folder.path
        self.run = self.folder.read_run()
        self.spec = RunSpec.model_validate_json(self.folder.spec.read_text())
        self.rank, self.local_rank, self.world_size = rank_info()
        from .. import accel

        self.accelerator = accel.detect()
        self.writer: Optional[EventWriter] = None
        if self.rank == 0:
            self.writer = BackgroundEventWriter(self.folder.events, self.run["run_id"], node=self.run.get("node", "local"), rank=0)
        self.last_report: Optional[float] = None
        self.last_step: Optional[int] = None  # the step this rank reported last (should_stop compares it with the agreed stop step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


_context: Optional[_Context] = None


def _ctx() -> _Context:
    global _context
    if _context is None:
        folder = os.environ.get(RUN_DIR_ENV)
        if not folder:
            raise RuntimeError(f"gaudi_nb.worker.script helpers run inside a gaudi_nb run (python -m gaudi_nb.worker.script --run-dir DIR sets ${RUN_DIR_ENV})")
        _context = _Context(Path(folder))
    return _context


# -- the helpers a script calls --------------------------------------------------
def spec() -> RunSpec:
    """The run's spec: max_steps, batch_size, learning_rate, seed, ... as the user gave them."""
    return _ctx().spec


def rank() -> int:
    return _ctx().rank


def local_rank() -> int:
    return _ctx().local_rank


def world_size() -> int:
    return _ctx().world_size


def run_dir() -> Path:
    return _ctx().run_dir


def device() -> Any:
    """This rank's torch device: hpu, cuda:N or cpu."""
    import torch

    ctx = _ctx()
    return torch.device(ctx.accelerator.device_string(ctx.local_rank))


def precision() -> str:
    """bf16 or fp32: the spec's choice, or the accelerator's default for "auto"."""
    ctx = _ctx()
    return ctx.accelerator.default_precision() if ctx.spec.precision == "auto" else ctx.spec.precision


def dtype() -> Any:
    import torch

    return torch.bfloat16 if precision() == "bf16" else torch.float32


def init_distributed() -> bool:
    """Join the process group (gloo on CPU, nccl on CUDA, hccl on Gaudi) when there are several ranks."""
    ctx = _ctx()
    if ctx.world_size <= 1:
        return False
    import torch.distributed as dist

    if not dist.is_initialized():
        if ctx.accelerator.name == "hpu":
            import habana_frameworks.torch.distributed.hccl  # noqa: F401  # registers the hccl backend
        dist.init_process_group(backend=ctx.accelerator.distributed_backend())
    return True


def mark_step() -> None:
    """End of a step for Gaudi's lazy mode (no-op elsewhere)."""
    _ctx().accelerator.mark_step()


def report(step: int, loss: Optional[float] = None, *, tokens: Optional[int] = None, samples: Optional[int] = None, **metrics: Any) -> None:
    """Write a step event (rank 0; a no-op on other ranks), as the built-in trainer's callback does.

    step_time_s is the time since the previous report unless given; tokens (this step, all
    ranks) gives tokens_per_second. Steps up to spec().warmup_steps are marked warmup.
    """
    ctx = _ctx()
    now = time.perf_counter()
    step_time = metrics.pop("step_time_s", None)
    if step_time is None and ctx.last_report is not None:
        step_time = now - ctx.last_report
    ctx.last_report = now
    ctx.last_step = int(step)
    if ctx.writer is None:
        return
    # a tensor or numpy scalar becomes its number: the event carries 512, never the text "tensor(512)"
    tokens, samples = _count(tokens), _count(samples)
    fields: Dict[str, Any] = {
        "attempt": current_attempt(),
        "step": int(step),
        "loss": None if loss is None else float(loss),
        "step_time_s": step_time,
        "tokens": tokens,
        "samples": samples,
        "tokens_per_second": tokens / step_time if tokens and step_time else None,
        "samples_per_second": samples / step_time if samples and step_time else None,
        "warmup": int(step) <= ctx.spec.warmup_steps,
        "memory": ctx.accelerator.memory_stats(),
    }
    fields.update({k: _plain(v) for k, v in metrics.items()})
    ctx.writer.emit("step", **fields)


def report_eval(step: int, eval_loss: float) -> None:
    ctx = _ctx()
    if ctx.writer is not None:
        ctx.writer.emit("eval", attempt=current_attempt(), step=int(step), eval_loss=float(eval_loss))


def attempt() -> int:
    """1 on the first launch; one more after each restart or resume."""
    return current_attempt()


def resume_from() -> Optional[Path]:
    """The newest complete checkpoint this attempt continues from, or None (start from step 0)."""
    path = os.environ.get(RESUME_FROM_ENV)
    return Path(path) if path else None


def checkpoint_dir(step: int) -> Path:
    """Where to save the checkpoint of `step` (the run's checkpoints/checkpoint-N, created)."""
    path = _ctx().folder.checkpoint_path(int(step))
    path.mkdir(parents=True, exist_ok=True)
    return path


def checkpoint_saved(step: int, reason: str = "periodic") -> None:
    """Rank 0, once every file of checkpoint_dir(step) is written: mark it complete (flushed to disk
    first), keep only the newest --keep-checkpoints, and write the checkpoint event. No-op on other ranks."""
    ctx = _ctx()
    if ctx.writer is None:
        return
    path = ctx.folder.checkpoint_path(int(step))
    mark_checkpoint_complete(path, int(step))
    prune_checkpoints(ctx.folder, ctx.spec.keep_checkpoints)
    ctx.writer.emit("checkpoint", attempt=current_attempt(), step=int(step), path=str(path), reason=reason)


def should_stop() -> bool:
    """True once a stop was asked for (%gaudi_stop, the Stop button, the budget). Call it after report(step=...).

    On one node the request itself says stop: ranks may see it one step apart, so call it where every
    rank can leave the loop without a pending collective, or agree with an all-reduce. Across nodes
    node 0's agent picks the step every rank stops after and every node's agent writes it here
    (control/stop_at.json): True once this rank has reported that step, on every node alike."""
    ctx = _ctx()
    if ctx.folder.stop_request.exists():
        return True
    try:
        agreed = int(json.loads(ctx.folder.stop_at.read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return ctx.last_step is not None and ctx.last_step >= agreed


def _installed_version(package: str) -> Optional[str]:
    """The installed version, read from its metadata: a script that never imports torch (a plain Python
    loop, a test's plumbing run) does not pay the seconds importing it costs."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _count(value: Any) -> Any:
    """A count as an int: a tensor's or numpy scalar's number, 512.0 read as 512."""
    value = _plain(value)
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _plain(value: Any) -> Any:
    try:
        return value.item()  # a tensor or numpy scalar
    except AttributeError:
        return value


# -- the runner --------------------------------------------------------------------
def script_path(folder: Path, spec_: RunSpec) -> Path:
    """The working directory's snapshot of the script, else the run folder's copy, else the path the spec names."""
    named_dir, named_script = getattr(spec_, "workdir", None), getattr(spec_, "script", None)
    if named_dir and named_script:
        from ..workdir import script_in_snapshot

        inside = script_in_snapshot(folder, named_script, named_dir)
        if inside is not None:
            return inside
    copy = RunFolder(folder).script
    if copy.exists():
        return copy
    named = getattr(spec_, "script", None)
    if named:
        return Path(named).expanduser()
    raise FileNotFoundError(f"no training script: neither {copy} nor a spec 'script' field")


class _WhenImported(importlib.abc.MetaPathFinder):
    """Calls `then(module)` right after `name` is first imported, wherever the import happens (the
    script, or a module it imports), and costs nothing when it never is."""

    def __init__(self, name: str, then: Callable[[ModuleType], None]) -> None:
        self.name, self.then = name, then

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # once; and the other finders below find the real module
        found = importlib.util.find_spec(fullname)
        if found is None or found.loader is None or not hasattr(found.loader, "exec_module"):
            return found
        loader, then = found.loader, self.then
        real_exec = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            real_exec(module)
            then(module)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return found


def _add_gaudi_nb_to_lightning(module: ModuleType) -> None:
    from .lightning_trainer import add_to_every_trainer

    add_to_every_trainer(module.Trainer)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gaudi_nb.worker.script", description="Run one rank of a gaudi_nb run whose training is a user script.")
    parser.add_argument("--run-dir", required=True, type=Path)
    args = parser.parse_args(argv)
    folder = args.run_dir.resolve()
    os.environ[RUN_DIR_ENV] = str(folder)
    agent_watch.start()
    # Import the helpers as the script will (python -m runs this file as __main__, a second copy).
    from gaudi_nb.worker import script as helpers

    ctx = helpers._ctx()
    try:
        path = script_path(folder, ctx.spec)
        # every rank says it started (its pid lets a client kill ranks that outlive a lost agent)
        start_writer = ctx.writer or writer_for(ctx.folder, ctx.rank)
        start_writer.emit(
                "worker_start",
                pid=os.getpid(),
                local_rank=ctx.local_rank,
                world_size=ctx.world_size,
                accelerator=ctx.accelerator.name,
                device=ctx.accelerator.device_string(ctx.local_rank),
                precision=helpers.precision(),
                precision_chosen_by="spec" if ctx.spec.precision != "auto" else f"default for {ctx.accelerator.name}",
                trainer="script",
                script=str(path),
                torch_version=_installed_version("torch"),
            )
        if start_writer is not ctx.writer:
            start_writer.close()
        sys.argv = [str(path)]
        if "lightning.pytorch" in sys.modules:
            _add_gaudi_nb_to_lightning(sys.modules["lightning.pytorch"])
        else:  # a Lightning script's Trainer gets GaudiNbCallback (see add_to_every_trainer)
            sys.meta_path.insert(0, _WhenImported("lightning.pytorch", _add_gaudi_nb_to_lightning))
        from ..workdir import code_dir

        if code_dir(folder).is_dir():  # --workdir: the script runs in its snapshot, as it ran in its folder
            os.chdir(code_dir(folder))
            sys.path.insert(0, str(code_dir(folder)))
        sys.path.insert(0, str(path.parent))  # as `python script.py` does: siblings of the script import
        runpy.run_path(str(path), run_name="__main__")  # its globals are dropped: exit_cleanly finalizes what they held
    except SystemExit as exc:
        if exc.code not in (0, None):
            report_error(ctx.folder, exc)
            raise
        # sys.exit(0) ends the script as reaching its end does
    except BaseException as exc:
        report_error(ctx.folder, exc)
        raise
    finally:
        ctx.close()
    exit_cleanly()


if __name__ == "__main__":
    main()
