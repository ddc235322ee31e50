"""--batch-size auto: the largest per-device batch that fits, found with a few real steps per trial, and cached."""
from __future__ import annotations

import gc
import hashlib
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from ..errors import GaudiNbError
from ..private import write_atomic

STEPS_PER_TRIAL = 2  # the first step allocates the optimizer's state; the second shows the steady peak
MARGIN = 0.1  # what the search keeps back from the largest size that fit: real training also evaluates and saves


@dataclass
class Trial:
    size: int
    fits: bool
    peak_bytes: Optional[int] = None
    why: Optional[str] = None  # "out of memory" | "over the memory fraction"


@dataclass
class SearchResult:
    size: int  # 0: not even one sequence fits
    largest_fit: int
    trials: List[Trial] = field(default_factory=list)
    capped: bool = False  # every size up to the limit fit


def search(fits: Callable[[int], Any], *, limit: int = 65536, margin: float = MARGIN) -> SearchResult:
    """Double from 1 until a size does not fit (or the limit), then bisect between the last fit and the
    first failure (Lightning's binsearch); keep `margin` of the largest fit back. `fits(size)` returns a
    bool or a Trial."""
    trials: List[Trial] = []

    def attempt(size: int) -> bool:
        answer = fits(size)
        trial = answer if isinstance(answer, Trial) else Trial(size, bool(answer))
        trials.append(trial)
        return trial.fits

    largest, failed = 0, None
    size = 1
    while True:
        if not attempt(size):
            failed = size
            break
        largest = size
        if size >= limit:
            break
        size = min(size * 2, limit)
    if largest == 0:
        return SearchResult(0, 0, trials)
    if failed is not None:
        while failed - largest > 1:
            middle = (largest + failed) // 2
            if attempt(middle):
                largest = middle
            else:
                failed = middle
    return SearchResult(max(1, largest - int(largest * margin)), largest, trials, capped=failed is None)


# Gaudi's graph-workspace form of out of memory: "MODULE:SYNHELPER workspace Allocation of size ::N failed"
# (Model-References #10, #13), which neither accelerate's matcher nor the device-memory form catch.
_GAUDI_WORKSPACE_OOM = re.compile(r"SYNHELPER workspace Allocation of size\b.*\bfailed", re.S)


def is_out_of_memory(exc: BaseException) -> bool:
    """Out of memory on CPU, CUDA or Gaudi (accelerate's matcher, and Gaudi's two messages however they are prefixed)."""
    text = str(exc)
    if "PT_DEVMEM Allocation failed" in text or "DefaultCPUAllocator: can't allocate" in text or _GAUDI_WORKSPACE_OOM.search(text):
        return True
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except ImportError:
        pass
    try:
        from accelerate.utils.memory import should_reduce_batch_size

        return isinstance(exc, Exception) and bool(should_reduce_batch_size(exc))
    except ImportError:
        return " out of memory" in text


# -- measuring a trial's peak memory ------------------------------------------------------
class MemoryProbe:
    """The device's memory and a trial's peak. On CPU the host's memory is shared by the node's ranks,
    so a rank's device memory is its share, and the peak is how far the rank's resident memory grew
    above what it held before the first trial (its weights were resident already)."""

    def __init__(self, accelerator: str, local_world_size: int) -> None:
        self.accelerator = accelerator
        import torch

        self.torch = torch
        if accelerator == "cuda":
            self.device_memory = int(torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory)
        elif accelerator == "hpu":
            import habana_frameworks.torch.hpu as hthpu

            self.device_memory = int(hthpu.memory_stats().get("Limit", 0))
        else:
            import psutil

            self.device_memory = int(psutil.virtual_memory().total) // max(1, local_world_size)
            self._baseline = _rss()
            self._sampler: Optional[_PeakSampler] = None

    def reset(self) -> None:
        if self.accelerator == "cuda":
            self.torch.cuda.empty_cache()
            self.torch.cuda.reset_peak_memory_stats()
        elif self.accelerator == "hpu":
            self.torch.hpu.reset_peak_memory_stats()  # type: ignore[attr-defined]
        elif not _reset_peak_rss():
            self._sampler = _PeakSampler()  # no /proc/self/clear_refs: sample the resident size instead

    def peak(self) -> int:
        if self.accelerator == "cuda":
            return int(self.torch.cuda.max_memory_allocated())
        if self.accelerator == "hpu":
            return int(self.torch.hpu.max_memory_allocated())  # type: ignore[attr-defined]
        if self._sampler is not None:
            peak, self._sampler = self._sampler.stop(), None
        else:
            peak = _peak_rss()
        return max(0, peak - self._baseline)


