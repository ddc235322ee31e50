import json

from gaudi_nb.events import COMMON_KEYS, BackgroundEventWriter, EventWriter, Tailer, make_event, read_events


def test_every_event_carries_the_common_keys(tmp_path):
    writer = EventWriter(tmp_path / "events.jsonl", "run-1", node="n0", rank=0)
    event = writer.emit("step", step=1, loss=2.5)
    writer.close()
    assert all(key in event for key in COMMON_KEYS)
    assert event["v"] == 1 and event["run_id"] == "run-1" and event["node"] == "n0"


def test_reader_resumes_from_offset_and_leaves_a_partial_line(tmp_path):
    path = tmp_path / "events.jsonl"
    writer = EventWriter(path, "r")
    writer.emit("step", step=1)
    events, offset = read_events(path)
    assert [e["step"] for e in events] == [1]
    line = json.dumps(make_event("step", "r", step=2)).encode()
    with open(path, "ab") as fh:  # a writer caught mid-line
        fh.write(line[:-1])
    events, offset2 = read_events(path, offset)
    assert events == [] and offset2 == offset
    with open(path, "ab") as fh:
        fh.write(line[-1:] + b"\n")
    events, offset3 = read_events(path, offset2)
    assert [e["step"] for e in events] == [2] and offset3 == path.stat().st_size


def test_background_writer_keeps_order_and_flushes_on_close(tmp_path):
    path = tmp_path / "events.jsonl"
    writer = BackgroundEventWriter(path, "r", rank=0)
    for step in range(1, 501):
        writer.emit("step", step=step)
    writer.close()
    steps = [json.loads(line)["step"] for line in path.read_text().splitlines()]
    assert steps == list(range(1, 501))


def test_tailer_stops_at_run_end(tmp_path):
    path = tmp_path / "events.jsonl"
    writer = EventWriter(path, "r")
    writer.emit("step", step=1)
    writer.emit("run_end", status="succeeded")
    writer.emit("log", message="after the end")
    seen = [e["type"] for e in Tailer(path, poll_s=0.01).follow(timeout=5)]
    assert seen == ["step", "run_end"]


def test_run_states_follow_the_design_pending_starting_running_stopping_end():
    from gaudi_nb.summary import empty_summary, fold

    s = empty_summary("r")
    assert s["status"] == "pending"
    s = fold(s, [make_event("run_start", "r", spec={"max_steps": 5})])
    assert s["status"] == "starting"  # the agent is up, no rank yet
    s = fold(s, [make_event("worker_start", "r", rank=1, pid=7)])
    assert s["status"] == "running"
    s = fold(s, [make_event("stop_requested", "r", reason="stopped")])
    assert s["status"] == "stopping"
    s = fold(s, [make_event("run_end", "r", status="lost", reason="agent gone")])
    assert s["status"] == "lost" and s["exit"]["reason"] == "agent gone"
    s = fold(s, [make_event("run_end", "r", status="stopped", reason="stopped on request after its agent was lost")])
    assert s["status"] == "stopped"  # a stop after lost is recorded after it


# -- the contract ---------------------------------------------------------------------------------
import math  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from gaudi_nb import events as events_module  # noqa: E402
from gaudi_nb.events import EVENT_TYPES, parse  # noqa: E402

