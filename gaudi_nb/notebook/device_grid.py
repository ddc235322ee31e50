"""DeviceGrid: the anywidget that shows per-device utilization and memory as heatmap cells (8 to 1024 devices)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import anywidget
import traitlets

GIB = 1024**3


def widgets_dir() -> Path:
    """The front-end files: gaudi_nb/widgets in an installed wheel, the repository's widgets/ in a checkout."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "widgets", here.parent / "widgets"):
        if (candidate / "device_grid.js").exists():
            return candidate
    raise FileNotFoundError(f"device_grid.js not found in {here / 'widgets'} or {here.parent / 'widgets'}: reinstall gaudi_nb")


def _pct(value: Optional[float]) -> int:
    return -1 if value is None else int(round(max(0.0, min(100.0, float(value)))))


def grid_values(devices: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """The synced trait values for a telemetry event's devices (pure; -1 means unknown)."""
    util: List[int] = []
    mem_pct: List[int] = []
    used_gb: List[float] = []
    total_gb: List[float] = []
    labels: List[str] = []
    for d in devices:
        util.append(_pct(d.get("utilization_pct")))
        used, total = d.get("memory_used_bytes"), d.get("memory_total_bytes")
        mem_pct.append(_pct(100.0 * used / total) if used is not None and total else -1)
        used_gb.append(-1.0 if used is None else round(used / GIB, 1))
        total_gb.append(-1.0 if not total else round(total / GIB, 1))
        labels.append(str(d.get("label") or f"{d.get('kind', 'device')} {d.get('index', len(labels))}"))
    return {"utilization": util, "memory_pct": mem_pct, "memory_used_gb": used_gb, "memory_total_gb": total_gb, "labels": labels, "summary": grid_summary(devices)}


def grid_summary(devices: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Mean/min/max utilization, memory in use and idle devices: what a 1024-cell grid needs in words."""
    n = len(devices)
    if not n:
        return {"count": 0, "text": ""}
    kinds = sorted({str(d.get("kind") or "device") for d in devices})
    util = [float(d["utilization_pct"]) for d in devices if d.get("utilization_pct") is not None]
    used = [int(d["memory_used_bytes"]) for d in devices if d.get("memory_used_bytes") is not None]
    total = memory_total(devices)
    out: Dict[str, Any] = {"count": n, "kinds": kinds}
    parts = [f"{n} × {'/'.join(kinds)}"]
    if util:
        out.update(mean=sum(util) / len(util), min=min(util), max=max(util), idle=sum(1 for u in util if u < 5.0))
        # a host sample's "device" is a rank process: its CPU percent counts cores (200% = two busy cores)
        what = "process CPU" if kinds == ["cpu"] else "util"
        parts.append(f"{what} mean {out['mean']:.0f}% (min {out['min']:.0f}, max {out['max']:.0f})")
        if out["idle"]:
            parts.append(f"{out['idle']} idle")
    else:
        parts.append("utilization unknown")
    if used:
        out["memory_used_bytes"] = sum(used)
        mem = f"memory {sum(used) / GIB:,.1f} GB"
        if total is not None:
            out["memory_total_bytes"] = total
            mem += f" of {total / GIB:,.0f} GB"
        parts.append(mem)
    if len(util) < n:
        parts.append(f"{n - len(util)} unknown")
    out["text"] = " · ".join(parts)
    return out


def memory_total(devices: Sequence[Dict[str, Any]]) -> Optional[int]:
    """The memory the devices have together, or None where one of them does not say.

    A host sample's "device" is a rank process whose total is its host's memory: the ranks of one node
    share it, so it counts once per node (two ranks on a 24 GB machine have 24 GB, not 48)."""
    total, hosts = 0, set()
    for d in devices:
        if d.get("memory_used_bytes") is None:
            continue
        if not d.get("memory_total_bytes"):
            return None
        if d.get("kind") == "cpu":
            if d.get("node") in hosts:
                continue
            hosts.add(d.get("node"))
        total += int(d["memory_total_bytes"])
    return total or None


class DeviceGrid(anywidget.AnyWidget):
    """Heatmap cells, one per device: colour is utilization (or memory, toggled in the view),
    a bar along the bottom is memory in use; the summary line reads the same at 8 or 1024."""

    _esm = widgets_dir() / "device_grid.js"
    _css = widgets_dir() / "device_grid.css"

    title = traitlets.Unicode("devices").tag(sync=True)
    placeholder = traitlets.Unicode("waiting for telemetry…").tag(sync=True)
    utilization = traitlets.List(traitlets.Int()).tag(sync=True)
    memory_pct = traitlets.List(traitlets.Int()).tag(sync=True)
    memory_used_gb = traitlets.List(traitlets.Float()).tag(sync=True)
    memory_total_gb = traitlets.List(traitlets.Float()).tag(sync=True)
    labels = traitlets.List(traitlets.Unicode()).tag(sync=True)
    summary = traitlets.Dict().tag(sync=True)

    def show(self, devices: Sequence[Dict[str, Any]], source: Optional[str] = None) -> None:
        """Show one telemetry event's devices (one message to the front end)."""
        values = grid_values(devices)
        kinds = values["summary"].get("kinds") or []
        self.title = f"devices ({source})" if source else ("devices" if not kinds else f"{'/'.join(kinds)} devices")
        with self.hold_sync():
            for key, value in values.items():
                setattr(self, key, value)


__all__ = ["DeviceGrid", "grid_summary", "grid_values", "memory_total", "widgets_dir"]
