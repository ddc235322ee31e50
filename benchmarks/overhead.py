"""Step-time overhead of gaudi_nb's worker (event callback + event writer + 1 Hz telemetry) over a plain
transformers Trainer, same model, data and steps, alternating in one process. Prints JSON. Goal: ratio <= 1.01."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")


class StepTimer:
    """Times optimizer steps identically in both arms (wall time between step ends)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._last: float | None = None

    def callback(self):  # type: ignore[no-untyped-def]
        from transformers import TrainerCallback

        timer = self

        class _Timer(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
                if timer._last is None:
                    timer._last = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
                now = time.perf_counter()
                timer.times.append(now - (timer._last or now))
                timer._last = now

        return _Timer()


def one_arm(with_gaudi_nb: bool, steps: int, logging_steps: int, workdir: Path) -> list[float]:
    import torch
    from transformers import Trainer, TrainingArguments

    from gaudi_nb.accel import CPU
    from gaudi_nb.events import BackgroundEventWriter
    from gaudi_nb.telemetry.base import pick_source
    from gaudi_nb.telemetry.loop import TelemetryLoop
    from gaudi_nb.worker.callback import EventCallback
    from gaudi_nb.worker.data import BlockDataset, local_tokenizer, pack, read_texts
    from gaudi_nb.worker.presets import model_presets

    texts = read_texts("sample-text")
    tokenizer = local_tokenizer(texts, workdir / "cache")
    torch.manual_seed(0)
    model = model_presets.get("tiny-llama").build(len(tokenizer), 128)
    data = BlockDataset(pack(texts, tokenizer, 128))
    timer = StepTimer()
    callbacks = [timer.callback()]
    writer = loop = None
    if with_gaudi_nb:
        writer = BackgroundEventWriter(workdir / "events.jsonl", "bench", rank=0)
        callbacks.append(EventCallback(writer, workdir / "control", tokens_per_step=512, samples_per_step=4, warmup_steps=2, max_steps=steps + 10**6, memory_stats=CPU().memory_stats, is_main=True))
        loop = TelemetryLoop(pick_source(pids={0: os.getpid()}, prefer="host"), lambda s: writer.emit("telemetry", **s.to_dict()), interval_s=1.0).start()
    args = TrainingArguments(
        output_dir=str(workdir / "out"), per_device_train_batch_size=4, max_steps=steps, learning_rate=3e-4, logging_steps=logging_steps,
        save_strategy="no", report_to=[], disable_tqdm=True, use_cpu=True, dataloader_num_workers=0, seed=0, log_level="error",
    )
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=callbacks)
    trainer.train()
    if loop:
        loop.stop()
    if writer:
        writer.close()
    return timer.times[3:]  # the first steps warm caches in both arms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import transformers

    transformers.logging.set_verbosity_error()
    results: dict[str, list[float]] = {"plain_log_every_step": [], "plain_default_logging": [], "gaudi_nb": []}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for arm in results:  # alternate arms every round: drift hits all of them alike
                work = Path(tmp) / f"{arm}-{round_}"
                work.mkdir()
                logging_steps = 500 if arm == "plain_default_logging" else 1
                times = one_arm(arm == "gaudi_nb", args.steps, logging_steps, work)
                results[arm].append(statistics.median(times))
    median = {arm: statistics.median(values) for arm, values in results.items()}
    print(json.dumps({
        "benchmark": "overhead",
        "accelerator": "cpu",
        "model": "tiny-llama",
        "steps_per_arm": args.steps,
        "rounds": args.rounds,
        "median_step_s": median,
        "per_round_median_step_s": results,
        "ratio_vs_plain_trainer_logging_every_step": median["gaudi_nb"] / median["plain_log_every_step"],
        "ratio_vs_plain_trainer_default_logging": median["gaudi_nb"] / median["plain_default_logging"],
        "goal": "ratio <= 1.01",
    }, indent=2))


if __name__ == "__main__":
    sys.exit(main())
