"""Model and dataset presets as data: read by the client (checks, estimates, the launcher form) and by the ranks.

Nothing here imports torch or transformers: the client counts a preset's parameters from
its configuration, and only a rank builds the model (worker/models.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Dict, Optional

from .registry import Registry

# The byte-level BPE vocabulary the ranks train for local presets (worker/data.py).
LOCAL_VOCAB_SIZE = 2048


@dataclass(frozen=True)
class ModelPreset:
    name: str
    description: str
    hub_id: Optional[str] = None  # None: built locally from `architecture` and `config`, randomly initialised
    architecture: Optional[str] = None  # llama | gpt2
    config: Dict[str, Any] = field(default_factory=dict)

    @property
    def local(self) -> bool:
        return self.hub_id is None

    def model_config(self, vocab_size: int, max_positions: int) -> Dict[str, Any]:
        """The transformers config keywords for a local preset (vocab and context set by the run)."""
        positions = max(512, max_positions)
        if self.architecture == "gpt2":
            return {**self.config, "vocab_size": vocab_size, "n_positions": positions}
        return {**self.config, "vocab_size": vocab_size, "max_position_embeddings": positions}

    def parameter_count(self, vocab_size: int, max_positions: int) -> int:
        """Parameters of a local preset, from its configuration (tests check it against the built model)."""
        c = self.model_config(vocab_size, max_positions)
        if self.architecture == "gpt2":
            h, layers, positions = c["n_embd"], c["n_layer"], c["n_positions"]
            per_layer = 4 * h + (h * 3 * h + 3 * h) + (h * h + h) + (h * 4 * h + 4 * h) + (4 * h * h + h)
            return vocab_size * h + positions * h + layers * per_layer + 2 * h  # the output head is tied to the embedding
        if self.architecture == "llama":
            h, inter, layers = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
            head_dim = h // c["num_attention_heads"]
            kv = c.get("num_key_value_heads", c["num_attention_heads"]) * head_dim
            per_layer = (h * h + 2 * h * kv + h * h) + 3 * h * inter + 2 * h
            head = 0 if c.get("tie_word_embeddings", True) else vocab_size * h
            return vocab_size * h + layers * per_layer + h + head
        raise ValueError(f"{self.name} is a hub model: its size is known after download")


model_presets: Registry[ModelPreset] = Registry("model preset")
for _preset in (
    ModelPreset(
        "tiny-llama",
        "Llama architecture, 4 layers × 256 wide, random init (about 5M parameters)",
        architecture="llama",
        config=dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False),
    ),
    ModelPreset(
        "tiny-gpt2",
        "GPT-2 architecture, 4 layers × 256 wide, random init (about 4M parameters)",
        architecture="gpt2",
        config=dict(n_embd=256, n_layer=4, n_head=4),
    ),
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


dataset_presets: Registry[DatasetPreset] = Registry("dataset preset")
dataset_presets.register(
    "sample-text",
    DatasetPreset("sample-text", "public-domain English (Declaration of Independence, Gettysburg Address, Aesop), shipped in the package", path=sample_text_path()),
)
dataset_presets.register("wikitext-2", DatasetPreset("wikitext-2", "WikiText-2 raw from the hub", hub_id="Salesforce/wikitext:wikitext-2-raw-v1"))
dataset_presets.register("tinystories", DatasetPreset("tinystories", "TinyStories from the hub", hub_id="roneneldan/TinyStories"))
