"""The team dashboard's data: runs, nodes, devices and money from a RunStore, as DataFrames and dicts (no Panel here)."""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
from sqlalchemy import bindparam, select

from .. import runs_table
from ..cost import billing
from ..events import ACTIVE_STATUSES
from ..runs_table import project_of
from ..store import EventRow, RunRow, RunStore
from ..summary import public
from .run_detail import RunDetail

LOCAL_NODE = "local"
# The Fleet page's utilization column: the devices' mean over the last minute. Whether a node is idle is
# billing's one rule (cost/billing.py), over the same history; a node idle while it costs money stands out.
UTILIZATION_SHOWN_S = 60.0
HEATMAP_WINDOW_S = 600.0
HEATMAP_COLUMNS = 120  # 5 s bins over ten minutes: a 1024-device map stays an image of 1024 × 120 cells
RUN_COLUMNS = ["run_id", "name", "status", "owner", "project", "target", "nodes", "devices", "model", "step", "max_steps", "tokens_per_second", "loss", "usd", "usd_per_million_tokens", "budget_usd", "created_at", "kind"]
LIVENESS_CHECK_S = 2.0
REMOTE_SYNC_S = 0.5


def run_row(record: Dict[str, Any]) -> Dict[str, Any]:
    """One line of the Runs table: the row every runs table shows (gaudi_nb.runs_table), as the frame's columns."""
    row = {column: value for column, value in runs_table.run_row(record).items() if column in RUN_COLUMNS}
    row["owner"] = row["owner"] or "unknown"
    created = row["created_at"]
    row["created_at"] = pd.Timestamp(created, unit="s", tz="UTC") if created else pd.NaT
    return row


def runs_frame(records: Sequence[Dict[str, Any]]) -> pd.DataFrame:
    """The Runs table, newest first."""
    frame = pd.DataFrame([run_row(r) for r in records], columns=RUN_COLUMNS)
    return frame.sort_values("created_at", ascending=False, kind="stable").reset_index(drop=True) if len(frame) else frame


def filter_runs(frame: pd.DataFrame, *, status: Optional[str] = None, owner: Optional[str] = None, text: str = "", active_only: bool = False) -> pd.DataFrame:
    """Rows matching a status, an owner, a piece of text (id, name, model or project) or only active runs."""
    keep = pd.Series(True, index=frame.index)
    if status:
        keep &= frame["status"] == status
    if owner:
        keep &= frame["owner"] == owner
    if active_only:
        keep &= frame["status"].isin(ACTIVE_STATUSES)
    if text:
        needle = text.lower()
        haystack = [" ".join(str(v) for v in row if isinstance(v, str)).lower() for row in frame[["run_id", "name", "model", "project"]].itertuples(index=False)]
        keep &= pd.Series([needle in text for text in haystack], index=frame.index, dtype=bool)
    return frame[keep].reset_index(drop=True)


