"""LoRA through peft: wrap a rank's model in an adapter, and keep what `gaudi-nb export` needs to merge it later."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Tuple

# In the run folder (names in rundir, which export reads too): the base weights a LoRA run trained on when they
# exist nowhere else (a local preset is randomly initialised, so its base cannot be fetched again), and the
# run's tokenizer, for `gaudi-nb export`.
from ..rundir import BASE_MODEL_DIR, TOKENIZER_DIR
from ..spec import RunSpec


def target_modules(spec: RunSpec, model: Any) -> List[str]:
    """--lora-target-modules, or peft's own default for the model's architecture (Llama, Qwen2 and
    Mistral: q_proj,v_proj; GPT-2: c_attn), which is what most LoRA recipes start from."""
    if spec.lora_target_modules:
        return [name.strip() for name in spec.lora_target_modules.split(",") if name.strip()]
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    model_type = getattr(model.config, "model_type", None)
    default = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type or "")
    if not default:
        raise ValueError(f"no default LoRA target modules for a {model_type} model: name them with --lora-target-modules (e.g. q_proj,v_proj)")
    return list(default)


def apply_lora(spec: RunSpec, model: Any) -> Tuple[Any, Dict[str, Any]]:
    """The model wrapped in a LoRA adapter (only the adapter trains), and what the record shows of it."""
    try:
        from peft import LoraConfig, TaskType, get_peft_model
    except ImportError:
        raise ImportError("--lora needs peft: pip install 'gaudi_nb[lora]'") from None

    modules = target_modules(spec, model)
    config = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=spec.lora_rank,
        lora_alpha=spec.lora_alpha,
        lora_dropout=spec.lora_dropout,
        target_modules=modules,
    )
    try:
        wrapped = get_peft_model(model, config)
    except ValueError as exc:  # peft names the modules it did not find
        raise ValueError(f"--lora-target-modules {','.join(modules)}: {exc}") from None
    trainable, total = wrapped.get_nb_trainable_parameters()
    info = {"rank": spec.lora_rank, "alpha": spec.lora_alpha, "dropout": spec.lora_dropout, "target_modules": modules, "trainable_parameters": int(trainable), "total_parameters": int(total)}
    return wrapped, info


def save_for_export(run_dir: Path, spec: RunSpec, model: Any, tokenizer: Any, *, local_base: bool) -> None:
    """Rank 0, before training: the tokenizer, and for a LoRA run on a locally built model its base
    weights (a hub model's base is its hub id, which peft's adapter_config.json already names)."""
    if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(str(run_dir / TOKENIZER_DIR))
    if spec.lora and local_base:
        model.save_pretrained(str(run_dir / BASE_MODEL_DIR))

