"""Model FLOPs utilization: achieved TFLOP/s from parameters and tokens per second, against the catalog's peak."""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Dict, Optional

from .catalog import Accelerator, load_accelerators
from .estimate import training_flops


@dataclass(frozen=True)
class Peak:
    tflops: Optional[float]  # per device, dense; None when unknown
    source: str  # where the figure comes from, or why it is unknown


@lru_cache(maxsize=1)
def _packaged_table() -> Dict[str, Accelerator]:
    # the record folds a worker_start each time a view re-reads a run: read the shipped CSV once
    return load_accelerators()


def find_accelerator(device_name: Optional[str], table: Optional[Dict[str, Accelerator]] = None) -> Optional[Accelerator]:
    """The catalog row whose runtime name is in the device's name: the longest match wins (GAUDI3 before GAUDI)."""
    if not device_name:
        return None
    name = device_name.upper()
    best, best_length = None, 0
    for accelerator in (table if table is not None else _packaged_table()).values():
        for runtime_name in accelerator.runtime_names:
            # whole words only: GAUDI must not match inside GAUDI3
            if re.search(rf"(?<![A-Z0-9]){re.escape(runtime_name)}(?![A-Z0-9])", name) and len(runtime_name) > best_length:
                best, best_length = accelerator, len(runtime_name)
    return best


def peak_for(device_name: Optional[str], precision: Optional[str], table: Optional[Dict[str, Accelerator]] = None) -> Peak:
    """The peak dense TFLOP/s of one device at the run's precision, with its source; unknown is said, never guessed."""
    accelerator = find_accelerator(device_name, table)
    if accelerator is None:
        return Peak(None, f"unknown: no peak in the catalog for {device_name or 'this device'}")
    if precision != "bf16":
        return Peak(None, f"unknown: the catalog has {accelerator.name}'s BF16 peak only, and this run is {precision}")
    if accelerator.peak_bf16_tflops is None:
        return Peak(None, f"unknown: no public BF16 peak found for {accelerator.name}")
    return Peak(accelerator.peak_bf16_tflops, f"catalog: {accelerator.name} BF16 {accelerator.peak_bf16_tflops:g} TFLOP/s, {accelerator.source} (as of {accelerator.as_of})")


def achieved_tflops(parameters: Optional[float], tokens_per_second: Optional[float]) -> Optional[float]:
    """Training TFLOP/s of the whole run: 6 × parameters per token (forward 2N, backward 4N; attention's
    sequence-length term left out, as in the usual MFU definition). A LoRA run still does the frozen
    model's forward and backward through every layer, so it counts 6N of all parameters too: this
    slightly overstates it (the frozen weights' own gradients, about 2N, are not computed)."""
    if not parameters or not tokens_per_second:
        return None
    return training_flops(parameters, tokens_per_second) / 1e12


def mfu(tflops: Optional[float], peak_tflops_per_device: Optional[float], devices: Optional[int]) -> Optional[float]:
    """Achieved over peak, across every device of the run (a fraction: 0.4 is 40 %)."""
    if tflops is None or not peak_tflops_per_device or not devices:
        return None
    return tflops / (peak_tflops_per_device * devices)
