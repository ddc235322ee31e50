"""The one fold: over generated event streams (restarts, resumes, late steps of a replaced attempt, duplicated
lines, several nodes, costs, run_end), the record as the store keeps it and the notebook panel agree with what
happened, and so do the dashboard's run page, /metrics, the trackers and the agent's observer."""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import pytest

from gaudi_nb.agent.services import RunObserver
from gaudi_nb.agent.trackers import TrackerFold
from gaudi_nb.dashboard.run_detail import RunPageState
from gaudi_nb.events import TERMINAL_STATUSES, make_event
from gaudi_nb.fold import Fold, run_spend
from gaudi_nb.notebook.device_grid import grid_summary, memory_total
from gaudi_nb.notebook.panel_state import PanelState
from gaudi_nb.store import RunStore
from gaudi_nb.summary import empty_summary, fold

GIB = 1024**3
HOST_MEMORY = 24 * GIB
LATE_LOSS = 99.0  # every late line of a replaced attempt carries a loss above this: no view may show it


@dataclass
class Truth:
    """What happened, kept by the generator as it writes each event (the oracle the views are checked against)."""

    step: int = 0
    attempt: int = 1
    status: str = "pending"
    history: List[Tuple[int, Optional[float]]] = field(default_factory=list)  # (step, loss) the run keeps
    node_usd: Dict[str, Optional[float]] = field(default_factory=dict)
    counted: Dict[int, int] = field(default_factory=dict)  # step → tokens of the first time it was reported
    telemetry_nodes: set = field(default_factory=set)

    @property
    def loss(self) -> Optional[float]:
        return next((loss for _, loss in reversed(self.history) if loss is not None), None)


