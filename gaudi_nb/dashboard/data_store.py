"""The team dashboard's data: runs, nodes, devices and money from a RunStore, as DataFrames and dicts (no Panel here).
The Fleet page's heat maps and fleet table are built in fleet.py from the histories kept here."""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pandas as pd
from sqlalchemy import bindparam, select

from .. import runs_table
from ..cost import billing
from ..events import ACTIVE_STATUSES
from ..runs_table import project_of
from ..store import EventRow, RunRow, RunStore
from ..summary import public
from .fleet import HEATMAP_WINDOW_S, LOCAL_NODE, DeviceHistory, fleet_frame, heatmap
from .run_detail import RunDetail

RUN_COLUMNS = ["run_id", "name", "status", "status_text", "owner", "project", "target", "nodes", "devices", "model", "step", "max_steps", "tokens_per_second", "loss", "usd", "usd_per_million_tokens", "budget_usd", "created_at", "kind"]
LIVENESS_CHECK_S = 2.0
REMOTE_SYNC_S = 0.5
DETAIL_PAGE_EVENTS = 5000  # the run page reads a run's events from the store this many at a time


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
            except Exception as exc:  # one unreachable node, or one run the store cannot take, must not stop the others
                self.last_error = f"{run_id}: {exc}"
        if batches:
            added = self._ingest(batches)
            for run_id, _, _, end in batches:
                if added.get(run_id):  # not taken: another reader moved the offset; the next tick reads it again
                    arrived += added[run_id]
                    self._offsets[run_id] = end
                    self._sizes[run_id] = end  # read up to here: a file that is longer (a line half written then) is read again next tick
        return arrived

    def _ingest(self, batches: List[Tuple[str, Sequence[Dict[str, Any]], int, int]]) -> Dict[str, int]:
        """The tick's batches in one transaction; when that fails, each run on its own, so a run the store
        cannot take (gone since the last tick, a value its database refuses) holds up no other run."""
        try:
            return self.store.ingest_many(batches)
        except Exception as exc:
            self.last_error = str(exc)
            self._offsets.clear()  # read the runs' offsets again
        added: Dict[str, int] = {}
        for batch in batches:
            try:
                added.update(self.store.ingest_many([batch]))
            except Exception as exc:
                self.last_error = f"{batch[0]}: {exc}"
        return added

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
                while True:  # a page at a time: a long run's events are never all in memory at once; refresh() appends what follows
                    page = self.store.events(run_id, after_seq=detail.seq, limit=DETAIL_PAGE_EVENTS)
                    detail.apply(page)
                    detail.seq += len(page)
                    if len(page) < DETAIL_PAGE_EVENTS:
                        break
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


__all__ = ["DashboardData", "RunDetail", "runs_frame", "filter_runs", "spend_by", "budgets_frame", "project_of"]
