"""NVIDIA GPUs through torch.cuda (used where a GPU is lent; the same code path as HPU)."""
from __future__ import annotations

import glob
import os
from typing import Dict


def gpu_device_nodes() -> bool:
    """An NVIDIA GPU is mounted here: its device nodes (/dev/nvidia0…), or WSL2's GPU node (/dev/dxg). Asked before
    torch.cuda: importing torch costs a second or more, which a process on a machine without a GPU never needs to pay."""
    return bool(glob.glob("/dev/nvidia[0-9]*")) or os.path.exists("/dev/dxg")


class CUDA:
    name = "cuda"

    def available(self) -> bool:
        if not gpu_device_nodes():  # a torch-free script rank on a CPU machine stays torch-free
            return False
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
