"""The team dashboard (issue 11): its data layer over SQLite and PostgreSQL, and the served app over a real live run in Chromium, with and without a login."""
from __future__ import annotations

import http.cookiejar
import socket
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from conftest import REPO, free_port
from test_provision_aws import aws  # noqa: F401 (the moto EC2 fixture, shared)

from gaudi_nb import paths
from gaudi_nb.cost import billing
from gaudi_nb.dashboard.data_store import DashboardData, filter_runs
from gaudi_nb.events import EventWriter, make_event
from gaudi_nb.store import RunStore

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOTS = REPO / "out" / "screenshots"
DAY = 86400.0


def listening(port: int, timeout: float = 30) -> None:
    """serve(threaded=True) returns before the server listens: wait until it does."""
    deadline = time.time() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.time() < deadline, f"nothing listens on {port}"
            time.sleep(0.1)


def add_run(store, run_id, *, owner, t0, steps, usd, price=3.6, budget=None, project=None, end=None, node="local", devices=8, utilization=50.0):
    """A run in the store through ingest, as Run.sync would put it there: start, steps, telemetry, cost, maybe an end."""
    spec = {"model": "tiny-llama", "max_steps": 100, "nodes": 1, "target": node, "budget_usd": budget, **({"project": project} if project else {})}
    store.register(run_id, spec=spec, target=node, run_dir=None, owner=owner)
    events = [make_event("run_start", run_id, node=node, t=t0, spec=spec, price_per_hour=price, accelerator="hpu")]
    events.append(make_event("worker_start", run_id, node=node, rank=0, t=t0 + 1, world_size=devices, accelerator="hpu"))
    events += [make_event("step", run_id, node=node, rank=0, t=t0 + 1 + i, step=i, loss=3.0 / i, tokens=1000, tokens_per_second=1000.0, step_time_s=1.0, warmup=False) for i in range(1, steps + 1)]
    events.append(make_event("telemetry", run_id, node=node, t=time.time(), source="hlml",
                             devices=[{"index": d, "kind": "hpu", "label": f"hpu {d}", "utilization_pct": utilization, "memory_used_bytes": 2**30, "memory_total_bytes": 4 * 2**30} for d in range(devices)]))
    events.append(make_event("cost", run_id, node=node, t=t0 + steps, usd=usd, elapsed_s=float(steps), price_per_hour=price, nodes=1, budget_usd=budget))
    if end is not None:
        events.append(make_event("run_end", run_id, node=node, t=end, status="succeeded"))
    store.ingest(run_id, events, 0, len(events))


# -- the data layer, on SQLite and on PostgreSQL -------------------------------------------


