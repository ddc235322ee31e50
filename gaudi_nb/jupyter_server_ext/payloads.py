"""What the JupyterLab sidebar and status bar show: nodes, runs and money, as JSON-ready dicts.

The one module the handlers read through. Runs, nodes and device telemetry come from the team
dashboard's data layer (gaudi_nb.dashboard.data_store.DashboardData): one reader thread per store
reads only new events, however many sidebars are open, and follows the active runs on this machine.
One run's record and events, stop and attach go through the public API. Calls here may block
(SQL, a node over SSH): the handlers make them off the server's event loop.
"""
from __future__ import annotations

import getpass
import os
import threading
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from .. import formatting
from ..cost import billing
from ..events import ACTIVE_STATUSES
from ..runs_table import run_row
from ..store import RunStore

if TYPE_CHECKING:
    from ..dashboard.data_store import DashboardData

# the utilization bar shows a device's mean over the last few seconds: steady, and still current
UTILIZATION_WINDOW_S = 3.0
# the reader keeps billing's idle window of telemetry (so the ticker judges idle as the dashboard does), and
# reads the store twice a second
HISTORY_WINDOW_S, READ_INTERVAL_S = billing.IDLE.window_s, 0.5
# runs read for the sidebar and today's money (today's runs are among the newest)
RUNS_READ = 200
# a budget is "near its end" when less than this share of it is left
BUDGET_WARNING_SHARE = 0.2
RECENT_RUNS = 20


def _user() -> Optional[str]:
    try:
        return getpass.getuser()
    except Exception:  # a container's uid with no passwd entry
        return None


def _store() -> RunStore:
    # read at each call, not at import: GAUDI_NB_HOME / GAUDI_NB_STORE_URL are the server's environment
    return RunStore()


def run(run_id: str, events: int = 50) -> Dict[str, Any]:
    """One run's full record and its last `events` events, as the store has them (see `follows`)."""
    store = _store()
    run_id = store.resolve(run_id)
    record = store.get(run_id)
    total = store.count_events(run_id)
    return {"run": record, "row": run_row(record), "events": store.events(run_id, after_seq=total - 1 - max(0, events))}


def stop(run_id: str, user: Optional[str] = None, origin: str = "jupyter") -> Dict[str, Any]:
    """Ask a run to stop after a checkpoint, as the panel's Stop and `gaudi-nb stop` do, for the Jupyter `user`
    (whom the audit entry names). On a team store the server's database role decides: its own runs, or any
    run for an admin (the sidebar's confirmed click is their --force)."""
    import contextlib

    from .. import api
    from ..audit import acting_for

    store = _store()
    with acting_for(user, origin) if user else contextlib.nullcontext():
        answer = api.stop(run_id, store=store, force=store.identity.role == "admin")
    return {"run_id": answer.run_id, "first": answer.first, "status": answer.status, "outcome": answer.outcome, "message": answer.line()}


def attach(url: str, name: Optional[str] = None, trust_new_host: bool = False) -> Dict[str, Any]:
    """Attach a node over SSH (gaudi_nb.attach: checks, installs gaudi_nb there, records it)."""
    import gaudi_nb

    from ..machine_spec import AttachSpec

    spec = AttachSpec.from_options(url=url, name=name or None, trust_new_host=trust_new_host)  # what the CLI and the magics take
    record: Dict[str, Any] = gaudi_nb.attach(**spec.keywords(), store=_store())
    return record


def _current_devices(source: "DashboardData", now: float) -> Dict[str, List[Dict[str, Any]]]:
    """Per node name ("local" for this machine), each device's mean utilization over the last few seconds."""
    import numpy as np

    out: Dict[str, List[Dict[str, Any]]] = {}
    for node, history in dict(source.histories).items():
        if not history.labels or history.last_t is None or now - history.last_t > 2 * UTILIZATION_WINDOW_S:
            continue  # nothing sampled lately: the node's runs ended
        columns = max(1, int(round(UTILIZATION_WINDOW_S / history.width)))
        with np.errstate(all="ignore"):
            utilization = np.nanmean(history.window(0, now, columns), axis=1)
            memory = np.nanmean(history.window(1, now, columns), axis=1)
        out[node] = [
            {"label": label, "kind": history.kind, "utilization_pct": None if np.isnan(u) else float(u), "memory_pct": None if np.isnan(m) else float(m)}
            # not strict: the reader thread may have named a new device a moment before its row exists
            for label, u, m in zip(history.labels, utilization, memory, strict=False)
        ]
    return out


