"""NVIDIA GPUs through torch.cuda (used where a GPU is lent; the same code path as HPU)."""
from __future__ import annotations

from typing import Dict


class CUDA:
    name = "cuda"

    def available(self) -> bool:
        try:
            import torch

            return torch.cuda.is_available()
        except Exception:
            return False

    def device_string(self, local_rank: int) -> str:
        return f"cuda:{local_rank}"

    def default_precision(self) -> str:
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"

    def distributed_backend(self) -> str:
        return "nccl"

    def mark_step(self) -> None:
        return None

    def memory_stats(self) -> Dict[str, int]:
        import torch

        return {
            "in_use_bytes": int(torch.cuda.memory_allocated()),
            "max_in_use_bytes": int(torch.cuda.max_memory_allocated()),
            "reserved_bytes": int(torch.cuda.memory_reserved()),
        }

    def count(self) -> int:
        import torch

        return torch.cuda.device_count()
