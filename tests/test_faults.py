"""Faults: a crashed rank restarts from the last complete checkpoint as a new attempt of the same run,
`gaudi-nb resume` continues an ended run, and a half-written checkpoint is never the last one."""
import json

import pytest
from conftest import BIN

from gaudi_nb.events import make_event
from gaudi_nb.rundir import CHECKPOINT_COMPLETE, RunFolder, mark_checkpoint_complete, prune_checkpoints
from gaudi_nb.summary import empty_summary, fold

GAUDI_NB = str(BIN / "gaudi-nb")
TINY = ["--batch-size", "2", "--sequence-length", "32", "--warmup-steps", "2"]


# -- the record counts each step once ------------------------------------------------------
def step(n, loss, attempt=1, tokens=100, seconds=0.1):
    return make_event("step", "r", rank=0, step=n, loss=loss, attempt=attempt, tokens=tokens, samples=2, step_time_s=seconds, warmup=n <= 1)


def test_steps_replayed_by_the_next_attempt_are_counted_once_and_the_loss_is_the_final_attempts():
    events = [make_event("run_start", "r", spec={"max_steps": 6}), make_event("worker_start", "r", rank=0)]
    events += [step(n, 10.0 - n) for n in range(1, 5)]
    events.append(make_event("checkpoint", "r", rank=0, step=2, path="/c/checkpoint-2", reason="periodic"))
    events.append(make_event("restart", "r", attempt=2, cause="crash", from_step=2, reason="rank 1 died (SIGKILL)"))
    events += [step(n, 5.0 - n / 10, attempt=2, seconds=0.2) for n in range(3, 7)]
    events.append(make_event("run_end", "r", status="succeeded", exit_code=0))
    record = fold(empty_summary("r"), events)
    assert record["status"] == "succeeded" and record["steps_completed"] == 6
    assert record["metrics"]["tokens_seen"] == 6 * 100  # steps 3 and 4 ran twice, counted once
    assert record["metrics"]["final_loss"] == pytest.approx(4.4) and record["metrics"]["first_loss"] == 9.0
    # throughput from the steps the run kept: step 2 (attempt 1) and 3..6 (attempt 2)
    assert record["metrics"]["tokens_per_second"] == pytest.approx(500 / (0.1 + 4 * 0.2))
    assert record["attempt"] == 2 and record["restarts"][0]["from_step"] == 2

    # folded one event at a time (as the store ingests), the record is the same
    one_by_one = empty_summary("r")
    for event in events:
        one_by_one = fold(one_by_one, [event])
    assert one_by_one == record


def test_between_the_restart_and_the_replay_the_record_counts_what_the_run_kept():
    events = [make_event("run_start", "r", spec={"max_steps": 9})] + [step(n, 9.0) for n in range(1, 6)]
    events.append(make_event("restart", "r", attempt=2, cause="crash", from_step=0, reason="rank 0 died"))
    record = fold(empty_summary("r"), events)
    assert record["steps_completed"] == 0 and record["metrics"]["tokens_seen"] == 0 and record["status"] == "starting"
    late = fold(record, [step(5, 1.0, attempt=1)])  # a line of the replaced attempt, read late
    assert late["steps_completed"] == 0


def test_a_resumed_run_is_active_again_and_ends_with_the_resumed_attempts_status():
    events = [make_event("run_start", "r", spec={"max_steps": 4})] + [step(n, 9.0) for n in range(1, 3)]
    events.append(make_event("checkpoint", "r", rank=0, step=2, path="/c/checkpoint-2", reason="stopped"))
    events.append(make_event("run_end", "r", status="stopped", reason="stopped on request"))
    stopped = fold(empty_summary("r"), events)
    assert stopped["status"] == "stopped" and stopped["ended_at"] is not None
    resumed = fold(stopped, [make_event("restart", "r", attempt=2, cause="resume", from_step=2, max_steps=8, reason="resumed after it ended stopped")])
    assert resumed["status"] == "starting" and resumed["ended_at"] is None and resumed["exit"] is None
    assert resumed["max_steps"] == 8 and resumed["spec"]["max_steps"] == 8 and resumed["steps_completed"] == 2
    done = fold(resumed, [step(n, 1.0, attempt=2) for n in range(3, 9)] + [make_event("run_end", "r", status="succeeded")])
    assert done["status"] == "succeeded" and done["metrics"]["tokens_seen"] == 800


# -- checkpoints: complete or not there --------------------------------------------------------
def saved(folder, step, complete=True):
    path = folder.checkpoint_path(step)
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"weights")
    if complete:
        mark_checkpoint_complete(path, step)
    return path


def test_a_checkpoint_without_its_completion_marker_is_never_the_last(tmp_path):
    folder = RunFolder(tmp_path)
    assert folder.last_checkpoint() is None
    saved(folder, 10)
    saved(folder, 20, complete=False)  # a rank died while saving
    assert folder.last_checkpoint().step == 10
    assert json.loads((folder.checkpoint_path(10) / CHECKPOINT_COMPLETE).read_text())["step"] == 10
    assert not list(folder.checkpoint_path(10).glob("*.tmp"))
    assert folder.discard_unfinished_checkpoints() == [folder.checkpoint_path(20)]
    assert [c.step for c in folder.checkpoint_folders()] == [10]


def test_keeping_the_newest_checkpoints_never_removes_the_last_complete_one(tmp_path):
    folder = RunFolder(tmp_path)
    for n in (10, 20, 30):
        saved(folder, n)
    saved(folder, 25, complete=False)  # half-written by an attempt that crashed: goes
    saved(folder, 40, complete=False)  # newer than the last complete one: maybe being written, stays
    removed = prune_checkpoints(folder, keep=2)
    assert sorted(p.name for p in removed) == ["checkpoint-10", "checkpoint-25"]
    assert [c.step for c in folder.checkpoint_folders()] == [20, 30, 40]
    prune_checkpoints(folder, keep=1)
    assert folder.last_checkpoint().step == 30 and [c.step for c in folder.complete_checkpoints()] == [30]
    assert prune_checkpoints(folder, keep=None) == []  # no limit: complete ones all stay