def test_runs_fleet_and_money_from_the_store(store_url, gaudi_home):
    store = RunStore(store_url)
    now = time.time()
    midnight = (now // DAY) * DAY
    add_run(store, "alice-1", owner="alice", t0=midnight - 3600, steps=5, usd=2.0, end=midnight + 3600, project="llama", budget=4.0)  # over midnight: half each day
    add_run(store, "bob-1", owner="bob", t0=now - 400, steps=7, usd=0.5, node="gaudi-a", utilization=0.0)  # runs, but its devices idle past the idle window
    add_run(store, "bob-2", owner="bob", t0=now - 30, steps=3, usd=0.25, price=None, node="gaudi-b", devices=4)
    store.add_node({"name": "gaudi-c", "url": "ssh://u@c:22", "user": "u", "host": "c", "port": 22, "accelerator": "hpu", "device_count": 8})
    machine = {"url": "ssh://ubuntu@m:22", "user": "ubuntu", "host": "m", "port": 22, "provider": "aws", "region": "us-west-2", "price_per_hour": 13.11, "launched_at": now - 7200}
    store.add_node({**machine, "name": "napper-0", "instance_id": "i-1", "state": "stopped", "billed_intervals": [[now - 7200, now - 3600]]})  # autostop stopped it
    store.add_node({**machine, "name": "gone-0", "instance_id": "i-2", "state": "terminated", "terminated_at": now - 3600})
    data = DashboardData(store, follow=False, team_budgets={"users": {"bob": 10.0}, "projects": {"llama": 3.0}})
    assert data.refresh() is True
    assert data.refresh() is False  # nothing new: a tick costs one query and changes nothing

    runs = data.runs
    assert list(runs["run_id"]) == ["bob-2", "bob-1", "alice-1"]  # newest first
    alice = runs.set_index("run_id").loc["alice-1"]
    assert (alice["status"], alice["owner"], alice["project"], alice["step"], alice["model"], alice["usd"]) == ("succeeded", "alice", "llama", 5, "tiny-llama", 2.0)
    assert alice["usd_per_million_tokens"] == pytest.approx(3.6 / (1000 * 3600) * 1e6)
    assert list(filter_runs(runs, owner="bob")["run_id"]) == ["bob-2", "bob-1"]
    assert list(filter_runs(runs, text="ALICE")["run_id"]) == ["alice-1"]
    assert list(filter_runs(runs, text="gaudi")["run_id"]) == []  # id, name, model and project only
    assert list(filter_runs(runs, active_only=True)["run_id"]) == ["bob-2", "bob-1"]

    fleet = data.fleet().set_index("node")
    assert {"local", "gaudi-a", "gaudi-b", "gaudi-c"} <= set(fleet.index)  # this machine always, attached and reporting nodes
    assert fleet.loc["gaudi-a", "state"] == "idle, costs money"  # a run holds it at 0 % while the meter runs (billing's idle rule)
    assert fleet.loc["gaudi-b", "state"] == "busy" and fleet.loc["gaudi-c", "state"] == "idle"
    assert data.fleet()["node"].iloc[0] == "gaudi-a"  # what costs money idle comes first
    assert fleet.loc["gaudi-c", "devices"] == 8 and fleet.loc["gaudi-b", "devices"] == 4
    # a stopped machine bills nothing and says so, after the rest; a terminated one is history, not fleet
    assert fleet.loc["napper-0", "state"] == "stopped" and data.fleet()["node"].iloc[-1] == "napper-0" and "gone-0" not in fleet.index
    assert fleet.loc["napper-0", "usd"] == pytest.approx(13.11) and fleet.loc["napper-0", "usd_per_hour"] == 0.0  # its hour, and nothing now

    heat = data.heatmap("utilization")
    assert heat["values"].shape == (8 + 4 + 8, 120)  # one row per device of every node that reported (alice's run too, on local)
    assert [name for _, name in heat["node_ticks"]] == ["gaudi-a", "gaudi-b", "local"]

    costs = data.costs()
    by_user = costs["by_user"].set_index("owner")
    assert by_user.loc["alice", "usd"] == 2.0 and by_user.loc["bob", "usd"] == 0.75
    by_day = costs["by_day"].set_index("day")
    yesterday, today = time.strftime("%Y-%m-%d", time.gmtime(midnight - 1)), time.strftime("%Y-%m-%d", time.gmtime(now))
    # the machines' hours count too: napper-0 ran an hour, gone-0 from launch to its end (recorded before revision 0006)
    machines_today = 2 * 13.11 * billing.overlap_s(now - 7200, now - 3600, midnight, now) / 3600
    assert by_day.loc[today, "usd"] == pytest.approx(1.0 + 0.5 + 0.25 + machines_today)
    assert by_day.loc[yesterday, "usd"] == pytest.approx(1.0 + 2 * 13.11 - machines_today if now - 7200 < midnight else 1.0)
    assert costs["total_usd"] == pytest.approx(2.0 + 0.5 + 0.25 + 2 * 13.11)
    # bob-2 has no price: counted, not guessed; the stopped and terminated machines bill nothing now
    assert costs["burn"] == {"usd_per_hour": 3.6, "unknown_prices": 1, "active_runs": 2, "billed_machines": 0}
    budgets = costs["budgets"].set_index("budget")
    assert budgets.loc["run alice-1", "fraction"] == pytest.approx(0.5)
    llama = budgets[budgets.index.str.startswith("project llama")]
    assert len(llama) == 1 and llama["usd"].iloc[0] == 2.0 or time.gmtime(midnight - 3600).tm_mon != time.gmtime(now).tm_mon


def test_detail_and_new_events_from_cursors(store_url, gaudi_home):
    store = RunStore(store_url)
    add_run(store, "r1", owner="alice", t0=time.time() - 100, steps=4, usd=0.1)
    data = DashboardData(store, follow=False)
    data.refresh()
    detail = data.detail("r1")
    assert [s for s, _ in detail.loss] == [1, 2, 3, 4]
    assert detail.state.step == 4 and detail.utilization and detail.cost == [(pytest.approx(time.time() - 96, abs=5), 0.1)]
    assert detail.events_frame()["type"].iloc[0] == "cost"  # newest first
    offset = store.offset("r1")
    store.ingest("r1", [make_event("step", "r1", rank=0, step=5, loss=0.5, tokens=1000, tokens_per_second=900.0, step_time_s=1.0)], offset, offset + 10)
    assert data.refresh()
    assert [s for s, _ in detail.loss] == [1, 2, 3, 4, 5]  # appended once, from the cursor
    assert data.runs.loc[0, "step"] == 5
    assert detail.manifest() is None and detail.log_tail() == ""


def test_follows_runs_whose_notebooks_are_closed(store_url, gaudi_home):
    """Nobody else reads these runs: the dashboard pulls their events files into the store itself, every
    run that moved in one tick; a notebook that reads one of them meanwhile adds nothing twice."""
    from gaudi_nb.api import Run

    store = RunStore(store_url)
    writers = {}
    for run_id in ("orphan-a", "orphan-b"):
        run_dir = paths.run_dir(run_id)
        store.register(run_id, spec={"model": "tiny-llama", "max_steps": 1000}, target="local", run_dir=str(run_dir))
        writers[run_id] = EventWriter(run_dir / "events.jsonl", run_id)
        writers[run_id].emit("run_start", spec={"model": "tiny-llama", "max_steps": 1000}, run_dir=str(run_dir), price_per_hour=1.0)
    data = DashboardData(store, follow=True).start(0.05)

    def shown():
        return {row["run_id"]: int(row["step"]) for _, row in data.runs.iterrows()}

    try:
        seen = []
        for i in range(1, 6):
            for run_id, writer in writers.items():
                writer.write(make_event("step", run_id, rank=0, step=i, loss=1.0, tokens=10, tokens_per_second=10.0, step_time_s=0.1))
            if i == 3:
                Run("orphan-b", store).sync()  # a notebook's panel reads it too
            deadline = time.time() + 5
            while shown() != {"orphan-a": i, "orphan-b": i}:
                assert time.time() < deadline, f"step {i} never showed: {shown()}"
                time.sleep(0.01)
            seen.append(shown()["orphan-a"])
        assert seen == [1, 2, 3, 4, 5]
        for run_id in writers:  # in the store, for every other view too, each event once
            assert store.get(run_id)["steps_completed"] == 5 and store.count_events(run_id) == 6
            assert [e["step"] for e in store.events(run_id, types=["step"])] == [1, 2, 3, 4, 5]
    finally:
        data.stop()
        for writer in writers.values():
            writer.close()


def test_spend_by_day_never_guesses_an_unknown_price():
    days = billing.spend_by_day([{"run_id": "a", "status": "succeeded", "started_at": 0.0, "ended_at": 10.0, "cost": {"usd": None}}], [], now=20.0)
    assert days == [{"day": "1970-01-01", "usd": 0.0, "unknown": 1}]


# -- the served app in Chromium ------------------------------------------------------------


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A local torch-free run (tests/scriptrun.py; it steps until the module ends) and the dashboard served in-process
    over its store: the team's PostgreSQL server where one answers (always in CI), else the default SQLite file.
    One store kind in the browser is enough: the pages read both kinds through the same DashboardData, whose
    every query the data-layer tests above check on SQLite and on PostgreSQL."""
    import os

    import scriptrun
    from conftest import postgres_url, reset_postgres

    pytest.importorskip("panel", reason="the dashboard needs the dashboard extra")

    import gaudi_nb
    from gaudi_nb.dashboard.app import serve, stop_shared

    home = tmp_path_factory.mktemp("dashboard_home")
    saved = {name: os.environ.get(name) for name in ("GAUDI_NB_HOME", "GAUDI_NB_STORE_URL", "GAUDI_NB_ACCELERATOR")}
    os.environ["GAUDI_NB_HOME"] = str(home)
    os.environ["GAUDI_NB_ACCELERATOR"] = "cpu"  # the rank need not import torch to learn there is no GPU
    os.environ.pop("GAUDI_NB_STORE_URL", None)
    url = postgres_url()
    if url is not None:
        reset_postgres(url)
        os.environ["GAUDI_NB_STORE_URL"] = url
    loop = scriptrun.write_loop(home, step_s=0.5)  # about a CPU run's pace: the pages are not flooded with events
    run = gaudi_nb.train(script=str(loop), devices=1, max_steps=100_000, warmup_steps=2, price_per_hour=3.6, budget_usd=50.0)
    port = free_port()
    server = serve(address="127.0.0.1", port=port, threaded=True)
    listening(port)
    try:
        yield {"run": run, "base": f"http://127.0.0.1:{port}", "store": run.store.url}
    finally:
        server.stop()
        run.stop()
        run.wait(timeout=120)
        stop_shared()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="module")
def browser():
    pytest.importorskip("panel", reason="the dashboard needs the dashboard extra")
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed (apt-get install -y chromium chromium-driver)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def open_page(browser):
    """A page that records what must not happen: console errors, page errors, failed scripts, requests that leave this machine."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_navigation_timeout(90_000)  # the first render of a page waits on a busy machine (the suite runs on two workers)
    page.set_default_timeout(60_000)
    page.problems = []
    page.on("console", lambda m: m.type == "error" and page.problems.append(f"console: {m.text}"))
    page.on("pageerror", lambda e: page.problems.append(f"page error on {page.url}: {e}"))
    page.on("requestfailed", lambda r: r.resource_type in ("script", "stylesheet") and page.problems.append(f"{r.resource_type} failed: {r.url} {r.failure}"))
    page.on("response", lambda r: r.status >= 400 and page.problems.append(f"{r.status}: {r.url}"))
    page.on("request", lambda r: urllib.parse.urlparse(r.url).hostname not in (None, "127.0.0.1", "localhost") and r.url.split(":")[0] in ("http", "https", "ws", "wss") and page.problems.append(f"left this machine: {r.url}"))
    return page


def runs_row(page, run_id):
    return page.locator(".gaudi-nb-runs-table .tabulator-row", has_text=run_id).first


def shown_step(page, run_id) -> int:
    return int(runs_row(page, run_id).locator("[tabulator-field='step']").inner_text().replace(",", ""))


@pytest.mark.slow
@pytest.mark.postgres
def test_every_page_of_the_live_dashboard_in_chromium(live, browser):
    run_id = live["run"].run_id
    deadline = time.time() + 120
    while live["run"].record()["steps_completed"] < 2:  # the first steps and telemetry, so every page has something
        assert time.time() < deadline and not live["run"].done, live["run"].record()
        time.sleep(0.3)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page = open_page(browser)

    page.goto(f"{live['base']}/?page=runs")
    runs_row(page, run_id).wait_for(timeout=60_000)
    first = shown_step(page, run_id)
    deadline = time.time() + 30
    while shown_step(page, run_id) <= first:  # live: the table moves without a reload
        assert time.time() < deadline, f"the runs table stayed at step {first}"
        time.sleep(0.2)
    assert runs_row(page, run_id).locator("[tabulator-field='status']").inner_text() == "running"
    assert runs_row(page, run_id).locator("[tabulator-field='owner']").inner_text().strip()
    page.screenshot(path=str(SCREENSHOTS / "dashboard_runs.png"), full_page=True)

    runs_row(page, run_id).locator("[tabulator-field='run_id']").click()  # a click opens the run's detail
    page.locator(".gaudi-nb-detail-header .gaudi-nb-run-id", has_text=run_id).wait_for(state="visible", timeout=20_000)
    page.get_by_text("loss", exact=True).first.wait_for(timeout=20_000)
    page.wait_for_timeout(1000)  # the charts' first draw, for the screenshot
    page.screenshot(path=str(SCREENSHOTS / "dashboard_run_detail.png"), full_page=True)

    page.goto(f"{live['base']}/?page=fleet")
    page.locator(".gaudi-nb-fleet-table .tabulator-row", has_text="local").first.wait_for(timeout=60_000)
    page.get_by_text("Each row of a map is one device").first.wait_for(timeout=60_000)
    page.locator(".gaudi-nb-heatmap canvas").first.wait_for(timeout=60_000)  # the maps are drawn on canvases
    page.wait_for_timeout(1200)  # the heat maps redraw once a second
    page.screenshot(path=str(SCREENSHOTS / "dashboard_fleet.png"), full_page=True)

    page.goto(f"{live['base']}/?page=costs")
    page.get_by_text("burn rate now").first.wait_for(timeout=60_000)
    page.locator(".gaudi-nb-budgets", has_text=f"run {run_id}").first.wait_for(timeout=60_000)  # its budget, and how close
    page.wait_for_timeout(500)
    page.screenshot(path=str(SCREENSHOTS / "dashboard_costs.png"), full_page=True)

    page.goto(f"{live['base']}/?page=audit")  # who started the run, from where
    page.locator(".gaudi-nb-audit tr", has_text=run_id).first.wait_for(timeout=30_000)
    page.screenshot(path=str(SCREENSHOTS / "dashboard_audit.png"), full_page=True)
    assert page.problems == [], "\n".join(page.problems)
    page.close()


@pytest.mark.slow
def test_the_fleet_page_at_1024_devices(browser, tmp_path):
    """128 nodes × 8 devices: one heat map row per device, labelled by node; the idle ones that cost money lead the table."""
    from gaudi_nb.dashboard.app import serve

    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    store = RunStore(url)
    now = time.time()
    for n in range(128):
        run_id, node = f"fleet-{n:03d}", f"node-{n:03d}"
        spec = {"model": "llama-3-8b", "max_steps": 100000, "nodes": 1, "target": node}
        store.register(run_id, spec=spec, target=node, run_dir=None, owner=f"user{n % 6}")
        events = [make_event("run_start", run_id, node=node, t=now - 300, spec=spec, price_per_hour=13.11)]
        events += [make_event("telemetry", run_id, node=node, t=now - 300 + s, source="hlml",
                              devices=[{"index": d, "kind": "hpu", "label": f"hpu {d}", "utilization_pct": 0.0 if n % 10 == 7 else float((n * 8 + d + s) % 100),
                                        "memory_used_bytes": (d + 1) * 2**33, "memory_total_bytes": 2**37} for d in range(8)]) for s in range(0, 300, 10)]
        store.ingest(run_id, events, 0, 10)
    port = free_port()
    server = serve(url, address="127.0.0.1", port=port, threaded=True, follow=False)
    listening(port)
    try:
        page = open_page(browser)
        page.goto(f"http://127.0.0.1:{port}/?page=fleet")
        page.locator(".gaudi-nb-fleet-banner", has_text="13 idle node(s) cost money").first.wait_for(timeout=60_000)
        first_row = page.locator(".gaudi-nb-fleet-table .tabulator-row").first
        assert "idle, costs money" in first_row.inner_text()
        page.locator(".gaudi-nb-heatmap canvas").first.wait_for(timeout=60_000)
        page.wait_for_timeout(1200)  # drawn once, for the screenshot
        page.screenshot(path=str(SCREENSHOTS / "dashboard_fleet_1024_devices.png"), full_page=True)
        assert page.problems == [], "\n".join(page.problems)
        page.close()
    finally:
        server.stop()
    from gaudi_nb.dashboard.app import shared_data

    heat = shared_data(url).heatmap("utilization")
    assert heat["values"].shape == (1024, 120) and len(heat["node_ticks"]) == 128


@pytest.mark.slow
@pytest.mark.postgres
def test_with_a_login_nothing_is_served_before_it(live, browser):
    from gaudi_nb.dashboard.app import serve

    port = free_port()
    server = serve(live["store"], address="127.0.0.1", port=port, basic_auth="s3cret", cookie_secret="test-cookie-secret", threaded=True)
    base = f"http://127.0.0.1:{port}"
    listening(port)
    run_id = live["run"].run_id
    try:
        for path in ("/", "/?page=runs", f"/?page=run&run={run_id}"):
            answer = urllib.request.urlopen(base + path, timeout=10)  # follows the redirect to the login page
            body = answer.read().decode()
            assert urllib.parse.urlparse(answer.geturl()).path == "/login", answer.geturl()
            assert run_id not in body
            assert 'name="password"' in body and "Bokeh.embed" not in body  # the login form, no app
        wrong = _login(base, "anyone", "guess")
        assert run_id not in wrong and "Invalid username or password" in wrong

        page = open_page(browser)
        page.goto(f"{base}/?page=runs")
        page.fill("input[name=username]", "alice")
        page.fill("input[name=password]", "s3cret")
        page.locator("button, input[type=submit]").first.click()
        runs_row(page, run_id).wait_for(timeout=60_000)  # logged in: the same live table
        problems = [p for p in page.problems if "left this machine" in p]
        page.close()
        assert problems == []
    finally:
        server.stop()


@pytest.mark.slow
def test_an_admin_takes_a_machine_down_from_the_fleet_page_and_nobody_else_can(aws, browser, gaudi_home, tmp_path, capsys, monkeypatch):  # noqa: F811 (aws: test_provision_aws's fixture)
    """Served with basic-auth users of each role over machines in moto's EC2: the admin's Down asks first, then terminates
    through nodes down's one road, audited with her login; a member's forged click is refused and audited; a failure is the CLI's line."""
    import json

    from test_provision_aws import SSH_FROM, ec2, habana_image

    import gaudi_nb
    from gaudi_nb import cli
    from gaudi_nb.dashboard import app as dashboard_app

    records = gaudi_nb.provision("aws", instance_type="dl1.24xlarge", count=2, name="fleetdown", ssh_from=SSH_FROM, image=habana_image(), attach=False)
    ids = {r["name"]: r["instance_id"] for r in records}

    def ec2_states():
        return {i["InstanceId"]: i["State"]["Name"] for res in ec2().describe_instances(InstanceIds=list(ids.values()))["Reservations"] for i in res["Instances"]}

    (tmp_path / "users.json").write_text(json.dumps({"dana": "pw-dana", "alice": "pw-alice", "carol": "pw-carol"}))
    (tmp_path / "roles.json").write_text(json.dumps({"dana": "admin", "alice": "member"}))  # carol: not listed, a viewer
    port = free_port()
    server = dashboard_app.serve(address="127.0.0.1", port=port, basic_auth=str(tmp_path / "users.json"), roles=str(tmp_path / "roles.json"),
                                 cookie_secret="test-cookie-secret", threaded=True, follow=False)
    base = f"http://127.0.0.1:{port}"
    listening(port)

    def fleet_as(user, shown):
        page = open_page(browser)
        page.goto(f"{base}/?page=fleet")
        page.fill("input[name=username]", user)
        page.fill("input[name=password]", f"pw-{user}")
        page.locator("button, input[type=submit]").first.click()
        page.locator(".gaudi-nb-fleet-table .tabulator-row", has_text=shown).first.wait_for(timeout=60_000)
        return page

    def machine(page, name):
        return page.locator(".gaudi-nb-machine-row", has_text=name).first

    try:
        page = fleet_as("dana", "fleetdown-0")
        machine(page, "fleetdown-0").locator(".gaudi-nb-down button").click()
        machine(page, "fleetdown-0").locator(".gaudi-nb-confirm", has_text="terminate fleetdown-0? its disk is deleted").wait_for(state="visible")
        assert ec2_states()[ids["fleetdown-0"]] == "running"  # asked, nothing done yet
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "dashboard_fleet_down.png"), full_page=True)
        machine(page, "fleetdown-0").locator(".gaudi-nb-down-yes button").click()
        page.locator(".gaudi-nb-down-message", has_text="down fleetdown-0 in").wait_for(timeout=60_000)
        assert f"fleetdown-0 ({ids['fleetdown-0']}): terminated, cost $" in page.locator(".gaudi-nb-down-message .gaudi-nb-ok").inner_text()
        assert ec2_states() == {ids["fleetdown-0"]: "terminated", ids["fleetdown-1"]: "running"}
        entry = next(e for e in RunStore().audit_entries() if e["action"] == "down")
        assert (entry["target"], entry["user"], entry["outcome"], entry["origin"]) == ("fleetdown-0", "dana", "ok", "dashboard from 127.0.0.1")
        machine(page, "fleetdown-0").wait_for(state="detached", timeout=30_000)  # a terminated machine leaves the list

        # a failure shows the one line the CLI prints for the same down
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "")
        capsys.readouterr()
        with pytest.raises(SystemExit):
            cli.main(["nodes", "down", "fleetdown-1"])
        said = capsys.readouterr().err.strip()
        assert said.startswith("error: ") and "\n" not in said
        machine(page, "fleetdown-1").locator(".gaudi-nb-down button").click()
        machine(page, "fleetdown-1").locator(".gaudi-nb-down-yes button").click()
        page.locator(".gaudi-nb-down-message", has_text="error: ").wait_for(timeout=60_000)
        assert page.locator(".gaudi-nb-down-message .gaudi-nb-error").inner_text().strip() == said
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):  # the credentials back
            monkeypatch.setenv(key, aws[key])
        assert page.problems == [], "\n".join(page.problems)
        page.close()

        # a member sees no Down; a click forged on the hidden control is refused by the server and audited
        page = fleet_as("alice", "fleetdown-1")
        assert not machine(page, "fleetdown-1").is_visible()
        machine(page, "fleetdown-1").locator(".gaudi-nb-down-yes button").dispatch_event("click")
        deadline = time.time() + 30
        while not [e for e in RunStore().audit_entries(user="alice") if e["action"] == "down"]:
            assert time.time() < deadline, "the member's forged down never reached the server"
            time.sleep(0.2)
        (refused,) = [e for e in RunStore().audit_entries(user="alice") if e["action"] == "down"]
        assert (refused["target"], refused["outcome"]) == ("fleetdown-1", "refused") and "only an admin takes machines down" in refused["detail"]["reason"]
        assert ec2_states()[ids["fleetdown-1"]] == "running"
        page.close()
        layout, _ = dashboard_app.build(dashboard_app.shared_data(follow=False), page="fleet", login="carol")  # a viewer: nothing to see either
        assert not layout[1][0][3].visible and not layout[1][0][3][1][0][1].visible
    finally:
        server.stop()
        dashboard_app.stop_shared()
        gaudi_nb.down("fleetdown")
    assert set(ec2_states().values()) == {"terminated"}


