"""What every rank runs: read the run folder's spec, build model and data, train, write events."""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, List, NamedTuple, Optional

from .. import accel as accel_room
from ..events import BackgroundEventWriter
from ..gaudi_stack import trainer_support
from ..presets import model_presets
from ..rundir import CHECKPOINT_COMPLETE, RESUME_FROM_ENV, RunFolder
from ..spec import RunSpec
from . import agent_watch, compat, lora
from . import batch_size as batch_size_room
from .callback import EventCallback
from .data import BlockDataset, pack, read_texts, split_blocks
from .models import build_model_and_tokenizer
from .rank import exit_cleanly, rank_info, report_error
from .trainers import TrainerInputs, build_trainer, execution_mode, pick_trainer, prepare_transformers


def resolve_precision(requested: str, accelerator: Any) -> str:
    return accelerator.default_precision() if requested == "auto" else requested


def device_name(accelerator: str) -> Optional[str]:
    """The device model as its runtime names it (GAUDI3, NVIDIA H100 80GB HBM3, a CPU's model): the
    record looks up its peak FLOP/s by it. None when the runtime does not say."""
    import torch

    try:
        if accelerator == "hpu":
            return str(torch.hpu.get_device_name())  # type: ignore[attr-defined]
        if accelerator == "cuda":
            return str(torch.cuda.get_device_name())
        import platform

        return platform.processor() or platform.machine() or None
    except Exception:  # a runtime too old to say: the peak is then unknown, never guessed
        return None


def resume_checkpoint() -> Optional[str]:
    """The complete checkpoint the agent asks this attempt to continue from ($GAUDI_NB_RESUME_FROM), or None."""
    path = os.environ.get(RESUME_FROM_ENV)
    if not path:
        return None
    if not (Path(path) / CHECKPOINT_COMPLETE).is_file():
        raise FileNotFoundError(f"the checkpoint to resume from is missing or incomplete: {path}")
    return path


class ModelAndData(NamedTuple):
    model: Any
    lora_info: Optional[dict]  # the LoRA adapter's figures with --lora, else None
    parameters: int  # the base model's weights, before any adapter: MFU counts these (6N per token)
    train_blocks: list
    eval_blocks: list


def load_model_and_data(folder: RunFolder, spec: RunSpec, trainer_name: str, accelerator: str, is_main: bool) -> ModelAndData:
    """The dataset packed into blocks (a tenth held out for eval with --eval-steps), the model, and its LoRA
    adapter with --lora; rank 0 first saves what `gaudi-nb export` needs of the base model."""
    texts = read_texts(spec.dataset)
    prepare_transformers(trainer_name, accelerator)  # before any model exists (see its docstring)
    model, tokenizer = build_model_and_tokenizer(spec, texts)
    blocks = pack(texts, tokenizer, spec.sequence_length)
    if not blocks:
        raise ValueError(f"the dataset has fewer than {spec.sequence_length} tokens: use a shorter --sequence-length or more text")
    train_blocks, eval_blocks = split_blocks(blocks, 0.1 if spec.eval_steps else 0.0)
    parameters = sum(p.numel() for p in model.parameters())
    lora_info: Optional[dict] = None
    if is_main:
        lora.save_for_export(folder.path, spec, model, tokenizer, local_base=spec.model in model_presets and model_presets.get(spec.model).local)
    if spec.lora:
        model, lora_info = lora.apply_lora(spec, model)
    return ModelAndData(model, lora_info, parameters, train_blocks, eval_blocks)


