"""The hl-smi source: runs `hl-smi -Q … -f csv` once per sample and parses either CSV form."""
from __future__ import annotations

import csv
import io
import re
import shutil
import subprocess
import time
from typing import Dict, List, Optional, Tuple

from ..errors import GaudiNbError
from .base import DeviceSample, Sample, telemetry_sources
from .host import host_sample

QUERY_FIELDS = [
    "timestamp",
    "index",
    "module_id",
    "utilization.aip",
    "memory.used",
    "memory.total",
    "power.draw",
    "temperature.aip",
]

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


def parse_hlsmi_csv(text: str, fields: Optional[List[str]] = None) -> List[DeviceSample]:
    """Parse `hl-smi -Q … -f csv` output, with a header (units in names and values) or
    `noheader,nounits` (plain numbers, field order from ``fields``, memory in MiB)."""
    rows = [[cell.strip() for cell in row] for row in csv.reader(io.StringIO(text)) if any(c.strip() for c in row)]
    if not rows:
        return []
    header = [_split_header(cell) for cell in rows[0]]
    header_units: Dict[str, str] = {}
    if any(name == "index" for name, _ in header):  # a header row, not numbers
        names = [name for name, _ in header]
        header_units = {name: unit for name, unit in header}
        rows = rows[1:]
    else:
        names = list(fields or QUERY_FIELDS)
    devices: List[DeviceSample] = []
    for row in rows:
        if len(row) != len(names):
            raise GaudiNbError(f"hl-smi printed {len(row)} columns where {len(names)} were asked for: {row!r}")
        cells = dict(zip(names, row, strict=True))

        def field(name: str, cells: Dict[str, str] = cells) -> Optional[float]:
            # Memory defaults to MiB: that is hl-smi's unit, printed or not.
            unit = header_units.get(name) or ("mib" if name.startswith("memory.") else "")
            return _number(cells[name], unit) if name in cells else None

        index = int(field("index") or 0)
        used, total = field("memory.used"), field("memory.total")
        temperature = field("temperature.aip")
        devices.append(
            DeviceSample(
                index=index,
                kind="hpu",
                label=f"hpu {index}",
                utilization_pct=field("utilization.aip"),
                memory_used_bytes=None if used is None else int(used),
                memory_total_bytes=None if total is None else int(total),
                power_w=field("power.draw"),
                temperature_c=temperature,
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

    def __init__(self, pids: Optional[Dict[int, int]] = None) -> None:
        self.pids = dict(pids or {})

    def set_pids(self, pids: Optional[Dict[int, int]]) -> None:
        self.pids = dict(pids or {})

    def sample(self) -> Sample:
        try:
            done = subprocess.run(hlsmi_command(), capture_output=True, text=True, timeout=5, check=True)
        except (OSError, subprocess.SubprocessError) as exc:
            raise GaudiNbError(f"hl-smi failed ({exc}); check the driver with `hl-smi` in a terminal") from exc
        return Sample(t=time.time(), source=self.name, devices=parse_hlsmi_csv(done.stdout), host=host_sample())


telemetry_sources.register("hl-smi", HlSmiSource, aliases=("hlsmi",))
