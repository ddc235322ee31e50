"""Faults: a crashed rank restarts from the last complete checkpoint as a new attempt of the same run,
`gaudi-nb resume` continues an ended run, and a half-written checkpoint is never the last one."""
import json
import os
import signal
import subprocess

import pytest
from conftest import BIN, wait_for

import gaudi_nb
from gaudi_nb.errors import SpecError
from gaudi_nb.events import EventWriter, make_event, read_events
from gaudi_nb.rundir import CHECKPOINT_COMPLETE, RunFolder, mark_checkpoint_complete, prune_checkpoints
from gaudi_nb.summary import empty_summary, fold

GAUDI_NB = str(BIN / "gaudi-nb")
TINY = dict(batch_size=2, sequence_length=32, warmup_steps=2)  # tiny-llama, the default model


def run_cli(*args, timeout=120):
    return subprocess.run([GAUDI_NB, *args], capture_output=True, text=True, timeout=timeout)


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


def test_without_a_checkpoint_a_long_replay_is_still_counted_once(monkeypatch):
    import gaudi_nb.summary as summary

    monkeypatch.setattr(summary, "REPLAYABLE_STEPS", 3)  # the record remembers only the last 3 steps
    events = [make_event("run_start", "r", spec={"max_steps": 8})] + [step(n, 9.0) for n in range(1, 7)]
    events.append(make_event("restart", "r", attempt=2, cause="crash", from_step=0, reason="rank 0 died"))
    events += [step(n, 1.0, attempt=2) for n in range(1, 9)]
    record = fold(empty_summary("r"), events)
    assert record["steps_completed"] == 8 and record["metrics"]["tokens_seen"] == 800 and len(record["_replayable"]) == 3


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


# -- the panel shows the final attempt -------------------------------------------------------------
def test_the_panel_draws_the_final_attempts_loss_and_says_which_attempt_it_is():
    from gaudi_nb.notebook.panel import PanelState, header_html

    events = [make_event("run_start", "r", spec={"max_steps": 6})] + [step(n, 10.0 - n) for n in range(1, 5)]
    events.append(make_event("restart", "r", attempt=2, cause="crash", from_step=2, reason="rank 1 was killed by SIGKILL"))
    state = PanelState.from_events("r", events)
    assert [x for x, _ in state.loss] == [1, 2] and state.status == "starting"
    state.apply([step(n, 1.0, attempt=2) for n in range(3, 7)] + [step(4, 99.0, attempt=1)])  # a late line of attempt 1 is ignored
    assert state.loss == [(1, 9.0), (2, 8.0), (3, 1.0), (4, 1.0), (5, 1.0), (6, 1.0)]
    header = header_html(state)
    assert 'data-attempt="2"' in header and "crash from step 2" in header and "SIGKILL" in header
    state.apply([make_event("run_end", "r", status="succeeded")])
    assert state.done  # the panel loop ends on it


# -- refusals: one line each ---------------------------------------------------------------------
def ended_run(home, run_id, status, *, checkpoint_step=None, target="local"):
    """A run as the store and its folder hold it after it ended, without training one."""
    from gaudi_nb.store import RunStore

    folder = RunFolder(home / "runs" / run_id).create()
    spec = gaudi_nb.RunSpec(max_steps=20)
    folder.spec.write_text(spec.model_dump_json())
    folder.run.write_text(json.dumps({"run_id": run_id, "node": "local", "target": "local"}))
    RunStore().register(run_id, spec=spec.to_json_dict(), target=target, run_dir=str(folder.path))
    writer = EventWriter(folder.events, run_id)
    writer.emit("run_start", spec=spec.to_json_dict(), run_dir=str(folder.path))
    writer.emit("run_end", status=status, reason="stopped on request")
    writer.close()
    if checkpoint_step is not None:
        saved(folder, checkpoint_step)
    return folder


