"""Autostop on a provisioned machine: decide() on its own, and the real detached daemon stopping a machine in moto's EC2."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from conftest import free_port

from gaudi_nb.agent import autostop, autostop_service
from gaudi_nb.agent.autostop import AutostopConfig, AutostopState, decide
from gaudi_nb.errors import SpecError
from gaudi_nb.events import EventWriter
from gaudi_nb.nodes.autostop import start_on_node
from gaudi_nb.telemetry.base import DeviceSample, HostSample, Sample

VENV_PYTHON = sys.executable
REGION = "us-west-2"


def config(**overrides):
    values = dict(provider="aws", region=REGION, instance_id="i-1", launched_at=0.0, idle_minutes=1.0, utilization_threshold_pct=10.0, utilization_window_s=30.0)
    values.update(overrides)
    return AutostopConfig.from_dict(values)


def state(cfg=None, samples=(), runs=(), **fields):
    return AutostopState(config=cfg or config(), started_at=0.0, samples=list(samples), active_runs=list(runs), **fields)


def low(until, every=5.0, value=3.0):
    return [(t, value) for t in range(0, int(until) + 1, int(every))]


# -- decide(): the pure part ----------------------------------------------------------------


def test_idle_after_idle_minutes_with_quiet_cards():
    s = state(samples=low(120))
    assert decide(s, 59.0) is None
    reason = decide(s, 60.0)
    assert reason.startswith("idle: no run for 1.0 min") and "below 10%" in reason


def test_a_busy_card_inside_the_window_keeps_the_machine():
    samples = low(120)
    samples[-3] = (110.0, 85.0)  # someone trains by hand, without gaudi_nb
    s = state(samples=samples)
    assert decide(s, 120.0) is None
    assert decide(s, 141.0).startswith("idle:")  # the spike left the 30 s window


def test_the_window_must_be_watched_whole_before_idle():
    s = state(config(idle_minutes=0.0, utilization_window_s=60.0), samples=low(30))
    assert decide(s, 30.0) is None
    assert decide(s, 60.0).startswith("idle:")


def test_warm_up_with_a_live_agent_is_busy_and_the_idle_clock_starts_when_the_run_ends():
    # graph compilation: the agent is alive, no step yet, the cards read 0%
    s = state(samples=low(600, value=0.0), runs=["r1"])
    assert decide(s, 600.0) is None
    s.active_runs, s.last_run_at = [], 600.0
    assert decide(s, 659.0) is None
    assert decide(s, 660.0).startswith("idle: no run for 1.0 min")


def test_no_idle_minutes_means_never_idle():
    assert decide(state(config(idle_minutes=None), samples=low(10_000)), 10_000.0) is None


def test_unreadable_utilization_leaves_the_decision_to_the_runs():
    assert decide(state(samples=[(t, None) for t in range(0, 61, 5)]), 60.0).startswith("idle:")


def test_budget_spent_acts_with_the_spend_in_the_reason():
    s = state(config(idle_minutes=None, budget_usd=5.0, price_per_hour=10.0))
    assert decide(s, 1799.0) is None
    reason = decide(s, 1800.0)
    assert reason.startswith("budget: the node has spent $5.00 of its $5.00 budget (0.50 h at $10.00/h)")
    # started again after a stop: the 20 minutes it ran before count, the time it was stopped does not
    again = state(config(idle_minutes=None, budget_usd=5.0, price_per_hour=10.0, launched_at=50_000.0, billed_before_s=1200.0))
    assert decide(again, 50_000.0 + 599.0) is None
    assert decide(again, 50_000.0 + 600.0).startswith("budget: the node has spent $5.00 of its $5.00 budget (0.50 h at $10.00/h)")


def test_over_budget_with_a_run_waits_for_it_to_stop_then_for_the_grace():
    s = state(config(budget_usd=1.0, price_per_hour=10.0, stop_grace_s=60.0), runs=["r1"])
    assert decide(s, 3600.0) is None  # the loop asks the run to stop first
    s.runs_asked_to_stop_at = 3600.0
    assert decide(s, 3659.0) is None
    assert "1 run(s) still going 1.0 min after being asked to stop (r1)" in decide(s, 3660.0)
    s.active_runs = []
    assert decide(s, 3601.0).startswith("budget:")  # the run stopped: go at once


def test_a_machine_started_again_after_a_budget_stop_gets_the_grace_to_raise_its_budget():
    s = state(config(idle_minutes=None, budget_usd=1.0, price_per_hour=100.0, stop_grace_s=300.0), budget_hold_until=300.0)
    assert decide(s, 299.0) is None
    assert decide(s, 300.0).startswith("budget:")


def test_settings_written_to_config_json_apply_at_the_next_check(gaudi_home):
    path = autostop.config_path(gaudi_home)
    path.parent.mkdir(parents=True)
    values = dict(provider="aws", region=REGION, instance_id="i-1", launched_at=time.time() - 3600, price_per_hour=1.0, budget_usd=100.0, home=str(gaudi_home))
    path.write_text(json.dumps(values))
    dog = autostop.Autostop(autostop.load_config(path), config_file=path)
    assert dog.tick() is None
    # stopped for its budget before this boot: held for the grace, then the raised budget applies
    (autostop.autostop_dir(gaudi_home) / "last_action.json").write_text(json.dumps({"kind": "budget", "status": "requested", "when": "earlier"}))
    path.write_text(json.dumps({**values, "budget_usd": 0.5, "stop_grace_s": 60.0}))
    os.utime(path, (time.time() + 5, time.time() + 5))  # a new mtime even within the same clock tick
    held = autostop.Autostop(autostop.load_config(path), config_file=path)
    assert held.tick() is None and "unless budget_usd" in log_of(gaudi_home)
    path.write_text(json.dumps({**values, "budget_usd": 50.0, "stop_grace_s": 60.0}))
    os.utime(path, (time.time() + 10, time.time() + 10))
    assert held.tick(now=time.time() + 120) is None and held.config.budget_usd == 50.0


def test_an_unknown_price_enforces_no_budget():
    assert decide(state(config(idle_minutes=None, budget_usd=1.0, price_per_hour=None)), 1e9) is None


def test_after_a_successful_call_it_waits_before_asking_again():
    s = state(samples=low(1000), acted_at=900.0)
    assert decide(s, 1000.0) is None
    assert decide(s, 1500.0).startswith("idle:")


def test_utilization_is_the_busiest_card_else_the_host_cpu():
    host = HostSample(cpu_percent=42.0, memory_used_bytes=1, memory_total_bytes=2, process_rss_bytes=1)
    cards = [DeviceSample(0, "hpu", "hpu 0", 12.0, None, None), DeviceSample(1, "hpu", "hpu 1", 97.0, None, None)]
    assert autostop.utilization_of(Sample(0.0, "hlml", cards, host)) == 97.0
    assert autostop.utilization_of(Sample(0.0, "host", [], host)) == 42.0
    assert autostop.utilization_of(Sample(0.0, "hl-smi", [DeviceSample(0, "hpu", "hpu 0", None, None, None)], host)) is None


def test_a_bad_setting_is_one_line():
    with pytest.raises(SpecError, match="use stop .* or terminate"):
        config(action="shutdown")
    with pytest.raises(SpecError, match="unknown autostop setting"):
        config(idle_mins=3)
    for name in ("idle_minutes", "budget_usd", "price_per_hour"):  # nan is never reached: a watchdog that cannot act
        with pytest.raises(SpecError, match=f"{name} is nan: give a number of 0 or more"):
            config(**{name: float("nan")})
    with pytest.raises(SpecError, match="check_interval_s is nan"):
        config(check_interval_s=float("nan"))


def test_active_runs_reads_agents_and_run_ends(tmp_path):
    runs = tmp_path / "runs"
    (runs / "dead").mkdir(parents=True)
    (runs / "dead" / "agent.pid").write_text("999999999")
    (runs / "pending").mkdir()  # the client is still copying its inputs: no agent yet
    (runs / "ended").mkdir()
    writer = EventWriter(runs / "ended" / "events.jsonl", "ended")
    writer.emit("run_end", status="failed")
    writer.close()
    assert autostop.active_runs(tmp_path) == ["pending"]
    assert autostop.active_runs(tmp_path, now=time.time() + autostop.AGENTLESS_QUIET_S + 1) == []


def test_the_crontab_line_replaces_only_its_own_home(tmp_path):
    home = tmp_path / "h"
    line = autostop_service.cron_line("/venv/bin/python", home / "autostop" / "config.json", home)
    assert line.startswith("@reboot cd ") and "-m gaudi_nb.agent.autostop run --config" in line
    once = autostop_service.with_cron_line("MAILTO=x\n0 * * * * backup\n", line, home)
    assert autostop_service.with_cron_line(once, line, home) == once
    assert once.splitlines() == ["MAILTO=x", "0 * * * * backup", line]


# -- the real thing: a detached autostop on a local node, moto's EC2 as the cloud ---------------------


@pytest.fixture
def ec2_endpoint(moto_server):
    """The session's moto EC2 server (conftest)."""
    return moto_server


