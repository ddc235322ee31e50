"""What every rank runs: read the run folder's spec, build model and data, train, write events."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, List, Optional, Tuple

from .. import accel as accel_room
from ..events import BackgroundEventWriter
from ..paths import home
from ..spec import RunSpec
from .callback import EventCallback
from .data import BlockDataset, local_tokenizer, pack, read_texts, split_blocks
from .presets import model_presets
from .trainers import TrainerInputs, build_trainer, pick_trainer


def rank_info() -> Tuple[int, int, int]:
    """(rank, local rank, world size) from torchrun's variables, or Open MPI's under mpirun."""
    env = os.environ
    if "RANK" not in env and "OMPI_COMM_WORLD_RANK" in env:
        # torch.distributed's env:// rendezvous reads RANK/WORLD_SIZE, so mirror them.
        env["RANK"] = env["OMPI_COMM_WORLD_RANK"]
        env["WORLD_SIZE"] = env["OMPI_COMM_WORLD_SIZE"]
        env["LOCAL_RANK"] = env.get("OMPI_COMM_WORLD_LOCAL_RANK", "0")
    return int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0)), int(env.get("WORLD_SIZE", 1))


def resolve_precision(requested: str, accelerator: Any) -> str:
    return accelerator.default_precision() if requested == "auto" else requested


def build_model_and_tokenizer(spec: RunSpec, texts: List[str]) -> Tuple[Any, Any]:
    import torch

    if spec.model in model_presets and model_presets.get(spec.model).local:
        tokenizer = local_tokenizer(texts, home() / "cache")
        torch.manual_seed(spec.seed)  # same initial weights on every rank
        model = model_presets.get(spec.model).build(len(tokenizer), spec.sequence_length)
        return model, tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = model_presets.get(spec.model).hub_id if spec.model in model_presets else spec.model
    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.eos_token_id is None:
        raise ValueError(f"the tokenizer of {source} has no end-of-text token to separate documents")
    model = AutoModelForCausalLM.from_pretrained(source)
    return model, tokenizer


def train(run_dir: Path, *, writer: Optional[BackgroundEventWriter] = None, extra_callbacks: Optional[list] = None) -> int:
    """Train the spec in run_dir on this rank; returns the last global step."""
    import torch

    run = json.loads((run_dir / "run.json").read_text())
    spec = RunSpec.model_validate_json((run_dir / "spec.json").read_text())
    rank, local_rank, world_size = rank_info()
    accelerator = accel_room.detect()
    precision = resolve_precision(spec.precision, accelerator)
    trainer_name = pick_trainer(spec.trainer, accelerator.name)
    is_main = rank == 0
    if "OMP_NUM_THREADS" in os.environ:
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

    own_writer = writer is None
    if writer is None:
        writer = BackgroundEventWriter(run_dir / "events.jsonl", run["run_id"], node=run.get("node", "local"), rank=rank)

    texts = read_texts(spec.dataset)
    model, tokenizer = build_model_and_tokenizer(spec, texts)
    blocks = pack(texts, tokenizer, spec.sequence_length)
    if not blocks:
        raise ValueError(f"the dataset has fewer than {spec.sequence_length} tokens: use a shorter --sequence-length or more text")
    train_blocks, eval_blocks = split_blocks(blocks, 0.1 if spec.eval_steps else 0.0)
    parameters = sum(p.numel() for p in model.parameters())
    writer.emit(
        "worker_start",
        pid=os.getpid(),
        local_rank=local_rank,
        world_size=world_size,
        accelerator=accelerator.name,
        device=accelerator.device_string(local_rank),
        precision=precision,
        precision_chosen_by="spec" if spec.precision != "auto" else f"default for {accelerator.name}",
        trainer=trainer_name,
        parameters=parameters,
        train_sequences=len(train_blocks),
        eval_sequences=len(eval_blocks),
        torch_version=torch.__version__,
    )

    callback = EventCallback(
        writer if is_main else None,
        run_dir / "control",
        tokens_per_step=spec.batch_size * spec.sequence_length * world_size,
        samples_per_step=spec.batch_size * world_size,
        warmup_steps=spec.warmup_steps,
        max_steps=spec.max_steps,
        memory_stats=accelerator.memory_stats,
        is_main=is_main,
    )
    inputs = TrainerInputs(
        model=model,
        train_dataset=BlockDataset(train_blocks),
        eval_dataset=BlockDataset(eval_blocks) if eval_blocks else None,
        output_dir=str(run_dir / "checkpoints"),
        accelerator=accelerator.name,
        precision=precision,
        batch_size=spec.batch_size,
        max_steps=spec.max_steps,
        learning_rate=spec.learning_rate,
        seed=spec.seed,
        warmup_steps=spec.warmup_steps,
        lazy_mode=spec.lazy_mode,
        eval_steps=spec.eval_steps,
        save_steps=spec.save_steps,
        callbacks=[callback, *(extra_callbacks or [])],
    )
    trainer = build_trainer(trainer_name, inputs)
    try:
        trainer.train()
    finally:
        if own_writer:
            writer.close()
    return trainer.state.global_step


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gaudi_nb.worker", description="Run one rank of a gaudi_nb run.")
    parser.add_argument("--run-dir", required=True, type=Path)
    args = parser.parse_args(argv)
    try:
        train(args.run_dir)
    except Exception as exc:
        report_error(args.run_dir, exc)
        raise


def report_error(run_dir: Path, exc: BaseException) -> None:
    """Put the rank's exception in the event stream: the launcher's own summary hides it in the log."""
    import traceback

    from ..events import EventWriter

    try:
        run = json.loads((run_dir / "run.json").read_text())
        writer = EventWriter(run_dir / "events.jsonl", run["run_id"], node=run.get("node", "local"), rank=rank_info()[0])
        writer.emit("worker_error", error=f"{type(exc).__name__}: {exc}"[:500], traceback=traceback.format_exc().splitlines()[-15:])
        writer.close()
    except Exception:
        pass  # the log still has the traceback