class Stream:
    """A run's events as its agents and rank 0 write them, with the truth kept alongside; a cut after each event."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.run_id = f"fold-{seed}"
        self.nodes = ["node-0", "node-1", "node-2"][: self.rng.choice([1, 1, 2, 3])]
        self.price = self.rng.choice([None, 3.6, 12.0])
        self.events: List[Dict[str, Any]] = []
        self.truths: List[Truth] = []  # truths[i]: after events[: i + 1]
        self.truth = Truth()
        self.t = 1000.0
        self.elapsed = {node: 0.0 for node in self.nodes}
        self.checkpoint = 0
        self.ranks = self.rng.choice([1, 2])

    def emit(self, kind: str, node: Optional[str] = None, rank: Optional[int] = None, **fields: Any) -> None:
        self.t += self.rng.uniform(0.01, 0.5)
        self.events.append(make_event(kind, self.run_id, node=node or self.nodes[0], rank=rank, t=self.t, **fields))
        self.truths.append(json.loads(json.dumps(self.truth.__dict__, default=sorted)))

    # -- what each writer does ---------------------------------------------------------------
    def start(self) -> None:
        spec = {"max_steps": 500, "nodes": len(self.nodes), "budget_usd": None, "target": ",".join(self.nodes) if len(self.nodes) > 1 else "local"}
        self.truth.status = "starting"
        self.emit("run_start", spec=spec, accelerator="cpu", trainer="transformers", launcher="torchrun", price_per_hour=self.price, price_source="test")
        self.worker_start()

    def worker_start(self) -> None:
        if self.truth.status == "starting":
            self.truth.status = "running"
        self.emit("worker_start", rank=0, world_size=self.ranks * len(self.nodes), accelerator="cpu", precision="fp32", trainer="transformers", pid=4242)

    def step(self, again: bool = False) -> None:
        """The next step; or (again) the last step's line a second time, as a reader that read it twice would."""
        truth = self.truth
        last = next((e for e in reversed(self.events) if e["type"] == "step" and e["attempt"] == truth.attempt and e["step"] == truth.step), None)
        if again and last is not None:
            n, loss, tokens = last["step"], last["loss"], last["tokens"]
            truth.history = [(s, v) for s, v in truth.history if s < n]  # its values replace the earlier ones
        else:
            n = truth.step + 1
            loss = None if self.rng.random() < 0.15 else round(self.rng.uniform(0.5, 9.0), 3)
            tokens = self.rng.randint(100, 2000)
        truth.history.append((n, loss))
        truth.counted.setdefault(n, tokens)
        truth.step = max(truth.step, n)
        if truth.status == "starting":
            truth.status = "running"
        self.emit("step", rank=0, attempt=truth.attempt, step=n, loss=loss, tokens=tokens, samples=8, step_time_s=0.2, tokens_per_second=tokens / 0.2,
                  warmup=n <= 2, memory={"in_use_bytes": GIB})

    def save(self) -> None:
        if self.truth.step > self.checkpoint:
            self.checkpoint = self.truth.step
            self.emit("checkpoint", rank=0, attempt=self.truth.attempt, step=self.checkpoint, path=f"/ckpt/checkpoint-{self.checkpoint}", reason="save_steps")

    def cost(self) -> None:
        node = self.rng.choice(self.nodes)
        self.elapsed[node] += self.rng.uniform(0.5, 3.0)
        usd = None if self.price is None else self.elapsed[node] * self.price / 3600
        self.truth.node_usd[node] = usd
        self.emit("cost", node=node, elapsed_s=self.elapsed[node], usd=usd, price_per_hour=self.price, nodes=1, budget_usd=None)

    def telemetry(self) -> None:
        node = self.rng.choice(self.nodes)
        devices = [{"index": r, "kind": "cpu", "label": f"cpu rank {r}", "utilization_pct": 90.0, "memory_used_bytes": 700 * 1024**2, "memory_total_bytes": HOST_MEMORY} for r in range(self.ranks)]
        self.truth.telemetry_nodes.add(node)
        self.emit("telemetry", node=node, source="host", devices=devices, host={"cpu_percent": 50.0, "memory_used_bytes": 1400 * 1024**2, "memory_total_bytes": HOST_MEMORY, "process_rss_bytes": 300 * 1024**2})

    def restart(self, cause: str) -> None:
        """A crash (or a resume after run_end): the next attempt goes on from the last checkpoint; lines the
        replaced ranks wrote before they died may land after the restart event."""
        truth, old = self.truth, self.truth.attempt
        truth.attempt += 1
        truth.step = min(truth.step, self.checkpoint)
        truth.history = [(s, v) for s, v in truth.history if s <= self.checkpoint]
        truth.status = "starting"
        self.emit("restart", attempt=truth.attempt, cause=cause, from_step=self.checkpoint, checkpoint=f"/ckpt/checkpoint-{self.checkpoint}" if self.checkpoint else None, reason="rank 0 exited with 1")
        for late in range(self.rng.choice([0, 0, 1, 2]) if cause == "crash" else 0):
            self.emit("step", rank=0, attempt=old, step=self.checkpoint + 50 + late, loss=LATE_LOSS + late, tokens=5, samples=8, step_time_s=0.2, tokens_per_second=25.0)
        self.worker_start()

    def end(self) -> None:
        status = self.rng.choice(["succeeded", "failed", "stopped", "lost", "budget_exceeded"])
        if status in ("stopped", "budget_exceeded"):
            self.truth.status = "stopping"
            self.emit("stop_requested", reason=status, at_step=self.truth.step)
        self.truth.status = status
        self.emit("run_end", status=status, exit_code=0 if status == "succeeded" else 1, reason=None if status == "succeeded" else "test")

    def generate(self, length: int) -> "Stream":
        self.start()
        moves = [(self.step, 40), (lambda: self.step(again=True), 2), (self.save, 6), (self.cost, 14), (self.telemetry, 10), (lambda: self.restart("crash"), 3)]
        for _ in range(length):
            if self.truth.status in TERMINAL_STATUSES:
                if self.rng.random() < 0.5:
                    break
                self.restart("resume")
                continue
            if self.rng.random() < 0.01:
                self.end()
                continue
            move = self.rng.choices([m for m, _ in moves], [w for _, w in moves])[0]
            move()
        if self.rng.random() < 0.7 and self.truth.status not in TERMINAL_STATUSES:
            self.end()
        return self


def chunks(rng: random.Random, start: int, end: int) -> List[Tuple[int, int]]:
    """[start, end) in pieces of random sizes: each reader takes the stream in its own bites."""
    cuts, at = [], start
    while at < end:
        size = rng.choice([1, 1, 2, 3, 7, 20])
        cuts.append((at, min(end, at + size)))
        at += size
    return cuts


