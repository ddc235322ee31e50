"""The NVML source: CUDA device utilization, memory, power and temperature through nvidia-ml-py."""
from __future__ import annotations

import threading
import time
from typing import Any, List

from ..errors import require
from .base import DeviceSample, Sample, telemetry_sources
from .host import host_sample

_init_lock = threading.Lock()
_initialised = False


def _init() -> Any:
    global _initialised
    pynvml = require("pynvml", "nvidia", "CUDA telemetry through NVML")
    with _init_lock:
        if not _initialised:
            pynvml.nvmlInit()
            _initialised = True
    return pynvml


def _or_none(read: Any, *args: Any) -> Any:
    # One unsupported query (power on some boards) must not hide the others.
    try:
        return read(*args)
    except Exception:
        return None


class NvmlSource:
    name = "nvml"
    unavailable_reason = "NVML did not initialise (no NVIDIA driver here) or nvidia-ml-py is not installed"

    @classmethod
    def available(cls) -> bool:
        try:
            return _init().nvmlDeviceGetCount() > 0
        except Exception:
            return False

    def __init__(self) -> None:
        self._nvml = _init()
        self._handles = [self._nvml.nvmlDeviceGetHandleByIndex(i) for i in range(self._nvml.nvmlDeviceGetCount())]

    def sample(self) -> Sample:
        nvml = self._nvml
        devices: List[DeviceSample] = []
        for index, handle in enumerate(self._handles):
            utilization = _or_none(nvml.nvmlDeviceGetUtilizationRates, handle)
            memory = _or_none(nvml.nvmlDeviceGetMemoryInfo, handle)
            power_mw = _or_none(nvml.nvmlDeviceGetPowerUsage, handle)
            temperature = _or_none(nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU)
            devices.append(
                DeviceSample(
                    index=index,
                    kind="cuda",
                    label=f"cuda {index}",
                    utilization_pct=None if utilization is None else float(utilization.gpu),
                    memory_used_bytes=None if memory is None else int(memory.used),
                    memory_total_bytes=None if memory is None else int(memory.total),
                    power_w=None if power_mw is None else power_mw / 1000.0,
                    temperature_c=None if temperature is None else float(temperature),
                )
            )
        return Sample(t=time.time(), source=self.name, devices=devices, host=host_sample())


telemetry_sources.register("nvml", NvmlSource, aliases=("nvidia",))