def _login(base, user, password) -> str:
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    opener.open(base + "/login", timeout=10).read()
    form = urllib.parse.urlencode({"username": user, "password": password}).encode()
    return opener.open(base + "/login", data=form, timeout=10).read().decode()


def test_the_command_serves_on_loopback_unless_told(monkeypatch):
    """`gaudi-nb dashboard` hands its options to serve(); the address defaults to 127.0.0.1."""
    from gaudi_nb import cli
    from gaudi_nb.dashboard import app as dashboard_app

    seen = {}
    monkeypatch.setattr(dashboard_app, "serve", lambda store=None, **options: seen.update(options, store=store))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["dashboard", "--port", "5099", "--auth", "pw"])
    assert exit_info.value.code == 0
    assert seen["address"] == "127.0.0.1" and seen["port"] == 5099 and seen["basic_auth"] == "pw" and seen["store"] is None


def test_the_data_layer_imports_no_panel():
    """The JupyterLab extension reuses data_store.py in the server: it must not pull in Panel or Bokeh."""
    import subprocess
    import sys

    code = "import sys, gaudi_nb.dashboard.data_store; print(sorted(m for m in sys.modules if m.split('.')[0] in ('panel', 'bokeh', 'holoviews', 'param')))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


def test_show_gives_the_same_pages_in_a_notebook(gaudi_home):
    pytest.importorskip("panel", reason="the dashboard needs the dashboard extra")
    from gaudi_nb.dashboard import show
    from gaudi_nb.dashboard.app import stop_shared

    store = RunStore()
    add_run(store, "nb-1", owner="alice", t0=time.time() - 10, steps=3, usd=0.01)
    try:
        layout = show(page="costs")
        tabs = layout[1]
        assert [t.name for t in tabs] == ["Fleet", "Runs", "Run detail", "Costs", "Audit"] and tabs.active == 3
        state = layout._gaudi_nb_state
        assert list(state.runs["run_id"]) == ["nb-1"] and state.selected_run == "nb-1"
        store.audit("stop", "nb-<1>", outcome="refused", detail={"reason": "not <yours>"})
        tabs.active = 4  # the Audit page reads the trail when it opens: the run's start, the refusal, escaped
        audit_table = tabs[4][2].object
        assert "nb-1" in audit_table and "train" in audit_table and "nb-&lt;1&gt;" in audit_table and "not &lt;yours&gt;" in audit_table
    finally:
        stop_shared()




