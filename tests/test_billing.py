"""One billing (issue 18, point 3): every view shows the same dollars and the same $/h for one store; billing's
intervals, burn rate and idle rule; the one "has this run ended"; the one money and duration formatter."""
from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
from conftest import BIN

from gaudi_nb import formatting
from gaudi_nb.cost import billing
from gaudi_nb.events import EventWriter, ended_in_file, has_ended, make_event
from gaudi_nb.store import RunStore

PRICE, RUN_PRICE = 13.11, 3.6
HOUR = 3600.0


# -- one store, every view -------------------------------------------------------------------------


def build_store(now: float) -> RunStore:
    """A run training on this machine, an idle provisioned machine (stopped once, running again for an hour,
    nothing on it) and a provisioned machine that autostop stopped after half an hour."""
    store = RunStore()
    spec = {"model": "tiny-llama", "max_steps": 100, "nodes": 1, "target": "local"}
    store.register("r-live", spec=spec, target="local", run_dir=None)
    events = [make_event("run_start", "r-live", t=now - 1800, spec=spec, price_per_hour=RUN_PRICE, accelerator="cpu"),
              make_event("cost", "r-live", t=now - 1, usd=RUN_PRICE / 2, elapsed_s=1800.0, price_per_hour=RUN_PRICE, nodes=1)]
    store.ingest("r-live", events, 0, 100)
    machine = {"url": "ssh://ubuntu@m:22", "user": "ubuntu", "host": "m", "port": 22, "provider": "aws", "region": "us-west-2", "instance_type": "dl1.24xlarge",
               "group": "g", "price_per_hour": PRICE, "price_source": "catalog", "launched_at": now - 3 * HOUR, "owner": None}
    store.add_node({**machine, "name": "spare-0", "instance_id": "i-1", "state": "running", "billed_intervals": [[now - 3 * HOUR, now - 2.5 * HOUR]], "running_since": now - HOUR})
    store.add_node({**machine, "name": "napper-0", "instance_id": "i-2", "state": "stopped", "billed_intervals": [[now - 3 * HOUR, now - 2.5 * HOUR]], "running_since": None})
    return store


