"""Real runs on this machine: torchrun, 2 CPU ranks, the detached agent, the store."""
import json
import os
import subprocess
import time

import pytest
from conftest import BIN

import gaudi_nb

pytestmark = pytest.mark.slow
GAUDI_NB = str(BIN / "gaudi-nb")


def step_numbers(run):
    return [e["step"] for e in run.events(types=["step"])]


def scrape_metrics_while_running(run, min_step=5, timeout=180):
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        record = run.record()
        if record["steps_completed"] >= min_step:
            port = run.events(types=["run_start"])[0]["metrics_port"]
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
            if "gaudi_nb_run_step{" in metrics:  # the agent reads the stream once a second: /metrics may be a tick behind
                return metrics
        time.sleep(0.5)
    raise AssertionError("the run did not reach step %d on /metrics" % min_step)


def test_two_ranks_train_and_the_loss_falls(gaudi_home):
    run = gaudi_nb.train(model="tiny-llama", devices=2, max_steps=30, trainer="transformers", eval_steps=15)
    metrics = scrape_metrics_while_running(run)
    assert "gaudi_nb_run_step{" in metrics and "gaudi_nb_run_loss{" in metrics
    run.wait(timeout=240)
    record = run.record()
    assert record["status"] == "succeeded", record["exit"]
    assert step_numbers(run) == list(range(1, 31))
    assert record["metrics"]["final_loss"] < record["metrics"]["first_loss"] - 0.5
    assert record["metrics"]["eval_loss"] is not None
    assert record["accelerator"] == "cpu" and record["device_count"] == 2 and record["precision"] == "fp32" and record["execution_mode"] == "eager"
    assert record["telemetry_samples"] > 0
    telemetry = run.events(types=["telemetry"])[-3]
    kinds = {d["kind"] for d in telemetry["devices"]}
    assert kinds == {"cpu"} and len(telemetry["devices"]) == 2  # the ranks' processes, labelled CPU
    assert record["checkpoints"][-1]["reason"] == "final"
    assert os.path.isdir(record["checkpoints"][-1]["path"])
    assert record["cost"]["usd"] is None  # no price given: unknown, never 0


