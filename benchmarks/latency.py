"""Latency from a step event written to a run's events.jsonl to the step visible in a view's data; prints JSON.

A local run folder and store (a fresh GAUDI_NB_HOME); a writer appends `step` events through
gaudi_nb.events' EventWriter, as rank 0 does, at random moments (so every phase of the views' ticks
is sampled). Two views, measured one after the other:

- dashboard: DashboardData with its reader thread at the dashboard's interval (it syncs the active
  run from its events file into the store, then reads the new rows); visible = the step in its Runs table.
- panel: the notebook's RunPanel started on the run (its thread: Run.sync, then the store's new events,
  then PanelState); visible = PanelState.step. Measured as it is shipped, at its own interval, and
  again at the dashboard's interval (what changing only the panel's interval would give).

What the browser adds after that (one websocket message per change) is not in these figures.

Usage: python benchmarks/latency.py [--samples 60] [--store URL]
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
from typing import Any, Callable, Dict, List


def percentile(values: List[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q / 100 * len(ordered))) - 1))]


def measure(writer: Any, run_id: str, visible_step: Callable[[], int], first_step: int, samples: int) -> List[float]:
    from gaudi_nb.events import make_event

    latencies = []
    for i in range(samples):
        step = first_step + i
        time.sleep(random.uniform(0.05, 0.35))  # any phase of the view's tick
        written = time.perf_counter()
        writer.write(make_event("step", run_id, rank=0, step=step, loss=3.0 / step, tokens=4096, tokens_per_second=40960.0, step_time_s=0.1, warmup=False))
        deadline = written + 10
        while visible_step() < step:
            if time.perf_counter() > deadline:
                raise SystemExit(f"step {step} was not visible after 10 s")
            time.sleep(0.001)
        latencies.append((time.perf_counter() - written) * 1000)
    return latencies


def summary(latencies: List[float], interval_ms: float) -> Dict[str, Any]:
    return {
        "interval_ms": interval_ms,
        "samples": len(latencies),
        "p50_ms": round(statistics.median(latencies), 1),
        "p95_ms": round(percentile(latencies, 95), 1),
        "max_ms": round(max(latencies), 1),
        "meets_250ms_p95": percentile(latencies, 95) <= 250,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=60)
    parser.add_argument("--store", default=None, help="a store URL (default: a fresh SQLite file)")
    args = parser.parse_args()
    random.seed(1)
    folder = Path(tempfile.mkdtemp(prefix="gaudi-nb-bench-latency-"))
    os.environ["GAUDI_NB_HOME"] = str(folder / "home")

    from gaudi_nb import paths
    from gaudi_nb.api import Run
    from gaudi_nb.dashboard.app import UPDATE_INTERVAL_MS
    from gaudi_nb.dashboard.data_store import DashboardData
    from gaudi_nb.events import EventWriter, make_event
    from gaudi_nb.store import RunStore

    store = RunStore(args.store or f"sqlite:///{folder / 'store.db'}")
    run_id = f"latency-{int(time.time())}"
    run_dir = paths.run_dir(run_id)
    spec = {"model": "tiny-llama", "max_steps": 100000, "target": "local", "nodes": 1}
    store.register(run_id, spec=spec, target="local", run_dir=str(run_dir))
    writer = EventWriter(run_dir / "events.jsonl", run_id)
    writer.emit("run_start", spec=spec, run_dir=str(run_dir), accelerator="cpu", price_per_hour=1.0)
    writer.write(make_event("worker_start", run_id, rank=0, world_size=1, accelerator="cpu"))
    results: Dict[str, Any] = {"store": store.url.split("://")[0]}

    data = DashboardData(store, follow=True)
    data.refresh()
    data.start(UPDATE_INTERVAL_MS / 1000)

    def dashboard_step() -> int:
        runs = data.runs
        row = runs[runs["run_id"] == run_id]
        return int(row["step"].iloc[0]) if len(row) else 0

    latencies = measure(writer, run_id, dashboard_step, 1, args.samples)
    data.stop()
    results["dashboard"] = summary(latencies, UPDATE_INTERVAL_MS)

    from gaudi_nb.notebook.panel import UPDATE_INTERVAL_S, RunPanel

    panel = RunPanel(Run(run_id, store)).start()
    latencies = measure(writer, run_id, lambda: panel.state.step, args.samples + 1, args.samples)
    panel.close()
    results["panel"] = summary(latencies, UPDATE_INTERVAL_S * 1000)
    # the same panel at the dashboard's interval: what changing the panel's interval alone would give
    panel = RunPanel(Run(run_id, store), interval_s=UPDATE_INTERVAL_MS / 1000).start()
    latencies = measure(writer, run_id, lambda: panel.state.step, 2 * args.samples + 1, args.samples)
    panel.close()
    results["panel_at_dashboard_interval"] = summary(latencies, UPDATE_INTERVAL_MS)
    writer.close()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