def test_resume_refuses_in_one_line_with_exit_2(gaudi_home, capsys):
    from gaudi_nb.cli import main  # what the console script calls, in this process: no interpreter to start per refusal

    ended_run(gaudi_home, "no-checkpoint", "stopped")
    ended_run(gaudi_home, "finished", "succeeded", checkpoint_step=20)
    ended_run(gaudi_home, "remote", "stopped", checkpoint_step=10, target="nb1")
    for run_id, expected in [
        ("remote", "no attached node 'nb1'"),  # resumed on its node, which is not attached here
        ("no-checkpoint", "run no-checkpoint has no complete checkpoint to resume from (it ended stopped before its first): start it again, with --save-steps N"),
        ("finished", "nothing left to train; resume with --max-steps above 20"),
    ]:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exited:
            main(["resume", run_id])
        stderr = capsys.readouterr().err
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert exited.value.code == 2 and len(lines) == 1 and expected in lines[0], stderr
    assert gaudi_nb.get_run("no-checkpoint").status == "stopped"  # nothing changed
    from gaudi_nb.targets.ssh import ssh_target

    with pytest.raises(SpecError, match="ran across nodes .nb1,nb2.: resume works for runs on one node"):
        ssh_target("nb1,nb2").resume("across")  # refused before any node is asked
    assert not [e for e in read_events(gaudi_home / "runs" / "finished" / "events.jsonl")[0] if e["type"] == "restart"]


# -- real runs: torchrun, CPU ranks, the detached agent --------------------------------------------
def events_of(run):
    return read_events(run.run_dir / "events.jsonl")[0]


@pytest.mark.slow
def test_a_rank_killed_mid_run_restarts_from_the_last_checkpoint_and_every_step_counts_once(script_runs):
    # the agent's attempts on a torch-free loop (tests/scriptrun.py): what a trainer restores is the resume canary's below
    run = script_runs.train(devices=2, max_steps=16, save_steps=5, max_restarts=2, step_s=0.3)

    def past_the_first_checkpoint():
        events = events_of(run)
        checkpoints = [e["step"] for e in events if e["type"] == "checkpoint"]
        steps = [e["step"] for e in events if e["type"] == "step"]
        ranks = {e["rank"]: e["pid"] for e in events if e["type"] == "worker_start"}
        return checkpoints and steps[-1] >= checkpoints[-1] + 2 and len(ranks) == 2 and (ranks, checkpoints[-1], steps[-1])

    ranks, checkpointed, reached = wait_for(past_the_first_checkpoint, poll_s=0.05, what="two steps past the first checkpoint")
    os.kill(ranks[1], signal.SIGKILL)
    run.wait(timeout=180)
    record = run.record()
    assert record["status"] == "succeeded", record["exit"]
    restart = run.events(types=["restart"])[0]
    assert restart["cause"] == "crash" and restart["attempt"] == 2 and restart["failed_rank"] == 1 and restart["signal"] == "SIGKILL"
    assert checkpointed <= restart["from_step"] < 16 and restart["checkpoint"].endswith(f"checkpoint-{restart['from_step']}")
    # the record counts each step once: 16 steps of 64 tokens
    assert record["steps_completed"] == 16 and record["metrics"]["tokens_seen"] == 16 * 64
    assert record["attempt"] == 2 and record["restarts"][0]["reason"] == "rank 1 was killed by SIGKILL"
    final = [e["step"] for e in run.events(types=["step"]) if e["attempt"] == 2]
    assert final == list(range(restart["from_step"] + 1, 17))  # the second attempt went on from the checkpoint
    first = [e["step"] for e in run.events(types=["step"]) if e["attempt"] == 1]
    assert first[0] == 1 and first[-1] >= restart["from_step"]


