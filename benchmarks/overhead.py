"""Step-time overhead of what gaudi_nb adds to a rank (the event callback, its background
writer, and 1 Hz telemetry sampling) over a plain transformers Trainer. Prints JSON.

Noise on a shared machine is larger than the effect, so both arms run inside ONE training
run: gaudi_nb's parts are switched on and off in alternating blocks of steps, same model,
data and process. Goal: median step time ratio (on / off) <= 1.01.
The telemetry loop runs in this process here (in real runs it lives in the agent process),
which makes the figure pessimistic.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

os.environ.setdefault("OMP_NUM_THREADS", "1")


def build_callbacks(workdir: Path, block: int, max_steps: int, parts: str) -> Tuple[Any, Any, Any, List[Tuple[str, float]]]:
    from transformers import TrainerCallback

    from gaudi_nb.accel import CPU
    from gaudi_nb.events import BackgroundEventWriter
    from gaudi_nb.rundir import RunFolder
    from gaudi_nb.telemetry.base import pick_source
    from gaudi_nb.telemetry.loop import TelemetryLoop
    from gaudi_nb.worker.callback import EventCallback

    writer = BackgroundEventWriter(workdir / "events.jsonl", "bench", rank=0)
    events = EventCallback(writer, RunFolder(workdir), tokens_per_step=512, samples_per_step=4, warmup_steps=2, max_steps=max_steps, memory_stats=CPU().memory_stats, is_main=True)
    arms = ("off", "on", "null")  # null: switched off like "off", to show the method's own noise
    state: Dict[str, Any] = {"arm": 0, "on": False, "last": None}
    timings: List[Tuple[str, float]] = []
    source = pick_source(pids={0: os.getpid()}, prefer="host")

    class GatedSource:
        """Samples only while gaudi_nb is switched on."""

        def set_pids(self, pids: Any) -> None:
            source.set_pids(pids)

        def sample(self) -> Any:
            return source.sample() if state["on"] and parts in ("all", "telemetry") else None

    loop = TelemetryLoop(GatedSource(), lambda s: s is not None and writer.emit("telemetry", **s.to_dict()), interval_s=1.0)  # type: ignore[arg-type]

    class Gate(TrainerCallback):
        """Times every step, then flips gaudi_nb on/off every `block` steps; forwards to EventCallback when on."""

        def on_train_begin(self, args, state_, control, **kw):  # type: ignore[no-untyped-def]
            events.on_train_begin(args, state_, control, **kw)
            state["last"] = time.perf_counter()

        def on_step_end(self, args, state_, control, **kw):  # type: ignore[no-untyped-def]
            if state["on"] and parts in ("all", "events"):
                events.on_step_end(args, state_, control, **kw)

        def on_log(self, args, state_, control, logs=None, **kw):  # type: ignore[no-untyped-def]
            if state["on"] and parts in ("all", "events"):
                events.on_log(args, state_, control, logs=logs, **kw)
            # a step ends after its log: time from the previous step's end, including logging
            now = time.perf_counter()
            timings.append((arms[state["arm"]], now - state["last"]))
            state["last"] = now
            if state_.global_step % block == 0:
                state["arm"] = (state["arm"] + 1) % len(arms)
                state["on"] = arms[state["arm"]] == "on"

    return Gate(), loop, writer, timings


def one_run(steps: int, block: int, workdir: Path, parts: str) -> List[Tuple[str, float]]:
    import torch
    from transformers import PrinterCallback, Trainer, TrainingArguments

    from gaudi_nb.presets import model_presets
    from gaudi_nb.worker.data import BlockDataset, local_tokenizer, pack, read_texts
    from gaudi_nb.worker.models import build_local_model

    texts = read_texts("sample-text")
    tokenizer = local_tokenizer(texts, workdir / "cache")
    torch.manual_seed(0)
    model = build_local_model(model_presets.get("tiny-llama"), len(tokenizer), 128)
    data = BlockDataset(pack(texts, tokenizer, 128))
    gate, loop, writer, timings = build_callbacks(workdir, block, steps, parts)
    args = TrainingArguments(
        output_dir=str(workdir / "out"), per_device_train_batch_size=4, max_steps=steps, learning_rate=3e-4,
        logging_steps=1,  # gaudi_nb's setting (one event per step), in both arms
        save_strategy="no", report_to=[], disable_tqdm=True, use_cpu=True, dataloader_num_workers=0, seed=0, log_level="error",
    )
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[gate])
    trainer.remove_callback(PrinterCallback)  # keeps stdout pure JSON
    loop.start()
    trainer.train()
    loop.stop()
    writer.close()
    return timings[3 * block :]  # leave out the first cycle: allocator and cache warmup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=420)
    parser.add_argument("--block", type=int, default=7, help="steps per block; keep it coprime with the steps per epoch (5 here)")
    parser.add_argument("--parts", choices=("all", "events", "telemetry", "none"), default="all", help="which of gaudi_nb's parts to switch on; none measures the method's own noise")
    args = parser.parse_args()
    import transformers

    transformers.logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as tmp:
        timings = one_run(args.steps, args.block, Path(tmp), args.parts)
    by_arm = {arm: [t for name, t in timings if name == arm] for arm in ("on", "off", "null")}
    median = {arm: statistics.median(values) for arm, values in by_arm.items()}
    components = component_costs()
    estimated = 1 + (components["callback_us_per_step"] * 1e-6 + components["telemetry_ms_per_sample"] * 1e-3 * median["off"]) / median["off"]
    print(json.dumps({
        "benchmark": "overhead",
        "accelerator": "cpu",
        "model": "tiny-llama (batch 4 x 128 tokens, 1 rank)",
        "parts": args.parts,
        "design": f"one run of {args.steps} steps cycling blocks of {args.block} steps: gaudi_nb off, on, off again (null)",
        "steps_measured": {arm: len(values) for arm, values in by_arm.items()},
        "median_step_s": median,
        "ratio_median_on_vs_off": median["on"] / median["off"],
        "noise_floor_null_vs_off": median["null"] / median["off"],
        "components": components,
        "ratio_estimated_from_components": estimated,
        "goal": "ratio <= 1.01",
    }, indent=2))


def component_costs() -> Dict[str, float]:
    """What gaudi_nb adds, timed alone: the callback per step and one telemetry sample (taken once a second)."""
    from types import SimpleNamespace

    from gaudi_nb.accel import CPU
    from gaudi_nb.events import BackgroundEventWriter
    from gaudi_nb.rundir import RunFolder
    from gaudi_nb.telemetry.base import pick_source
    from gaudi_nb.worker.callback import EventCallback

    with tempfile.TemporaryDirectory() as tmp:
        writer = BackgroundEventWriter(Path(tmp) / "events.jsonl", "bench", rank=0)
        callback = EventCallback(writer, RunFolder(Path(tmp)), tokens_per_step=512, samples_per_step=4, warmup_steps=2, max_steps=10**9, memory_stats=CPU().memory_stats, is_main=True)
        state, control = SimpleNamespace(global_step=0), SimpleNamespace(should_save=False, should_training_stop=False)
        callback.on_train_begin(None, state, control)
        n = 2000
        start = time.perf_counter()
        for step in range(1, n + 1):
            state.global_step = step
            callback.on_step_end(None, state, control)
            callback.on_log(None, state, control, logs={"loss": 1.0, "learning_rate": 1e-4, "grad_norm": 1.0})
        writer.close()  # includes the writer thread's work
        per_step = (time.perf_counter() - start) / n
    source = pick_source(pids={0: os.getpid()}, prefer="host")
    start = time.perf_counter()
    for _ in range(50):
        source.sample()
    per_sample = (time.perf_counter() - start) / 50
    return {"callback_us_per_step": per_step * 1e6, "telemetry_ms_per_sample": per_sample * 1e3}


if __name__ == "__main__":
    sys.exit(main())
