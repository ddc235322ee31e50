"""summary.py: a run's record folded from its events (status, metrics, cost), what `gaudi-nb show --json`,
run.record() and every view read. Restarts and replays are in test_faults.py; here, one attempt's life."""
from __future__ import annotations

import pytest

from gaudi_nb.events import make_event
from gaudi_nb.summary import empty_summary, fold, public

RUN = "r"


def ev(kind, t, **fields):
    return make_event(kind, RUN, t=t, **fields)


def step(n, t, *, tokens=1000, seconds=0.5, warmup=False, loss=None, rank=0):
    return ev("step", t, rank=rank, attempt=1, step=n, loss=10.0 / n if loss is None else loss, tokens=tokens, samples=4,
              step_time_s=seconds, warmup=warmup)


def start(t=100.0, **spec):
    return ev("run_start", t, spec={"max_steps": 10, "nodes": 1, "name": "first", "target": "local", **spec}, accelerator="cpu", price_per_hour=36.0, price_source="given")


def test_status_follows_the_run_from_pending_to_its_end_with_the_reason():
    record = empty_summary(RUN)
    assert record["status"] == "pending"
    record = fold(record, [start()])
    assert record["status"] == "starting" and record["name"] == "first" and record["started_at"] == 100.0 and record["max_steps"] == 10
    record = fold(record, [ev("worker_start", 101.0, rank=1, world_size=2, accelerator="cpu", trainer="transformers")])
    assert record["status"] == "running" and record["device_count"] is None  # rank 1 says it started; only rank 0 speaks for the run
    record = fold(record, [ev("worker_start", 101.0, rank=0, world_size=2, accelerator="cpu", trainer="transformers", precision="fp32")])
    assert record["device_count"] == 2 and record["trainer"] == "transformers" and record["precision"] == "fp32"
    record = fold(record, [step(1, 102.0), ev("stop_requested", 103.0, reason="stopped")])
    assert record["status"] == "stopping" and record["ended_at"] is None
    record = fold(record, [ev("run_end", 104.0, status="stopped", exit_code=0, reason="stopped on request", last_log_lines=["bye"])])
    assert record["status"] == "stopped" and record["ended_at"] == 104.0 and record["last_event_at"] == 104.0
    assert record["exit"] == {"exit_code": 0, "reason": "stopped on request", "last_log_lines": ["bye"]}
    # a stop asked for after the end changes nothing
    assert fold(record, [ev("stop_requested", 105.0, reason="stopped")])["status"] == "stopped"


def test_a_script_run_is_running_at_its_first_step_and_a_batch_run_at_once():
    silent = fold(empty_summary(RUN), [start(), step(1, 102.0)])  # rank 0 of a script said nothing before reporting
    assert silent["status"] == "running" and silent["steps_completed"] == 1
    batch = fold(empty_summary(RUN), [make_event("run_start", RUN, t=100.0, kind="batch", spec={"notebook": "a.ipynb", "parameters": {"lr": 1}}, cells=[{"index": i, "source_preview": "x = 1", "tags": []} for i in range(3)])])
    assert batch["status"] == "running" and batch["batch"]["cells_total"] == 3 and batch["batch"]["parameters"] == {"lr": 1}
    batch = fold(batch, [make_event("cell", RUN, t=101.0, phase="start", index=0), make_event("cell", RUN, t=102.0, phase="end", index=0),
                         make_event("cell", RUN, t=103.0, phase="start", index=1), make_event("cell", RUN, t=104.0, phase="error", index=1, error="ZeroDivisionError"),
                         make_event("result", RUN, t=104.5, values={"loss": 0.5})])
    assert batch["batch"]["cells_done"] == 1 and batch["batch"]["failed_cell"] == 1 and batch["batch"]["error"] == "ZeroDivisionError"
    assert batch["batch"]["current_cell"] is None and batch["batch"]["results"] == {"loss": 0.5}


def test_throughput_leaves_warmup_out_and_the_loss_runs_from_first_to_last():
    events = [start(), step(1, 101.0, seconds=30.0, warmup=True), step(2, 102.0, seconds=0.5), step(3, 103.0, seconds=1.5),
              ev("eval", 103.5, step=3, eval_loss=2.5)]
    record = fold(empty_summary(RUN), events)
    m = record["metrics"]
    assert m["tokens_seen"] == 3000  # every step's tokens count
    assert m["tokens_per_second"] == pytest.approx(2000 / 2.0)  # a compiling warmup step would make it 3 times slower
    assert m["samples_per_second"] == pytest.approx(8 / 2.0)
    assert (m["first_loss"], m["final_loss"], m["eval_loss"], m["step_time_s"]) == (10.0, pytest.approx(10 / 3), 2.5, 1.5)
    # $36/h on one node at 1,000 tokens/s: $0.01 a second, $10 a million tokens
    assert record["cost"]["usd_per_million_tokens"] == pytest.approx(10.0)


def test_the_cost_is_each_nodes_latest_reading_summed_and_unknown_while_one_is():
    record = fold(empty_summary(RUN), [start(nodes=2, budget_usd=1.0), step(1, 101.0), step(2, 102.0)])
    record = fold(record, [ev("cost", 110.0, node="a", usd=0.1, elapsed_s=10.0, price_per_hour=36.0, nodes=1),
                           ev("cost", 111.0, node="a", usd=0.11, elapsed_s=11.0, price_per_hour=36.0, nodes=1)])
    assert record["cost"]["usd"] == pytest.approx(0.11) and record["cost"]["nodes"] == 2  # the spec's two nodes, one metered so far
    record = fold(record, [ev("cost", 111.0, node="b", usd=None, elapsed_s=9.0, price_per_hour=36.0, nodes=1)])
    assert record["cost"]["usd"] is None and record["cost"]["budget_left_usd"] is None  # money is never guessed
    record = fold(record, [ev("cost", 112.0, node="b", usd=0.09, elapsed_s=12.0, price_per_hour=36.0, nodes=1)])
    c = record["cost"]
    assert c["usd"] == pytest.approx(0.2) and c["elapsed_s"] == 12.0 and c["budget_left_usd"] == pytest.approx(0.8)
    # 2 of 10 steps in 12 s for $0.20: the other 8 at the same pace cost $0.80 more
    assert c["projected_usd"] == pytest.approx(1.0)


def test_fold_returns_a_new_record_and_public_leaves_the_running_sums_out():
    before = fold(empty_summary(RUN), [start()])
    after = fold(before, [step(1, 101.0)])
    assert before["steps_completed"] == 0 and after["steps_completed"] == 1  # the record it was given is unchanged
    same = fold(before, [step(1, 101.0)], in_place=True)
    assert same is before and before["steps_completed"] == 1
    shown = public(after)
    assert "metrics" in shown and "cost" in shown and not [k for k in shown if k.startswith("_")]
    assert [k for k in after if k.startswith("_")]  # the sums the fold needs stay in the stored record