def assert_agrees(record: Dict[str, Any], panel: PanelState, truth: Dict[str, Any], where: str) -> None:
    history = truth["history"]
    loss = next((v for _, v in reversed(history) if v is not None), None)
    usd = None if not truth["node_usd"] else run_spend(truth["node_usd"])
    assert record["steps_completed"] == panel.step == truth["step"], where
    assert record["attempt"] == panel.attempt == truth["attempt"], where
    assert record["status"] == panel.status == truth["status"], where
    assert record["metrics"]["final_loss"] == panel.summary["metrics"]["final_loss"] == loss, where
    assert (panel.loss[-1][1] if panel.loss else None) == loss, where  # the chart ends where the record does
    assert [s for s, _ in panel.loss] == [s for s, v in history if v is not None], where
    assert same_money(record["cost"]["usd"], usd) and same_money(panel.summary["cost"]["usd"], usd), where


def same_money(a: Optional[float], b: Optional[float]) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and a == pytest.approx(b))


@pytest.mark.parametrize("seed", range(60))
def test_the_record_and_the_panel_agree_with_what_happened(seed):
    """The record folded as the store folds it (pieces, each read back from JSON) and the panel (its own pieces)."""
    stream = Stream(seed).generate(length=random.Random(seed).randint(20, 400))
    rng = random.Random(seed * 7919)
    record = empty_summary(stream.run_id)
    panel = PanelState(stream.run_id)
    # both readers stop at the same moments, and read in pieces of their own in between
    stops = sorted({rng.randint(1, len(stream.events)) for _ in range(8)} | {len(stream.events)})
    at = 0
    for stop in stops:
        for a, b in chunks(rng, at, stop):
            record = json.loads(json.dumps(fold(record, stream.events[a:b], in_place=True)))  # the store keeps it as JSON
        for a, b in chunks(rng, at, stop):
            panel.apply(stream.events[a:b])
        at = stop
        assert_agrees(record, panel, stream.truths[stop - 1], f"seed {seed}, after {stop} events")
    # several nodes: each node's latest devices, a host's memory once per node
    assert memory_total(panel.devices) == (HOST_MEMORY * len(stream.truth.telemetry_nodes) or None)


@pytest.mark.parametrize("seed", [3, 17, 42])
def test_the_store_keeps_the_record_the_panel_shows(seed, tmp_path):
    """The real store (SQLite), ingesting from offsets in pieces, against a panel fed in one go."""
    stream = Stream(seed).generate(length=300)
    store = RunStore(f"sqlite:///{tmp_path / 'store.db'}")
    store.register(stream.run_id, spec={}, target="local", run_dir=None)
    for a, b in chunks(random.Random(seed), 0, len(stream.events)):
        store.ingest(stream.run_id, stream.events[a:b], a, b)
    panel = PanelState.from_events(stream.run_id, stream.events)
    assert_agrees(store.get(stream.run_id), panel, stream.truths[-1], f"seed {seed}")


@pytest.mark.parametrize("seed", range(20))
def test_every_other_view_reads_the_same_run(seed):
    """The dashboard's run page, /metrics, a tracker and the agent's observer, over the same stream."""
    from gaudi_nb.telemetry.prometheus import MetricsExporter

    stream = Stream(seed).generate(length=250)
    truth = stream.truth
    usd = None if not truth.node_usd else run_spend(truth.node_usd)

    page = RunPageState(stream.run_id)
    page.apply(stream.events)
    assert page.step == truth.step and page.status == truth.status
    assert same_money(page.cost[-1][1] if page.cost else None, usd)  # the run's spend over time, not one node's

    tracker = TrackerFold(empty_summary(stream.run_id))
    tracker.apply(stream.events)
    logged = [m["loss"] for m in tracker.by_step.values() if "loss" in m]
    assert all(loss < LATE_LOSS for loss in logged), "a late step of a replaced attempt was logged"
    assert tracker.summary["steps_completed"] == truth.step

    agent = RunObserver(stream.nodes[0])
    exporter = MetricsExporter()
    try:
        agent.take(stream.events)
        for event in stream.events:  # the agent's feed hands every event to the exporter too
            exporter.observe(event)
        assert agent.last_step == truth.step and agent.rank_pids == {0: 4242}
        sample = exporter.registry.get_sample_value
        labels = {"run_id": stream.run_id, "node": stream.nodes[0]}
        if any(e["type"] == "step" for e in stream.events):
            assert sample("gaudi_nb_run_step", labels) == truth.step
            assert sample("gaudi_nb_run_tokens_total", labels) == sum(truth.counted.values())  # each step once
            assert (sample("gaudi_nb_run_loss", labels) or 0.0) < LATE_LOSS
        if usd is not None:
            spent = [sample("gaudi_nb_run_cost_dollars", {"run_id": stream.run_id, "node": node}) or 0.0 for node in stream.nodes]
            assert sum(spent) == pytest.approx(usd)
    finally:
        exporter.close()


