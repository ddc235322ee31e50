import json

from gaudi_nb.events import COMMON_KEYS, BackgroundEventWriter, EventWriter, Tailer, read_events


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
    with open(path, "ab") as fh:  # a writer caught mid-line
        fh.write(b'{"v":1,"type":"step","step":2')
    events, offset2 = read_events(path, offset)
    assert events == [] and offset2 == offset
    with open(path, "ab") as fh:
        fh.write(b"}\n")
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
    from gaudi_nb.events import make_event
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
