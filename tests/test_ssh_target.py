"""Runs on an attached node over a real sshd: the agent there, the events mirrored here, links that drop and return.

The link, the mirror, stop, lost and resume are tested with torch-free script runs (tests/scriptrun.py); one real
transformers run, marked slow, is the canary of training on a node. Tests that wait out a dropped link or a
heartbeat are slow too."""
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import BIN, wait_for

import gaudi_nb

VENV_PYTHON = sys.executable
GAUDI_NB = str(BIN / "gaudi-nb")


@pytest.fixture
def node(gaudi_home, ssh_home, sshd):
    gaudi_nb.attach(sshd.url, name="loop", python=VENV_PYTHON)
    yield "loop"
    from gaudi_nb.nodes import link

    link._links = None  # the next test starts with fresh links (its HOME differs)


def steps_of(run):
    return [e["step"] for e in run.events(types=["step"])]


def reached(run, step):
    return lambda: run.record()["steps_completed"] >= step


@pytest.mark.slow
def test_a_run_on_an_attached_node_is_complete_here(node, sshd, tmp_path, script_runs):
    """Two ranks of the torch-free loop (tests/scriptrun.py) on the node, with a dataset file to send: what reaches the
    node and comes back is the target's. A real transformers run on a node is the remote notebook's (test_jupyterlab)."""
    data = tmp_path / "corpus.txt"
    from gaudi_nb.presets import sample_text_path

    data.write_text(sample_text_path().read_text())
    started = time.monotonic()
    loop = script_runs.script()
    loop.write_text("print('the loop starts on the node', flush=True)\n" + loop.read_text())  # a line for `gaudi-nb logs` to copy
    run = gaudi_nb.train(script=str(loop), target=node, devices=2, max_steps=12, dataset=str(data), price_per_hour=13.11)
    first_step = None
    deadline = time.monotonic() + 240
    while not run.done and time.monotonic() < deadline:
        if first_step is None and run.record()["steps_completed"] >= 1:
            first_step = time.monotonic() - started
        time.sleep(0.5)
    record = run.record()
    assert record["status"] == "succeeded", record["exit"]
    assert steps_of(run) == list(range(1, 13))  # every step once
    assert record["telemetry_samples"] > 0 and record["cost"]["usd"] > 0
    starts = run.events(types=["run_start"])
    assert starts[0]["node"] == "loop" and starts[0]["run_dir"].startswith(str(sshd.node_home))  # it ran there
    assert record["spec"]["dataset"].endswith("/inputs/0-corpus.txt")  # the node trained on its own copy of the file
    print(f"\nremote run: first step after {first_step:.1f} s")
    shown = json.loads(subprocess.run([GAUDI_NB, "show", run.run_id, "--json"], capture_output=True, text=True, timeout=60).stdout)
    assert shown["status"] == "succeeded" and shown["steps_completed"] == 12
    log = subprocess.run([GAUDI_NB, "logs", run.run_id], capture_output=True, text=True, timeout=60)
    on_node = (Path(starts[0]["run_dir"]) / "logs" / "train.log").read_text(errors="replace")
    assert log.returncode == 0 and "the loop starts on the node" in on_node and log.stdout == on_node  # a fresh process copies an ended run's log whole first


@pytest.mark.slow
def test_a_dropped_link_is_unreachable_then_resumes_with_every_event_once(node, sshd, script_runs):
    run = script_runs.train(target=node, devices=1, max_steps=30, step_s=0.2)
    wait_for(reached(run, 3), what="step 3")
    killed = sshd.kill_sessions()  # the children serving this client's connection: the link drops
    assert killed
    time.sleep(1.0)
    sshd.stop()  # and the node stays unreachable for a while
    seen = set()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "unreachable" not in seen:
        seen.add(run.record()["status"])
        time.sleep(0.5)
    assert "unreachable" in seen  # the link's state, shown while the node cannot be reached
    down_for = time.monotonic()
    sshd.start()
    while run.record()["status"] == "unreachable" and time.monotonic() - down_for < 60:
        time.sleep(0.2)
    print(f"\nreconnect: {time.monotonic() - down_for:.1f} s after sshd came back")
    run.wait(timeout=300)
    assert run.status == "succeeded", run.record()["exit"]
    assert steps_of(run) == list(range(1, 31))  # nothing lost, nothing doubled


