"""Runs on this machine: torchrun, CPU ranks, the detached agent, the store.

The lifecycle (a client that goes away, stop, budget, a lost agent) is tested with torch-free script runs
(tests/scriptrun.py); a few real transformers runs, marked slow, are the canaries of the trainer path."""
import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import BIN, wait_for

import gaudi_nb

GAUDI_NB = str(BIN / "gaudi-nb")


def cli_here(capsys, *args):
    """`gaudi-nb ARGS` through gaudi_nb.cli.main, what the console script calls, in this process (no interpreter
    and imports to start): (exit code, stdout, stderr)."""
    from gaudi_nb.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    out = capsys.readouterr()
    return exited.value.code or 0, out.out, out.err


def step_numbers(run):
    return [e["step"] for e in run.events(types=["step"])]


def scrape_metrics_while_running(run, min_step=5, timeout=180):
    import urllib.request

    def scraped():
        if run.record()["steps_completed"] < min_step:
            return None
        port = run.events(types=["run_start"])[0]["metrics_port"]
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        return metrics if "gaudi_nb_run_step{" in metrics else None  # the agent reads the stream once a second: /metrics may be a tick behind

    return wait_for(scraped, timeout, poll_s=0.5, what=f"step {min_step} on /metrics")


def reached(run, step):
    return lambda: run.record()["steps_completed"] >= step


@pytest.mark.slow
def test_two_ranks_train_and_the_loss_falls(gaudi_home, capsys):
    # 10 steps: the loss falls by more than 1.0 in them (7.6 to 6.6), twice the margin asked below
    run = gaudi_nb.train(model="tiny-llama", devices=2, max_steps=10, trainer="transformers", eval_steps=5)
    metrics = scrape_metrics_while_running(run, min_step=3)
    assert "gaudi_nb_run_step{" in metrics and "gaudi_nb_run_loss{" in metrics
    run.wait(timeout=240)
    record = run.record()
    assert record["status"] == "succeeded", record["exit"]
    assert step_numbers(run) == list(range(1, 11))
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
    # the model's FLOPs: TFLOP/s from the trainer's parameter count, MFU unknown on a CPU (no peak in the catalog)
    m = record["metrics"]
    assert record["device_name"] and m["tflops"] == pytest.approx(6 * record["parameters"]["total"] * m["tokens_per_second"] / 1e12)
    assert m["mfu"] is None and m["peak_tflops_per_device"] is None and m["peak_source"].startswith("unknown: no peak in the catalog for")
    code, shown, _ = cli_here(capsys, "show", run.run_id)
    assert code == 0 and "TFLOP/s" in shown and "MFU unknown" in shown


