"""Typed telemetry samples, the source registry and the choice of a source."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Protocol, Type, runtime_checkable

from ..errors import GaudiNbError
from ..registry import Registry


@dataclass
class DeviceSample:
    """One device at one instant; None means the source could not tell.

    ``index`` is the driver's device index; a Gaudi card is labelled by its ``module_id``
    (the number HABANA_VISIBLE_MODULES uses), which is not the index.
    """

    index: int
    kind: str  # "hpu" | "cuda" | "cpu" (a rank process on a host without accelerators)
    label: str
    utilization_pct: Optional[float]
    memory_used_bytes: Optional[int]
    memory_total_bytes: Optional[int]
    power_w: Optional[float] = None
    temperature_c: Optional[float] = None
    pid: Optional[int] = None
    module_id: Optional[int] = None  # Gaudi only


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


@runtime_checkable
class WatchesModules(Protocol):
    """A Gaudi source that can be told the run's modules (HABANA_VISIBLE_MODULES) and then
    reports only those cards: another tenant's cards are not the run's, and their activity
    on the run's panel and /metrics would read as the run's."""

    def set_modules(self, modules: Optional[Iterable[int]]) -> None: ...


def hpu_label(index: int, module_id: Optional[int]) -> str:
    """'hpu 3' names module 3 (as HABANA_VISIBLE_MODULES does); the index only where the module is unknown."""
    return f"hpu {module_id}" if module_id is not None else f"hpu #{index}"


def parse_modules(modules: Any) -> Optional[List[int]]:
    """None, "0,1", or ids → a list of module ids (None: every card)."""
    if modules is None:
        return None
    if isinstance(modules, str):
        return [int(part) for part in modules.split(",") if part.strip()]
    return [int(m) for m in modules]


telemetry_sources: Registry[Type[TelemetrySource]] = Registry("telemetry")

# Richest first: HLML reads the driver directly, hl-smi parses text, NVML is the
# CUDA fallback, and host (psutil) always works.
SOURCE_ORDER = ("hlml", "hl-smi", "nvml", "host")


def _register_builtins() -> None:
    # Imported here, not at module top, so base.py has no cycle with the sources.
    from . import hlml, hlsmi, host, nvml  # noqa: F401


def _made(cls: Type[TelemetrySource], pids: Optional[Dict[int, int]], modules: Any) -> TelemetrySource:
    source = cls()
    if pids is not None and isinstance(source, WatchesProcesses):
        source.set_pids(pids)
    if modules is not None and isinstance(source, WatchesModules):
        source.set_modules(parse_modules(modules))
    return source


def pick_source(pids: Optional[Dict[int, int]] = None, prefer: Optional[str] = None, modules: Any = None) -> TelemetrySource:
    """An instance of the preferred source, else the first available in SOURCE_ORDER;
    ``pids`` (rank → pid) go to a source that watches processes and are ignored by the others;
    ``modules`` (the run's HABANA_VISIBLE_MODULES, "0,1" or ids) go to a Gaudi source, which
    then reports only those cards (unset: every card, as for a run on the whole node)."""
    _register_builtins()
    if prefer:
        cls = telemetry_sources.get(prefer)
        if not cls.available():
            raise GaudiNbError(
                f"telemetry source '{prefer}' is not available on this machine: "
                f"{getattr(cls, 'unavailable_reason', 'its library or tool was not found')}; "
                f"leave the source unset to pick the first of {', '.join(SOURCE_ORDER)} that works"
            )
        return _made(cls, pids, modules)
    for name in SOURCE_ORDER:
        cls = telemetry_sources.get(name)
        if cls.available():
            return _made(cls, pids, modules)
    # host is always available; reaching here means someone replaced it.
    raise GaudiNbError("no telemetry source is available: install psutil (pip install psutil)")