def aws_environment(endpoint):
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION}


@pytest.fixture
def machine(ec2_endpoint):
    """A real instance in moto; its id and a function that reads its state."""
    import boto3

    ec2 = boto3.client("ec2", endpoint_url=ec2_endpoint, region_name=REGION, aws_access_key_id="testing", aws_secret_access_key="testing")
    instance = ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1, InstanceType="dl1.24xlarge")["Instances"][0]["InstanceId"]

    def state_of():
        return ec2.describe_instances(InstanceIds=[instance])["Reservations"][0]["Instances"][0]["State"]["Name"]

    return instance, state_of


def node_config(home, endpoint, instance, **overrides):
    values = dict(
        provider="aws",
        region=REGION,
        instance_id=instance,
        launched_at=time.time(),
        action="stop",
        idle_minutes=0.03,  # ~2 s
        utilization_threshold_pct=101.0,  # the host CPU of a shared test machine must not decide here; decide() tests cover it
        utilization_window_s=1.0,
        check_interval_s=0.25,
        home=str(home),
        node="wd",
        environment=aws_environment(endpoint),
    )
    values.update(overrides)
    return values


def start_here(home, values):
    """What start_on_node runs on the node, run on this one (no reboot hooks: this machine's crontab stays as it is)."""
    done = subprocess.run(
        [VENV_PYTHON, "-m", "gaudi_nb.agent.autostop", "start", "--config", str(autostop.config_path(home)), "--config-stdin", "--no-reboot"],
        input=json.dumps(values),
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "GAUDI_NB_HOME": str(home)},
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