def trainer_inputs(folder: RunFolder, spec: RunSpec, model: Any, train_blocks: list, eval_blocks: list, accelerator: Any, precision: str,
                   batch_size: int, learning_rate: float, world_size: int, writer: Optional[BackgroundEventWriter], is_main: bool,
                   extra_callbacks: Optional[list]) -> TrainerInputs:
    """What the chosen trainer is built from, with the callback that writes this rank's steps (rank 0's writer; None on the others)."""
    callback = EventCallback(
        writer,
        folder,
        tokens_per_step=batch_size * spec.sequence_length * world_size,
        samples_per_step=batch_size * world_size,
        warmup_steps=spec.warmup_steps,
        max_steps=spec.max_steps,
        memory_stats=accelerator.memory_stats,
        is_main=is_main,
        keep_checkpoints=spec.keep_checkpoints,
    )
    return TrainerInputs(
        model=model,
        train_dataset=BlockDataset(train_blocks),
        eval_dataset=BlockDataset(eval_blocks) if eval_blocks else None,
        output_dir=str(folder.checkpoints),
        accelerator=accelerator.name,
        precision=precision,
        batch_size=batch_size,
        max_steps=spec.max_steps,
        learning_rate=learning_rate,
        seed=spec.seed,
        warmup_steps=spec.warmup_steps,
        lazy_mode=spec.lazy_mode,
        eval_steps=spec.eval_steps,
        save_steps=spec.save_steps,
        keep_checkpoints=spec.keep_checkpoints,
        callbacks=[callback, *(extra_callbacks or [])],
    )


def train(run_dir: Path, *, writer: Optional[BackgroundEventWriter] = None, extra_callbacks: Optional[list] = None) -> int:
    """Train the spec in run_dir on this rank; returns the last global step."""
    import torch

    folder = RunFolder(run_dir)
    run = folder.read_run()
    spec = RunSpec.model_validate_json(folder.spec.read_text())
    rank, local_rank, world_size = rank_info()
    accelerator = accel_room.detect()
    precision = resolve_precision(spec.precision, accelerator)
    trainer_name = pick_trainer(spec.trainer, accelerator.name)
    is_main = rank == 0
    if "OMP_NUM_THREADS" in os.environ:
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

    own_writer = writer is None
    if writer is None:
        writer = BackgroundEventWriter(folder.events, run["run_id"], node=run.get("node", "local"), rank=rank)

    model, lora_info, parameters, train_blocks, eval_blocks = load_model_and_data(folder, spec, trainer_name, accelerator.name, is_main)
    # --batch-size auto: found (or read from the cache) before training; every later use takes this number
    batch_size = spec.batch_size if isinstance(spec.batch_size, int) else batch_size_room.for_run(
        spec, model, accelerator, precision, trainer_name, writer if is_main else None, train_sequences=len(train_blocks))
    learning_rate = spec.scaled_learning_rate(batch_size * world_size)  # --lr-scaling: the global batch's rate
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
        trainer_support=trainer_support(trainer_name),
        execution_mode=execution_mode(accelerator.name, spec.lazy_mode, trainer_name),
        parameters=parameters,
        # trainable: every weight, or only the LoRA adapter's; MFU counts all `parameters` (6N per token)
        trainable_parameters=lora_info["trainable_parameters"] if lora_info else parameters,
        lora=lora_info,
        device_name=device_name(accelerator.name),
        train_sequences=len(train_blocks),
        eval_sequences=len(eval_blocks),
        torch_version=torch.__version__,
        batch_size=batch_size,
        global_batch_size=batch_size * world_size,
        learning_rate=learning_rate,
        base_learning_rate=spec.learning_rate,
        lr_scaling=spec.lr_scaling,
        base_batch_size=spec.base_batch_size,
    )

    inputs = trainer_inputs(
        folder, spec, model, train_blocks, eval_blocks, accelerator, precision, batch_size, learning_rate,
        world_size, writer if is_main else None, is_main, extra_callbacks,
    )
    trainer = build_trainer(trainer_name, inputs)
    resume_from = resume_checkpoint()
    if resume_from and accelerator.name == "cpu" and trainer_name != "lightning":  # Lightning loads its one file itself
        compat.load_checkpoints_on_cpu(trainer)
    try:
        # the Trainer restores weights, optimizer, scheduler, step and data position from it
        trainer.train(resume_from_checkpoint=resume_from)
    finally:
        if own_writer:
            writer.close()
    return trainer.state.global_step


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gaudi_nb.worker", description="Run one rank of a gaudi_nb run.")
    parser.add_argument("--run-dir", required=True, type=Path)
    args = parser.parse_args(argv)
    agent_watch.start()
    folder = RunFolder(args.run_dir.resolve())
    try:
        train(folder.path)
    except Exception as exc:
        report_error(folder, exc)
        raise
    exit_cleanly()

