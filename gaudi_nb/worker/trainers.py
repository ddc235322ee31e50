"""The trainers behind one interface: transformers' Trainer, optimum-habana's GaudiTrainer and Lightning's Trainer."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

from ..gaudi_stack import SUPPORTED_HPU_TRAINER
from ..registry import Registry
from . import compat


@dataclass
class TrainerInputs:
    """Everything a trainer needs, already resolved by the worker."""

    model: Any
    train_dataset: Any
    eval_dataset: Optional[Any]
    output_dir: str
    accelerator: str  # hpu | cuda | cpu
    precision: str  # bf16 | fp32
    batch_size: int
    max_steps: int
    learning_rate: float
    seed: int
    warmup_steps: int
    lazy_mode: bool
    eval_steps: Optional[int]
    save_steps: Optional[int]
    callbacks: List[Any]
    keep_checkpoints: Optional[int] = None


def _common_arguments(inputs: TrainerInputs) -> Dict[str, Any]:
    on_cpu = inputs.accelerator == "cpu"
    arguments: Dict[str, Any] = dict(
        output_dir=inputs.output_dir,
        per_device_train_batch_size=inputs.batch_size,
        per_device_eval_batch_size=inputs.batch_size,
        max_steps=inputs.max_steps,
        learning_rate=inputs.learning_rate,
        seed=inputs.seed,
        logging_steps=1,  # one step event per optimizer step
        save_strategy="steps" if inputs.save_steps else "no",  # the callback asks for the final/stop checkpoint
        save_steps=inputs.save_steps or 500,
        # The Trainer rotates before the callback marks the new checkpoint complete: keeping one
        # more than asked leaves the last complete one in place; the callback then prunes to N.
        save_total_limit=inputs.keep_checkpoints + 1 if inputs.keep_checkpoints else None,
        eval_strategy="steps" if (inputs.eval_steps and inputs.eval_dataset is not None) else "no",
        eval_steps=inputs.eval_steps,
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
        bf16=inputs.precision == "bf16",
        use_cpu=on_cpu,
        ddp_backend="gloo" if on_cpu else None,
        log_level="warning",
        ddp_find_unused_parameters=False,
    )
    return arguments


def transformers_trainer(inputs: TrainerInputs) -> Any:
    from transformers import Trainer, TrainingArguments

    arguments = {**_common_arguments(inputs), **_hpu_mode_arguments(inputs)}
    return Trainer(
        model=inputs.model,
        args=TrainingArguments(**arguments),
        train_dataset=inputs.train_dataset,
        eval_dataset=inputs.eval_dataset,
        callbacks=transformers_callbacks(inputs),
    )


def transformers_callbacks(inputs: TrainerInputs) -> List[Any]:
    """The run's callbacks, and in lazy mode on HPU the mark_step GaudiTrainer would insert: transformers'
    Trainer never calls it, and without it the lazy graph grows until the step's end."""
    if execution_mode(inputs.accelerator, inputs.lazy_mode, "transformers") != "lazy":
        return list(inputs.callbacks)
    from .callback import LazyModeMarkStep

    return [LazyModeMarkStep(), *inputs.callbacks]


def execution_mode(accelerator: str, lazy_mode: bool, trainer: str = "") -> str:
    """How the graph runs: Intel's default since Gaudi software 1.21 is eager mode with torch.compile;
    lazy mode (PT_HPU_LAZY_MODE=1) is the legacy option. Off HPU there is only eager. The Lightning
    trainer does not compile the model (lightning-habana's path is untried with it), so it says eager."""
    if accelerator != "hpu":
        return "eager"
    if lazy_mode:
        return "lazy"
    return "eager" if trainer == "lightning" else "eager+compile"


def _hpu_mode_arguments(inputs: TrainerInputs) -> Dict[str, Any]:
    """TrainingArguments for the HPU execution mode (both trainers read torch_compile the same way)."""
    if execution_mode(inputs.accelerator, inputs.lazy_mode) != "eager+compile":
        return {}
    return {"torch_compile": True, "torch_compile_backend": "hpu_backend"}


def optimum_habana_arguments(inputs: TrainerInputs) -> Dict[str, Any]:
    """GaudiTrainingArguments' keywords: on HPU, bf16 comes from GaudiConfig's autocast, not the Trainer's AMP."""
    on_hpu = inputs.accelerator == "hpu"
    arguments = _common_arguments(inputs)
    arguments.update(
        use_habana=on_hpu,
        use_lazy_mode=on_hpu and inputs.lazy_mode,
        throughput_warmup_steps=inputs.warmup_steps,
        **_hpu_mode_arguments(inputs),
    )
    if on_hpu:
        arguments["bf16"] = False
        arguments.pop("ddp_backend")
    return arguments


def optimum_habana_trainer(inputs: TrainerInputs) -> Any:
    oh = compat.import_optimum_habana()
    on_hpu = inputs.accelerator == "hpu"
    # A local GaudiConfig: without one GaudiTrainer downloads Habana/<model> from the hub.
    gaudi_config = oh.GaudiConfig(
        use_fused_adam=on_hpu,
        use_fused_clip_norm=on_hpu,
        use_torch_autocast=on_hpu and inputs.precision == "bf16",
    )
    if not on_hpu:
        compat.patch_model_off_hpu(inputs.model)
    trainer = oh.GaudiTrainer(
        model=inputs.model,
        gaudi_config=gaudi_config,
        args=oh.GaudiTrainingArguments(**optimum_habana_arguments(inputs)),
        train_dataset=inputs.train_dataset,
        eval_dataset=inputs.eval_dataset,
        callbacks=inputs.callbacks,
    )
    if not on_hpu:
        compat.patch_trainer_off_hpu(trainer)
    return trainer


def prepare_transformers(trainer: str, accelerator: str) -> None:
    """What must happen before any model is built.

    GaudiTrainer on HPU needs adapt_transformers_to_gaudi() first: it swaps transformers'
    GenerationConfig for GaudiGenerationConfig (whose flags GaudiTrainer reads for Llama,
    Qwen2 and Gemma models) and patches classes such as GPT-2's attention. A model built
    before it keeps the stock config and GaudiTrainer fails at its first step.
    """
    if trainer == "optimum-habana" and accelerator == "hpu":
        compat.adapt_transformers_to_gaudi()


trainers: Registry = Registry("trainer")
trainers.register("transformers", transformers_trainer, aliases=("hf",))
trainers.register("optimum-habana", optimum_habana_trainer, aliases=("optimum_habana", "gaudi"))


def lightning_trainer(inputs: TrainerInputs) -> Any:
    from .lightning_trainer import LightningRun  # imports Lightning: only for runs that use it

    return LightningRun(inputs)


trainers.register("lightning", lightning_trainer, aliases=("pytorch-lightning",))


def pick_trainer(requested: str, accelerator: str) -> str:
    """auto → transformers' Trainer everywhere: on Gaudi it is the supported stack (accelerate >= 1.5 sees the
    HPU), while optimum-habana is past end of support (gaudi_stack); --trainer optimum-habana still asks for it."""
    if requested != "auto":
        return requested
    return SUPPORTED_HPU_TRAINER if accelerator == "hpu" else "transformers"


def build_trainer(name: str, inputs: TrainerInputs) -> Any:
    factory: Callable[[TrainerInputs], Any] = trainers.get(name)
    return factory(inputs)
