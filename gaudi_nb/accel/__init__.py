"""Accelerators: one module each (hpu, cuda, cpu); detect() picks the first present."""
from __future__ import annotations

import os

from ..registry import Registry
from .base import Accelerator
from .cpu import CPU
from .cuda import CUDA, gpu_device_nodes
from .hpu import HPU

accelerators: Registry = Registry("accelerators")
accelerators.register("hpu", HPU, aliases=("gaudi",))
accelerators.register("cuda", CUDA, aliases=("gpu",))
accelerators.register("cpu", CPU)


def detect() -> Accelerator:
    """The accelerator this process trains on: $GAUDI_NB_ACCELERATOR if set, else hpu, cuda, cpu in that order."""
    forced = os.environ.get("GAUDI_NB_ACCELERATOR")
    if forced:
        return accelerators.get(forced)()
    for name in ("hpu", "cuda", "cpu"):
        accel = accelerators.get(name)()
        if accel.available():
            return accel
    return CPU()


def detect_name() -> str:
    """The accelerator name without opening a device, for the agent: a process that
    opens a Gaudi card holds it, and the ranks need every card."""
    import glob
    import importlib.util

    forced = os.environ.get("GAUDI_NB_ACCELERATOR")
    if forced:
        return accelerators.get(forced)().name
    if importlib.util.find_spec("habana_frameworks") is not None and (glob.glob("/dev/accel/accel*") or glob.glob("/dev/hl[0-9]*")):
        return "hpu"
    # NVIDIA's device nodes, not torch.cuda: importing torch here costs the agent a second or more
    # at every start, and the agent never computes (the ranks detect() for real)
    if importlib.util.find_spec("torch") is not None and gpu_device_nodes():
        return "cuda"
    return "cpu"


__all__ = ["Accelerator", "CPU", "CUDA", "HPU", "accelerators", "detect", "detect_name"]
