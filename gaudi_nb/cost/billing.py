"""Money over time, and when a machine is idle: the one place the agent's meter, the node's autostop and every view
(dashboard, JupyterLab ticker, `gaudi-nb nodes list`, %gaudi_cost) ask, so they show the same dollars and $/h.

What is billed:
- a provisioned machine (a node with a `provider`) at its price per hour over its running intervals
  (`billed_intervals`, and `running_since` while it runs: store revision 0006), run or no run;
- a run elsewhere (this machine with a price, an attached node) by its own meter: price × wall clock × nodes.
A run on a provisioned machine is not counted again: the machine's hours hold it. An unknown price gives an
unknown answer, counted apart and never as $0.

Idle (one rule, `IdleRule`): a machine is idle when its busiest accelerator stayed below
`utilization_below_pct` in every sample of the last `window_s`, and, while a run holds it, samples show it (a
run that keeps the cards at 0 % for the whole window is idle and costs money). Autostop takes the
thresholds from its settings and, on top, never stops a machine a run holds (warm-up looks idle).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from ..events import ACTIVE_STATUSES

SECONDS_PER_HOUR = 3600.0
DAY_S = 86400.0
BILLED_STATES = ("running",)  # EC2 and IBM VPC bill a machine's compute while it runs, not while pending or stopped
Interval = Tuple[float, float]
Sample = Tuple[float, Optional[float]]  # (t, the busiest accelerator's utilization %; None: unreadable)


# -- the one formula ---------------------------------------------------------------------------
def cost_so_far(elapsed_s: float, price_per_hour: Optional[float], nodes: int = 1) -> Optional[float]:
    """Dollars spent after elapsed_s of wall clock on `nodes` nodes billed at price_per_hour each (the agent's meter)."""
    if price_per_hour is None:
        return None
    return max(0.0, elapsed_s) / SECONDS_PER_HOUR * float(price_per_hour) * nodes


def overlap_s(start: float, end: float, lo: float, hi: float) -> float:
    return max(0.0, min(end, hi) - max(start, lo))


# -- a run ---------------------------------------------------------------------------------------
def run_targets(record: Dict[str, Any]) -> List[str]:
    """The node names a run trains on ("local" for this machine)."""
    spec = record.get("spec") or {}
    return [name.strip() for name in str(record.get("target") or spec.get("target") or "local").split(",") if name.strip()] or ["local"]


def run_spend(record: Dict[str, Any]) -> Optional[float]:
    """The run's dollars so far: its meter's (the sum of every node's latest cost event)."""
    usd = (record.get("cost") or {}).get("usd")
    return None if usd is None else float(usd)


def run_span(record: Dict[str, Any], now: float) -> Optional[Interval]:
    """The wall clock a run's spend belongs to: from its start (or creation) to its end, now while it is active."""
    start = record.get("started_at") if record.get("started_at") is not None else record.get("created_at")
    if start is None:
        return None
    end = record.get("ended_at")
    if end is None:
        end = now if record.get("status") in ACTIVE_STATUSES else (record.get("last_event_at") or start)
    return float(start), max(float(start), float(end))


def _uncovered_share(record: Dict[str, Any], covered: Iterable[str]) -> float:
    """The share of a run's nodes whose hours no provisioned machine already bills."""
    names = run_targets(record)
    covered = set(covered)
    return sum(1 for name in names if name not in covered) / len(names)


# -- a machine -----------------------------------------------------------------------------------
def provisioned(node: Dict[str, Any]) -> bool:
    return bool(node.get("provider")) and node.get("launched_at") is not None


def billed_now(node: Dict[str, Any]) -> bool:
    """A provisioned machine is billed while it is up, whether or not it trains."""
    return provisioned(node) and node.get("state") in BILLED_STATES


def running_intervals(node: Dict[str, Any], now: float) -> List[Interval]:
    """The (start, end) intervals a provisioned machine was billed for: the ones it ran before, and the
    current one to `now` while it runs."""
    end = float(node.get("terminated_at") or now)
    since = node.get("running_since")
    if node.get("billed_intervals") is None and since is None:  # recorded before revision 0006: billed from launch to its end
        return [(float(node["launched_at"]), end)]
    intervals = [(float(a), float(b)) for a, b in node.get("billed_intervals") or []]
    if since is not None:
        intervals.append((float(since), end))
    return intervals


def machine_spend(node: Dict[str, Any], now: Optional[float] = None) -> Dict[str, Any]:
    """What a provisioned machine has cost: its rate over its running intervals; and what it costs now ($/h).

    `usd` is None when the price is unknown (never 0), and for a node that was only attached
    (runs on it are metered by the runs themselves): then `hours` is None too."""
    if not provisioned(node):
        return {"usd": None, "hours": None, "price_per_hour": None, "usd_per_hour": None, "source": "not provisioned by gaudi_nb: runs on it meter their own cost"}
    now = time.time() if now is None else now
    end = float(node.get("terminated_at") or now)
    seconds = sum(overlap_s(a, b, a, end) for a, b in running_intervals(node, end))
    price = node.get("price_per_hour")
    if node.get("terminated_at") and node.get("cost_usd") is not None:
        usd: Optional[float] = float(node["cost_usd"])  # written down at termination
    else:
        usd = cost_so_far(seconds, price)
    per_hour = (None if price is None else float(price)) if billed_now(node) else 0.0
    return {"usd": usd, "hours": seconds / SECONDS_PER_HOUR, "price_per_hour": price, "usd_per_hour": per_hour, "source": node.get("price_source") or "unknown"}


def with_spend(nodes: Sequence[Dict[str, Any]], now: Optional[float] = None) -> List[Dict[str, Any]]:
    """Node records with their `cost` (machine_spend), as `gaudi-nb nodes list --json` prints them."""
    now = time.time() if now is None else now
    return [dict(node, cost=machine_spend(node, now)) for node in nodes]


# -- everything together: what is billed now, and by day ---------------------------------------
def burn_rate(runs: Sequence[Dict[str, Any]], machines: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Dollars per hour now: every provisioned machine that runs at its price (idle or not), and every active
    run elsewhere at its price × nodes. Prices that are unknown are counted in `unknown_prices`, not guessed."""
    known, unknown = 0.0, 0
    billed = [m for m in machines if billed_now(m)]
    for machine in billed:
        if machine.get("price_per_hour") is None:
            unknown += 1
        else:
            known += float(machine["price_per_hour"])
    covered = {str(m["name"]) for m in billed}
    active = [r for r in runs if r.get("status") in ACTIVE_STATUSES]
    for record in active:
        share = _uncovered_share(record, covered)
        if share == 0:
            continue
        c = record.get("cost") or {}
        if c.get("price_per_hour") is None:
            unknown += record.get("status") != "pending"  # a pending run has written no price yet, and costs nothing yet
        else:
            known += float(c["price_per_hour"]) * int(c.get("nodes") or 1) * share
    return {"usd_per_hour": known, "unknown_prices": unknown, "active_runs": len(active), "billed_machines": len(billed)}


def day_of(t: float) -> str:
    """The UTC day a moment belongs to (every view's days are UTC days)."""
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%d")


def _split_by_day(usd: float, start: float, end: float, into: Dict[str, float]) -> None:
    """Add dollars spent evenly over [start, end] to the UTC days they fell on (all to `start`'s day for an instant)."""
    span = end - start
    if span <= 0:
        into[day_of(start)] = into.get(day_of(start), 0.0) + usd
        return
    t = start
    while t < end:
        midnight = (math.floor(t / DAY_S) + 1) * DAY_S
        into[day_of(t)] = into.get(day_of(t), 0.0) + usd * (min(midnight, end) - t) / span
        t = midnight


def spend_by_day(runs: Sequence[Dict[str, Any]], machines: Sequence[Dict[str, Any]], now: Optional[float] = None) -> List[Dict[str, Any]]:
    """Dollars per UTC day, oldest first: [{day, usd, unknown}]. A machine's hours fall on the days it ran; a run
    elsewhere's dollars are split over the days it ran in proportion to its hours in each (the meter charges
    price × wall clock, so the split is exact for one price). `unknown`: runs and machines without a price, by the
    day they started."""
    now = time.time() if now is None else now
    usd: Dict[str, float] = {}
    unknown: Dict[str, int] = {}
    covered = {str(m["name"]) for m in machines if provisioned(m)}
    for machine in machines:
        if not provisioned(machine):
            continue
        price, intervals = machine.get("price_per_hour"), running_intervals(machine, now)
        if price is None and intervals:
            unknown[day_of(intervals[0][0])] = unknown.get(day_of(intervals[0][0]), 0) + 1
            continue
        for start, end in intervals:
            _split_by_day(cost_so_far(end - start, price) or 0.0, start, end, usd)
    for record in runs:
        span = run_span(record, now)
        share = _uncovered_share(record, covered)
        if span is None or share == 0:
            continue
        spent = run_spend(record)
        if spent is None:
            unknown[day_of(span[0])] = unknown.get(day_of(span[0]), 0) + 1
        else:
            _split_by_day(spent * share, span[0], span[1], usd)
    return [{"day": day, "usd": usd.get(day, 0.0), "unknown": unknown.get(day, 0)} for day in sorted(set(usd) | set(unknown))]


def spend_on(day: str, runs: Sequence[Dict[str, Any]], machines: Sequence[Dict[str, Any]], now: Optional[float] = None) -> float:
    """Dollars spent on one UTC day ("2026-11-29"; today: day_of(now)); unknown prices add nothing."""
    return next((row["usd"] for row in spend_by_day(runs, machines, now) if row["day"] == day), 0.0)


def total_spend(runs: Sequence[Dict[str, Any]], machines: Sequence[Dict[str, Any]], now: Optional[float] = None) -> float:
    """Every billed dollar so far (machines' hours, runs elsewhere); unknown prices add nothing."""
    return sum(row["usd"] for row in spend_by_day(runs, machines, now))


def money_now(runs: Sequence[Dict[str, Any]], machines: Sequence[Dict[str, Any]], now: Optional[float] = None) -> Dict[str, Any]:
    """The money at a glance: burn_rate's numbers, today's and every billed dollar so far."""
    now = time.time() if now is None else now
    days = spend_by_day(runs, machines, now)
    today = day_of(now)
    return {**burn_rate(runs, machines), "today_usd": next((d["usd"] for d in days if d["day"] == today), 0.0), "total_usd": sum(d["usd"] for d in days)}


# -- idle --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class IdleRule:
    """When a machine is idle: its busiest accelerator below `utilization_below_pct` in every sample of the
    last `window_s` seconds. Autostop takes both from its settings (utilization_threshold_pct, utilization_window_s)."""

    utilization_below_pct: float = 10.0
    window_s: float = 300.0


IDLE = IdleRule()


def is_idle(samples: Sequence[Sample], now: float, *, active_runs: int, watched_since: Optional[float] = None, rule: IdleRule = IDLE) -> bool:
    """Whether a machine is idle now under `rule`.

    `samples`: (t, busiest accelerator's utilization %), None where unreadable; `active_runs`: runs that hold it;
    `watched_since`: since when the caller can know (autostop: its start; a view: the oldest active run's start),
    None where the record covers the window. A window not yet watched whole is not idle; without a run, no
    sample (or only unreadable ones) is idle: a broken sampler must not keep an idle machine billed, and with
    no run the views have no telemetry at all. With a run, only samples can call it idle.
    """
    start = now - float(rule.window_s)
    if watched_since is not None and watched_since > start:
        return False
    known = [float(u) for t, u in samples if t >= start and u is not None]
    if any(u >= float(rule.utilization_below_pct) for u in known):
        return False
    return bool(known) or active_runs == 0


__all__ = [
    "BILLED_STATES", "IDLE", "IdleRule", "billed_now", "burn_rate", "cost_so_far", "day_of", "is_idle", "machine_spend", "money_now", "provisioned",
    "run_span", "run_spend", "run_targets", "running_intervals", "spend_by_day", "spend_on", "total_spend", "with_spend",
]