def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def _reset_peak_rss() -> bool:
    """Linux resets a process's peak resident size (VmHWM) to its current one on '5' (since 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_rss() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return _rss()


class _PeakSampler:
    def __init__(self) -> None:
        self.peak = _rss()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(0.005):
            self.peak = max(self.peak, _rss())

    def stop(self) -> int:
        self._done.set()
        self._thread.join()
        return max(self.peak, _rss())


# -- trials: real steps of the run's model ---------------------------------------------------
@dataclass(frozen=True)
class TrialProgram:
    """What the trials run, which must be what the run trains with: a compiled graph, a lazy one, or
    fused AdamW each take memory of their own."""

    execution_mode: str  # eager | eager+compile | lazy (worker.trainers.execution_mode)
    optimizer: str  # OPTIMIZERS' names: the one the run's trainer builds

    @property
    def compile_backend(self) -> Optional[str]:
        return "hpu_backend" if self.execution_mode == "eager+compile" else None


HABANA_FUSED_ADAMW = "habana FusedAdamW"  # GaudiTrainer on HPU: GaudiConfig(use_fused_adam=True)
TORCH_ADAMW_FUSED = "torch AdamW fused"  # transformers' Trainer: optim adamw_torch_fused, its default with torch >= 2.8
TORCH_ADAMW = "torch AdamW"  # the Lightning module's configure_optimizers, and older transformers' default


def trial_program(accelerator: str, lazy_mode: bool, trainer: str) -> TrialProgram:
    from .trainers import execution_mode

    if accelerator == "hpu" and trainer == "optimum-habana":
        optimizer = HABANA_FUSED_ADAMW
    elif trainer == "lightning":
        optimizer = TORCH_ADAMW
    else:
        from transformers import TrainingArguments

        optimizer = TORCH_ADAMW_FUSED if TrainingArguments.default_optim == "adamw_torch_fused" else TORCH_ADAMW
    return TrialProgram(execution_mode(accelerator, lazy_mode, trainer), optimizer)


def _optimizer(program: TrialProgram, parameters: List[Any]) -> Any:
    if program.optimizer == HABANA_FUSED_ADAMW:
        from habana_frameworks.torch.hpex.optimizers import FusedAdamW  # as GaudiTrainer.create_optimizer imports it

        return FusedAdamW(parameters, lr=0.0)
    import torch

    return torch.optim.AdamW(parameters, lr=0.0, fused=program.optimizer == TORCH_ADAMW_FUSED or None)


def trial_steps(model: Any, accelerator: Any, precision: str, sequence_length: int, local_rank: int, memory_fraction: float,
                local_world_size: int, program: TrialProgram) -> Callable[[int], Trial]:
    """fits(size): STEPS_PER_TRIAL forward, backward and optimizer steps at `size` sequences, on this
    rank's device, run as `program` says (compiled, lazy, fused AdamW). The optimizer's learning rate
    is 0, so the weights the run starts from do not move."""
    import torch

    device = torch.device(accelerator.device_string(local_rank))
    model.to(device)
    model.train()
    probe = MemoryProbe(accelerator.name, local_world_size)
    allowed = memory_fraction * probe.device_memory
    optimizer = _optimizer(program, [p for p in model.parameters() if p.requires_grad])
    # the Trainer compiles the model the same way (torch_compile_backend); the run's own model stays uncompiled
    step_model = torch.compile(model, backend=program.compile_backend) if program.compile_backend else model
    vocab = int(getattr(model.config, "vocab_size", 0) or 256)
    # each trial ends with gc.collect() (an OOM's traceback holds tensors in cycles); frozen, what the rank
    # already holds (torch, transformers, the model) is not walked again: about 0.5 s a trial otherwise
    gc.freeze()
    autocast_device = "hpu" if accelerator.name == "hpu" else ("cuda" if accelerator.name == "cuda" else "cpu")

    def fits(size: int) -> Trial:
        probe.reset()
        try:
            for _ in range(STEPS_PER_TRIAL):
                ids = torch.randint(0, vocab, (size, sequence_length), device=device)
                with torch.autocast(autocast_device, dtype=torch.bfloat16, enabled=precision == "bf16"):
                    loss = step_model(input_ids=ids, labels=ids).loss
                loss.backward()
                accelerator.mark_step()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                accelerator.mark_step()
                del ids, loss
            peak = probe.peak()
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            optimizer.zero_grad(set_to_none=True)
            return Trial(size, False, None, "out of memory")
        finally:
            gc.collect()
        if peak > allowed:
            return Trial(size, False, peak, "over the memory fraction")
        return Trial(size, True, peak)

    def release() -> None:  # the search's optimizer state is not the run's
        optimizer.state.clear()
        gc.unfreeze()
        gc.collect()

    fits.device_memory = probe.device_memory  # type: ignore[attr-defined]
    fits.release = release  # type: ignore[attr-defined]
    return fits


# -- the cache under $GAUDI_NB_HOME ----------------------------------------------------------
def cache_key(**parts: Any) -> str:
    return json.dumps(parts, sort_keys=True)


def run_cache_key(spec: Any, accelerator: str, device_memory: int, precision: str, trainer: str, program: TrialProgram, world_size: int) -> str:
    """What the size was measured for: the model and its input, the device, and the program (execution
    mode, optimizer) and world size it trains with (DDP's gradient buckets take memory of their own)."""
    return cache_key(model=spec.model, sequence_length=spec.sequence_length, accelerator=accelerator, device_memory=device_memory,
                     precision=precision, trainer=trainer, memory_fraction=spec.memory_fraction,
                     lora=bool(getattr(spec, "lora", False)) and int(getattr(spec, "lora_rank", 0) or 0),
                     execution_mode=program.execution_mode, optimizer=program.optimizer, world_size=world_size)


def cache_path() -> Path:
    from ..paths import home

    return home() / "cache" / "batch_size.json"


def cached_size(key: str) -> Optional[Dict[str, Any]]:
    try:
        entry = json.loads(cache_path().read_text()).get(key)
    except (OSError, json.JSONDecodeError):
        return None
    return entry if isinstance(entry, dict) and int(entry.get("size") or 0) >= 1 else None


def remember_size(key: str, entry: Dict[str, Any]) -> None:
    path = cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        known = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        known = {}
    known[key] = entry
    write_atomic(path, json.dumps(known, indent=1))


# -- what a rank calls ---------------------------------------------------------------------
@dataclass
class Resolved:
    size: int
    how: str  # searched | cached
    trials: List[Trial]
    seconds: float
    device_memory: int
    capped: bool
    key_digest: str


def resolve(spec: Any, model: Any, accelerator: Any, precision: str, trainer: str, *, rank: int, local_rank: int, world_size: int,
            local_world_size: int, limit: int) -> Resolved:
    """Rank 0 finds the size (from the cache, or by searching on its device) and every rank gets it:
    one search, one answer, so all ranks train with the same batch."""
    started = time.monotonic()
    if world_size > 1:
        _join_process_group(accelerator, local_rank)
    answer: List[Any] = [None]
    if rank == 0:
        answer[0] = _resolve_here(spec, model, accelerator, precision, trainer, local_rank, local_world_size, world_size, limit, started)
    if world_size > 1:
        import torch.distributed as dist

        dist.broadcast_object_list(answer, src=0)
    resolved = answer[0]
    if isinstance(resolved, str):  # rank 0's one-line error, raised on every rank
        raise GaudiNbError(resolved)
    assert isinstance(resolved, Resolved)
    return resolved


def _resolve_here(spec: Any, model: Any, accelerator: Any, precision: str, trainer: str, local_rank: int, local_world_size: int, world_size: int, limit: int,
                  started: float) -> Any:
    program = trial_program(accelerator.name, bool(getattr(spec, "lazy_mode", False)), trainer)
    fits = trial_steps(model, accelerator, precision, spec.sequence_length, local_rank, spec.memory_fraction, local_world_size, program)
    device_memory = int(fits.device_memory)  # type: ignore[attr-defined]
    key = run_cache_key(spec, accelerator.name, device_memory, precision, trainer, program, world_size)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    known = cached_size(key)
    if known is not None:
        fits.release()  # type: ignore[attr-defined]
        return Resolved(min(int(known["size"]), limit), "cached", [], time.monotonic() - started, device_memory, bool(known.get("capped")), digest)
    result = search(fits, limit=limit)
    fits.release()  # type: ignore[attr-defined]
    if result.size == 0:
        gib = spec.memory_fraction * device_memory / 1024**3
        return (f"--batch-size auto: not even one sequence of {spec.sequence_length} tokens fits in {spec.memory_fraction:g} of this device's "
                f"memory ({gib:.2f} GiB): raise --memory-fraction, shorten --sequence-length, or use a smaller model")
    seconds = time.monotonic() - started
    remember_size(key, {"size": result.size, "largest_fit": result.largest_fit, "capped": result.capped, "trials": len(result.trials),
                        "seconds": round(seconds, 2), "t": time.time()})
    return Resolved(result.size, "searched", result.trials, seconds, device_memory, result.capped, digest)


def _join_process_group(accelerator: Any, local_rank: int) -> None:
    """torchrun's env:// rendezvous, as the Trainer itself would join it (it reuses a group that exists)."""
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if accelerator.name == "hpu":
        import habana_frameworks.torch.distributed.hccl  # noqa: F401  # registers the hccl backend
    if accelerator.name == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=accelerator.distributed_backend())


