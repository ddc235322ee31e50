"""Models for a rank: a local preset built from its configuration, or a hub model and its tokenizer."""
from __future__ import annotations

from typing import Any, List, Tuple

from ..paths import home
from ..presets import ModelPreset, model_presets
from ..spec import RunSpec
from .data import local_tokenizer


def build_local_model(preset: ModelPreset, vocab_size: int, max_positions: int) -> Any:
    """A randomly initialised model from a local preset's configuration."""
    import transformers

    config_class, model_class = {"llama": ("LlamaConfig", "LlamaForCausalLM"), "gpt2": ("GPT2Config", "GPT2LMHeadModel")}[preset.architecture or ""]
    config = getattr(transformers, config_class)(**preset.model_config(vocab_size, max_positions))
    return getattr(transformers, model_class)(config)


def build_model_and_tokenizer(spec: RunSpec, texts: List[str]) -> Tuple[Any, Any]:
    import torch

    if spec.model in model_presets and model_presets.get(spec.model).local:
        tokenizer = local_tokenizer(texts, home() / "cache")
        torch.manual_seed(spec.seed)  # same initial weights on every rank
        model = build_local_model(model_presets.get(spec.model), len(tokenizer), spec.sequence_length)
        return model, tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = (model_presets.get(spec.model).hub_id if spec.model in model_presets else None) or spec.model
    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.eos_token_id is None:
        raise ValueError(f"the tokenizer of {source} has no end-of-text token to separate documents")
    model = AutoModelForCausalLM.from_pretrained(source)
    return model, tokenizer
