"""The hl-smi source: runs `hl-smi -Q … -f csv` once per sample and parses every CSV form it prints."""
from __future__ import annotations

import csv
import io
import re
import shutil
import subprocess
import time
from typing import Dict, Iterable, List, Optional, Set, Tuple

from ..errors import GaudiNbError
from .base import DeviceSample, Sample, hpu_label, telemetry_sources
from .host import host_sample

# No `timestamp`: the sample carries its own time, and hl-smi's timestamp format is not
# documented (a comma in it would shift every column after it).
QUERY_FIELDS = [
    "index",
    "module_id",
    "utilization.aip",
    "memory.used",
    "memory.total",
    "power.draw",
    "temperature.aip",
]

# Names `hl-smi -Q` takes (GAUDI.md). A data cell is a number, N/A, a date or a board
# name, never one of these, so one known name in the first row marks it a header.
KNOWN_FIELDS = frozenset(QUERY_FIELDS + ["timestamp", "name", "bus_id", "driver_version", "memory.free", "serial", "uuid"])
_KNOWN_PREFIXES = ("ecc.", "stats.violation.")

# hl-smi reports memory in MiB whether or not the unit is printed.
_MEMORY_UNITS = {"b": 1, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "kb": 1000, "mb": 1000**2, "gb": 1000**3}
_HEADER_UNIT = re.compile(r"^\s*([^\[]+?)\s*(?:\[(.*)\])?\s*$")
_VALUE = re.compile(r"^\s*([-+]?\d+(?:\.\d+)?)\s*([A-Za-z%]*)\s*$")


def hlsmi_command(fields: Optional[List[str]] = None) -> List[str]:
    return ["hl-smi", "-Q", ",".join(fields or QUERY_FIELDS), "-f", "csv,noheader,nounits"]


def _number(text: str, default_unit: str = "") -> Optional[float]:
    """'512 MiB' → bytes, '35 %' → 35.0, '98' → 98.0; 'N/A' and blanks → None."""
    match = _VALUE.match(text or "")
    if not match:
        return None
    value = float(match.group(1))
    unit = (match.group(2) or default_unit).lower()
    return value * _MEMORY_UNITS.get(unit, 1)


def _split_header(cell: str) -> Tuple[str, str]:
    """'memory.used [MiB]' → ('memory.used', 'mib')."""
    match = _HEADER_UNIT.match(cell.lower())
    assert match is not None  # the pattern accepts any string
    return match.group(1), (match.group(2) or "").strip()


def _is_header(cells: List[str], fields: Optional[List[str]]) -> bool:
    """True when the row names fields (known to hl-smi or asked for) instead of holding values."""
    asked = {name.lower() for name in fields or []}
    names = {_split_header(cell)[0] for cell in cells}
    return any(name in KNOWN_FIELDS or name in asked or name.startswith(_KNOWN_PREFIXES) for name in names)


def parse_hlsmi_csv(text: str, fields: Optional[List[str]] = None) -> List[DeviceSample]:
    """Parse any `hl-smi -Q … -f csv[,noheader][,nounits]` output into one sample per card.

    A header row, when printed, names the columns (and may carry units); without one the
    columns follow ``fields`` (default QUERY_FIELDS). Without an `index` column a card's
    index is its row: hl-smi prints cards in index order. A card is labelled by its `module_id`
    where that column is there (the number HABANA_VISIBLE_MODULES uses), else by its index
    (``hpu #3``). Memory is MiB unless a unit says otherwise.
    """
    rows = [[cell.strip() for cell in row] for row in csv.reader(io.StringIO(text)) if any(c.strip() for c in row)]
    if not rows:
        return []
    header_units: Dict[str, str] = {}
    if _is_header(rows[0], fields):
        header = [_split_header(cell) for cell in rows.pop(0)]
        names = [name for name, _ in header]
        header_units = {name: unit for name, unit in header}
    else:
        names = [name.lower() for name in fields or QUERY_FIELDS]
    devices: List[DeviceSample] = []
    for position, row in enumerate(rows):
        if len(row) != len(names):
            raise GaudiNbError(f"hl-smi printed {len(row)} columns where {len(names)} were asked for: {row!r}")
        cells = dict(zip(names, row, strict=True))

        def field(name: str, cells: Dict[str, str] = cells) -> Optional[float]:
            # Memory defaults to MiB: that is hl-smi's unit, printed or not.
            unit = header_units.get(name) or ("mib" if name.startswith("memory.") else "")
            return _number(cells[name], unit) if name in cells else None

        reported = field("index")
        index = position if reported is None else int(reported)
        module = field("module_id")
        module_id = None if module is None else int(module)
        used, total = field("memory.used"), field("memory.total")
        devices.append(
            DeviceSample(
                index=index,
                kind="hpu",
                label=hpu_label(index, module_id),
                utilization_pct=field("utilization.aip"),
                memory_used_bytes=None if used is None else int(used),
                memory_total_bytes=None if total is None else int(total),
                power_w=field("power.draw"),
                temperature_c=field("temperature.aip"),
                module_id=module_id,
            )
        )
    return devices


class HlSmiSource:
    """Runs hl-smi once per sample: simple and always present with the driver, but it
    costs a process start each time, so HLML is preferred where its library loads."""

    name = "hl-smi"
    unavailable_reason = "hl-smi is not on PATH (it comes with the Intel Gaudi driver)"

    @classmethod
    def available(cls) -> bool:
        return shutil.which("hl-smi") is not None

    def __init__(self) -> None:
        self._modules: Optional[Set[int]] = None

    def set_modules(self, modules: Optional[Iterable[int]]) -> None:
        """Report only the run's cards (by module id); None: every card."""
        self._modules = None if modules is None else {int(m) for m in modules}

    def sample(self) -> Sample:
        try:
            done = subprocess.run(hlsmi_command(), capture_output=True, text=True, timeout=5, check=True)
        except (OSError, subprocess.SubprocessError) as exc:
            raise GaudiNbError(f"hl-smi failed ({exc}); check the driver with `hl-smi` in a terminal") from exc
        devices = parse_hlsmi_csv(done.stdout)
        if self._modules is not None:
            devices = [d for d in devices if d.module_id is None or d.module_id in self._modules]
        return Sample(t=time.time(), source=self.name, devices=devices, host=host_sample())


telemetry_sources.register("hl-smi", HlSmiSource, aliases=("hlsmi",))
