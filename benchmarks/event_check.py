"""What checking an event against the contract costs a rank, next to the json.dumps its writer does anyway.
Prints JSON. Both are timed in one run, alternating, best of 7 rounds of 2000 calls each.

    python benchmarks/event_check.py

Goal (issue 18): checking a step costs less than writing it (a few µs on a quiet machine).
"""
from __future__ import annotations

import json
import time

from gaudi_nb.events.contract import check
from gaudi_nb.events.stream import make_event

STEP = dict(attempt=1, step=3, loss=2.5, learning_rate=3e-4, grad_norm=None, step_time_s=0.5, tokens=1000, samples=8,
            tokens_per_second=2000.0, samples_per_second=16.0, warmup=False, memory={"in_use_bytes": 123})


def best(work, rounds: int = 7, calls: int = 2000) -> float:
    fastest = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(calls):
            work()
        fastest = min(fastest, (time.perf_counter() - started) / calls)
    return fastest


def main() -> None:
    event = make_event("step", "bench", rank=0, **STEP)
    checking = best(lambda: check(event))
    writing = best(lambda: json.dumps(event, separators=(",", ":"), default=str))
    print(json.dumps({"check_step_us": round(checking * 1e6, 2), "write_step_us": round(writing * 1e6, 2),
                      "ratio": round(checking / writing, 2), "goal": "check < write"}))


if __name__ == "__main__":
    main()