@pytest.fixture
def stop_autostop():
    homes = []
    yield homes.append
    for home in homes:
        autostop_service.stop(home)


def wait_for(check, timeout, every=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    return check()


def log_of(home):
    path = autostop.autostop_dir(home) / "autostop.log"
    return path.read_text() if path.exists() else "(no log)"


def test_an_idle_node_stops_itself_with_no_client_connected(gaudi_home, ssh_home, sshd, machine, ec2_endpoint, stop_autostop):
    import gaudi_nb

    instance, state_of = machine
    record = gaudi_nb.attach(sshd.url, name="wd", python=VENV_PYTHON)
    home = gaudi_home / "node"  # this test's own node home: other tests' runs on the session's sshd home are not ours
    stop_autostop(home)
    started = time.monotonic()
    answer = start_on_node({**record, "home": str(home)}, node_config(home, ec2_endpoint, instance), reboot=False)
    assert answer["started"] == "started" and answer["pid"]
    assert (answer["may_act"], answer["cannot_act"]) == (True, None)  # EC2's StopInstances with DryRun=True said it would succeed
    # the SSH session is closed; nothing of this client is connected while autostop works
    assert wait_for(lambda: state_of() == "stopped", 30), log_of(home)
    seconds = time.monotonic() - started
    # the machine may stop before autostop has written down that the call returned
    last = wait_for(lambda: (autostop.read_last_action(home) or {}).get("status") == "requested" and autostop.read_last_action(home), 10) or autostop.read_last_action(home)
    assert last["kind"] == "idle" and last["action"] == "stop" and last["status"] == "requested", last
    assert last["reason"].startswith("idle: no run for") and last["instance_id"] == instance
    assert "stop requested" in log_of(home)
    print(f"\nidle node stopped {seconds:.1f} s after start_on_node (idle_minutes 0.03, window 1 s)")
    # a second start with the same config keeps the running autostop
    again = start_on_node({**record, "home": str(home)}, json.loads(autostop.config_path(home).read_text()), reboot=False)
    assert again["started"] == "kept" and again["pid"] == answer["pid"]


def test_a_live_run_keeps_the_machine_warm_up_included(script_runs, gaudi_home, machine, ec2_endpoint, stop_autostop):
    instance, state_of = machine
    stop_autostop(gaudi_home)
    run = script_runs.train(devices=1, max_steps=3, step_s=1.0)  # a first step a second after start: the warm-up the daemon must see busy
    answer = start_here(gaudi_home, node_config(gaudi_home, ec2_endpoint, instance))
    assert answer["started"] == "started" and answer["survives_reboot"] is False
    seen_busy_before_first_step = False
    while not run.done:
        status = autostop.read_status(gaudi_home) or {}
        if run.run_id in status.get("active_runs", []) and run.record()["steps_completed"] == 0:
            seen_busy_before_first_step = True
        assert state_of() == "running", f"stopped during the run: {autostop.read_last_action(gaudi_home)}"
        time.sleep(0.5)
    ended = time.time()
    assert run.record()["status"] == "succeeded"
    assert seen_busy_before_first_step  # the warm-up before the first step (a graph compiling, on a Gaudi) counted as busy
    assert wait_for(lambda: state_of() == "stopped", 30), log_of(gaudi_home)
    last = autostop.read_last_action(gaudi_home)
    assert last["kind"] == "idle" and last["t"] >= ended - 1.0


def test_a_spent_budget_stops_the_run_cleanly_then_terminates_the_machine(script_runs, gaudi_home, machine, ec2_endpoint, stop_autostop):
    instance, state_of = machine
    stop_autostop(gaudi_home)
    run = script_runs.train(devices=1, max_steps=2000)
    assert wait_for(lambda: run.record()["steps_completed"] >= 1 or run.done, 120)
    values = node_config(gaudi_home, ec2_endpoint, instance, action="terminate", idle_minutes=None, launched_at=time.time() - 3600, price_per_hour=2.0, budget_usd=1.5, stop_grace_s=60.0)
    start_here(gaudi_home, values)
    assert wait_for(lambda: state_of() == "terminated", 60), log_of(gaudi_home)
    record = run.wait(timeout=30).record()
    assert record["status"] == "budget_exceeded" and record["exit"]["reason"] == "budget reached: stopped after a checkpoint", record["exit"]
    assert record["steps_completed"] < 2000
    last = autostop.read_last_action(gaudi_home)
    assert last["kind"] == "budget" and last["action"] == "terminate" and last["spend_usd"] >= 1.5
    assert "asked 1 run(s) to stop after a checkpoint" in log_of(gaudi_home)


def test_a_failing_provider_call_is_recorded_and_retried_next_check(gaudi_home, machine, ec2_endpoint, monkeypatch):
    instance, state_of = machine
    for name, value in {**aws_environment(f"http://127.0.0.1:{free_port()}"), "AWS_MAX_ATTEMPTS": "1"}.items():
        monkeypatch.setenv(name, value)  # nothing listens there: the call fails at once
    values = node_config(gaudi_home, ec2_endpoint, instance, idle_minutes=0.0, utilization_window_s=0.0)
    dog = autostop.Autostop(AutostopConfig.from_dict(values), now=time.time() - 5)
    assert dog.tick().startswith("idle:")
    failed = autostop.read_last_action(gaudi_home)
    assert failed["status"] == "failed" and failed["error"] and state_of() == "running"
    monkeypatch.setenv("AWS_ENDPOINT_URL", ec2_endpoint)
    assert dog.tick().startswith("idle:")  # the next check asks again
    assert autostop.read_last_action(gaudi_home)["status"] == "requested" and state_of() == "stopped"
    assert dog.tick() is None  # asked already: not again until act_again_after_s
    attempts = [json.loads(line)["status"] for line in (autostop.autostop_dir(gaudi_home) / "actions.jsonl").read_text().splitlines()]
    assert attempts == ["acting", "failed", "acting", "requested"]


def test_autostop_that_cannot_act_says_why_before_it_is_reported_watching(machine, ec2_endpoint, monkeypatch):
    instance, state_of = machine
    unreachable = {**aws_environment(f"http://127.0.0.1:{free_port()}"), "AWS_MAX_ATTEMPTS": "1"}
    for name, value in unreachable.items():
        monkeypatch.setenv(name, value)  # restored after the test: cannot_act puts the config's environment in place
    config = AutostopConfig.from_dict(node_config("/nowhere", ec2_endpoint, instance, environment=unreachable, action="terminate"))
    assert "AWS terminate_instances in us-west-2" in autostop_service.cannot_act(config)
    assert autostop_service.cannot_act(AutostopConfig.from_dict(node_config("/nowhere", ec2_endpoint, instance))) is None
    assert state_of() == "running"  # a dry run: nothing was stopped


def test_start_survives_a_reboot_by_crontab_where_there_is_no_systemd_and_is_idempotent(gaudi_home, tmp_path, monkeypatch, stop_autostop):
    bare = tmp_path / "bin"
    bare.mkdir()
    monkeypatch.setattr(autostop_service, "_systemd_is_init", lambda: False)  # never this machine's systemd
    monkeypatch.setenv("PATH", str(bare))
    stop_autostop(gaudi_home)
    path = autostop.config_path(gaudi_home)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(dict(provider="aws", region=REGION, instance_id="i-x", launched_at=time.time(), check_interval_s=0.5)))
    first = autostop_service.start(path)
    assert first["started"] == "started" and first["survives_reboot"] is False and "will not start again after a reboot" in first["note"]
    # a crontab that keeps its table in a file (this machine's own crontab is never touched)
    table = tmp_path / "crontab.txt"
    (bare / "crontab").write_text(f'#!/bin/sh\nif [ "$1" = "-l" ]; then /bin/cat {table} 2>/dev/null || exit 1; else /bin/cat > {table}; fi\n')
    (bare / "crontab").chmod(0o755)
    second = autostop_service.start(path)
    assert second["started"] == "kept" and second["pid"] == first["pid"]
    assert second["how"] == "crontab" and second["survives_reboot"] is True
    assert table.read_text().count("@reboot") == 1 and f"--config {path}" in table.read_text()
    path.write_text(json.dumps(dict(provider="aws", region=REGION, instance_id="i-x", launched_at=time.time(), check_interval_s=0.5, idle_minutes=30)))
    third = autostop_service.start(path)
    assert third["started"] == "replaced" and third["pid"] != first["pid"]
    assert table.read_text().count("@reboot") == 1  # one line per home, replaced