BAD_LINES_LOOP = """\
import time

import numpy as np

from gaudi_nb.worker.script import report, spec

for step in range(1, spec().max_steps + 1):
    time.sleep(0.1)
    report(step=step, loss=np.float32(10.0 / step), tokens=np.int64(64), samples=np.float64(2.0))  # numbers as a framework hands them over
"""


@pytest.mark.breaks_event_contract
def test_a_bad_line_in_one_running_run_holds_up_nothing_and_is_reported_on_that_run(gaudi_home, monkeypatch):
    """Bytes that are not UTF-8 and a step whose tokens are the text "tensor(512)", appended to one running
    run's events.jsonl: both runs ingest to their ends (the agent's own reader too: the runs succeed), the
    CLI lists them, and the bad lines are a warning on their run in the record, gaudi-nb show and the run page."""
    import json
    import subprocess

    from conftest import BIN

    import gaudi_nb
    from gaudi_nb.notebook.panel import failure_html
    from gaudi_nb.notebook.panel_state import PanelState

    monkeypatch.setenv("GAUDI_NB_ACCELERATOR", "cpu")
    script = gaudi_home.parent / "loop.py"
    script.write_text(BAD_LINES_LOOP)
    runs = [gaudi_nb.train(script=str(script), devices=1, max_steps=20, warmup_steps=1) for _ in range(2)]
    hit, calm = runs
    data = DashboardData(hit.store, follow=True).start(0.05)
    try:
        deadline = time.time() + 60
        while hit.store.get(hit.run_id)["steps_completed"] < 3:
            assert time.time() < deadline, "the run never stepped"
            time.sleep(0.05)
        tensor_step = {**make_event("step", hit.run_id, rank=0, step=3, loss=1.0), "tokens": "tensor(512)"}
        with open(paths.run_dir(hit.run_id) / "events.jsonl", "ab") as fh:
            fh.write(b"\xff\xfe\xfd not UTF-8\n")
            fh.write((json.dumps(tensor_step) + "\n").encode())
        while any(hit.store.get(run.run_id)["status"] not in ("succeeded", "failed", "lost") for run in runs):
            assert time.time() < deadline + 60, [hit.store.get(run.run_id)["status"] for run in runs]
            time.sleep(0.1)
    finally:
        data.stop()
    records = {run.run_id: hit.store.get(run.run_id) for run in runs}
    assert [(r["status"], r["steps_completed"]) for r in records.values()] == [("succeeded", 20), ("succeeded", 20)]
    assert records[hit.run_id]["metrics"]["tokens_seen"] == 20 * 64  # np.int64(64) went in as the number
    bad = records[hit.run_id]["bad_lines"]
    assert bad["count"] == 2 and "utf-8" in bad["first"]["error"] and records[calm.run_id]["bad_lines"] is None
    listed = subprocess.run([str(BIN / "gaudi-nb"), "runs", "--json"], capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert {r["run_id"]: r["bad_lines"] and r["bad_lines"]["count"] for r in json.loads(listed.stdout)} == {hit.run_id: 2, calm.run_id: None}
    shown = subprocess.run([str(BIN / "gaudi-nb"), "show", hit.run_id], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and "bad lines 2 lines of events.jsonl broke the event contract and were kept aside" in " ".join(shown.stdout.split())
    page = failure_html(PanelState.from_events(hit.run_id, hit.store.events(hit.run_id)))  # the panel's and the dashboard run page's
    assert 'class="gaudi-nb-bad-lines"' in page and "kept aside; the first, at byte" in page


def test_the_run_page_reads_a_long_run_a_page_at_a_time(gaudi_home, monkeypatch):
    from gaudi_nb.dashboard import data_store

    store = RunStore()
    store.register("long", spec={"max_steps": 25}, target="local", run_dir=None)
    events = [make_event("step", "long", rank=0, step=i, loss=1.0 / i, tokens=10, step_time_s=0.1, warmup=False) for i in range(1, 26)]
    store.ingest("long", events, 0, 100)
    pages = []
    read = store.events
    monkeypatch.setattr(store, "events", lambda *a, **kw: pages.append(kw.get("limit")) or read(*a, **kw))
    monkeypatch.setattr(data_store, "DETAIL_PAGE_EVENTS", 10)
    detail = DashboardData(store, follow=False).detail("long")
    assert pages == [10, 10, 10] and detail.seq == 24 and detail.state.step == 25


def test_the_fleet_shows_a_clusters_gaudi_nodes_and_our_pods_and_bills_no_idle_cluster():
    from gaudi_nb.dashboard.fleet import DeviceHistory, fleet_frame

    cluster = {"name": "kc", "url": "k8s://prod/ml", "accelerator": "hpu", "device_count": 16, "price_per_hour": 36.0, "state": None,
               "resources": {"kubernetes": {"gaudi_nodes": [{"name": "gaudi-a", "cards": 8, "free": 7}, {"name": "gaudi-b", "cards": 8, "free": 8}]}}}
    run = {"run_id": "tiny-llama-20261207-1", "status": "running", "target": "kc", "cost": {"price_per_hour": 36.0}}
    pod = DeviceHistory()
    pod.add(time.time(), [{"label": "hpu 0", "kind": "hpu", "utilization_pct": 90.0}])
    frame = fleet_frame([cluster], [run], {"gnb-tiny-llama-20261207-1-0": pod}).set_index("node")
    assert frame.loc["kc", "state"] == "busy" and frame.loc["kc", "runs"] == "tiny-llama-20261207-1"
    assert frame.loc["kc/gaudi-a", "devices"] == 8 and "7 free" in frame.loc["kc/gaudi-a", "address"]
    assert frame.loc["gnb-tiny-llama-20261207-1-0", "address"] == "pod on kc"
    idle = fleet_frame([cluster], [], {}).set_index("node")
    assert idle.loc["kc", "state"] == "idle"  # a cluster's nodes are billed through our pods, not while idle


def test_the_runs_page_says_why_a_run_waits():
    """The Runs table shows a queued run as `pending: REASON`, as the CLI, the panel and the sidebar do."""
    from gaudi_nb.dashboard.data_store import runs_frame
    from gaudi_nb.summary import empty_summary, fold

    record = fold({**empty_summary("q1"), "spec": {"max_steps": 5}}, [make_event("job", "q1", scheduler="slurm", job_id="7", partition="gaudi", state="PENDING", reason="Priority")])
    frame = runs_frame([record])
    assert frame.loc[0, "status"] == "pending" and frame.loc[0, "status_text"] == "pending: Priority"