# One event of each type as its producer writes it today (the fields worker/, agent/, batch/ and nodes/link.py emit).
PRODUCED = {
    "run_start": dict(spec={"model": "tiny-llama", "max_steps": 5}, run_dir="/r", pid=7, hostname="h", accelerator="cpu", trainer="transformers",
                      launcher="torchrun", command="torchrun ...", price_per_hour=None, price_source=None, metrics_port=None,
                      node_rank=0, nodes=["a", "b"], master_addr="10.0.0.1", local_addr="10.0.0.1", ifname=None),
    "worker_start": dict(pid=8, local_rank=0, world_size=2, accelerator="cpu", device="cpu", precision="fp32", precision_chosen_by="spec", trainer="transformers",
                         execution_mode="eager", parameters=4_000_000, trainable_parameters=32_768, lora={"r": 8, "alpha": 16}, device_name=None,
                         train_sequences=90, eval_sequences=10, torch_version="2.6", batch_size=4, global_batch_size=8, learning_rate=3e-4,
                         base_learning_rate=3e-4, lr_scaling="none", base_batch_size=None),
    "worker_error": dict(error="RuntimeError: out of memory", traceback=["Traceback", "RuntimeError: out of memory"]),
    "step": dict(attempt=1, step=3, loss=2.5, learning_rate=3e-4, grad_norm=None, step_time_s=0.5, tokens=1000, samples=8, tokens_per_second=2000.0,
                 samples_per_second=16.0, warmup=False, memory={"in_use_bytes": 123}, accuracy=0.5),
    "eval": dict(attempt=1, step=4, eval_loss=2.25),
    "checkpoint": dict(attempt=1, step=4, path="/r/checkpoints/checkpoint-4", reason="periodic"),
    "telemetry": dict(t=5.0, source="host", devices=[{"index": 0, "kind": "cpu", "label": "cpu rank 0", "utilization_pct": 50.0, "memory_used_bytes": 1,
                                                     "memory_total_bytes": 2, "power_w": None, "temperature_c": None, "pid": 9, "module_id": None}],
                      host={"cpu_percent": 12.5, "memory_used_bytes": 1, "memory_total_bytes": 2, "process_rss_bytes": 1}),
    "cost": dict(elapsed_s=2.0, usd=0.02, price_per_hour=36, nodes=1, budget_usd=None),
    "stop_requested": dict(reason="stopped", at_step=3, stop_at=6),
    "restart": dict(attempt=2, cause="crash", from_step=2, checkpoint="/r/checkpoints/checkpoint-2", reason="rank 1 died", failed_rank=1, exit_code=-9,
                    signal="SIGKILL", restarts_left=0),
    "cell": dict(index=2, phase="error", duration_s=0.1, source_preview="1/0", error="ZeroDivisionError: division by zero"),
    "result": dict(values={"eval_loss": 2.3, "note": "ok", "best": True, "missing": None, "steps": 4}),
    "log": dict(level="warning", message="no telemetry", tracker="mlflow"),
    "batch_size": dict(size=8, how="searched", trials=[{"size": 16, "fits": False, "peak_bytes": None, "why": "out of memory"}], seconds=1.5,
                       memory_fraction=0.9, device_memory_bytes=None, capped=False, cache_key="abc", limit=64),
    "tracker": dict(tracker="mlflow", tracker_run_id="x1", url=None, experiment="0", tracking_uri="file:///m"),
    "job": dict(scheduler="kubernetes", state="PENDING", job_id="gnb-r", partition=None, reason="FailedScheduling: 0/4 nodes are available: 4 Insufficient habana.ai/gaudi.",
                short="Insufficient habana.ai/gaudi", nodes=None, waiting=["gnb-r-0-abcde"]),
    "run_end": dict(status="failed", exit_code=1, reason="node b: failed", last_log_lines=["x"], steps_completed=3, usd=None, ended_by="client",
                    nodes={"a": {"status": "stopped", "reason": None, "exit_code": 0, "usd": 0.1}}),
    "bad_line": dict(offset=117, error="step event: field tokens: Input should be a valid integer, got 'tensor(512)'", text='{"v":1,"type":"step"'),
}


def test_every_type_the_contract_knows_has_a_produced_example_and_round_trips():
    assert set(PRODUCED) == set(EVENT_TYPES)
    for kind, fields in PRODUCED.items():
        event = make_event(kind, "r", node="a", rank=0 if kind in ("step", "eval") else None, **fields)
        typed = parse(json.loads(json.dumps(event)))
        assert type(typed).__name__.lower() == kind.replace("_", "")
        assert typed.type == kind and typed.run_id == "r" and typed.node == "a" and typed.version >= 1
        again = typed.model_dump(mode="json", exclude_unset=True)
        assert again == json.loads(json.dumps(event)), kind  # nothing lost, nothing added