def nodes(rows: List[Dict[str, Any]], node_records: List[Dict[str, Any]], devices: Dict[str, List[Dict[str, Any]]], idle: Optional[Dict[str, bool]] = None,
          now: Optional[float] = None) -> List[Dict[str, Any]]:
    """Attached and provisioned nodes (terminated ones left out), and this machine while a local run is active; each with
    billing's spend so far, $/h now and whether it is idle (billing's rule, as `idle` says per node name)."""
    now = time.time() if now is None else now
    idle = idle or {}
    active = [row for row in rows if row["status"] in ACTIVE_STATUSES]
    out: List[Dict[str, Any]] = []
    local = [r for r in active if billing.run_targets(r) == ["local"]]
    if local:
        out.append({"name": "local", "url": None, "accelerator": next((r["accelerator"] for r in local if r["accelerator"]), None), "device_count": None,
                    "provider": None, "state": "running", "price_per_hour": None, "active_runs": [r["run_id"] for r in local], "devices": devices.get("local", []),
                    "idle": idle.get("local", False), "usd": None, "usd_per_hour": None})
    for node in node_records:
        if node.get("state") == "terminated":
            continue
        spend = billing.machine_spend(node, now)
        out.append({
            "name": node["name"], "url": node.get("url"), "accelerator": node.get("accelerator"), "device_count": node.get("device_count"),
            "provider": node.get("provider"), "instance_type": node.get("instance_type"), "state": node.get("state") or "attached",
            "price_per_hour": node.get("price_per_hour"), "owner": node.get("owner"), "budget_usd": node.get("budget_usd"), "launched_at": node.get("launched_at"),
            "active_runs": [r["run_id"] for r in active if node["name"] in billing.run_targets(r)],
            "devices": devices.get(node["name"], []),
            "idle": idle.get(node["name"], False), "usd": spend["usd"], "usd_per_hour": spend["usd_per_hour"],
            "cluster": _cluster(node),
        })
    return out


