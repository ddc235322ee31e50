"""A team on the real PostgreSQL: roles and row-level security (gaudi-nb team), refusals and the audit trail.

One database and its roles per test module, named after the suite's database and this process (other
suites may use the same server at once), dropped at the end. Two members (alice, bob), a viewer
(carol) and the admin (the suite's role, which ran `team init`), each connecting as their own role.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import sqlalchemy
from conftest import postgres_url, wait_for
from scriptrun import write_loop

import gaudi_nb
from gaudi_nb import team as team_module
from gaudi_nb.audit import parse_since
from gaudi_nb.errors import NotAllowedError, SpecError
from gaudi_nb.rundir import RunFolder
from gaudi_nb.store import RunStore
from gaudi_nb.team import group_roles

GAUDI_NB = [sys.executable, "-m", "gaudi_nb.cli"]
PASSWORD = "team-test-pw"


def cli(*args, url, home, check=None, timeout=120):
    env = {**os.environ, "GAUDI_NB_HOME": str(home), "GAUDI_NB_STORE_URL": url}
    result = subprocess.run([*GAUDI_NB, *args], capture_output=True, text=True, timeout=timeout, env=env)
    if check is not None:
        assert result.returncode == check, result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    """{url: {admin, alice, bob, carol}, names, home, database}: a store with a team made through the CLI."""
    base = postgres_url()
    if base is None:
        pytest.skip("no PostgreSQL server on 127.0.0.1:5432 (./scripts/setup-and-test starts one)")
    base_url = sqlalchemy.engine.make_url(base)
    database = f"{base_url.database}_team_{os.getpid()}"
    names = {who: f"{database}_{who}" for who in ("alice", "bob", "carol")}
    server = sqlalchemy.create_engine(base, isolation_level="AUTOCOMMIT")
    with server.connect() as connection:
        connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        connection.exec_driver_sql(f'CREATE DATABASE "{database}"')
    admin = base_url.set(database=database).render_as_string(hide_password=False)
    urls = {"admin": admin, **{who: base_url.set(database=database, username=name, password=PASSWORD).render_as_string(hide_password=False) for who, name in names.items()}}
    home = tmp_path_factory.mktemp("team_home")
    (home / "pw").write_text(PASSWORD + "\n")
    try:
        cli("team", "init", url=admin, home=home, check=0)
        cli("team", "add", names["alice"], "--role", "member", "--password-file", str(home / "pw"), url=admin, home=home, check=0)
        for who, role in (("bob", "member"), ("carol", "viewer")):  # the same call, in this process (each CLI start costs seconds)
            team_module.add(RunStore(admin).engine, names[who], role, PASSWORD)
        yield {"url": urls, "names": names, "home": home, "database": database, "admin_name": base_url.username}
    finally:
        import gc

        import gaudi_nb.store as store_module

        gc.collect()  # a failed test's traceback may hold a member's connection; DROP ... WITH (FORCE) ends only our own
        for url in urls.values():
            engine = store_module._engines.pop(url, None)
            if engine is not None:
                engine.dispose()
        with server.connect() as connection:
            for name in names.values():  # a member of their roles may end their sessions (the admin made them: CREATEROLE)
                connection.exec_driver_sql(f'GRANT "{name}" TO CURRENT_USER')
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            for role in [*names.values(), *reversed(list(group_roles(database).values()))]:
                connection.exec_driver_sql(f'DROP ROLE IF EXISTS "{role}"')
        server.dispose()


def test_team_list_shows_who_is_what(team):
    rows = json.loads(cli("team", "list", "--json", url=team["url"]["alice"], home=team["home"], check=0).stdout)
    assert {r["name"]: r["role"] for r in rows} == {team["admin_name"]: "admin", team["names"]["alice"]: "member", team["names"]["bob"]: "member", team["names"]["carol"]: "viewer"}
    # only an admin changes the team; a member's try is an audit entry too
    with pytest.raises(NotAllowedError, match="only an admin"):
        team_module.add(RunStore(team["url"]["bob"]).engine, team["names"]["carol"], "admin")
    refused = RunStore(team["url"]["admin"]).audit_entries(user=team["names"]["bob"])
    assert [(e["action"], e["target"], e["outcome"]) for e in refused] == [("team add", team["names"]["carol"], "refused")]
    # SQLite stays single-user: no team there
    with pytest.raises(SpecError, match="needs a PostgreSQL store"):
        team_module.init(RunStore(f"sqlite:///{team['home'] / 'solo.db'}").engine)


def test_the_database_keeps_each_members_rows_their_own(team, monkeypatch):
    monkeypatch.setenv("USER", "mallory")  # the owner is the database's current_user, never $USER
    monkeypatch.setenv("LOGNAME", "mallory")
    alice, bob, carol, admin = (RunStore(team["url"][who]) for who in ("alice", "bob", "carol", "admin"))
    alice.register("rls-alice", spec={}, target="local", run_dir=None)
    assert alice.get("rls-alice")["owner"] == team["names"]["alice"]
    assert bob.get("rls-alice")["owner"] == team["names"]["alice"]  # everyone reads
    event = {"v": 1, "type": "run_start", "t": time.time(), "run_id": "rls-alice", "node": 0, "rank": None}
    assert bob.ingest("rls-alice", [event], 0, 100) == 0  # a teammate's reader leaves it to its owner
    with bob.engine.begin() as connection:  # and the database itself refuses what the client would not do
        assert connection.execute(sqlalchemy.text("UPDATE runs SET status = 'failed' WHERE run_id = 'rls-alice'")).rowcount == 0
    with pytest.raises(sqlalchemy.exc.ProgrammingError, match="row-level security"), bob.engine.begin() as connection:
        connection.execute(sqlalchemy.text("INSERT INTO events (run_id, seq, type, t, payload) VALUES ('rls-alice', 0, 'x', 0, '{}')"))
    with pytest.raises(sqlalchemy.exc.ProgrammingError, match="row-level security"), bob.engine.begin() as connection:  # nobody appends under another's name
        connection.execute(sqlalchemy.text("INSERT INTO audit (t, actor, \"user\", action, target, outcome, origin) VALUES (0, :a, :a, 'stop', 'x', 'ok', 'x')"), {"a": team["names"]["alice"]})
    with pytest.raises(sqlalchemy.exc.ProgrammingError, match="permission denied"), alice.engine.begin() as connection:  # append-only for members
        connection.execute(sqlalchemy.text("DELETE FROM audit"))
    with pytest.raises(sqlalchemy.exc.ProgrammingError, match="permission denied"):  # a viewer reads only
        carol.register("rls-carol", spec={}, target="local", run_dir=None)
    assert alice.ingest("rls-alice", [event], 0, 100) == 1 and admin.get("rls-alice")["status"] != "pending"
    # node records: changed only by their owner or an admin
    alice.add_node({"name": "rls-node", "url": "ssh://u@h:22", "user": "u", "host": "h", "port": 22})
    with pytest.raises(NotAllowedError, match="belongs to"):
        bob.update_node("rls-node", python="/usr/bin/python3")
    with pytest.raises(NotAllowedError):
        bob.remove_node("rls-node")
    assert admin.update_node("rls-node", python="/opt/py")["python"] == "/opt/py"
    assert admin.remove_node("rls-node")["owner"] == team["names"]["alice"]


@pytest.mark.slow  # a real run and four CLI starts (~30 s); the fast lane keeps the cheap refusals below and above
def test_a_member_cannot_stop_a_teammates_run_an_admin_can_and_the_audit_shows_it(team, tmp_path, monkeypatch):
    home, url, names = team["home"], team["url"], team["names"]
    monkeypatch.setenv("GAUDI_NB_HOME", str(home))
    alice, bob, carol, admin = (RunStore(url[who]) for who in ("alice", "bob", "carol", "admin"))
    run = gaudi_nb.train(script=str(write_loop(tmp_path, step_s=0.2)), max_steps=3000, store=alice)
    wait_for(lambda: run.record()["steps_completed"] >= 1, what="alice's run to report a step")

    refused = cli("stop", run.run_id, url=url["bob"], home=home, check=2)
    assert refused.stdout == "" and refused.stderr.count("\n") == 1, refused.stderr
    assert f"belongs to {names['alice']}" in refused.stderr and "only its owner or an admin" in refused.stderr
    with pytest.raises(NotAllowedError, match="only its owner or an admin"):  # --force is an admin's
        gaudi_nb.api.stop(run.run_id, store=bob, force=True)
    with pytest.raises(NotAllowedError, match="viewer"):  # a viewer reads
        gaudi_nb.api.stop(run.run_id, store=carol)
    with pytest.raises(NotAllowedError, match="add --force"):  # an admin, without --force: not by a slip
        gaudi_nb.api.stop(run.run_id, store=admin)
    with pytest.raises(NotAllowedError, match="only its owner or an admin"):
        gaudi_nb.api.resume(run.run_id, store=bob)
    # the run goes on: no stop was asked, and it keeps stepping
    before = run.record()["steps_completed"]
    assert not RunFolder(run.run_dir).stop_request.exists()
    wait_for(lambda: (r := run.record())["status"] == "running" and r["steps_completed"] > before, what="the run to go on stepping")

    assert "stop requested" in cli("stop", run.run_id, "--force", url=url["admin"], home=home, check=0).stdout
    wait_for(lambda: gaudi_nb.get_run(run.run_id, store=admin).status == "stopped", what="the admin's stop to end the run")

    entries = json.loads(cli("audit", "--json", "--since", "1h", url=url["admin"], home=home, check=0).stdout)
    mine = [(e["action"], e["user"], e["outcome"], bool(e["detail"].get("force"))) for e in reversed(entries) if e["target"] == run.run_id]
    assert mine == [
        ("train", names["alice"], "ok", False),
        ("stop", names["bob"], "refused", False),
        ("stop", names["bob"], "refused", True),
        ("stop", names["carol"], "refused", False),
        ("stop", team["admin_name"], "refused", False),
        ("resume", names["bob"], "refused", False),
        ("stop", team["admin_name"], "ok", True),
    ]
    assert [e["origin"].split(" on ")[0] for e in reversed(entries) if e["target"] == run.run_id] == ["api", "cli", "api", "api", "api", "api", "cli"]
    assert all(e["actor"] == e["user"] for e in entries)
    assert {e["user"] for e in bob.audit_entries(user=names["bob"])} == {names["bob"]}
    text = cli("audit", "--user", team["admin_name"], url=url["carol"], home=home, check=0).stdout  # everyone in the team reads the trail
    assert f"stop --force {run.run_id}" in text and "refused" in text and "train" not in text
    with pytest.raises(SpecError, match="--since"):
        parse_since("soon")


def test_nodes_down_on_a_teammates_machine_is_refused_before_any_cloud_is_asked(team):
    alice = RunStore(team["url"]["alice"])
    alice.add_node({"name": "rls-machine", "url": "ssh://ubuntu@203.0.113.9:22", "user": "ubuntu", "host": "203.0.113.9", "port": 22,
                    "provider": "aws", "region": "us-east-1", "instance_id": "i-0123456789", "instance_type": "dl1.24xlarge", "group": "rls-group", "state": "running"})
    result = cli("nodes", "down", "rls-group", url=team["url"]["bob"], home=team["home"], check=2)
    assert result.stderr.count("\n") == 1 and f"machine rls-machine belongs to {team['names']['alice']}" in result.stderr
    assert alice.get_node("rls-machine")["state"] == "running"
    entries = RunStore(team["url"]["admin"]).audit_entries(user=team["names"]["bob"])
    assert ("down", "rls-group", "refused") in {(e["action"], e["target"], e["outcome"]) for e in entries}
    assert ("provision", "rls-machine", "ok") in {(e["action"], e["target"], e["outcome"]) for e in RunStore(team["url"]["admin"]).audit_entries(user=team["names"]["alice"])}


# -- served views: who is asking decides what they may do ------------------------------------


def _running(store, run_id, owner):
    """A run whose record is active and whose stop road is real (the local target's stop request file), with no agent."""
    from gaudi_nb.events import EventWriter
    from gaudi_nb.targets import target_for

    folder = target_for("local").run_dir(run_id)
    folder.mkdir(parents=True)
    store.register(run_id, spec={"max_steps": 10}, target="local", run_dir=str(folder), owner=owner)
    writer = EventWriter(folder / "events.jsonl", run_id)
    writer.emit("run_start", spec={"max_steps": 10}, price_per_hour=None, accelerator="cpu")
    writer.close()
    return folder


def test_the_dashboard_shows_stop_only_to_who_may_stop_and_audits_the_person(gaudi_home):
    pytest.importorskip("panel", reason="the dashboard needs the dashboard extra")
    from gaudi_nb.dashboard import app as dashboard_app

    store = RunStore()
    mine, theirs = _running(store, "mine-20261207-000000-aaaa", "alice"), _running(store, "theirs-20261207-000000-bbbb", "bob")
    data = dashboard_app.shared_data(follow=False)
    dashboard_app._roles.update({"alice": "member", "dana": "admin"})
    try:
        def stop_for(login, run_id):
            layout, state = dashboard_app.build(data, page="run", run_id=run_id, login=login, origin="dashboard from 198.51.100.7")
            button, message = layout[1][2][2]  # the run page's controls, under its run picker
            state.selected_run = run_id
            return state, button, message, layout[0].object

        _, button, _, header = stop_for("alice", "theirs-20261207-000000-bbbb")
        assert not button.visible and "alice · member" in header  # a member: not a teammate's run
        state, button, message, _ = stop_for("alice", "mine-20261207-000000-aaaa")
        assert button.visible  # their own
        assert not stop_for("carol", "mine-20261207-000000-aaaa")[1].visible  # a login not in --roles reads only
        state, button, message, _ = stop_for("dana", "theirs-20261207-000000-bbbb")
        assert button.visible  # an admin: anything
        button.clicks += 1
        assert "stop requested for theirs-20261207-000000-bbbb" in message.object
        assert RunFolder(theirs).stop_request.exists() and not RunFolder(mine).stop_request.exists()
        entry = store.audit_entries()[0]
        assert (entry["action"], entry["target"], entry["user"], entry["origin"]) == ("stop", "theirs-20261207-000000-bbbb", "dana", "dashboard from 198.51.100.7")
        assert entry["actor"] != "dana"  # the store's own user acted for her, and the entry says both
    finally:
        dashboard_app._roles.clear()
        dashboard_app.stop_shared()


def test_oauth_off_loopback_needs_an_allow_list():
    from gaudi_nb import cli
    from gaudi_nb.dashboard.access import allowed, check_oauth

    with pytest.raises(SystemExit) as exit_info:  # refused before anything is served
        cli.main(["dashboard", "--address", "0.0.0.0", "--oauth-provider", "github", "--oauth-key", "k", "--oauth-secret", "s"])
    assert exit_info.value.code == 2
    check_oauth("127.0.0.1", "github", None)  # on loopback: the machine's own user
    check_oauth("0.0.0.0", "github", ["alice"])
    assert allowed(["Alice"], {"login": "alice"}) and not allowed(["alice"], {"login": "mallory"})
    assert allowed(["org:gaudi-team"], {"user": "erin", "orgs": ["gaudi-team"]}) and not allowed(["org:gaudi-team"], {"user": "erin"})


def test_the_jupyter_sidebar_offers_stop_only_on_runs_its_user_may_stop(team, monkeypatch):
    from gaudi_nb.dashboard.data_store import DashboardData
    from gaudi_nb.jupyter_server_ext import payloads

    alice, bob = RunStore(team["url"]["alice"]), RunStore(team["url"]["bob"])
    alice.register("side-alice", spec={}, target="local", run_dir=None)
    bob.register("side-bob", spec={}, target="local", run_dir=None)
    data = DashboardData(bob, follow=False, team_budgets={})  # the server bob's JupyterLab runs, as his role
    data.refresh()
    rows = {r["run_id"]: r["can_stop"] for r in payloads.snapshot_of(data, time.time(), limit=50)["runs"] if r["run_id"].startswith("side-")}
    assert rows == {"side-alice": False, "side-bob": True}
    monkeypatch.setenv("GAUDI_NB_STORE_URL", team["url"]["bob"])
    with pytest.raises(NotAllowedError, match="belongs to"):  # the route answers 403 with this line
        payloads.stop("side-alice", "bob@hub", "jupyter from 192.0.2.4")
    entry = bob.audit_entries(user="bob@hub")[0]
    assert (entry["action"], entry["target"], entry["outcome"], entry["actor"], entry["origin"]) == ("stop", "side-alice", "refused", team["names"]["bob"], "jupyter from 192.0.2.4")
