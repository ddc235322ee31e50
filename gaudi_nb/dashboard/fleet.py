"""The Fleet page's data: each node's device history binned for the heat maps, and the fleet table (what each
node has, runs and costs, and whether it is idle while it costs money). No Panel here, as in data_store."""
from __future__ import annotations

import re
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from ..cost import billing
from ..events import ACTIVE_STATUSES

LOCAL_NODE = "local"
# The Fleet page's utilization column: the devices' mean over the last minute. Whether a node is idle is
# billing's one rule (cost/billing.py), over the same history; a node idle while it costs money stands out.
UTILIZATION_SHOWN_S = 60.0
HEATMAP_WINDOW_S = 600.0
HEATMAP_COLUMNS = 120  # 5 s bins over ten minutes: a 1024-device map stays an image of 1024 × 120 cells


class DeviceHistory:
    """One node's telemetry over the heat map's window, already binned: per device and time bin, the sum and
    count of utilization (%) and memory in use (% of the device's), in ring arrays.

    A sample adds into its bin as it arrives, so drawing the map is array slicing, not a pass over every
    sample of every device (128 nodes × 8 devices × 600 samples would be half a million).
    """

    def __init__(self, window_s: float = HEATMAP_WINDOW_S, columns: int = HEATMAP_COLUMNS) -> None:
        self.columns = columns
        self.width = window_s / columns
        self.labels: List[str] = []
        self.kind: Optional[str] = None
        self._rows: Dict[str, int] = {}
        self.sums = np.zeros((2, 0, columns))  # metric (0 utilization, 1 memory) × device × slot
        self.counts = np.zeros((2, 0, columns))
        self.bins = np.full(columns, -1, dtype=np.int64)  # which absolute bin each slot holds now
        self.last_t: Optional[float] = None

    def _row(self, label: str) -> int:
        row = self._rows.get(label)
        if row is None:
            row = self._rows[label] = len(self.labels)
            self.labels.append(label)
            grow = np.zeros((2, 1, self.columns))
            self.sums = np.concatenate([self.sums, grow], axis=1)
            self.counts = np.concatenate([self.counts, grow.copy()], axis=1)
        return row

    def add(self, t: float, devices: Sequence[Dict[str, Any]], window_s: Optional[float] = None) -> None:
        absolute = int(t // self.width)
        slot = absolute % self.columns
        if self.bins[slot] != absolute:
            if self.bins[slot] > absolute:
                return  # older than the window this ring holds
            self.bins[slot] = absolute
            self.sums[:, :, slot] = 0
            self.counts[:, :, slot] = 0
        for d in devices:
            row = self._row(str(d.get("label", d.get("index"))))
            utilization = d.get("utilization_pct")
            used, total = d.get("memory_used_bytes"), d.get("memory_total_bytes")
            if utilization is not None:
                self.sums[0, row, slot] += float(utilization)
                self.counts[0, row, slot] += 1
            if used is not None and total:
                self.sums[1, row, slot] += float(used) / float(total) * 100
                self.counts[1, row, slot] += 1
            self.kind = d.get("kind") or self.kind
        self.last_t = t if self.last_t is None else max(self.last_t, t)

    def busiest(self, now: float, window_s: float) -> List[Tuple[float, Optional[float]]]:
        """(end of bin, the busiest device's mean utilization in it) for each sampled bin of the last window_s: the
        samples billing's idle rule reads (the node's autostop samples its busiest device too)."""
        columns = max(1, int(round(window_s / self.width)))
        means = self.window(0, now, columns)
        first = int(now // self.width) - columns + 1
        peak = np.where(np.isnan(means), -np.inf, means).max(axis=0, initial=-np.inf)
        return [((first + column + 1) * self.width, float(value)) for column, value in enumerate(peak) if value != -np.inf]

    def window(self, metric: int, now: float, columns: Optional[int] = None) -> np.ndarray:
        """Device × bin means for the `columns` bins that end at `now` (NaN where nothing was sampled)."""
        columns = self.columns if columns is None else min(columns, self.columns)
        wanted = np.arange(int(now // self.width) - columns + 1, int(now // self.width) + 1)
        slots = wanted % self.columns
        valid = self.bins[slots] == wanted
        sums, counts = self.sums[metric][:, slots], self.counts[metric][:, slots]
        with np.errstate(invalid="ignore", divide="ignore"):
            means = sums / counts
        means[:, ~valid] = np.nan
        means[counts == 0] = np.nan
        return means


def heatmap(histories: Dict[str, DeviceHistory], metric: str = "utilization", now: Optional[float] = None, window_s: float = HEATMAP_WINDOW_S, columns: int = HEATMAP_COLUMNS) -> Dict[str, Any]:
    """Devices × time as one array (NaN where nothing was sampled), rows grouped by node.

    A raster, not one glyph per cell: 1024 devices × 120 time bins draw as one image, and the
    rows are labelled per node (`node_ticks`), which is what stays readable at that size.
    """
    now = time.time() if now is None else now
    index = 0 if metric == "utilization" else 1
    rows: List[str] = []
    node_ticks: List[Tuple[float, str]] = []
    blocks: List[np.ndarray] = []
    for node in sorted(histories):
        h = histories[node]
        if not h.labels:
            continue
        node_ticks.append((len(rows) + len(h.labels) / 2, node))
        rows.extend(f"{node} {label}" for label in h.labels)
        blocks.append(h.window(index, now, columns))
    values = np.vstack(blocks) if blocks else np.full((0, columns), np.nan)
    return {"values": values, "rows": rows, "node_ticks": node_ticks, "start": now - window_s, "end": now, "metric": metric}


def node_utilization(history: Optional[DeviceHistory], now: float, window_s: float = UTILIZATION_SHOWN_S) -> Optional[float]:
    """Mean utilization of a node's devices over the last window; None when nothing was sampled."""
    if history is None or not history.labels:
        return None
    columns = max(1, int(round(window_s / history.width)))
    means = history.window(0, now, columns)
    return None if np.isnan(means).all() else float(np.nanmean(means))


def node_idle(active: Sequence[Dict[str, Any]], history: Optional[DeviceHistory], now: float, rule: billing.IdleRule = billing.IDLE) -> bool:
    """billing's idle rule for a node from the store's view: the runs active on it and its telemetry (which only a
    run's agent writes). A run that started less than the rule's window ago is not judged yet (warm-up is quiet)."""
    starts = [float(r["started_at"] if r.get("started_at") is not None else r.get("created_at") or now) for r in active]
    samples = history.busiest(now, rule.window_s) if history is not None and history.labels else []
    return billing.is_idle(samples, now, active_runs=len(active), watched_since=max(starts) if starts else None, rule=rule)


def active_on(records: Sequence[Dict[str, Any]]) -> Dict[str, List[Dict[str, Any]]]:
    """The active runs on each node name ("local": this machine)."""
    out: Dict[str, List[Dict[str, Any]]] = {}
    for r in records:
        if r.get("status") in ACTIVE_STATUSES:
            for name in billing.run_targets(r):
                out.setdefault(name, []).append(r)
    return out


def fleet_frame(node_records: Sequence[Dict[str, Any]], records: Sequence[Dict[str, Any]], histories: Dict[str, DeviceHistory], now: Optional[float] = None) -> pd.DataFrame:
    """Every node (this machine always, then attached ones and any a run reported from): what it has,
    what runs on it, what it costs per hour and has cost (billing's), how busy it is, and whether it is idle
    (billing's rule) while it costs money."""
    now = time.time() if now is None else now
    blank = {"address": None, "accelerator": None, "devices": None, "price_per_hour": None, "usd_per_hour": None, "usd": None}
    nodes: Dict[str, Dict[str, Any]] = {LOCAL_NODE: {**blank, "node": LOCAL_NODE, "address": "this machine"}}
    down: Dict[str, str] = {}  # provisioned machines that are not running: billed for nothing (a terminated one is left out)
    for n in node_records:
        if n.get("state") == "terminated":
            continue
        if n.get("provider") and not billing.billed_now(n):
            down[str(n["name"])] = str(n.get("state") or "stopped")
        cluster = (n.get("resources") or {}).get("slurm")
        if cluster:  # a Slurm cluster: its nodes, each as Slurm names it (a run's events say the same names); billed per job, not standing
            for member in cluster.get("nodes") or []:
                gres = member.get("gres") or {}
                nodes[str(member["name"])] = {**blank, "node": str(member["name"]), "address": f"{n['name']} ({member.get('state')})",
                                              "accelerator": ":".join(str(p) for p in (gres.get("name"), gres.get("type"), gres.get("count")) if p) or "cpu",
                                              "devices": gres.get("count")}
            continue
        spend = billing.machine_spend(n, now)
        nodes[str(n["name"])] = {
            **blank,
            "node": str(n["name"]),
            "address": n.get("url") or n.get("host"),
            "accelerator": n.get("accelerator"),
            "devices": n.get("device_count"),
            "price_per_hour": n.get("price_per_hour"),  # provisioned nodes carry their price; attached ones may not
            "usd_per_hour": spend["usd_per_hour"],
            "usd": spend["usd"],
        }
    active = active_on(records)
    clusters = {str(n["name"]): n for n in node_records if str(n.get("url") or "").startswith("k8s://") and n.get("state") != "terminated"}
    for name, n in clusters.items():  # a cluster's Gaudi nodes under it; its price is per node, billed only while our pods run
        nodes[name]["price_per_hour"] = None
        for gaudi in ((n.get("resources") or {}).get("kubernetes") or {}).get("gaudi_nodes") or []:
            free = "" if gaudi.get("free") is None else f" ({gaudi['free']} free when checked)"
            nodes[f"{name}/{gaudi['name']}"] = {**blank, "node": f"{name}/{gaudi['name']}", "address": f"{n['url']} node{free}", "accelerator": "hpu", "devices": gaudi.get("cards")}
    for name in histories:  # a run's pods on a cluster report as nodes of their own: our pods
        nodes.setdefault(name, {**blank, "node": name, **({"address": f"pod on {_cluster_of(name, active, clusters)}"} if _cluster_of(name, active, clusters) else {})})
    for name, runs in active.items():
        nodes.setdefault(name, {**blank, "node": name})
        for r in runs:
            c = r.get("cost") or {}
            if nodes[name]["price_per_hour"] is None and c.get("price_per_hour") is not None:
                nodes[name]["price_per_hour"] = c["price_per_hour"]
            if nodes[name]["accelerator"] is None:
                nodes[name]["accelerator"] = r.get("accelerator")
    rows = []
    for name, n in nodes.items():
        history = histories.get(name)
        if n["devices"] is None and history is not None and history.labels:
            n["devices"] = len(history.labels)
        if n["accelerator"] is None and history is not None:
            n["accelerator"] = history.kind
        run_ids = [str(r["run_id"]) for r in active.get(name) or []]
        costs = n["price_per_hour"] is not None and float(n["price_per_hour"]) > 0 and name not in down
        idle = node_idle(active.get(name) or [], history, now)
        state = down.get(name) or (("idle, costs money" if costs else "idle") if idle else "busy")
        rows.append(dict(n, runs=", ".join(run_ids), active_runs=len(run_ids), utilization_pct=node_utilization(history, now), state=state))
    frame = pd.DataFrame(rows, columns=["node", "state", "address", "accelerator", "devices", "active_runs", "runs", "utilization_pct", "price_per_hour", "usd_per_hour", "usd"])
    order = frame["state"].map({"idle, costs money": 0, "busy": 1, "idle": 2}).fillna(3)  # then stopped machines
    return frame.assign(_order=order).sort_values(["_order", "node"], kind="stable").drop(columns="_order").reset_index(drop=True)

def _cluster_of(node: str, active: Dict[str, List[Dict[str, Any]]], clusters: Dict[str, Dict[str, Any]]) -> Optional[str]:
    """The attached cluster a pod (a node name that is no record's) trains on for an active run, if any."""
    for name in clusters:
        if any(re.sub(r"[^a-z0-9-]+", "-", str(r["run_id"]).lower())[:40] in node for r in active.get(name) or []):  # pods are <job>-<index>, the job named after the run
            return name
    return None


__all__ = ["DeviceHistory", "heatmap", "node_utilization", "node_idle", "active_on", "fleet_frame", "LOCAL_NODE"]