def test_every_view_shows_the_same_dollars_and_the_same_rate(gaudi_home):
    from gaudi_nb.agent.autostop import AutostopConfig, AutostopState, machine_idle, spend_usd
    from gaudi_nb.dashboard.data_store import DashboardData
    from gaudi_nb.jupyter_server_ext.payloads import snapshot_of
    from gaudi_nb.nodes.provision import autostop_settings
    from gaudi_nb.notebook.magic_output import machines_html, money_now, money_now_html

    now = time.time()
    store = build_store(now)
    spare, napper, run = PRICE * 1.5, PRICE * 0.5, RUN_PRICE / 2  # 1.5 h and 0.5 h billed; the run's meter
    per_hour = PRICE + RUN_PRICE  # the idle machine bills as much as a busy one; the stopped one nothing
    today = billing.spend_on(billing.day_of(now), store.list(), store.list_nodes(), now)

    # the team dashboard: Costs and Fleet
    data = DashboardData(store, follow=False, team_budgets={})
    data.refresh()
    costs = data.costs(now)
    assert costs["burn"]["usd_per_hour"] == pytest.approx(per_hour) and costs["total_usd"] == pytest.approx(spare + napper + run)
    assert costs["by_day"].set_index("day").loc[billing.day_of(now), "usd"] == pytest.approx(today)
    fleet = data.fleet(now).set_index("node")
    assert fleet.loc["spare-0", "state"] == "idle, costs money" and fleet.loc["napper-0", "state"] == "stopped"
    assert (fleet.loc["spare-0", "usd"], fleet.loc["napper-0", "usd"]) == (pytest.approx(spare), pytest.approx(napper))
    assert (fleet.loc["spare-0", "usd_per_hour"], fleet.loc["napper-0", "usd_per_hour"]) == (pytest.approx(PRICE), 0.0)

    # the JupyterLab sidebar and ticker (the server extension's payload)
    payload = snapshot_of(data, now)
    assert payload["costs"]["usd_per_hour"] == pytest.approx(per_hour) and payload["costs"]["today_usd"] == pytest.approx(today)
    shown = {n["name"]: n for n in payload["nodes"]}
    assert (shown["spare-0"]["usd"], shown["napper-0"]["usd"]) == (pytest.approx(spare), pytest.approx(napper))
    assert shown["spare-0"]["idle"] and not shown["napper-0"]["usd_per_hour"]
    assert [w["node"] for w in payload["costs"]["warnings"] if w["kind"] == "idle_node"] == ["spare-0"]
    assert formatting.rate(PRICE) in payload["costs"]["warnings"][0]["message"]

    # gaudi-nb nodes list --json, in a fresh process as a user runs it (its clock is a moment later)
    listed = subprocess.run([str(BIN / "gaudi-nb"), "nodes", "list", "--json", "--no-refresh"], capture_output=True, text=True, timeout=120, env=os.environ.copy())
    assert listed.returncode == 0, listed.stderr
    cost = {r["name"]: r["cost"] for r in json.loads(listed.stdout)}
    late = PRICE * (time.time() - now + 1) / HOUR  # what a second or two more of the running machine costs
    assert cost["spare-0"]["usd"] == pytest.approx(spare, abs=late) and cost["napper-0"]["usd"] == pytest.approx(napper)
    assert (cost["spare-0"]["usd_per_hour"], cost["napper-0"]["usd_per_hour"]) == (PRICE, 0.0)

    # %gaudi_cost
    summary = money_now(store, now)
    assert (summary["usd_per_hour"], summary["today_usd"], summary["total_usd"]) == (pytest.approx(per_hour), pytest.approx(today), pytest.approx(spare + napper + run))
    page = money_now_html(summary) + machines_html(summary)
    for text in (formatting.rate(per_hour), formatting.money(today), formatting.money(spare), formatting.money(napper)):
        assert text in page

    # autostop on the idle machine, set up as provisioning sets it up
    config = AutostopConfig.from_dict({**autostop_settings(store.get_node("spare-0")), "home": str(gaudi_home)})
    assert spend_usd(config, now) == pytest.approx(spare)
    quiet = AutostopState(config=config, started_at=now - HOUR, samples=[(now - s, 0.0) for s in range(0, 600, 30)])
    assert machine_idle(quiet, now)  # the same rule the dashboard and ticker judged it idle by


# -- billing's pieces ------------------------------------------------------------------------------


def a_machine(**fields):
    return {"name": "m", "provider": "aws", "state": "running", "price_per_hour": 10.0, "launched_at": 0.0, **fields}


def a_run(run_id="r", status="running", target="local", price=2.0, usd=1.0, started=0.0, nodes=1):
    return {"run_id": run_id, "status": status, "target": target, "started_at": started, "created_at": started, "ended_at": None,
            "cost": {"usd": usd, "price_per_hour": price, "nodes": nodes}}


def test_a_machine_is_billed_over_its_running_intervals_only():
    assert billing.running_intervals(a_machine(), 100.0) == [(0.0, 100.0)]  # recorded before revision 0006: launch to now
    again = a_machine(billed_intervals=[[0.0, 1800.0]], running_since=5400.0)
    assert billing.running_intervals(again, 7200.0) == [(0.0, 1800.0), (5400.0, 7200.0)]
    assert billing.machine_spend(again, 7200.0)["usd"] == pytest.approx(10.0)  # one hour at $10/h, not two
    stopped = a_machine(state="stopped", billed_intervals=[[0.0, 1800.0]], running_since=None)
    assert billing.machine_spend(stopped, 99_999.0)["usd"] == pytest.approx(5.0) and billing.machine_spend(stopped)["usd_per_hour"] == 0.0
    gone = a_machine(state="terminated", terminated_at=3600.0, cost_usd=9.5)
    assert billing.machine_spend(gone, 99_999.0)["usd"] == 9.5  # as written down at termination
    assert billing.machine_spend(a_machine(price_per_hour=None), 3600.0)["usd"] is None  # unknown, never $0
    assert billing.machine_spend({"name": "attached", "provider": None})["hours"] is None  # its runs meter it