def test_a_fold_dispatches_on_type_and_applies_the_rules_before_a_view_sees_a_step():
    seen: List[Tuple[str, Any]] = []

    class Steps(Fold):
        def on_step(self, event, step, replayed):
            seen.append(("step", step, replayed))

        def on_restart(self, event, from_step):
            seen.append(("restart", self.attempt, from_step, self.step))

        def on_cost(self, event):
            seen.append(("cost", event["usd"]))

    steps = Steps()
    steps.apply([make_event("step", "r", step=1, attempt=1), make_event("step", "r", step=2, attempt=1), make_event("step", "r", step=2, attempt=1),
                 make_event("restart", "r", attempt=2, cause="crash", from_step=1), make_event("step", "r", step=5, attempt=1), make_event("step", "r", step=2, attempt=2),
                 make_event("cost", "r", usd=0.5), make_event("log", "r", message="no handler: ignored")])
    assert seen == [("step", 1, False), ("step", 2, False), ("step", 2, True), ("restart", 2, 1, 1), ("step", 2, False), ("cost", 0.5)]
    assert steps.highest_step == 2 and Fold().highest_step == 0  # the class defaults stay untouched


def test_a_host_counts_its_memory_once_per_node_not_once_per_rank():
    """The quickstart's panel said "2 × cpu · … memory 1.4 GB of 47 GB" on a 24 GB machine."""
    ranks = [{"index": r, "kind": "cpu", "label": f"cpu rank {r}", "utilization_pct": 100.0, "memory_used_bytes": int(0.7 * GIB), "memory_total_bytes": HOST_MEMORY} for r in range(2)]
    assert grid_summary(ranks)["text"].endswith("memory 1.4 GB of 24 GB")
    state = PanelState.from_events("r", [make_event("telemetry", "r", node=node, source="host", devices=ranks) for node in ("a", "b")])
    assert len(state.devices) == 4 and grid_summary(state.devices)["memory_total_bytes"] == 2 * HOST_MEMORY  # two machines
    cards = [{"index": i, "kind": "hpu", "memory_used_bytes": GIB, "memory_total_bytes": 128 * GIB} for i in range(8)]
    assert grid_summary(cards)["memory_total_bytes"] == 8 * 128 * GIB  # a card's memory is its own


def test_a_record_stored_before_the_fold_goes_on_from_where_it_was():
    """A run ingested by an older version: its replayable steps have four numbers, no losses; a restart still folds."""
    old = fold(empty_summary("r"), [make_event("run_start", "r", spec={"max_steps": 9}), *[make_event("step", "r", step=n, attempt=1, loss=5.0 - n, tokens=10) for n in (1, 2, 3)]])
    old["_replayable"] = {k: v[:4] for k, v in old["_replayable"].items()}
    for key in ("_final_loss_step", "_checkpoint_loss"):
        del old[key]
    record = fold(old, [make_event("restart", "r", attempt=2, cause="crash", from_step=0), make_event("step", "r", step=1, attempt=2, loss=7.0, tokens=10)])
    assert record["steps_completed"] == 1 and record["metrics"]["final_loss"] == 7.0 and record["metrics"]["tokens_seen"] == 10


def test_the_quickstart_says_how_often_the_panel_updates():
    from pathlib import Path

    from gaudi_nb.notebook.panel import UPDATE_INTERVAL_S

    text = Path(__file__).resolve().parent.parent.joinpath("notebooks", "01_quickstart.ipynb").read_text()
    assert f"updates every {UPDATE_INTERVAL_S:g} s" in text and "twice a second" not in text