# -- money (billing's: cost/billing.py) -----------------------------------------------------
def spend_by(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """Dollars per owner or project (known spend summed; runs without a price counted apart), biggest first."""
    if not len(frame):
        return pd.DataFrame({column: [], "usd": [], "runs": [], "unknown_runs": []})
    grouped = frame.groupby(column, dropna=False)
    out = pd.DataFrame({"usd": grouped["usd"].sum(min_count=0), "runs": grouped.size(), "unknown_runs": grouped["usd"].apply(lambda s: int(s.isna().sum()))}).reset_index()
    return out.sort_values("usd", ascending=False, kind="stable").reset_index(drop=True)


def budgets_frame(records: Sequence[Dict[str, Any]], team_budgets: Optional[Dict[str, Dict[str, float]]] = None, now: Optional[float] = None) -> pd.DataFrame:
    """Every budget and how close it is: each run's budget_usd, and the team's monthly budgets per user and project
    (from $GAUDI_NB_HOME/budgets.json: {"users": {"alice": 500}, "projects": {"llama": 2000}})."""
    rows: List[Dict[str, Any]] = []
    for r in records:
        c = r.get("cost") or {}
        if c.get("budget_usd") is None:
            continue
        spent = c.get("usd")
        rows.append({"budget": f"run {r['run_id']}", "scope": "run", "usd": spent, "budget_usd": float(c["budget_usd"]), "fraction": None if spent is None else float(spent) / float(c["budget_usd"]), "status": r.get("status")})
    month = billing.day_of(time.time() if now is None else now)[:7]
    this_month = [r for r in records if billing.day_of(r.get("created_at") or 0)[:7] == month]
    for scope, key in (("users", "owner"), ("projects", "project")):
        for name, limit in ((team_budgets or {}).get(scope) or {}).items():
            mine = [r for r in this_month if (run_row(r)[key] == name)]
            spent = [(r.get("cost") or {}).get("usd") for r in mine]
            total = sum(float(usd) for usd in spent if usd is not None)
            rows.append({"budget": f"{scope[:-1]} {name} ({month})", "scope": scope[:-1], "usd": total, "budget_usd": float(limit), "fraction": total / float(limit) if limit else None, "status": None})
    frame = pd.DataFrame(rows, columns=["budget", "scope", "usd", "budget_usd", "fraction", "status"])
    return frame.sort_values("fraction", ascending=False, na_position="last", kind="stable").reset_index(drop=True)


def read_team_budgets(home: Optional[Path] = None) -> Dict[str, Dict[str, float]]:
    from .. import paths

    path = (home or paths.home()) / "budgets.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {scope: {str(k): float(v) for k, v in (data.get(scope) or {}).items()} for scope in ("users", "projects")}


# -- devices and nodes --------------------------------------------------------------------
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
    for name in histories:
        nodes.setdefault(name, {**blank, "node": name})
    active = active_on(records)
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


# -- the whole dashboard ------------------------------------------------------------------
class DashboardData:
    """What every page shows, read from a RunStore and kept current by refresh().

    refresh() is cheap enough to call ten times a second: one query for the runs, and for each
    run whose event count moved, one query for its new events (from a sequence cursor). With
    `follow`, it first pulls active runs' new events from their nodes into the store (the same
    Run.sync the notebook and `gaudi-nb show` use), so a run started from a closed notebook moves.
    Snapshots (`runs`, `records`, `nodes`...) are replaced whole, so readers on other threads never
    see half an update; `version` grows when anything changed.
    """

    def __init__(self, store: Optional[RunStore] = None, *, follow: bool = True, limit: int = 500, window_s: float = HEATMAP_WINDOW_S, team_budgets: Optional[Dict[str, Dict[str, float]]] = None) -> None:
        self.store = store or RunStore()
        self.follow = follow
        self.limit = limit
        self.window_s = window_s
        self.team_budgets = read_team_budgets() if team_budgets is None else team_budgets
        self.records: List[Dict[str, Any]] = []
        self.runs: pd.DataFrame = runs_frame([])
        self.node_records: List[Dict[str, Any]] = []
        self.histories: Dict[str, DeviceHistory] = {}
        self.details: Dict[str, RunDetail] = {}
        self.version = 0
        self.last_error: Optional[str] = None
        self._counts: Dict[str, int] = {}  # events read per run (telemetry cursor)
        self._handles: Dict[str, Any] = {}
        self._sizes: Dict[str, int] = {}  # each local run's events file size at its last sync
        self._offsets: Dict[str, int] = {}  # each run's events offset in the store, as the last tick read it
        self._synced_at: Dict[str, float] = {}
        self._nodes_read_at = 0.0
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()

    # -- keeping current ------------------------------------------------------------------
    def sync_active(self) -> int:
        """Pull active runs' new events from their nodes into the store; how many arrived.

        Local runs whose events file grew are read here and go into the store together, in one
        transaction for the tick (RunStore.ingest_many), from the offsets the last tick read. A local run
        whose file has not grown costs one stat. Each local run still gets a full Run.sync every
        LIVENESS_CHECK_S, which is when an agent that died is noticed (the run ends as `lost`), and a
        remote run gets one every REMOTE_SYNC_S (each asks its node over SSH).
        """
        from ..api import Run
        from ..errors import GaudiNbError
        from ..events import read_events
        from ..rundir import RunFolder

        arrived = 0
        now = time.monotonic()
        batches: List[Tuple[str, Sequence[Dict[str, Any]], int, int]] = []
        for r in self.records:
            run_id = r["run_id"]
            if r.get("status") not in ACTIVE_STATUSES or not self.follows(r):
                self._handles.pop(run_id, None)
                continue
            local = (r.get("target") or LOCAL_NODE) == LOCAL_NODE
            size = None
            if local and r.get("run_dir"):
                path = RunFolder(Path(str(r["run_dir"]))).events
                try:
                    size = os.stat(path).st_size
                except OSError:
                    size = -1
                due = now - self._synced_at.get(run_id, 0.0) >= LIVENESS_CHECK_S
                if size == self._sizes.get(run_id) and not due:
                    continue
                offset = self._offsets.get(run_id)
                if not due and offset is not None and size > offset:
                    try:
                        events, end = read_events(path, offset)
                    except OSError as exc:
                        self.last_error = f"{run_id}: {exc}"
                        continue
                    if end > offset:
                        batches.append((run_id, events, offset, end))
                    continue
            elif not local and now - self._synced_at.get(run_id, 0.0) < REMOTE_SYNC_S:
                continue
            try:
                handle = self._handles.get(run_id)
                if handle is None:
                    handle = self._handles[run_id] = Run(run_id, self.store)
                arrived += handle.sync()
                self._synced_at[run_id] = now
                if size is not None:
                    self._sizes[run_id] = size
            except (GaudiNbError, OSError) as exc:  # one unreachable node must not stop the others
                self.last_error = f"{run_id}: {exc}"
        if batches:
            try:
                added = self.store.ingest_many(batches)
            except GaudiNbError as exc:  # a run gone from the store since the last tick: read the runs again
                self.last_error = str(exc)
                self._offsets.clear()
                return arrived
            for run_id, _, _, end in batches:
                if added.get(run_id):  # not taken: another reader moved the offset; the next tick reads it again
                    arrived += added[run_id]
                    self._offsets[run_id] = end
                    self._sizes[run_id] = end  # read up to here: a file that is longer (a line half written then) is read again next tick
        return arrived

    def follows(self, record: Dict[str, Any]) -> bool:
        """Whether sync_active pulls this active run's events itself (every run, here)."""
        return True

    def refresh(self) -> bool:
        """Bring every snapshot up to date; True if anything changed."""
        with self._lock:
            if self.follow and not self.records:
                self._read_runs()
            if self.follow:
                self.sync_active()
            changed = self._read_runs()
            now = time.time()
            if now - self._nodes_read_at > 5.0:  # attached nodes change by hand: every few seconds is enough
                self.node_records = self.store.list_nodes()
                self._nodes_read_at = now
                changed = True
            if changed:
                self.version += 1
            return changed

    def _read_runs(self) -> bool:
        with self.store.engine.connect() as connection:
            rows = connection.execute(select(RunRow.run_id, RunRow.kind, RunRow.created_at, RunRow.owner, RunRow.events_count, RunRow.events_offset, RunRow.summary).order_by(RunRow.created_at.desc()).limit(self.limit)).all()
            self._offsets = {row.run_id: row.events_offset for row in rows}
            moved = [(row.run_id, row.events_count) for row in rows if self._counts.get(row.run_id, 0) != row.events_count]
            if not moved and len(rows) == len(self.records):
                return False
            horizon = time.time() - self.window_s
            incremental = [(run_id, count) for run_id, count in moved if run_id in self._counts and count >= self._counts[run_id]]
            first_sight = [(run_id, count) for run_id, count in moved if not (run_id in self._counts and count >= self._counts[run_id])]
            # every run that moved since the last tick in one query of one shape (compiled once: an OR of a range
            # per run costs more to build than to run), then each run's own range kept
            for chunk in (incremental[i : i + 500] for i in range(0, len(incremental), 500)):
                ranges = {run_id: (self._counts[run_id], count) for run_id, count in chunk}
                query = (
                    select(EventRow.run_id, EventRow.seq, EventRow.payload)
                    .where(EventRow.run_id.in_(bindparam("runs", expanding=True)), EventRow.seq >= bindparam("lowest"))
                    .order_by(EventRow.run_id, EventRow.seq)
                )
                fresh_rows = connection.execute(query, {"runs": list(ranges), "lowest": min(low for low, _ in ranges.values())})
                self._apply([payload for run_id, seq, payload in fresh_rows if ranges[run_id][0] <= seq < ranges[run_id][1]])
                for run_id, count in chunk:
                    self._counts[run_id] = count
            for run_id, count in first_sight:
                # only the telemetry of the heat map's window matters here (a detail page loads the rest
                # itself), so an old store with long runs opens fast
                query = select(EventRow.payload).where(EventRow.run_id == run_id, EventRow.seq < count, EventRow.type == "telemetry", EventRow.t >= horizon).order_by(EventRow.seq)
                self._apply([payload for (payload,) in connection.execute(query)])
                self._counts[run_id] = count
            for run_id, detail in list(self.details.items()):
                count = self._counts.get(run_id, 0)
                if detail.seq < count - 1:  # an open detail page reads the rest of its run's new events
                    query = select(EventRow.payload).where(EventRow.run_id == run_id, EventRow.seq > detail.seq, EventRow.seq < count).order_by(EventRow.seq)
                    fresh = [payload for (payload,) in connection.execute(query)]
                    detail.apply(fresh)
                    detail.seq += len(fresh)
        self.records = [public(dict(row.summary, kind=row.kind, created_at=row.created_at, owner=row.owner)) for row in rows]
        self.runs = runs_frame(self.records)
        for record in self.records:
            if record["run_id"] in self.details:
                self.details[record["run_id"]].record = record
        return True

    def _apply(self, events: Sequence[Dict[str, Any]]) -> None:
        horizon = time.time() - self.window_s
        for e in events:
            if e.get("type") == "telemetry" and float(e.get("t") or 0) >= horizon and e.get("devices"):
                node = str(e.get("node") or LOCAL_NODE)
                self.histories.setdefault(node, DeviceHistory(self.window_s)).add(float(e["t"]), e["devices"])

    # -- reading --------------------------------------------------------------------------
    def detail(self, run_id: str) -> RunDetail:
        """A run in detail, loaded once from the store and kept current by refresh() after that."""
        with self._lock:
            if run_id not in self.details:
                run_id = self.store.resolve(run_id)
            if run_id not in self.details:
                detail = RunDetail(run_id, record=self.store.get(run_id))
                events = self.store.events(run_id)  # refresh() appends what comes after these
                detail.apply(events)
                detail.seq = len(events) - 1
                self.details[run_id] = detail
            return self.details[run_id]

    def fleet(self, now: Optional[float] = None) -> pd.DataFrame:
        return fleet_frame(self.node_records, self.records, dict(self.histories), now)

    def heatmap(self, metric: str = "utilization", now: Optional[float] = None) -> Dict[str, Any]:
        return heatmap(dict(self.histories), metric, now, self.window_s)

    def costs(self, now: Optional[float] = None) -> Dict[str, Any]:
        """The Costs page: runs' spend by user and project (each run's meter), and what is billed (billing's: provisioned
        machines by their hours, runs elsewhere by their meter) by day, in all and per hour now."""
        records, frame, machines = self.records, self.runs, self.node_records
        by_day = billing.spend_by_day(records, machines, now)
        return {
            "by_user": spend_by(frame, "owner"),
            "by_project": spend_by(frame, "project"),
            "by_day": pd.DataFrame(by_day, columns=["day", "usd", "unknown"]),
            "burn": billing.burn_rate(records, machines),
            "budgets": budgets_frame(records, self.team_budgets, now),
            "total_usd": sum(row["usd"] for row in by_day),
        }

    # -- a thread that keeps it current (the server's; sessions only read) ---------------
    def start(self, interval_s: float = 0.1) -> "DashboardData":
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, args=(interval_s,), name="gaudi-nb-dashboard", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _loop(self, interval_s: float) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.refresh()
                self.last_error = None
            except Exception as exc:  # a locked store or a vanished folder: say so and try again next tick
                self.last_error = f"{type(exc).__name__}: {exc}"
            self._stop.wait(max(0.01, interval_s - (time.monotonic() - started)))


__all__ = ["DashboardData", "RunDetail", "DeviceHistory", "runs_frame", "filter_runs", "fleet_frame", "node_idle", "active_on", "heatmap", "spend_by", "budgets_frame", "project_of"]
