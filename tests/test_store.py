"""The same store tests on SQLite and on a real PostgreSQL server."""
import math

from gaudi_nb.events import make_event
from gaudi_nb.store import RunStore


def _events(run_id):
    spec = {"max_steps": 3, "nodes": 1, "budget_usd": 1.0}
    return [
        make_event("run_start", run_id, spec=spec, price_per_hour=36.0, price_source="explicit", accelerator="cpu"),
        make_event("worker_start", run_id, rank=0, trainer="transformers", precision="fp32", accelerator="cpu", world_size=2),
        make_event("step", run_id, rank=0, step=1, loss=7.0, tokens=1000, samples=8, step_time_s=1.0, warmup=True),
        make_event("step", run_id, rank=0, step=2, loss=6.0, tokens=1000, samples=8, step_time_s=0.5, warmup=False),
        make_event("telemetry", run_id, source="host", devices=[]),
        make_event("cost", run_id, usd=0.02, elapsed_s=2.0, price_per_hour=36.0, nodes=1),
        make_event("step", run_id, rank=0, step=3, loss=float("nan"), tokens=1000, samples=8, step_time_s=0.5, warmup=False),
        make_event("run_end", run_id, status="succeeded", exit_code=0),
    ]


def test_ingest_folds_events_into_the_run_record(store_url):
    store = RunStore(store_url)
    store.register("r1", spec={"max_steps": 3}, target="local", run_dir="/tmp/r1")
    events = _events("r1")
    assert store.ingest("r1", events, 0, 800) == len(events)
    record = store.get("r1")
    assert record["status"] == "succeeded"
    assert record["steps_completed"] == 3
    assert record["metrics"]["first_loss"] == 7.0
    assert record["metrics"]["tokens_per_second"] == 2000.0  # warmup step left out
    assert record["cost"]["usd"] == 0.02 and record["cost"]["price_per_hour"] == 36.0
    assert math.isclose(record["cost"]["usd_per_million_tokens"], 36.0 / 3600 / 2000 * 1e6)
    assert record["telemetry_samples"] == 1 and record["trainer"] == "transformers"


def test_ingesting_the_same_bytes_twice_adds_nothing(store_url):
    store = RunStore(store_url)
    store.register("r2", spec={}, target="local", run_dir=None)
    events = _events("r2")
    assert store.ingest("r2", events[:4], 0, 400) == 4
    assert store.ingest("r2", events[:4], 0, 400) == 0  # a reader that saw the same bytes
    assert store.ingest("r2", events[4:], 400, 800) == 4
    assert store.count_events("r2") == len(events)
    assert [e["type"] for e in store.events("r2")] == [e["type"] for e in events]
    assert store.offset("r2") == 800


def test_nan_loss_is_stored_as_null_not_lost(store_url):
    store = RunStore(store_url)
    store.register("r3", spec={}, target="local", run_dir=None)
    store.ingest("r3", _events("r3"), 0, 800)
    steps = store.events("r3", types=["step"])
    assert [e["step"] for e in steps] == [1, 2, 3] and steps[-1]["loss"] is None


def test_list_and_prefix_lookup(store_url):
    store = RunStore(store_url)
    store.register("alpha-1", spec={}, target="local", run_dir=None)
    store.register("beta-1", spec={}, target="local", run_dir=None, kind="batch")
    assert {r["run_id"] for r in store.list()} == {"alpha-1", "beta-1"}
    assert [r["run_id"] for r in store.list(kind="batch")] == ["beta-1"]
    assert store.resolve("alp") == "alpha-1"