def test_a_run_end_takes_exactly_the_terminal_statuses():
    import typing

    from gaudi_nb.events import TERMINAL_STATUSES, RunEnd

    assert typing.get_args(RunEnd.model_fields["status"].annotation) == TERMINAL_STATUSES
    with pytest.raises(ValueError, match="status"):
        make_event("run_end", "r", status="running")  # an active state is not an end


def test_a_step_whose_loss_is_a_string_is_refused_naming_loss():
    event = make_event("step", "r", rank=0, step=1, loss=2.0)
    with pytest.raises(ValueError, match="loss"):
        parse({**event, "loss": "abc"})
    with pytest.raises(ValueError, match="loss"):
        parse({**event, "loss": "2.5"})  # a number in a string is not a number either
    assert parse({**event, "loss": 2}).loss == 2.0  # an int where a float is expected is fine


def test_a_diverged_loss_reads_as_nan_and_a_missing_one_as_none(tmp_path):
    writer = EventWriter(tmp_path / "events.jsonl", "r", rank=0)
    writer.emit("step", step=1, loss=float("nan"))
    writer.emit("step", step=2, loss=None)
    writer.close()
    read, _ = read_events(tmp_path / "events.jsonl")
    losses = [parse(e).loss for e in read]
    assert math.isnan(losses[0]) and losses[1] is None


def test_an_unknown_type_and_a_missing_head_are_refused_by_name():
    with pytest.raises(ValueError, match="'heartbeat'"):
        parse({"v": 1, "type": "heartbeat", "t": 1.0, "run_id": "r", "node": "local", "rank": None})
    with pytest.raises(ValueError, match="run_id"):
        parse({"v": 1, "type": "log", "t": 1.0, "node": "local", "rank": None, "message": "m"})
    with pytest.raises(ValueError, match="JSON object"):
        parse(["step"])  # type: ignore[arg-type]


def test_make_event_and_emit_refuse_a_broken_event(tmp_path):
    with pytest.raises(ValueError, match="memory_bytes"):
        make_event("eval", "r", step=1, eval_loss=2.0, memory_bytes=5)  # a field the type does not have
    with pytest.raises(ValueError, match="stop_at_step"):
        make_event("stop_requested", "r", reason="stopped", stop_at_step=3)  # the old schema comment's name: the agent sends at_step/stop_at
    writer = EventWriter(tmp_path / "events.jsonl", "r")
    with pytest.raises(ValueError, match="status"):
        writer.emit("run_end", status="done")
    with pytest.raises(ValueError, match="step"):
        writer.emit("checkpoint", step="4", path="/c")
    writer.close()
    assert (tmp_path / "events.jsonl").read_bytes() == b""  # nothing broken reached the stream


def test_the_suite_check_names_the_file_line_and_field(tmp_path):
    from conftest import first_broken_event

    path = tmp_path / "events.jsonl"
    good = json.dumps(make_event("step", "r", rank=0, step=1, loss=2.0))
    path.write_text(good + "\n" + good.replace('"loss": 2.0', '"loss": "abc"') + "\n" + '{"v":1,"type":"step"')
    assert first_broken_event(path) == f"{path}:2: step event: field loss: Input should be a valid number, got 'abc'"
    path.write_text(good + "\n" + '{"v":1,"type":"step"')  # a line still being written is not checked
    assert first_broken_event(path) is None
    path.unlink()  # this test's own broken file must not fail it


def test_the_events_reference_in_docs_is_generated_from_the_contract():
    from gaudi_nb.events.reference import reference

    page = Path(__file__).resolve().parents[1] / "docs" / "events.md"
    assert page.read_text() == reference(), "docs/events.md is out of date: python -m gaudi_nb.events.reference > docs/events.md"
    for kind in EVENT_TYPES:
        assert f"### `{kind}`" in page.read_text()
    step = page.read_text().split("### `step`")[1].split("### ")[0]
    assert "| `memory` | object of integer or null |" in step and "memory_bytes" not in step.replace("in_use_bytes", "")
    assert events_module.SCHEMA_VERSION == 1