def test_the_burn_rate_counts_each_machine_once_and_unknown_prices_apart():
    machines = [a_machine(name="p1"), a_machine(name="p2", state="stopped")]
    runs = [a_run("on-p1", target="p1", price=10.0),  # its machine's hours hold it
            a_run("half", target="p1,attached", price=4.0, nodes=2),  # one node of two is not provisioned
            a_run("mine", price=2.0), a_run("unpriced", price=None), a_run("queued", status="pending", price=None),
            a_run("done", status="succeeded", price=99.0)]
    burn = billing.burn_rate(runs, machines)
    assert burn == {"usd_per_hour": 10.0 + 4.0 + 2.0, "unknown_prices": 1, "active_runs": 5, "billed_machines": 1}


def test_spend_by_day_puts_each_hour_on_its_utc_day():
    midnight = 20 * billing.DAY_S
    machine = a_machine(launched_at=midnight - HOUR, billed_intervals=[], running_since=midnight - HOUR)
    run = a_run(target="local", usd=3.0, started=midnight - 2 * HOUR)
    run["ended_at"] = midnight + HOUR
    days = billing.spend_by_day([run], [machine], now=midnight + 2 * HOUR)
    assert [(d["day"], round(d["usd"], 6)) for d in days] == [("1970-01-20", 10.0 + 2.0), ("1970-01-21", 20.0 + 1.0)]
    assert billing.total_spend([run], [machine], midnight + 2 * HOUR) == pytest.approx(33.0)


def test_one_idle_rule():
    rule = billing.IdleRule(utilization_below_pct=10.0, window_s=300.0)
    quiet = [(t, 3.0) for t in range(700, 1001, 30)]
    assert billing.is_idle(quiet, 1000.0, active_runs=0, rule=rule)
    assert billing.is_idle([], 1000.0, active_runs=0, rule=rule)  # nothing runs and nothing was sampled
    assert billing.is_idle([(990.0, None)], 1000.0, active_runs=0, rule=rule)  # an unreadable sampler must not keep it billed
    assert not billing.is_idle(quiet + [(950.0, 10.0)], 1000.0, active_runs=0, rule=rule)  # one busy sample in the window
    assert billing.is_idle(quiet + [(650.0, 90.0)], 1000.0, active_runs=0, rule=rule)  # before the window
    assert not billing.is_idle([], 1000.0, active_runs=1, rule=rule)  # a run and no sample: not known to be idle
    assert billing.is_idle(quiet, 1000.0, active_runs=1, watched_since=600.0, rule=rule)  # a run that keeps the cards quiet
    assert not billing.is_idle(quiet, 1000.0, active_runs=1, watched_since=800.0, rule=rule)  # a run in its warm-up


# -- the one "has this run ended" -------------------------------------------------------------------


def test_a_restart_after_run_end_means_not_ended(tmp_path):
    end, restart = {"type": "run_end"}, {"type": "restart"}
    assert has_ended([{"type": "step"}, end]) and not has_ended([end, restart]) and has_ended([end, restart, {"type": "step"}, end])
    path = tmp_path / "events.jsonl"
    writer = EventWriter(path, "r")
    writer.emit("log", level="info", message='a message that says "run_end"')
    assert not ended_in_file(path)
    writer.emit("run_end", status="succeeded")
    assert ended_in_file(path)
    writer.emit("restart", attempt=2, cause="resume")
    assert not ended_in_file(path)
    writer.close()
    with open(path, "ab") as fh:
        fh.write(b'{"type":"run_end","sta')  # a line still being written
    assert not ended_in_file(path)


def test_autostop_counts_a_resumed_run_as_active(tmp_path):
    from gaudi_nb.agent.autostop import active_runs

    folder = tmp_path / "runs" / "resumed"
    writer = EventWriter(folder / "events.jsonl", "resumed")
    writer.emit("run_end", status="stopped")
    writer.emit("restart", attempt=2, cause="resume")  # `gaudi-nb resume` wrote it; its agent is not up yet
    writer.close()
    assert active_runs(tmp_path) == ["resumed"]


# -- the one formatter -------------------------------------------------------------------------------


def test_money_and_durations_read_the_same_everywhere():
    assert [formatting.money(v) for v in (None, 0, 0.01234, 13.11, 1234.5, -0.5)] == ["unknown", "$0.00", "$0.0123", "$13.11", "$1,234.50", "-$0.5000"]
    assert (formatting.rate(13.11), formatting.rate(None)) == ("$13.11/h", "unknown")
    assert [formatting.duration(v) for v in (None, 65, 3725)] == ["unknown", "1:05", "1:02:05"]