def test_start_ends_and_uninstalls_the_daemon_from_before_the_rename(gaudi_home, tmp_path, monkeypatch, stop_autostop):
    # a machine provisioned when autostop was gaudi_nb.nodes.watchdog: its process, its pid file and its @reboot line
    bare = tmp_path / "bin"
    bare.mkdir()
    monkeypatch.setattr(autostop_service, "_systemd_is_init", lambda: False)  # never this machine's systemd
    monkeypatch.setenv("PATH", str(bare))
    table = tmp_path / "crontab.txt"
    (bare / "crontab").write_text(f'#!/bin/sh\nif [ "$1" = "-l" ]; then /bin/cat {table} 2>/dev/null || exit 1; else /bin/cat > {table}; fi\n')
    (bare / "crontab").chmod(0o755)
    other_home = "@reboot cd /x && python -m gaudi_nb.nodes.watchdog run --config /x/c.json # gaudi_nb watchdog /elsewhere"
    table.write_text(f"MAILTO=x\n@reboot cd /y && python -m gaudi_nb.nodes.watchdog run --config /y/c.json # gaudi_nb watchdog {gaudi_home}\n{other_home}\n")
    old = subprocess.Popen([VENV_PYTHON, "-c", "import time; time.sleep(60)", "gaudi_nb.nodes.watchdog"])
    try:
        (gaudi_home / "watchdog").mkdir(parents=True)
        (gaudi_home / "watchdog" / "watchdog.pid").write_text(json.dumps({"pid": old.pid}))
        stop_autostop(gaudi_home)
        path = autostop.config_path(gaudi_home)
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(dict(provider="aws", region=REGION, instance_id="i-x", launched_at=time.time(), check_interval_s=0.5)))
        answer = autostop_service.start(path)
        assert old.wait(timeout=15) is not None  # the old daemon was ended
        lines = table.read_text().splitlines()
        assert answer["how"] == "crontab" and lines[0] == "MAILTO=x" and other_home in lines  # another home's line is kept
        assert not any(line.endswith(f"# gaudi_nb watchdog {gaudi_home}") for line in lines)
        assert [line for line in lines if line.endswith(f"# gaudi_nb autostop {gaudi_home}")]
    finally:
        old.kill()
        old.wait()


