"""The dashboard at fleet scale: 128 simulated nodes × 8 devices at 1 Hz streamed into the store; prints JSON.

Each node runs one run (its own agent, its own events.jsonl), as 128 single-node runs on a team's
fleet would. Every simulated second each node writes a telemetry sample of its 8 devices, a step and a
cost event. Two figures:

- ingest: events per second that the store takes in from the runs' streams (lines written by an
  EventWriter and read back as the reader reads them) over SECONDS simulated seconds of the whole
  fleet. The headline figure is the dashboard reader's: a tick takes every node's new events in one
  transaction (RunStore.ingest_many), while it keeps up (the second quarter: 3 events a node a tick)
  and while it catches up (the second half: every node's backlog in one tick). The first quarter is
  reported on its own: each node's second in a transaction of its own (Run.sync, what a notebook does);
- update: the server-side time of one dashboard update after one more second of the fleet arrived:
  DashboardData.refresh() (the reader: new runs rows and events from their cursors) plus one session's
  DashboardState.update() (runs table, fleet, costs, both 1024-row heat maps), without a browser;
- follow: the reader's tick when it also pulls every run's events file into the store itself
  (128 local runs: a tick after all of them moved, and an idle one).

Usage: python benchmarks/dashboard.py [--store URL] [--nodes 128] [--devices 8] [--seconds 60]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

from gaudi_nb.events import EventWriter, make_event, read_events
from gaudi_nb.store import RunStore

GIB = 1024**3
PRICE = 13.11


def node_events(run_id: str, node: str, devices: int, t: float, step: int) -> List[Dict[str, Any]]:
    return [
        make_event(
            "telemetry", run_id, node=node, t=t, source="hlml",
            devices=[{"index": i, "kind": "hpu", "label": f"hpu {i}", "utilization_pct": random.uniform(0, 100) if node[-1] != "7" else 0.0,
                      "memory_used_bytes": int(random.uniform(10, 120) * GIB), "memory_total_bytes": 128 * GIB, "power_w": random.uniform(200, 600), "temperature_c": 55.0, "pid": None}
                     for i in range(devices)],
            host={"cpu_percent": 30.0, "memory_used_bytes": 100 * GIB, "memory_total_bytes": 1000 * GIB, "process_rss_bytes": GIB},
        ),
        make_event("step", run_id, node=node, rank=0, t=t, step=step, loss=10.0 / (1 + step / 100), learning_rate=3e-4, grad_norm=1.0, step_time_s=1.0, tokens=65536, samples=512,
                   tokens_per_second=65536.0, samples_per_second=512.0, warmup=step <= 3),
        make_event("cost", run_id, node=node, t=t, elapsed_s=float(step), usd=step / 3600 * PRICE, price_per_hour=PRICE, nodes=1, budget_usd=500.0),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=None, help="a store URL (default: a fresh SQLite file)")
    parser.add_argument("--nodes", type=int, default=128)
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--updates", type=int, default=50)
    args = parser.parse_args()
    random.seed(0)
    folder = Path(tempfile.mkdtemp(prefix="gaudi-nb-bench-dashboard-"))
    os.environ.setdefault("GAUDI_NB_HOME", str(folder / "home"))
    url = args.store or f"sqlite:///{folder / 'store.db'}"
    store = RunStore(url)
    now = time.time()
    start = now - args.seconds
    runs = []
    for n in range(args.nodes):
        run_id, node = f"fleet-{n:03d}", f"node-{n:03d}"
        spec = {"model": "llama-3-8b", "max_steps": 100000, "nodes": 1, "target": node, "budget_usd": 500.0, "price_per_hour": PRICE}
        store.register(run_id, spec=spec, target=node, run_dir=None, owner=f"user{n % 6}")
        store.ingest(run_id, [make_event("run_start", run_id, node=node, t=start, spec=spec, accelerator="hpu", trainer="optimum-habana", price_per_hour=PRICE, price_source="bench")], 0, 1)
        runs.append((run_id, node))
    offsets = {run_id: 1 for run_id, _ in runs}

    # the fleet's events, written to each run's events.jsonl and read back (as the reader reads them:
    # a second at a time while it keeps up) before the clock starts: what is timed is the store's ingest
    half = args.seconds // 2
    streams = {run_id: folder / "streams" / f"{run_id}.jsonl" for run_id, _ in runs}
    writers = {run_id: EventWriter(path, run_id) for run_id, path in streams.items()}
    read_at = {run_id: 0 for run_id in streams}
    batches = []  # per second: (run_id, events, start, end) of every node
    for s in range(args.seconds):
        second = []
        for run_id, node in runs:
            for event in node_events(run_id, node, args.devices, start + s, s + 1):
                writers[run_id].write(event)
            events, end = read_events(streams[run_id], read_at[run_id])
            second.append((run_id, events, read_at[run_id] + 1, end + 1))  # +1: the run_start above took byte 0
            read_at[run_id] = end
        batches.append(second)
    for writer in writers.values():
        writer.close()

    # 1. live, per run: each node's new second in a transaction of its own (Run.sync, what a notebook does)
    live_per_run = 0
    started = time.perf_counter()
    for second in batches[: half // 2]:
        for batch in second:
            live_per_run += store.ingest(*batch)
    live_per_run_s = time.perf_counter() - started
    # 2. live, per tick: the dashboard's reader takes every node's new second in one transaction
    live = 0
    started = time.perf_counter()
    for second in batches[half // 2 : half]:
        live += sum(store.ingest_many(second).values())
    live_s = time.perf_counter() - started
    # 3. catching up: a reader that was away (or a dashboard just started) takes every node's backlog in one tick
    backlog = [(run_id, [e for second in batches[half:] for e in second[n][1]], batches[half][n][2], batches[-1][n][3]) for n, (run_id, _) in enumerate(runs)]
    started = time.perf_counter()
    caught = sum(store.ingest_many(backlog).values())
    catch_up_s = time.perf_counter() - started
    ingested = live + caught
    ingest_s = live_s + catch_up_s
    offsets = {run_id: end for run_id, _, _, end in backlog}

    from gaudi_nb.dashboard.data_store import DashboardData

    data = DashboardData(store, follow=False, limit=1000)
    first_started = time.perf_counter()
    data.refresh()
    first_refresh_ms = (time.perf_counter() - first_started) * 1000

    state = None
    try:
        from gaudi_nb.dashboard.app import settle_heap
        from gaudi_nb.dashboard.views import DashboardState

        state = DashboardState(data)
        state.update()
        settle_heap()  # as `gaudi-nb dashboard` does once it has loaded
    except ImportError:  # without Panel the reader's figure stands alone
        pass

    refresh_ms, session_ms, total_ms = [], [], []
    for u in range(args.updates):
        t = time.time()
        for run_id, node in runs:
            events = node_events(run_id, node, args.devices, t, args.seconds + u + 1)
            store.ingest(run_id, events, offsets[run_id], offsets[run_id] + 3000)  # offsets only have to move forward
            offsets[run_id] += 3000
        a = time.perf_counter()
        data.refresh()
        b = time.perf_counter()
        if state is not None:
            state.heatmap_at = 0.0  # every update here redraws the heat maps too (the worst tick)
            state.update()
        c = time.perf_counter()
        refresh_ms.append((b - a) * 1000)
        session_ms.append((c - b) * 1000)
        total_ms.append((c - a) * 1000)

    follow = following(args.nodes, args.devices, folder)

    def summary(values: List[float]) -> Dict[str, float]:
        ordered = sorted(values)
        return {"median": round(statistics.median(ordered), 2), "p95": round(ordered[max(0, int(len(ordered) * 0.95) - 1)], 2), "max": round(ordered[-1], 2)}

    print(json.dumps({
        "store": url.split("://")[0],
        "nodes": args.nodes,
        "devices": args.nodes * args.devices,
        "simulated_seconds": args.seconds,
        "events": live_per_run + ingested,
        "ingest_events_per_second": round(ingested / ingest_s),
        "ingest_live_events_per_second": round(live / live_s),
        "ingest_catch_up_events_per_second": round(caught / catch_up_s),
        "catch_up_events_per_run": len(backlog[0][1]),
        "ingest_live_per_run_events_per_second": round(live_per_run / live_per_run_s),
        "ingest_seconds": round(ingest_s, 2),
        "fleet_events_per_second_at_1_hz": args.nodes * 3,
        "first_refresh_ms": round(first_refresh_ms, 1),
        "update_ms": summary(total_ms),
        "update_reader_ms": summary(refresh_ms),
        "update_session_ms": summary(session_ms),
        "heatmap_rows": int(data.heatmap()["values"].shape[0]),
        **follow,
    }, indent=2))


def following(nodes: int, devices: int, folder: Path) -> Dict[str, Any]:
    """The reader's tick when it also follows every run's events file (what `gaudi-nb dashboard` does):
    NODES local runs, each rank-0 stream written by an EventWriter; a tick where every run got a second
    of events, and an idle tick."""
    from gaudi_nb import paths
    from gaudi_nb.dashboard.data_store import DashboardData
    from gaudi_nb.events import EventWriter

    store = RunStore(f"sqlite:///{folder / 'follow.db'}")
    writers = {}
    for n in range(nodes):
        run_id = f"follow-{n:03d}"
        run_dir = paths.run_dir(run_id)
        store.register(run_id, spec={"max_steps": 100000}, target="local", run_dir=str(run_dir))
        writers[run_id] = EventWriter(run_dir / "events.jsonl", run_id)
        writers[run_id].emit("run_start", spec={"max_steps": 100000}, run_dir=str(run_dir), price_per_hour=PRICE)
    data = DashboardData(store, follow=True)
    data.refresh()
    busy, idle = [], []
    for second in range(5):
        for run_id, writer in writers.items():
            for event in node_events(run_id, "local", devices, time.time(), second + 1):
                writer.write(event)
        started = time.perf_counter()
        data.refresh()
        busy.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        data.refresh()
        idle.append((time.perf_counter() - started) * 1000)
    for writer in writers.values():
        writer.close()
    return {"follow_tick_every_run_moved_ms": round(statistics.median(busy), 1), "follow_tick_idle_ms": round(statistics.median(idle), 1)}


if __name__ == "__main__":
    main()