def _cluster(node: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """An attached Kubernetes cluster's Gaudi nodes (cards, free when last checked) and job kinds; None for a machine."""
    facts = (node.get("resources") or {}).get("kubernetes") if str(node.get("url") or "").startswith("k8s://") else None
    if not facts:
        return None
    return {"namespace": facts.get("namespace"), "job_kinds": facts.get("job_kinds"), "kind": facts.get("kind"), "gaudi_nodes": facts.get("gaudi_nodes") or []}


def costs(records: List[Dict[str, Any]], node_records: List[Dict[str, Any]], node_list: List[Dict[str, Any]], now: Optional[float] = None) -> Dict[str, Any]:
    """The money now, as billing counts it for the team dashboard too: dollars per hour across the user's machines and
    runs, today's total (a UTC day), and warnings (an idle machine that bills, a run near the end of its budget).

    A provisioned machine is billed by the hour whether it trains or not, so its price counts once, and the runs
    on it are not counted again; a run elsewhere counts at its own price while it is active. An unknown price is
    counted as unknown, never as zero.
    """
    now = time.time() if now is None else now
    user = _user()
    mine = [r for r in records if r.get("owner") in (None, user)]
    machines = [m for m in node_records if m.get("owner") in (None, user)]
    burn = billing.burn_rate(mine, machines)
    warnings: List[Dict[str, Any]] = []
    billed = {str(m["name"]) for m in machines if billing.billed_now(m)}
    for node in node_list:
        if node["name"] in billed and node.get("idle"):
            warnings.append({"kind": "idle_node", "node": node["name"], "message": f"{node['name']} is up and idle: {formatting.rate(node.get('price_per_hour'))}"})
    for record in mine:
        c = record.get("cost") or {}
        budget, left = c.get("budget_usd"), c.get("budget_left_usd")
        if record.get("status") in ACTIVE_STATUSES and budget and left is not None and float(left) <= BUDGET_WARNING_SHARE * float(budget):
            warnings.append({"kind": "budget", "run_id": record["run_id"], "message": f"{record['run_id']}: {formatting.money(left)} of its {formatting.money(budget)} budget left"})
    today = billing.spend_on(billing.day_of(now), mine, machines, now)
    return {"usd_per_hour": burn["usd_per_hour"], "today_usd": today, "unknown_prices": burn["unknown_prices"], "warnings": warnings, "user": user, "t": now}


def follows(record: Dict[str, Any]) -> bool:
    """Whether the server pulls this run's new events into the store itself: only a run on this machine.

    Following a run on a node would make the server mirror it over SSH, and one process at a
    time mirrors a run (a lock). A server whose SSH set-up differs from the notebook's (another
    HOME, no agent) would hold that lock while it fails to connect, and the notebook's panel
    would wait behind it. A remote run moves here while a notebook, the CLI or the team
    dashboard follows it, all of which write the same store.
    """
    return (record.get("target") or "local") == "local"


def dashboard_url() -> Optional[str]:
    """Where the team dashboard (`gaudi-nb dashboard`) listens, when the person running JupyterLab said so."""
    return os.environ.get("GAUDI_NB_DASHBOARD_URL") or None


def _reader_class() -> type:
    """Made on first use: the dashboard's data layer loads pandas and numpy, which a server start need not wait for."""
    from ..dashboard.data_store import DashboardData

    class Reader(DashboardData):
        """The dashboard's reader, following only the runs `follows` allows."""

        def follows(self, record: Dict[str, Any]) -> bool:
            return follows(record)

    return Reader


_sources: Dict[str, "DashboardData"] = {}
_sources_lock = threading.Lock()


def source() -> "DashboardData":
    """The store's one reader (started on first use, then kept current by its own thread), shared by every request and socket."""
    from .. import paths

    url = paths.store_url()  # the server's environment: GAUDI_NB_HOME / GAUDI_NB_STORE_URL
    with _sources_lock:
        reader = _sources.get(url)
        if reader is None:
            reader = _sources[url] = _reader_class()(RunStore(url), follow=True, limit=RUNS_READ, window_s=HISTORY_WINDOW_S, team_budgets={})
            reader.refresh()
            reader.start(READ_INTERVAL_S)
        return reader


def snapshot(limit: int = RECENT_RUNS) -> Dict[str, Any]:
    """Everything the sidebar and status bar show, as one JSON-ready dict: newest runs, nodes, money."""
    return snapshot_of(source(), time.time(), limit)


def snapshot_of(reader: "DashboardData", now: float, limit: int = RECENT_RUNS) -> Dict[str, Any]:
    """snapshot() from a reader at a moment (pure but for the reader's state)."""
    from ..dashboard.fleet import active_on, node_idle

    records, node_records, histories = list(reader.records), list(reader.node_records), dict(reader.histories)
    who = reader.store.identity
    # Stop shows only where this server's user may stop: their own runs, or any for an admin (SQLite: one user, all)
    every = [dict(run_row(record), can_stop=who.role != "viewer" and who.may_change(record.get("owner"))) for record in records]
    active = active_on(records)
    names = {"local", *(str(n["name"]) for n in node_records)}
    idle = {name: node_idle(active.get(name) or [], histories.get(name), now) for name in names}
    node_list = nodes(every, node_records, _current_devices(reader, now), idle, now)
    # today's money needs more than the runs shown
    out = {"type": "snapshot", "t": now, "runs": every[:limit], "nodes": node_list, "costs": costs(records, node_records, node_list, now)}
    if reader.last_error:
        out["error"] = reader.last_error
    return out


def runs(limit: int = RECENT_RUNS) -> List[Dict[str, Any]]:
    return list(snapshot(limit)["runs"])