def test_over_budget_every_run_is_asked_to_stop_once_a_later_one_too(gaudi_home):
    from gaudi_nb.rundir import RunFolder

    # stand-in agents: live processes whose command line names gaudi_nb.agent, as liveness checks
    sleepers = []

    def run_with_agent(run_id):
        folder = RunFolder(gaudi_home / "runs" / run_id).create()
        sleepers.append(subprocess.Popen([VENV_PYTHON, "-c", "import time; time.sleep(60)", "gaudi_nb.agent"]))
        folder.agent_pid.write_text(str(sleepers[-1].pid))
        return folder

    try:
        first = run_with_agent("r1")
        values = dict(provider="aws", region=REGION, instance_id="i-1", launched_at=time.time() - 3600, price_per_hour=1.0, budget_usd=0.5, stop_grace_s=600.0, home=str(gaudi_home))
        dog = autostop.Autostop(AutostopConfig.from_dict(values))
        assert dog.tick() is None and first.stop_reason() == "budget_exceeded"
        asked_at = dog.state.runs_asked_to_stop_at
        second = run_with_agent("r2")
        assert dog.tick() is None and second.stop_reason() == "budget_exceeded"
        assert dog.state.runs_asked_to_stop_at == asked_at  # the grace counts from the first request
        assert log_of(gaudi_home).count("to stop after a checkpoint") == 2
    finally:
        for sleeper in sleepers:
            sleeper.kill()
            sleeper.wait()