class FakeTracker:
    """A tracker backend that keeps what it was sent (the real ones are tested in test_trackers.py, slow)."""

    def __init__(self) -> None:
        self.metrics: List[Tuple[int, Dict[str, float]]] = []
        self.started_from: Optional[str] = "not started"
        self.status: Optional[str] = None

    def start(self, run_name, tags, previous_run_id):
        self.started_from = previous_run_id
        return {"tracker_run_id": "t-1", "url": None, "experiment": "0"}

    def log_params(self, params):
        pass

    def set_tags(self, tags):
        pass

    def log_metrics(self, metrics, step):
        self.metrics.append((step, dict(metrics)))

    def log_artifact(self, path, name):
        pass

    def finish(self, status):
        self.status = status


def run_tracker(tmp_path, events: List[Dict[str, Any]]) -> Tuple[FakeTracker, Any]:
    from gaudi_nb.agent.feed import EventFeed
    from gaudi_nb.agent.trackers import TrackerThread
    from gaudi_nb.events import EventWriter
    from gaudi_nb.rundir import RunFolder

    folder = RunFolder(tmp_path / "run")
    writer = EventWriter(folder.events, "r")
    for event in events:
        writer.write(event)
    writer.close()
    backend = FakeTracker()
    feed = EventFeed(folder.events)
    thread = TrackerThread("fake", folder, "r", "local", {"name": "tracked"}, feed, make=lambda name, path: backend)
    thread.start()
    feed.start(poll_s=0.05)  # the agent's one read, fanned out
    thread.join(30)
    feed.stop()
    assert not thread.is_alive()
    return backend, thread


def tracked_steps(backend: FakeTracker) -> List[Tuple[int, float]]:
    return [(step, m["loss"]) for step, m in backend.metrics if "loss" in m]


def test_a_tracker_logs_each_step_of_the_attempt_that_ran_it_and_not_a_late_one(tmp_path):
    def step(n, attempt, loss):
        return make_event("step", "r", rank=0, step=n, attempt=attempt, loss=loss, tokens=100, step_time_s=0.1, tokens_per_second=1000.0)

    events = [make_event("run_start", "r", spec={"max_steps": 6}, price_per_hour=3.6), *[step(n, 1, 5.0 - n / 10) for n in (1, 2, 3, 4)],
              make_event("restart", "r", attempt=2, cause="crash", from_step=2), step(7, 1, LATE_LOSS), step(3, 2, 3.3), step(4, 2, 3.4),
              make_event("cost", "r", usd=0.25, elapsed_s=250.0, price_per_hour=3.6, nodes=1), make_event("run_end", "r", status="succeeded", exit_code=0)]
    backend, thread = run_tracker(tmp_path, events)  # read in one go: the lost attempt's steps 3 and 4 never reach it
    assert tracked_steps(backend) == [(1, 4.9), (2, 4.8), (3, 3.3), (4, 3.4)]
    assert backend.status == "succeeded" and thread.record["steps_completed"] == 4 and thread.record["attempt"] == 2
    assert any(m.get("usd") == 0.25 for _, m in backend.metrics)


def test_a_resumed_run_logs_only_the_new_attempt_but_its_record_keeps_every_step(tmp_path):
    def step(n, attempt):
        return make_event("step", "r", rank=0, step=n, attempt=attempt, loss=float(n), tokens=100, step_time_s=0.1)

    events = [make_event("run_start", "r", spec={"max_steps": 4}), make_event("tracker", "r", tracker="fake", tracker_run_id="t-0"), step(1, 1), step(2, 1),
              make_event("checkpoint", "r", step=2, path="/c/2"), make_event("run_end", "r", status="stopped"),
              make_event("restart", "r", attempt=2, cause="resume", from_step=2), step(3, 2), step(4, 2), make_event("run_end", "r", status="succeeded", attempt=2)]
    backend, thread = run_tracker(tmp_path, events)
    assert backend.started_from == "t-0" and tracked_steps(backend) == [(3, 3.0), (4, 4.0)]
    assert thread.record["metrics"]["tokens_seen"] == 400 and thread.record["metrics"]["first_loss"] == 1.0
