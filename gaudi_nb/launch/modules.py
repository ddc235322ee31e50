"""Which Gaudi modules a run uses: a pure choice among the sets Intel supports, and a thin hl-smi edge.

``HABANA_VISIBLE_MODULES`` takes module IDs, not device indices (``hl-smi -Q index,module_id``
maps one to the other, and the mapping is not the identity). Intel supports partial-node
workloads of 2 or 4 cards only on these sets (Intel Gaudi docs, "Multiple Workloads on a
Single Docker"): pairs ``0,1`` ``2,3`` ``4,5`` ``6,7`` and quads ``0,1,2,3`` ``4,5,6,7``;
a 1-card run may take any module. In scale-up runs the list must name exactly the modules
the run uses ("Gaudi-to-process Assignment": its length equals the number of devices), and
each local rank takes the module at its position in the list.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

from ..errors import SpecError

MODULES_PER_NODE = 8
ALL_MODULES: Tuple[int, ...] = tuple(range(MODULES_PER_NODE))

SUPPORTED_SETS: Dict[int, Tuple[Tuple[int, ...], ...]] = {
    1: tuple((m,) for m in ALL_MODULES),
    2: ((0, 1), (2, 3), (4, 5), (6, 7)),
    4: ((0, 1, 2, 3), (4, 5, 6, 7)),
    8: (ALL_MODULES,),
}
SETS_IN_WORDS = "1, 2, 4 or 8 cards per node (pairs 0,1 2,3 4,5 6,7; quads 0,1,2,3 4,5,6,7)"


def parse_ids(text: str, name: str = "HABANA_VISIBLE_MODULES") -> List[int]:
    """``"0, 1,2"`` → ``[0, 1, 2]``; anything but comma-separated numbers is a SpecError."""
    ids: List[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit():
            raise SpecError(f"{name}={text} is not a comma-separated list of module ids (like 0,1)")
        ids.append(int(part))
    if len(set(ids)) != len(ids):
        raise SpecError(f"{name}={text} names a module twice")
    return ids


def _joined(ids: Iterable[int]) -> str:
    return ",".join(str(i) for i in ids)


def _packing_key(candidate: Tuple[int, ...], available: Set[int]) -> Tuple[int, ...]:
    """Prefer the set whose enclosing pair / quad / node has the fewest free modules left, so
    that whole pairs and quads stay free for the next run; then the lowest module id."""
    key: List[int] = []
    for size in (2, 4, 8):
        if size > len(candidate):
            start = (candidate[0] // size) * size
            key.append(sum(1 for m in range(start, start + size) if m in available))
    return tuple(key) + (candidate[0],)


def choose_modules(
    count: int,
    free: Optional[Sequence[int]] = None,
    visible: Optional[Sequence[int]] = None,
    mounted: Optional[int] = None,
) -> Optional[List[int]]:
    """The module ids a ``count``-card run on one Gaudi node should use.

    ``free``: the modules no other process holds (None: unknown, every module counts as free);
    ``visible``: HABANA_VISIBLE_MODULES as the container or pod set it (None: unset);
    ``mounted``: how many cards HABANA_VISIBLE_DEVICES gave this container (None: unset or ``all``).
    Returns the list to put in HABANA_VISIBLE_MODULES, or None when the run takes every card
    it can see and nothing needs setting. Raises SpecError, in one line, for a count Intel does
    not support or when no supported set is free.
    """
    if count not in SUPPORTED_SETS:
        raise SpecError(f"devices={count} on a Gaudi node: Intel supports {SETS_IN_WORDS}")
    free_set = set(ALL_MODULES if free is None else free)
    if visible is not None:
        if len(visible) < count:
            raise SpecError(
                f"HABANA_VISIBLE_MODULES={_joined(visible)} names {len(visible)} module(s) but devices={count}: "
                "unset it or lower devices"
            )
        if len(visible) == count:
            # the container or pod chose these cards: use them as given (the order maps local ranks)
            busy = [m for m in visible if m not in free_set]
            if busy:
                raise SpecError(
                    f"HABANA_VISIBLE_MODULES={_joined(visible)}: module(s) {_joined(busy)} are busy with another "
                    "process (hl-smi lists it): wait for it to end or name other modules"
                )
            return list(visible)
        available = free_set & set(visible)
        within = f" among HABANA_VISIBLE_MODULES={_joined(visible)}"
    else:
        if mounted is not None:
            if count > mounted:
                raise SpecError(f"HABANA_VISIBLE_DEVICES gives this container {mounted} card(s) but devices={count}: lower devices")
            if count == mounted:
                return None  # every card the container was given; their module ids need not be known
            if free is None:
                raise SpecError(
                    f"HABANA_VISIBLE_DEVICES gives this container {mounted} cards and hl-smi cannot say their module ids: "
                    f"set HABANA_VISIBLE_MODULES to {count} of them"
                )
        available = free_set
        within = ""
    candidates = [c for c in SUPPORTED_SETS[count] if set(c) <= available]
    if not candidates:
        free_text = _joined(sorted(available)) or "none"
        raise SpecError(
            f"no free set of {count} Gaudi module(s) for devices={count}{within} (free: {free_text}); "
            f"Intel supports {SETS_IN_WORDS}: wait for a run to end or lower devices"
        )
    best = min(candidates, key=lambda c: _packing_key(c, available))
    if visible is None and mounted is None and count == MODULES_PER_NODE:
        return None  # the whole node: HABANA_VISIBLE_MODULES unset means every module
    return list(best)


def visible_from_environ(environ: Mapping[str, str]) -> Tuple[Optional[List[int]], Optional[int]]:
    """(HABANA_VISIBLE_MODULES as ids, the number of cards HABANA_VISIBLE_DEVICES mounted) from an environment."""
    modules_text = (environ.get("HABANA_VISIBLE_MODULES") or "").strip()
    devices_text = (environ.get("HABANA_VISIBLE_DEVICES") or "").strip()
    visible = parse_ids(modules_text) if modules_text else None
    mounted: Optional[int] = None
    if devices_text and devices_text.lower() != "all":
        mounted = len(parse_ids(devices_text, "HABANA_VISIBLE_DEVICES"))
    return visible, mounted


# ---- the thin I/O edge: hl-smi ------------------------------------------------------------


@dataclass(frozen=True)
class ModuleState:
    """What hl-smi says about this node's cards (or the cards this container was given)."""

    present: Tuple[int, ...]
    busy: Dict[int, Tuple[int, ...]] = field(default_factory=dict)  # module id → pids holding it
    driver_version: Optional[str] = None
    firmware_version: Optional[str] = None
    hlsmi_version: Optional[str] = None

    @property
    def free(self) -> List[int]:
        return [m for m in self.present if m not in self.busy]


