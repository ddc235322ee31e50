"""The cost of one live-panel update (fold new events into PanelState + refresh every widget) at 8 and 1024 devices; prints JSON.

One update is what the panel's thread does each tick: a telemetry sample of every device, a step
and a cost event arrive, the state folds them, and the view rewrites its HTML, SVG charts and the
device grid's traits. Synthetic events, no training and no frontend (widget messages go nowhere),
so this is the kernel-side cost the user's kernel pays per tick.
"""
from __future__ import annotations

import json
import random
import statistics
import time
from types import SimpleNamespace
from typing import Any, Dict, List

from gaudi_nb.events import make_event
from gaudi_nb.notebook.panel import PanelState, RunPanel

RUN_ID = "bench-panel"
HISTORY_STEPS = 2000  # a long run's history is already in the state: charts draw decimated curves
UPDATES = 40
GIB = 1024**3


def telemetry(devices: int, t: float) -> Dict[str, Any]:
    return make_event(
        "telemetry", RUN_ID, t=t, source="hlml",
        devices=[{"index": i, "kind": "hpu", "label": f"HL-325L {i}", "utilization_pct": random.uniform(0, 100), "memory_used_bytes": int(random.uniform(10, 120) * GIB),
                  "memory_total_bytes": 128 * GIB, "power_w": 600.0, "temperature_c": 55.0, "pid": None} for i in range(devices)],
        host={"cpu_percent": 30.0, "memory_used_bytes": 100 * GIB, "memory_total_bytes": 1000 * GIB, "process_rss_bytes": GIB},
    )


def step(n: int, t: float) -> Dict[str, Any]:
    return make_event("step", RUN_ID, rank=0, t=t, step=n, loss=10.0 / (1 + n / 100), learning_rate=3e-4, grad_norm=1.0, step_time_s=0.5, tokens=65536, samples=512,
                      tokens_per_second=131072.0, samples_per_second=1024.0, warmup=n <= 3, memory={"in_use_bytes": 80 * GIB})


def history(devices: int) -> List[Dict[str, Any]]:
    spec = {"max_steps": HISTORY_STEPS * 2, "nodes": max(1, devices // 8), "budget_usd": 5000.0, "target": "local"}
    events = [make_event("run_start", RUN_ID, t=0.0, spec=spec, accelerator="hpu", trainer="optimum-habana", price_per_hour=13.11, price_source="bench")]
    events.append(make_event("worker_start", RUN_ID, rank=0, t=1.0, world_size=devices, precision="bf16", trainer="optimum-habana", accelerator="hpu"))
    events += [step(n, 1.0 + n * 0.5) for n in range(1, HISTORY_STEPS + 1)]
    return events


def measure(devices: int) -> Dict[str, Any]:
    random.seed(devices)
    fake_run = SimpleNamespace(run_id=RUN_ID, stop=lambda reason="stopped": True)
    panel = RunPanel(fake_run)  # never started: this benchmark feeds the state itself
    panel.state = PanelState(RUN_ID)
    panel.state.apply(history(devices))
    panel.render()
    timings = []
    t = 1.0 + HISTORY_STEPS * 0.5
    for i in range(UPDATES):
        t += 1.0
        fresh = [telemetry(devices, t), step(HISTORY_STEPS + i + 1, t), make_event("cost", RUN_ID, t=t, elapsed_s=t, usd=t / 3600 * 13.11, price_per_hour=13.11, nodes=1, budget_usd=5000.0)]
        started = time.perf_counter()
        panel.state.apply(fresh)
        panel.render()
        timings.append((time.perf_counter() - started) * 1000)
    return {
        "devices": devices,
        "update_ms_median": round(statistics.median(timings), 2),
        "update_ms_p90": round(sorted(timings)[int(0.9 * len(timings))], 2),
        "history_steps": HISTORY_STEPS,
        "updates": UPDATES,
    }


def main() -> None:
    results = [measure(n) for n in (8, 1024)]
    print(json.dumps({"benchmark": "panel_update", "interval_ms": 500, "results": results}, indent=2))


if __name__ == "__main__":
    main()