def test_optimum_habana_trainer_runs_on_cpu_with_the_same_events(gaudi_home):
    result = subprocess.run(
        [GAUDI_NB, "train", "--model", "tiny-llama", "--devices", "2", "--max-steps", "12", "--trainer", "optimum-habana", "--json"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads(result.stdout)
    assert record["status"] == "succeeded" and record["trainer"] == "optimum-habana"
    assert record["steps_completed"] == 12 and record["metrics"]["tokens_per_second"] > 0
    for key in ("run_id", "status", "spec", "steps_completed", "metrics", "cost", "telemetry_samples"):
        assert key in record
    run = gaudi_nb.get_run(record["run_id"])
    types = {e["type"] for e in run.events()}
    assert {"run_start", "worker_start", "step", "telemetry", "cost", "checkpoint", "run_end"} <= types
    show = json.loads(subprocess.run([GAUDI_NB, "show", record["run_id"], "--json"], capture_output=True, text=True).stdout)
    assert show == record


@pytest.mark.parametrize("detach", [False, True])
def test_killing_the_client_leaves_the_run_going(gaudi_home, detach):
    args = [GAUDI_NB, "train", "--devices", "2", "--max-steps", "25"] + (["--detach"] if detach else [])
    client = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    run = None
    while time.time() < deadline:
        runs = gaudi_nb.runs()
        if runs:
            run = gaudi_nb.get_run(runs[0]["run_id"])
            if run.record()["steps_completed"] >= 2:
                break
        time.sleep(0.5)
    assert run is not None, "the run never started"
    client.kill()
    client.wait()
    run.wait(timeout=240)
    assert run.status == "succeeded"
    assert step_numbers(run) == list(range(1, 26))  # every step once, none lost, none twice


def test_budget_stops_the_run_with_a_checkpoint(gaudi_home):
    result = subprocess.run([GAUDI_NB, "train", "--devices", "2", "--max-steps", "200", "--price-per-hour", "36", "--budget-usd", "0.01", "--json"], capture_output=True, text=True, timeout=300)
    record = json.loads(result.stdout)
    assert record["status"] == "budget_exceeded"
    assert record["steps_completed"] < 200
    checkpoint = record["checkpoints"][-1]
    assert checkpoint["reason"] == "budget_exceeded" and checkpoint["step"] == record["steps_completed"]
    assert os.path.isdir(checkpoint["path"])
    assert record["cost"]["usd"] >= 0.01 and record["cost"]["price_per_hour"] == 36.0


def test_a_failing_run_says_why(gaudi_home, tmp_path):
    data = tmp_path / "short.txt"
    data.write_text("too short")
    run = gaudi_nb.train(dataset=str(data), max_steps=5).wait(timeout=240)
    record = run.record()
    assert record["status"] == "failed"
    assert record["exit"]["exit_code"] != 0
    assert "fewer than 128 tokens" in record["exit"]["reason"]
    assert record["exit"]["last_log_lines"]


def test_stop_request_ends_cleanly_with_a_checkpoint(gaudi_home):
    run = gaudi_nb.train(devices=1, max_steps=500)
    deadline = time.time() + 120
    while run.record()["steps_completed"] < 3 and time.time() < deadline:
        time.sleep(0.5)
    assert run.stop() is True and run.stop() is False  # the first request wins
    run.wait(timeout=240)
    record = run.record()
    assert record["status"] == "stopped" and record["steps_completed"] < 500
    assert record["checkpoints"][-1]["reason"] == "stopped"
    assert step_numbers(run) == list(range(1, record["steps_completed"] + 1))


def test_jsonl_dataset_through_datasets(gaudi_home, tmp_path):
    data = tmp_path / "train.jsonl"
    from gaudi_nb.presets import sample_text_path

    text = sample_text_path().read_text().split("\n\n")
    data.write_text("\n".join(json.dumps({"text": t}) for t in text if t.strip()))
    run = gaudi_nb.train(dataset=str(data), model="tiny-gpt2", max_steps=5).wait(timeout=240)
    assert run.status == "succeeded", run.record()["exit"]


def alive(pid):
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def test_killing_the_agent_leaves_no_rank_and_the_run_ends_lost(gaudi_home, monkeypatch):
    monkeypatch.setenv("GAUDI_NB_HEARTBEAT_TIMEOUT_S", "5")  # the default is 15 s; the test need not wait that long
    run = gaudi_nb.train(devices=2, max_steps=2000)
    deadline = time.time() + 180
    while run.record()["steps_completed"] < 2 and time.time() < deadline:
        time.sleep(0.5)
    agent = run.events(types=["run_start"])[0]["pid"]
    ranks = [e["pid"] for e in run.events(types=["worker_start"])]
    assert len(ranks) == 2 and all(alive(p) for p in ranks)
    os.kill(agent, 9)  # what the OOM killer does
    killed_at = time.time()
    while any(alive(p) for p in ranks) and time.time() - killed_at < 30:
        time.sleep(0.5)
    assert not any(alive(p) for p in ranks), "ranks outlived their agent by 30 s: training unmetered"
    run.wait(timeout=30)  # returns: a lost run is an ended run
    shown = json.loads(subprocess.run([GAUDI_NB, "show", run.run_id, "--json"], capture_output=True, text=True, timeout=60).stdout)
    assert shown["status"] == "lost" and f"agent (pid {agent})" in shown["exit"]["reason"]
    stopped = subprocess.run([GAUDI_NB, "stop", run.run_id], capture_output=True, text=True, timeout=60)
    assert stopped.returncode == 0 and "ended: stopped" in stopped.stdout, stopped.stdout + stopped.stderr
    assert run.status == "stopped"
    steps = step_numbers(run)
    assert steps == list(range(1, len(steps) + 1))  # what was recorded stays recorded


def test_stop_right_after_the_agent_died_ends_the_run_at_once(gaudi_home):
    run = gaudi_nb.train(devices=1, max_steps=2000)
    deadline = time.time() + 180
    while not run.events(types=["worker_start"]) and time.time() < deadline:
        time.sleep(0.5)
    rank = run.events(types=["worker_start"])[0]["pid"]
    agent = run.events(types=["run_start"])[0]["pid"]
    os.kill(agent, 9)
    while alive(agent):  # the kernel takes a moment to end it
        time.sleep(0.05)
    run.stop()  # within the heartbeat timeout: the agent is known dead by its pid
    assert run.status == "stopped" and not alive(rank)


def test_an_agent_error_after_run_start_ends_the_run_failed_with_the_reason(gaudi_home, monkeypatch):
    # a node without Open MPI (only the venv on PATH): the launcher cannot start, and the agent says so
    monkeypatch.setenv("PATH", str(BIN))
    run = gaudi_nb.train(devices=1, max_steps=5, launcher="mpirun").wait(timeout=120)
    record = run.record()
    assert record["status"] == "failed", record
    assert "mpirun" in record["exit"]["reason"] and "agent failed" in record["exit"]["reason"]


STUBBORN = """
import time
from gaudi_nb.worker.script import report
for step in range(1, 10000):
    time.sleep(0.2)
    report(step=step, loss=1.0, tokens=1)  # never asks should_stop()
"""


def test_a_stop_that_needed_a_kill_says_so(gaudi_home, tmp_path, monkeypatch):
    monkeypatch.setenv("GAUDI_NB_STOP_GRACE_S", "2")
    script = tmp_path / "stubborn.py"
    script.write_text(STUBBORN)
    run = gaudi_nb.train(script=str(script), devices=1, max_steps=10000)
    deadline = time.time() + 120
    while run.record()["steps_completed"] < 2 and time.time() < deadline:
        time.sleep(0.5)
    run.stop()
    run.wait(timeout=120)
    reason = run.record()["exit"]["reason"]
    assert run.status == "stopped" and "killed with SIGTERM" in reason and "no checkpoint" in reason, reason


def test_a_relative_dataset_path_from_its_folder_trains(gaudi_home, tmp_path):
    from gaudi_nb.presets import sample_text_path

    (tmp_path / "data.txt").write_text(sample_text_path().read_text())
    result = subprocess.run([GAUDI_NB, "train", "--dataset", "./data.txt", "--max-steps", "3", "--json"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads(result.stdout)
    assert record["status"] == "succeeded" and record["spec"]["dataset"] == str(tmp_path / "data.txt")
    missing = subprocess.run([GAUDI_NB, "train", "--dataset", "./nothing.txt"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1 and "nothing.txt" in missing.stderr
    assert len(gaudi_nb.runs()) == 1  # the refused one wrote nothing