@pytest.mark.slow
def test_resume_continues_a_stopped_run_from_its_checkpoint_to_the_end(gaudi_home, capsys):
    from gaudi_nb.cli import main  # the refusal and the stop through what the console script calls, in this process

    run = gaudi_nb.train(devices=1, max_steps=200, save_steps=3, keep_checkpoints=1, **TINY)
    wait_for(lambda: any(e["type"] == "checkpoint" for e in events_of(run)), what="the first checkpoint")
    capsys.readouterr()
    with pytest.raises(SystemExit) as running:
        main(["resume", run.run_id])
    refused = capsys.readouterr().err
    assert running.value.code == 2 and "is still running: stop it first" in refused, refused
    with pytest.raises(SystemExit) as stop:
        main(["stop", run.run_id])
    assert stop.value.code == 0, capsys.readouterr().err
    run.wait(timeout=120)
    stopped = run.record()
    assert stopped["status"] == "stopped" and stopped["steps_completed"] < 200
    stop_checkpoint = stopped["checkpoints"][-1]["step"]
    assert stop_checkpoint == stopped["steps_completed"]
    end = stop_checkpoint + 3  # wherever the stop landed, three more steps: the test's length does not depend on it
    result = run_cli("resume", run.run_id, "--max-steps", str(end), "--json", timeout=180)
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["run_id"] == run.run_id and record["status"] == "succeeded" and record["steps_completed"] == record["max_steps"] == end
    assert record["attempt"] == 2 and record["restarts"][0]["cause"] == "resume" and record["restarts"][0]["from_step"] == stop_checkpoint
    steps = [(e["attempt"], e["step"]) for e in run.events(types=["step"])]
    assert [s for a, s in steps if a == 2] == list(range(stop_checkpoint + 1, end + 1))
    assert record["metrics"]["tokens_seen"] == end * 2 * 32
    # keep_checkpoints=1: only the final checkpoint is left, complete
    assert [c.step for c in RunFolder(run.run_dir).checkpoint_folders()] == [end] and RunFolder(run.run_dir).last_checkpoint().step == end
    ends = [e["status"] for e in run.events(types=["run_end"])]
    assert ends == ["stopped", "succeeded"] and gaudi_nb.get_run(run.run_id).status == "succeeded"


TORCHRUN_SUMMARY = """\
--- gaudi_nb: attempt 2, from /runs/r/checkpoints/checkpoint-10 ---
Root Cause (first observed failure):
[0]:
  time      : 2026-11-29_19:23:59
  host      : localhost
  rank      : 0 (local_rank: 0)
  exitcode  : 1 (pid: 15280)
  error_file: <N/A>
=======================================================
--- gaudi_nb: attempt 3, from /runs/r/checkpoints/checkpoint-10 ---
  traceback : Signal 15 (SIGTERM) received by PID 15282
-------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-11-29_19:23:59
  host      : localhost
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 15283)  (SIGKILL)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 15283
======================================================="""


def test_a_crash_names_the_rank_and_the_signal_from_the_launchers_summary_of_this_attempt():
    from gaudi_nb.agent.attempts import crash_details

    lines = TORCHRUN_SUMMARY.splitlines()
    assert crash_details(lines, 1) == {"rank": 1, "exit_code": -9, "signal": "SIGKILL", "reason": "rank 1 was killed by SIGKILL"}
    assert crash_details(lines[:9], 1)["reason"] == "rank 0 exited with code 1"
    assert crash_details(lines[:10], 1)["reason"] == "the launcher exited with code 1"  # attempt 3 has no summary yet


def test_when_restarts_run_out_the_run_fails_with_the_reason(gaudi_home, tmp_path, monkeypatch):
    monkeypatch.setenv("GAUDI_NB_ACCELERATOR", "cpu")  # the rank need not import torch to learn there is no GPU
    script = tmp_path / "crash.py"
    script.write_text("raise RuntimeError('out of luck')\n")
    run = gaudi_nb.train(script=str(script), max_restarts=1, max_steps=5).wait(timeout=120)
    record = run.record()
    assert record["status"] == "failed" and record["attempt"] == 2
    restart = run.events(types=["restart"])[0]
    assert restart["from_step"] == 0 and restart["checkpoint"] is None and restart["restarts_left"] == 0
    assert record["exit"]["reason"] == "rank 0 exited with code 1: RuntimeError: out of luck; no restarts left (1 of --max-restarts 1 used)"
    assert "RuntimeError: out of luck" in record["exit"]["last_log_lines"][-1]  # what the log said last, beside the reason
