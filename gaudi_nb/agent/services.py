"""The agent's side services: its own observer of the run's events, the cost meter, the heartbeat,
telemetry, the Prometheus exporter and the --report-to trackers.

Everything that follows the run's events is fed by one EventFeed (feed.py): the agent reads its
events file once a tick and hands the new events to its observer, the exporter and each tracker.
"""
from __future__ import annotations

import os
import time
from typing import Any, Dict, List, Optional

from ..cost import billing
from ..events import EventWriter
from ..fold import Fold
from ..rundir import RunFolder
from ..spec import RunSpec
from .feed import EventFeed
from .ranks import RankGroup
from .trackers import Trackers, flush_seconds

OPEN_WAIT_S = 10.0  # how long a run's end waits for a tracker still opening its run (its link goes before the end)

PACE_STEPS = 10  # the fastest of the last ten steps sets how far ahead a stop across nodes lands


class RunObserver(Fold):
    """What the agent's loop acts on, from this attempt's events, through the one fold: the last step,
    the step time, the ranks' pids and their errors. A step of a replaced attempt is read past; a restart
    takes the step back to where the new attempt goes on. Fed on the loop's own thread (the feed is polled there)."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.last_step = 0
        self.fastest_step_s: Optional[float] = None  # of the last PACE_STEPS steps: how far ahead a stop across nodes lands
        self.stepped = False  # a step of this attempt was seen
        self.worker_error: Optional[str] = None
        self.rank_errors: Dict[int, str] = {}  # this attempt's, by rank: a crash names the failed rank's own error
        self.rank_pids: Dict[int, int] = {}  # this attempt's ranks, from their worker_start events
        self._step_times: List[float] = []

    def take(self, events: List[Dict[str, Any]]) -> None:
        self.apply(events)

    def on_step(self, event: Dict[str, Any], step: int, replayed: bool) -> None:
        self.last_step = max(self.last_step, step)
        self.stepped = True
        if event.get("step_time_s"):
            self._step_times = (self._step_times + [float(event["step_time_s"])])[-PACE_STEPS:]
            self.fastest_step_s = min(self._step_times)

    def on_worker_start(self, event: Dict[str, Any]) -> None:
        if event.get("pid") and event.get("node", self.node) == self.node:
            self.rank_pids[int(event.get("rank") or 0)] = int(event["pid"])

    def on_worker_error(self, event: Dict[str, Any]) -> None:
        self.rank_errors.setdefault(int(event.get("rank") or 0), str(event.get("error")))
        if self.worker_error is None:
            self.worker_error = f"rank {event.get('rank')}: {event.get('error')}"

    def on_restart(self, event: Dict[str, Any], from_step: int) -> None:
        self._forget_attempt(self.step)

    def next_attempt(self, from_step: int) -> None:
        """A restart this agent makes: the next attempt's ranks start from `from_step`, with nothing of the
        last attempt's; its late lines are read past from now on, before the restart event comes back."""
        self.attempt += 1
        self.step = min(self.step, from_step)
        self._forget_attempt(from_step)
        self.rank_pids = {}

    def _forget_attempt(self, step: int) -> None:
        self.last_step = step
        self.stepped = False
        self.worker_error = None
        self.rank_errors = {}
        self._step_times = []


class Meter:
    """This node's spend: wall clock since the agent started (plus what earlier agents metered) at the price."""

    def __init__(self, events: EventWriter, price_per_hour: Optional[float], nodes: int, budget_usd: Optional[float]) -> None:
        self.events = events
        self.price_per_hour = price_per_hour
        self.nodes = nodes  # across nodes each agent meters its own node
        self.budget_usd = budget_usd
        self.started = time.time()
        self.before_s = 0.0
        self.last_usd: Optional[float] = None

    def emit(self) -> Optional[float]:
        elapsed = self.before_s + time.time() - self.started
        usd = billing.cost_so_far(elapsed, self.price_per_hour, self.nodes)
        self.last_usd = usd
        self.events.emit("cost", elapsed_s=elapsed, usd=usd, price_per_hour=self.price_per_hour, nodes=self.nodes, budget_usd=self.budget_usd)
        return usd