def event_fields(resolved: Resolved, spec: Any) -> Dict[str, Any]:
    return {
        "size": resolved.size,
        "how": resolved.how,
        "trials": [{"size": t.size, "fits": t.fits, "peak_bytes": t.peak_bytes, "why": t.why} for t in resolved.trials],
        "seconds": round(resolved.seconds, 3),
        "memory_fraction": spec.memory_fraction,
        "device_memory_bytes": resolved.device_memory,
        "capped": resolved.capped,
        "cache_key": resolved.key_digest,
    }


def for_run(spec: Any, model: Any, accelerator: Any, precision: str, trainer: str, writer: Any, *, train_sequences: int) -> int:
    """The per-device batch of an --batch-size auto run, on every rank; rank 0 writes the batch_size event."""
    from .rank import node_placement, rank_info

    rank, local_rank, world_size = rank_info()
    local_world_size = node_placement(os.environ)[0]
    # a batch larger than a rank's share of the data would only repeat it
    limit = max(1, min(65536, train_sequences // max(1, world_size)))
    resolved = resolve(spec, model, accelerator, precision, trainer, rank=rank, local_rank=local_rank, world_size=world_size,
                       local_world_size=local_world_size, limit=limit)
    if rank == 0 and writer is not None:
        writer.emit("batch_size", **event_fields(resolved, spec), limit=limit)
    return resolved.size