# -- a line that breaks the contract ------------------------------------------------------------------
@pytest.mark.breaks_event_contract
def test_a_line_that_breaks_the_contract_is_kept_aside_as_a_bad_line_and_the_rest_goes_on(tmp_path):
    path = tmp_path / "r1" / "events.jsonl"
    writer = EventWriter(path, "r1", rank=0)
    writer.emit("step", step=1, loss=2.0)
    tensor_step = {**make_event("step", "r1", rank=0, step=2, loss=1.5), "tokens": "tensor(512)"}  # report(tokens=torch.tensor(512)) wrote this
    with open(path, "ab") as fh:
        fh.write(b"\xff\xfe not UTF-8\n" + json.dumps(tensor_step).encode() + b"\n[1, 2]\n")
    writer.emit("step", step=3, loss=1.0)
    writer.close()
    events, end = read_events(path)
    assert end == path.stat().st_size
    assert [e["type"] for e in events] == ["step", "bad_line", "bad_line", "bad_line", "step"] and events[-1]["step"] == 3
    not_utf8, tensor, not_object = events[1:4]
    for bad in events[1:4]:
        assert parse(bad).run_id == "r1"  # a bad_line is an event of its run, through the contract
    assert "utf-8" in not_utf8["error"] and not_utf8["offset"] == len(path.read_bytes().split(b"\n")[0]) + 1
    assert tensor["error"].startswith("step event: field tokens:") and "tensor(512)" in tensor["text"]
    assert "not list" in not_object["error"]
    from gaudi_nb.summary import empty_summary, fold

    record = fold(empty_summary("r1"), events)
    assert record["steps_completed"] == 3 and record["bad_lines"]["count"] == 3
    assert record["bad_lines"]["first"]["error"] == not_utf8["error"]


@pytest.mark.breaks_event_contract
def test_the_reader_reads_a_bounded_chunk_at_a_time_and_skips_a_line_longer_than_one(tmp_path):
    path = tmp_path / "events.jsonl"
    writer = EventWriter(path, "r")
    for step in range(1, 101):
        writer.emit("step", step=step)
    with open(path, "ab") as fh:
        fh.write(b"x" * 5000 + b"\n")
    writer.emit("step", step=101)
    writer.close()
    events, end = read_events(path, 0, max_bytes=1000)
    assert 0 < len(events) < 20 and end <= 1000 and [e["step"] for e in events] == list(range(1, len(events) + 1))
    everything = list(events_module.iter_events(path))
    assert [e.get("step") for e in everything] == [*range(1, 101), None, 101]
    offset, steps = 0, []
    while True:  # a reader catching up by small reads gets every event once, and the long line as a bad line
        events, end = read_events(path, offset, max_bytes=1000)
        if end == offset:
            break
        steps += [e.get("step", e["type"]) for e in events]
        offset = end
    assert steps == [*range(1, 101), "bad_line", 101]


def test_a_queued_run_is_pending_with_the_schedulers_reason_until_it_starts():
    from gaudi_nb.summary import empty_summary, fold

    s = fold(empty_summary("r"), [make_event("job", "r", scheduler="kubernetes", state="PENDING", reason="FailedScheduling: 0/2 nodes are available: 2 Insufficient habana.ai/gaudi.",
                                             short="Insufficient habana.ai/gaudi")])
    assert s["status"] == "pending" and s["queued"]["short"] == "Insufficient habana.ai/gaudi"
    from gaudi_nb.runs_table import run_row, status_text

    assert status_text(s) == "pending: Insufficient habana.ai/gaudi" and run_row({**s, "run_id": "r"})["status_text"] == status_text(s)
    s = fold(s, [make_event("run_start", "r", spec={"max_steps": 5})])
    assert s["status"] == "starting" and s["queued"] is None and status_text(s) == "starting"