def test_stop_reaches_the_node(node, script_runs):
    run = script_runs.train(target=node, devices=1, max_steps=100_000)
    wait_for(reached(run, 2), what="step 2")
    result = subprocess.run([GAUDI_NB, "stop", run.run_id], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    run.wait(timeout=180)
    record = run.record()
    assert record["status"] == "stopped" and record["checkpoints"][-1]["reason"] == "stopped"
    remote = Path(run.events(types=["run_start"])[0]["run_dir"])  # on the node: owner-only, as a run here is
    assert {oct(p.stat().st_mode & 0o777) for p in (remote, Path(record["checkpoints"][-1]["path"]))} == {"0o700"}
    assert {oct(p.stat().st_mode & 0o777) for p in (remote / "run.json", remote / "spec.json", remote / "events.jsonl")} == {"0o600"}


def test_an_unknown_node_is_one_line_and_nothing_starts(gaudi_home):
    result = subprocess.run([GAUDI_NB, "train", "--target", "nowhere"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "no attached node 'nowhere'" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert gaudi_nb.runs() == []


@pytest.fixture
def node_heartbeat_2s(sshd):
    """The node's sessions (its agent, its check-lost) read GAUDI_NB_HEARTBEAT_TIMEOUT_S=2, the documented setting
    (15 s by default), as a node's login environment would set it: the test need not wait 15 s for the node's
    verdict (lost also needs the agent's process gone, so it never comes early)."""
    with sshd.session_env_set(GAUDI_NB_HEARTBEAT_TIMEOUT_S="2"):
        yield


@pytest.mark.slow
def test_a_remote_agent_that_dies_is_lost_only_because_the_node_says_so(node_heartbeat_2s, node, script_runs, monkeypatch):
    import os

    monkeypatch.setenv("GAUDI_NB_HEARTBEAT_TIMEOUT_S", "2")  # the client's side of the check; the node's is node_heartbeat_2s
    run = script_runs.train(target=node, devices=1, max_steps=100_000)
    wait_for(reached(run, 2), what="step 2")
    os.kill(run.events(types=["run_start"])[0]["pid"], 9)  # the agent on the node (this machine, in the test)
    run.wait(timeout=90)
    record = run.record()
    assert record["status"] == "lost" and "stopped beating" in record["exit"]["reason"]


@pytest.mark.slow  # the fast lane has the local snapshot (test_workdir) and a run on the node (stop)
def test_the_working_directory_goes_to_the_node_as_git_would_keep_it(node, sshd, tmp_path, monkeypatch):
    from test_workdir import make_project

    root = make_project(tmp_path / "project")
    monkeypatch.chdir(root)
    run = gaudi_nb.train(target=node, script="train.py", workdir=".", max_steps=3)
    run.wait(timeout=180)
    assert run.status == "succeeded", run.record()["exit"]
    assert steps_of(run) == [1, 2, 3]  # helpers.py imported and configs/run.json read, there
    listed = subprocess.run(["find", str(sshd.node_home), "-name", "seen.txt", "-path", f"*{run.run_id}/code/*"], capture_output=True, text=True).stdout.split()
    assert listed, f"the script did not run in the node's snapshot of {run.run_id} under {sshd.node_home}"
    files = open(listed[0]).read().split(",")
    assert "helpers.py" in files and "shard.txt" not in files and "weights.bin" not in files


ENV_SCRIPT = """
from gaudi_nb.worker.script import init_distributed, report
import os

init_distributed()
report(step=1, loss=1.0, tokens=1, samples=1, token_seen=os.environ.get("GAUDI_NB_TEST_TOKEN"))
"""


@pytest.mark.slow
def test_a_run_on_a_node_gets_what_the_client_sends_and_the_spec_keeps_only_names(node, sshd, tmp_path, monkeypatch):
    """The node's SSH session has none of the notebook's environment: --report-to's settings and --env's variables
    go with the run, in a file only its owner reads, gone once the agent has started; the spec holds the names only."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_PROJECT", "sent-to-the-node")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("GAUDI_NB_TEST_TOKEN", "s3cret-value")
    script = tmp_path / "show_env.py"
    script.write_text(ENV_SCRIPT)
    run = gaudi_nb.train(target=node, devices=1, max_steps=1, script=str(script), report_to="wandb", env="GAUDI_NB_TEST_TOKEN")
    run.wait(timeout=240)
    record = run.record()
    assert record["status"] == "succeeded", record["exit"]
    assert [e["token_seen"] for e in run.events(types=["step"])] == ["s3cret-value"]  # the rank on the node had it
    assert record["trackers"]["wandb"]["experiment"] == "sent-to-the-node"  # the node's agent logged with the client's project
    remote = Path(run.events(types=["run_start"])[0]["run_dir"])
    assert not (remote / "control" / "environment.json").exists()  # read by the agent's start, then deleted
    assert record["spec"]["env"] == "GAUDI_NB_TEST_TOKEN" and "s3cret-value" not in (remote / "spec.json").read_text()
    monkeypatch.delenv("GAUDI_NB_TEST_TOKEN")
    unset = subprocess.run([GAUDI_NB, "train", "--target", node, "--env", "GAUDI_NB_TEST_TOKEN", "--max-steps", "1"], capture_output=True, text=True, timeout=60)
    assert unset.returncode == 2 and "GAUDI_NB_TEST_TOKEN is not set here" in unset.stderr and len(unset.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_a_stopped_run_on_a_node_resumes_there_with_what_the_client_sends(node, sshd, script_runs, monkeypatch):
    monkeypatch.setenv("GAUDI_NB_TEST_TOKEN", "sent-again")
    run = script_runs.train(target=node, devices=1, max_steps=100_000, save_steps=5, keep_checkpoints=1, env="GAUDI_NB_TEST_TOKEN")
    wait_for(lambda: run.events(types=["checkpoint"]), what="the first checkpoint")
    stop = subprocess.run([GAUDI_NB, "stop", run.run_id], capture_output=True, text=True, timeout=60)
    assert stop.returncode == 0, stop.stderr
    run.wait(timeout=180)
    stopped = run.record()
    assert stopped["status"] == "stopped", stopped["exit"]
    from_step = stopped["checkpoints"][-1]["step"]
    end = from_step + 10
    resumed = subprocess.run([GAUDI_NB, "resume", run.run_id, "--max-steps", str(end), "--detach", "--json"], capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["status"] in ("starting", "running")  # active again as soon as resume returns
    remote = Path(run.events(types=["run_start"])[0]["run_dir"])
    agent = int((remote / "agent.pid").read_text())
    environment = Path(f"/proc/{agent}/environ").read_bytes().split(b"\0")
    assert b"GAUDI_NB_TEST_TOKEN=sent-again" in environment  # the resumed agent on the node got it from this client again
    assert not (remote / "control" / "environment.json").exists()
    run.wait(timeout=240)  # this process's mirror follows the new attempt to its end
    record = run.record()
    assert record["status"] == "succeeded" and record["attempt"] == 2 and record["steps_completed"] == end, record["exit"]
    assert [e["step"] for e in run.events(types=["step"]) if e["attempt"] == 2] == list(range(from_step + 1, end + 1))
    assert [e["status"] for e in run.events(types=["run_end"])] == ["stopped", "succeeded"]
    again = subprocess.run([GAUDI_NB, "resume", run.run_id], capture_output=True, text=True, timeout=60)  # refused on the node, one line here
    assert again.returncode == 2 and f"nothing left to train; resume with --max-steps above {end}" in again.stderr and len(again.stderr.strip().splitlines()) == 1