@dataclass(frozen=True)
class HlSmiSummary:
    """The parts of plain ``hl-smi`` output a launch and the doctor need."""

    hlsmi_version: Optional[str]
    firmware_version: Optional[str]
    driver_version: Optional[str]
    busy: Dict[int, Tuple[int, ...]]  # device index → pids


_HLSMI_VERSION = re.compile(r"HL-SMI Version:\s*hl-([0-9][\w.]*?)(?:-fw-([\w.]+))?\s*\|?\s*$")
_DRIVER_VERSION = re.compile(r"^\|?\s*Driver Version:\s*([\w.\-]+)")
_PROCESS_ROW = re.compile(r"^\|\s*(\d+)\s+(\d+|N/A)\b")


def parse_hlsmi_summary(text: str) -> HlSmiSummary:
    """Plain ``hl-smi``: the header (``HL-SMI Version: hl-1.23.0-fw-62.2.1.1``, ``Driver Version:
    1.23.0-2eae87a``) and the ``Compute Processes`` table, whose rows read ``AIP PID Type Process
    name Usage`` with the device index first and ``N/A`` for a card nobody holds."""
    hlsmi_version = firmware = driver = None
    busy: Dict[int, List[int]] = {}
    in_processes = False
    for line in text.splitlines():
        stripped = line.strip()
        match = _HLSMI_VERSION.search(stripped)
        if match:
            hlsmi_version, firmware = match.group(1), match.group(2)
            continue
        match = _DRIVER_VERSION.match(stripped)
        if match and "Nic" not in stripped:
            driver = match.group(1)
            continue
        if "Compute Processes" in stripped:
            in_processes = True
            continue
        if in_processes:
            match = _PROCESS_ROW.match(stripped)
            if match and match.group(2) != "N/A":
                busy.setdefault(int(match.group(1)), []).append(int(match.group(2)))
    return HlSmiSummary(hlsmi_version, firmware, driver, {index: tuple(pids) for index, pids in busy.items()})


def parse_index_module_csv(text: str) -> Dict[int, int]:
    """``hl-smi -Q index,module_id -f csv,noheader``: device index → module id."""
    mapping: Dict[int, int] = {}
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.split(",")]
        if len(cells) == 2 and cells[0].isdigit() and cells[1].isdigit():
            mapping[int(cells[0])] = int(cells[1])
    return mapping


def module_state(summary: HlSmiSummary, index_to_module: Mapping[int, int]) -> ModuleState:
    """Busy device indices translated to module ids."""
    busy = {index_to_module[i]: pids for i, pids in summary.busy.items() if i in index_to_module}
    return ModuleState(
        present=tuple(sorted(index_to_module.values())),
        busy=busy,
        driver_version=summary.driver_version,
        firmware_version=summary.firmware_version,
        hlsmi_version=summary.hlsmi_version,
    )


def _hlsmi(args: List[str]) -> str:
    # optimum-habana runs hl-smi with ENABLE_CONSOLE=true so that it prints to the console
    done = subprocess.run(["hl-smi", *args], capture_output=True, text=True, timeout=15, check=True,
                          env={**os.environ, "ENABLE_CONSOLE": "true"})
    return done.stdout


def read_module_state() -> Optional[ModuleState]:
    """Ask hl-smi which modules this node (or container) has and which another process holds;
    None when hl-smi is missing or fails (no Gaudi driver here). hl-smi shows other users'
    processes only to root outside a container (Intel's note), so a card busy elsewhere may
    look free: the launch then fails on that card as it would without this check."""
    if shutil.which("hl-smi") is None:
        return None
    try:
        index_to_module = parse_index_module_csv(_hlsmi(["-Q", "index,module_id", "-f", "csv,noheader"]))
        summary = parse_hlsmi_summary(_hlsmi([]))
    except (OSError, subprocess.SubprocessError):
        return None
    if not index_to_module:
        return None
    return module_state(summary, index_to_module)