class SideServices:
    """Started before the ranks, ticked once a loop, closed after run_end."""

    def __init__(self, folder: RunFolder, events: EventWriter, spec: RunSpec, run_id: str, node: str, observer: RunObserver, meter_: Meter, feed: EventFeed) -> None:
        self.folder = folder
        self.events = events
        self.spec = spec
        self.run_id = run_id
        self.node = node
        self.observer = observer
        self.meter = meter_
        self.feed = feed
        self.exporter: Any = None
        self.telemetry: Any = None
        self.trackers: Optional[Trackers] = None

    def start(self, *, leads: bool, resumed: bool) -> None:
        """Trackers (node 0's agent: one tracker run per gaudi_nb run), the exporter, then the first read:
        the trackers get the run's history, the observer and exporter only this agent's attempt."""
        if leads:
            self.trackers = Trackers.start(self.spec, self.folder, self.run_id, self.node, feed=self.feed)
        self.exporter = start_exporter(self.events)
        self.feed.subscribe(self.observer.take, history=not resumed)
        if self.exporter is not None:
            self.feed.subscribe(self.exporter.observe_all, history=not resumed)
        self.feed.poll()

    def tick(self) -> Optional[float]:
        """Read the new events once for everyone, meter, beat; returns this node's spend."""
        self.feed.poll()
        usd = self.meter.emit()
        self.folder.beat()
        return usd

    def start_telemetry(self, ranks: RankGroup, modules: Optional[str]) -> None:
        self.telemetry = start_telemetry(self.events, modules)
        if self.telemetry is not None:
            ranks.follow_pids(self.telemetry, self.spec.devices)

    def follow(self, ranks: RankGroup) -> None:
        """A new attempt's ranks: telemetry watches their pids."""
        if self.telemetry is not None:
            ranks.follow_pids(self.telemetry, self.spec.devices)

    def stop_telemetry(self) -> None:
        if self.telemetry is not None:
            self.telemetry.stop()

    def before_end(self, flush_s: Optional[float] = None) -> None:
        """Before run_end: the trackers' links are written, for at most OPEN_WAIT_S (a tracker that cannot
        be reached must not hold the run's end for its retries)."""
        if self.trackers is not None:
            self.trackers.wait_opened(min(OPEN_WAIT_S, flush_seconds() if flush_s is None else flush_s))

    def close(self, flush_s: Optional[float] = None) -> None:
        """After run_end: the trackers get it and log the end (for at most flush_s), the exporter closes."""
        if self.trackers is not None:
            self.trackers.close(flush_s)  # the run has ended for every view; this only delays the agent's exit
        if self.exporter is not None:
            self.exporter.close()


def start_exporter(events: EventWriter) -> Any:
    """Prometheus /metrics on loopback (a free port unless GAUDI_NB_METRICS_PORT says; "off" disables it)."""
    port = os.environ.get("GAUDI_NB_METRICS_PORT", "0")
    if port == "off":
        return None
    try:
        from ..telemetry.prometheus import MetricsExporter

        return MetricsExporter(port=int(port), address=os.environ.get("GAUDI_NB_METRICS_HOST", "127.0.0.1"))
    except Exception as exc:  # a taken port must not stop the run
        events.emit("log", level="warning", message=f"Prometheus exporter not started: {exc}")
        return None


def start_telemetry(events: EventWriter, modules: Optional[str]) -> Any:
    from ..telemetry.base import pick_source
    from ..telemetry.loop import TelemetryLoop

    try:
        # a run on part of a Gaudi node watches its own cards only, labelled by module id
        source = pick_source(pids={}, modules=modules)
    except Exception as exc:  # telemetry must never stop a run
        events.emit("log", level="warning", message=f"no telemetry: {exc}")
        return None

    def on_sample(sample: Any) -> None:
        events.emit("telemetry", **sample.to_dict())

    def on_error(message: str) -> None:
        # once per distinct failure (the loop dedupes), not every second
        events.emit("log", level="warning", message=message)

    loop = TelemetryLoop(source, on_sample, interval_s=1.0, on_error=on_error)
    loop.start()
    return loop
