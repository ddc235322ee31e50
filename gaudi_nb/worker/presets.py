"""Model and dataset presets: tiny models that need no download, and named hub models."""
from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Optional

from ..registry import Registry


@dataclass(frozen=True)
class ModelPreset:
    name: str
    description: str
    hub_id: Optional[str] = None  # None: built locally from `build`, randomly initialised
    build: Optional[Callable[[int, int], Any]] = None  # (vocab_size, max_positions) -> model

    @property
    def local(self) -> bool:
        return self.hub_id is None


def _tiny_llama(vocab_size: int, max_positions: int) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=max(512, max_positions),
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


def _tiny_gpt2(vocab_size: int, max_positions: int) -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=vocab_size, n_embd=256, n_layer=4, n_head=4, n_positions=max(512, max_positions))
    return GPT2LMHeadModel(config)


model_presets: Registry = Registry("model preset")
for _preset in (
    ModelPreset("tiny-llama", "Llama architecture, 4 layers × 256 wide, random init (about 5M parameters)", build=_tiny_llama),
    ModelPreset("tiny-gpt2", "GPT-2 architecture, 4 layers × 256 wide, random init (about 4M parameters)", build=_tiny_gpt2),
    ModelPreset("gpt2", "GPT-2 small (124M) from the hub", hub_id="openai-community/gpt2"),
    ModelPreset("llama-3.2-1b", "Llama 3.2 1B from the hub (gated: needs a token)", hub_id="meta-llama/Llama-3.2-1B"),
    ModelPreset("llama-3.1-8b", "Llama 3.1 8B from the hub (gated: needs a token)", hub_id="meta-llama/Llama-3.1-8B"),
    ModelPreset("qwen2.5-0.5b", "Qwen2.5 0.5B from the hub", hub_id="Qwen/Qwen2.5-0.5B"),
    ModelPreset("mistral-7b", "Mistral 7B v0.3 from the hub", hub_id="mistralai/Mistral-7B-v0.3"),
):
    model_presets.register(_preset.name, _preset)


@dataclass(frozen=True)
class DatasetPreset:
    name: str
    description: str
    path: Optional[Path] = None  # shipped with the package
    hub_id: Optional[str] = None


def sample_text_path() -> Path:
    return Path(str(resources.files("gaudi_nb.worker") / "data" / "sample_text.txt"))


dataset_presets: Registry = Registry("dataset preset")
dataset_presets.register(
    "sample-text",
    DatasetPreset("sample-text", "public-domain English (Declaration of Independence, Gettysburg Address, Aesop), shipped in the package", path=sample_text_path()),
)
dataset_presets.register("wikitext-2", DatasetPreset("wikitext-2", "WikiText-2 raw from the hub", hub_id="Salesforce/wikitext:wikitext-2-raw-v1"))
dataset_presets.register("tinystories", DatasetPreset("tinystories", "TinyStories from the hub", hub_id="roneneldan/TinyStories"))