@pytest.mark.slow
def test_optimum_habana_trainer_runs_on_cpu_with_the_same_events_and_its_checkpoint_exports(gaudi_home, tmp_path, capsys):
    # its text as a .jsonl file, read through datasets (the sample text is the default dataset: the same tokens), named
    # ./train.jsonl from the folder the command ran in: the ranks read that file
    data = tmp_path / "train.jsonl"
    from gaudi_nb.presets import sample_text_path

    text = sample_text_path().read_text().split("\n\n")
    data.write_text("\n".join(json.dumps({"text": t}) for t in text if t.strip()))
    result = subprocess.run(
        [GAUDI_NB, "train", "--model", "tiny-llama", "--devices", "1", "--max-steps", "4", "--trainer", "optimum-habana", "--dataset", "./train.jsonl", "--json"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads(result.stdout)
    assert record["status"] == "succeeded" and record["trainer"] == "optimum-habana" and record["spec"]["dataset"] == str(data)
    assert record["steps_completed"] == 4 and record["metrics"]["tokens_per_second"] > 0
    for key in ("run_id", "status", "spec", "steps_completed", "metrics", "cost", "telemetry_samples"):
        assert key in record
    run = gaudi_nb.get_run(record["run_id"])
    types = {e["type"] for e in run.events()}
    assert {"run_start", "worker_start", "step", "telemetry", "cost", "checkpoint", "run_end"} <= types
    code, shown, _ = cli_here(capsys, "show", record["run_id"], "--json")
    assert code == 0 and json.loads(shown) == record

    # GaudiTrainer's checkpoint (it saves gaudi_config.json beside the model): the export is what a serving engine loads
    from transformers import AutoModelForCausalLM

    assert (Path(record["checkpoints"][-1]["path"]) / "gaudi_config.json").is_file()
    code, exported, errors = cli_here(capsys, "export", record["run_id"], "--json")
    assert code == 0, errors
    written = json.loads(exported)
    assert written["kind"] == "model" and written["step"] == 4 and written["tokenizer"]
    folder = Path(written["output"])
    assert folder == Path(record["run_dir"]) / "export"
    assert not {"optimizer.pt", "scheduler.pt", "trainer_state.json", "gaudi_config.json"} & set(os.listdir(folder))
    architectures = json.loads((folder / "config.json").read_text())["architectures"]
    assert architectures == written["architectures"] == ["LlamaForCausalLM"]  # no Gaudi prefix: vLLM resolves it
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert sum(p.numel() for p in model.parameters()) == record["parameters"]["total"]


@pytest.mark.parametrize("detach", [pytest.param(False, marks=pytest.mark.slow), True])  # the fast lane keeps the detached form
def test_killing_the_client_leaves_the_run_going(script_runs, detach):
    args = [GAUDI_NB, "train", "--script", str(script_runs.script()), "--devices", "2", "--max-steps", "25"] + (["--detach"] if detach else [])
    client = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def two_steps_in():
        runs = gaudi_nb.runs()
        run = gaudi_nb.get_run(runs[0]["run_id"]) if runs else None
        return run if run is not None and run.record()["steps_completed"] >= 2 else None

    run = wait_for(two_steps_in, what="the run's second step")
    client.kill()
    client.wait()
    run.wait(timeout=240)
    assert run.status == "succeeded"
    assert step_numbers(run) == list(range(1, 26))  # every step once, none lost, none twice


def test_budget_stops_the_run_with_a_checkpoint(script_runs, gaudi_home):
    script = str(script_runs.script())
    result = subprocess.run([GAUDI_NB, "train", "--script", script, "--devices", "2", "--max-steps", "100000", "--price-per-hour", "36", "--budget-usd", "0.01", "--json"],
                            capture_output=True, text=True, timeout=300)
    record = json.loads(result.stdout)
    assert record["status"] == "budget_exceeded"
    assert record["steps_completed"] < 100000
    checkpoint = record["checkpoints"][-1]
    assert checkpoint["reason"] == "budget_exceeded" and checkpoint["step"] == record["steps_completed"]
    assert os.path.isdir(checkpoint["path"])
    assert record["cost"]["usd"] >= 0.01 and record["cost"]["price_per_hour"] == 36.0
    # a fresh $GAUDI_NB_HOME on a shared host: the store, the run, its events and checkpoints are the user's alone
    run_dir = gaudi_home / "runs" / record["run_id"]
    modes = {path: oct(path.stat().st_mode & 0o777) for path in (gaudi_home, gaudi_home / "store.db", run_dir, run_dir / "events.jsonl", run_dir / "spec.json",
                                                                 run_dir / "run.json", run_dir / "agent.pid", Path(checkpoint["path"]))}
    assert modes == {**{path: "0o700" for path in (gaudi_home, run_dir, Path(checkpoint["path"]))},
                     **{path: "0o600" for path in (gaudi_home / "store.db", run_dir / "events.jsonl", run_dir / "spec.json", run_dir / "run.json", run_dir / "agent.pid")}}


def test_stop_request_ends_cleanly_with_a_checkpoint(script_runs):
    run = script_runs.train(devices=1, max_steps=100000)
    wait_for(reached(run, 3), what="step 3")
    assert run.stop() is True and run.stop() is False  # the first request wins
    run.wait(timeout=240)
    record = run.record()
    assert record["status"] == "stopped" and record["steps_completed"] < 100000
    assert record["checkpoints"][-1]["reason"] == "stopped"
    assert step_numbers(run) == list(range(1, record["steps_completed"] + 1))


# A .jsonl dataset read through datasets is the optimum-habana run's (above): one real run fewer.


def alive(pid):
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def test_killing_the_agent_leaves_no_rank_and_the_run_ends_lost(script_runs, monkeypatch, capsys):
    # the default is 15 s; the test need not wait that long (lost also needs the agent's process gone: never early)
    monkeypatch.setenv("GAUDI_NB_HEARTBEAT_TIMEOUT_S", "2")
    run = script_runs.train(devices=2, max_steps=100000)
    wait_for(lambda: reached(run, 2)() and len(run.events(types=["worker_start"])) == 2, what="step 2 and both ranks started")
    agent = run.events(types=["run_start"])[0]["pid"]
    ranks = [e["pid"] for e in run.events(types=["worker_start"])]
    assert len(ranks) == 2 and all(alive(p) for p in ranks)
    os.kill(agent, 9)  # what the OOM killer does
    wait_for(lambda: not any(alive(p) for p in ranks), timeout=30, poll_s=0.5, what="the ranks to end with their agent (else training goes on unmetered)")
    run.wait(timeout=30)  # returns: a lost run is an ended run
    code, shown, _ = cli_here(capsys, "show", run.run_id, "--json")
    assert code == 0 and json.loads(shown)["status"] == "lost" and f"agent (pid {agent})" in json.loads(shown)["exit"]["reason"]
    code, stopped, errors = cli_here(capsys, "stop", run.run_id)
    assert code == 0 and "ended: stopped" in stopped, stopped + errors
    assert run.status == "stopped"
    steps = step_numbers(run)
    assert steps == list(range(1, len(steps) + 1))  # what was recorded stays recorded


def test_stop_right_after_the_agent_died_ends_the_run_at_once(script_runs):
    run = script_runs.train(devices=1, max_steps=100000)
    rank = wait_for(lambda: run.events(types=["worker_start"]), what="the rank's start")[0]["pid"]
    agent = run.events(types=["run_start"])[0]["pid"]
    os.kill(agent, 9)
    wait_for(lambda: not alive(agent), timeout=30, poll_s=0.05, what="the kernel to end the agent")
    run.stop()  # within the heartbeat timeout: the agent is known dead by its pid
    assert run.status == "stopped" and not alive(rank)


def test_an_agent_error_after_run_start_ends_the_run_failed_with_the_reason(script_runs, monkeypatch):
    # a node without Open MPI (only the venv on PATH): the launcher cannot start, and the agent says so
    monkeypatch.setenv("PATH", str(BIN))
    run = script_runs.train(devices=1, max_steps=5, launcher="mpirun").wait(timeout=120)
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


@pytest.mark.slow  # a stubborn rank waits out a grace: seconds the fast lane spends elsewhere
def test_a_stop_that_needed_a_kill_says_so(script_runs, tmp_path, monkeypatch):
    monkeypatch.setenv("GAUDI_NB_STOP_GRACE_S", "2")
    script = tmp_path / "stubborn.py"
    script.write_text(STUBBORN)
    run = gaudi_nb.train(script=str(script), devices=1, max_steps=10000)
    wait_for(reached(run, 2), what="step 2")
    run.stop()
    run.wait(timeout=120)
    reason = run.record()["exit"]["reason"]
    assert run.status == "stopped" and "killed with SIGTERM" in reason and "no checkpoint" in reason, reason


def test_a_dataset_too_short_to_train_on_says_so_and_a_missing_one_is_refused_before_anything_starts(gaudi_home, tmp_path, capsys, monkeypatch):
    """The rank's error for a dataset shorter than one sequence (in this process: the road of a rank's error to the
    run's reason and its log's last lines is test_faults' crash; a relative --dataset read from its folder is the
    optimum-habana run's); a missing file is refused before anything starts."""
    from gaudi_nb.rundir import RunFolder
    from gaudi_nb.spec import RunSpec
    from gaudi_nb.worker.main import load_model_and_data

    (tmp_path / "short.txt").write_text("too short")
    spec = RunSpec(model="tiny-llama", dataset=str(tmp_path / "short.txt"), max_steps=5)
    with pytest.raises(ValueError, match="the dataset has fewer than 128 tokens: use a shorter --sequence-length or more text"):
        load_model_and_data(RunFolder(tmp_path), spec, "transformers", "cpu", is_main=False)
    monkeypatch.chdir(tmp_path)
    code, _, missing = cli_here(capsys, "train", "--dataset", "./nothing.txt")
    assert code == 2 and len(missing.strip().splitlines()) == 1 and "nothing.txt" in missing
    assert gaudi_nb.runs() == []  # the refused one wrote nothing
