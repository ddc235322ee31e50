"""Training data: text in, packed fixed-length token blocks out."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Iterable, List, Sequence, Tuple

from ..presets import LOCAL_VOCAB_SIZE, dataset_presets
from ..spec import looks_like_path


def read_texts(dataset: str) -> List[str]:
    """The raw texts of a dataset: a preset, local files (comma-separated), or a hub id."""
    if dataset in dataset_presets:
        preset = dataset_presets.get(dataset)
        if preset.path is not None:
            return [preset.path.read_text(encoding="utf-8")]
        return _hub_texts(preset.hub_id or dataset)
    parts = [p.strip() for p in dataset.split(",")]
    if all(looks_like_path(p) or Path(p).exists() for p in parts):
        return _file_texts([str(Path(p).expanduser()) for p in parts])
    return _hub_texts(dataset)


def _file_texts(files: List[str]) -> List[str]:
    suffix = Path(files[0]).suffix.lower()
    if suffix in (".txt", ".text"):
        return [Path(f).read_text(encoding="utf-8") for f in files]
    from datasets import load_dataset

    kind = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}[suffix]
    table = load_dataset(kind, data_files=files, split="train")
    return list(table[_text_column(table.column_names)])


def _hub_texts(hub_id: str) -> List[str]:
    from datasets import load_dataset

    name, _, config = hub_id.partition(":")
    table = load_dataset(name, config or None, split="train")
    return list(table[_text_column(table.column_names)])


def _text_column(columns: Sequence[str]) -> str:
    for candidate in ("text", "content", "document", "story"):
        if candidate in columns:
            return candidate
    raise ValueError(f"the dataset has no text column (looked for text, content, document, story; found {', '.join(columns)})")


def local_tokenizer(texts: Iterable[str], cache_dir: Path) -> Any:
    """A byte-level BPE tokenizer trained here on the data (no hub), cached by content hash.

    Every rank builds the same one deterministically; the cache only saves the time.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = list(texts)
    digest = hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"tokenizer-bpe{LOCAL_VOCAB_SIZE}-{digest}.json"
    if path.exists():
        tokenizer = Tokenizer.from_file(str(path))
    else:
        tokenizer = Tokenizer(models.BPE(unk_token=None))
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=LOCAL_VOCAB_SIZE, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tokenizer.train_from_iterator(texts, trainer)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tokenizer.save(str(tmp))
        os.replace(tmp, path)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def pack(texts: Iterable[str], tokenizer: Any, sequence_length: int) -> List[List[int]]:
    """Concatenate the texts (separated by EOS) and cut them into blocks of sequence_length tokens."""
    ids: List[int] = []
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        ids.append(tokenizer.eos_token_id)
    return [ids[i : i + sequence_length] for i in range(0, len(ids) - sequence_length + 1, sequence_length)]


class BlockDataset:
    """A torch-style dataset of packed blocks; labels are the inputs (the model shifts them)."""

    def __init__(self, blocks: List[List[int]]) -> None:
        self.blocks = blocks

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, index: int) -> dict:
        import torch

        ids = torch.tensor(self.blocks[index], dtype=torch.long)
        return {"input_ids": ids, "labels": ids.clone()}


def split_blocks(blocks: List[List[int]], eval_fraction: float) -> Tuple[List[List[int]], List[List[int]]]:
    if eval_fraction <= 0 or len(blocks) < 2:
        return blocks, []
    n_eval = max(1, int(len(blocks) * eval_fraction))
    return blocks[:-n_eval], blocks[-n_eval:]
