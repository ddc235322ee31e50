"""The HLML source: Gaudi utilization, memory, power and temperature read through habana-pyhlml."""
from __future__ import annotations

import contextlib
import io
import os
import threading
import time
from typing import Any, Iterable, List, Optional, Set

from ..errors import require
from .base import DeviceSample, Sample, hpu_label, telemetry_sources
from .host import host_sample

LIBHLML = "/usr/lib/habanalabs/libhlml.so"
_init_lock = threading.Lock()
_initialised = False


def _pyhlml() -> Any:
    return require("pyhlml", "habana", "Gaudi telemetry through HLML")


def _init() -> Any:
    """hlmlInit once per process; pyhlml prints to stdout when the library is missing, so hush it."""
    global _initialised
    pyhlml = _pyhlml()
    with _init_lock:
        if not _initialised:
            with contextlib.redirect_stdout(io.StringIO()):
                pyhlml.hlmlInit()
            _initialised = True
    return pyhlml


def _or_none(read: Any, *args: Any) -> Any:
    # One unsupported query (power on some boards) must not hide the others.
    try:
        return read(*args)
    except Exception:
        return None


class HlmlSource:
    name = "hlml"
    unavailable_reason = f"{LIBHLML} did not load (no Intel Gaudi driver here) or habana-pyhlml is not installed"

    @classmethod
    def available(cls) -> bool:
        if not os.path.exists(LIBHLML):  # skip the import and pyhlml's stdout message
            return False
        try:
            _init()
            return True
        except Exception:
            return False

    def __init__(self) -> None:
        self._hlml = _init()
        count = self._hlml.hlmlDeviceGetCount()
        self._handles = [self._hlml.hlmlDeviceGetHandleByIndex(i) for i in range(count)]
        # a card's module id is fixed: read it once (hlmlDeviceGetModuleID, habana-pyhlml 1.24)
        self._module_ids: List[Optional[int]] = [_or_none(self._hlml.hlmlDeviceGetModuleID, h) for h in self._handles]
        self._modules: Optional[Set[int]] = None

    def set_modules(self, modules: Optional[Iterable[int]]) -> None:
        """Report only the run's cards (by module id); None: every card."""
        self._modules = None if modules is None else {int(m) for m in modules}

    def sample(self) -> Sample:
        hlml = self._hlml
        aip_sensor = hlml.hlml_t.HLML_TEMP_SENS.HLML_TEMPERATURE_ON_AIP
        devices: List[DeviceSample] = []
        for index, handle in enumerate(self._handles):
            module_id = self._module_ids[index]
            if self._modules is not None and module_id is not None and module_id not in self._modules:
                continue  # not one of the run's cards
            utilization = _or_none(hlml.hlmlDeviceGetUtilizationRates, handle)
            memory = _or_none(hlml.hlmlDeviceGetMemoryInfo, handle)
            power_mw = _or_none(hlml.hlmlDeviceGetPowerUsage, handle)
            temperature = _or_none(hlml.hlmlDeviceGetTemperature, handle, aip_sensor)
            devices.append(
                DeviceSample(
                    index=index,
                    kind="hpu",
                    label=hpu_label(index, module_id),
                    utilization_pct=None if utilization is None else float(utilization.aip),
                    # Gaudi pre-allocates its memory: from outside it looks full; the
                    # worker's torch.hpu.memory_stats() is the number to trust.
                    memory_used_bytes=None if memory is None else int(memory.used),
                    memory_total_bytes=None if memory is None else int(memory.total),
                    power_w=None if power_mw is None else power_mw / 1000.0,
                    temperature_c=None if temperature is None else float(temperature),
                    module_id=module_id,
                )
            )
        return Sample(t=time.time(), source=self.name, devices=devices, host=host_sample())


telemetry_sources.register("hlml", HlmlSource, aliases=("pyhlml",))
