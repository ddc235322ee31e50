"""Typed telemetry samples, the source registry and the choice of a source."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Protocol, Type, runtime_checkable

from ..errors import GaudiNbError
from ..registry import Registry


@dataclass
class DeviceSample:
    """One device at one instant; None means the source could not tell."""

    index: int
    kind: str  # "hpu" | "cuda" | "cpu" (a rank process on a host without accelerators)
    label: str
    utilization_pct: Optional[float]
    memory_used_bytes: Optional[int]
    memory_total_bytes: Optional[int]
    power_w: Optional[float] = None
    temperature_c: Optional[float] = None
    pid: Optional[int] = None


@dataclass
class HostSample:
    cpu_percent: float
    memory_used_bytes: int
    memory_total_bytes: int
    process_rss_bytes: int


@dataclass
class Sample:
    t: float
    source: str
    devices: List[DeviceSample] = field(default_factory=list)
    host: Optional[HostSample] = None

    def to_dict(self) -> Dict[str, Any]:
        """The JSON-ready body of a "telemetry" event."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "Sample":
        host = data.get("host")
        return cls(
            t=float(data["t"]),
            source=str(data["source"]),
            devices=[DeviceSample(**d) for d in data.get("devices") or []],
            host=HostSample(**host) if host else None,
        )


class TelemetrySource(Protocol):
    """What every entry of ``telemetry_sources`` provides; it is made with no arguments."""

    name: str

    @classmethod
    def available(cls) -> bool: ...

    def sample(self) -> Sample: ...


@runtime_checkable
class WatchesProcesses(Protocol):
    """A source that reports the rank processes (host); the device sources read cards, not pids."""

    def set_pids(self, pids: Optional[Dict[int, int]]) -> None: ...


telemetry_sources: Registry[Type[TelemetrySource]] = Registry("telemetry")

# Richest first: HLML reads the driver directly, hl-smi parses text, NVML is the
# CUDA fallback, and host (psutil) always works.
SOURCE_ORDER = ("hlml", "hl-smi", "nvml", "host")


def _register_builtins() -> None:
    # Imported here, not at module top, so base.py has no cycle with the sources.
    from . import hlml, hlsmi, host, nvml  # noqa: F401


def _made(cls: Type[TelemetrySource], pids: Optional[Dict[int, int]]) -> TelemetrySource:
    source = cls()
    if pids is not None and isinstance(source, WatchesProcesses):
        source.set_pids(pids)
    return source


def pick_source(pids: Optional[Dict[int, int]] = None, prefer: Optional[str] = None) -> TelemetrySource:
    """An instance of the preferred source, else the first available in SOURCE_ORDER;
    ``pids`` (rank → pid) go to a source that watches processes and are ignored by the others."""
    _register_builtins()
    if prefer:
        cls = telemetry_sources.get(prefer)
        if not cls.available():
            raise GaudiNbError(
                f"telemetry source '{prefer}' is not available on this machine: "
                f"{getattr(cls, 'unavailable_reason', 'its library or tool was not found')}; "
                f"leave the source unset to pick the first of {', '.join(SOURCE_ORDER)} that works"
            )
        return _made(cls, pids)
    for name in SOURCE_ORDER:
        cls = telemetry_sources.get(name)
        if cls.available():
            return _made(cls, pids)
    # host is always available; reaching here means someone replaced it.
    raise GaudiNbError("no telemetry source is available: install psutil (pip install psutil)")
