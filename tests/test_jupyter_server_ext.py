"""The JupyterLab extension's server part (gaudi_nb/jupyter_server_ext/) without a browser: every route is behind
Jupyter's authentication, and the money the status bar shows. The lab part, in Chromium, is test_labextension.py."""
from __future__ import annotations

import calendar
import os
import subprocess
import sys
import time

import pytest

AUTH_CHECK = """
import warnings
from jupyter_server.serverapp import ServerApp
from jupyter_server.utils import JupyterServerAuthWarning

# only gaudi_nb's extension, on a server that allows nothing unauthenticated: Jupyter warns about
# every route whose verbs lack an authentication decorator
app = ServerApp(allow_unauthenticated_access=False, jpserver_extensions={"gaudi_nb.jupyter_server_ext": True}, reraise_server_extension_failures=True)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    app.initialize(argv=[], find_extensions=False, new_httpserver=False)
print("ROUTES", sum(1 for rule in app.web_app.default_router.rules for r in rule.target.rules if "/gaudi-nb/" in str(r.matcher.regex.pattern)))
for w in caught:
    if issubclass(w.category, JupyterServerAuthWarning):
        print("UNGUARDED", w.message)
"""


def test_jupyter_finds_no_route_without_authentication(tmp_path):
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "config"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "GAUDI_NB_HOME": str(tmp_path / "home")}
    done = subprocess.run([sys.executable, "-c", AUTH_CHECK], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ROUTES 7" in done.stdout and "UNGUARDED" not in done.stdout, done.stdout


# -- the money the status bar shows (pure: rows and nodes in, numbers and warnings out) ----------------


def a_run(run_id, status="running", target="local", price=None, usd=0.0, started=None, budget=None, left=None, nodes=1):
    return {"run_id": run_id, "status": status, "target": target, "price_per_hour": price, "usd": usd, "started_at": started, "created_at": started,
            "ended_at": None, "budget_usd": budget, "budget_left_usd": left, "nodes": nodes, "owner": None}


def a_node(name, active=(), price=4.0, state="running", provider="aws", launched=None, billed=None, since=None):
    return {"name": name, "provider": provider, "state": state, "price_per_hour": price, "active_runs": list(active), "owner": None, "launched_at": launched,
            "billed_intervals": billed, "running_since": since}


def test_costs_count_a_provisioned_node_once_and_warn_of_idle_nodes_and_budgets():
    from gaudi_nb.jupyter_server_ext.data import costs

    now = calendar.timegm(time.strptime("2026-11-29 12:00", "%Y-%m-%d %H:%M"))  # noon, UTC: the day the dashboard counts too
    rows = [
        a_run("on-node", target="gpu1", price=4.0, usd=1.0, started=now - 600),  # its node's hours count instead
        a_run("local-priced", price=2.0, usd=0.5, started=now - 900, budget=1.0, left=0.1),
        a_run("local-unpriced", price=None, usd=None, started=now - 60),
        a_run("yesterday", status="running", price=1.0, usd=20.0, started=now - 14 * 3600),  # only today's 12 hours
        a_run("finished", status="succeeded", price=3.0, usd=0.25, started=now - 3000),
    ]
    nodes = [a_node("gpu1", active=["on-node"], launched=now - 3600), a_node("spare", price=8.0, launched=now - 1800),
             a_node("attached", provider=None, state="attached"), a_node("down", state="stopped"),
             # ran 02:00-03:00, stopped, running again since 11:00: billed two hours today, not ten
             a_node("napper", active=["x"], price=10.0, launched=now - 10 * 3600, billed=[[now - 10 * 3600, now - 9 * 3600]], since=now - 3600)]
    out = costs(rows, nodes, now=now)
    assert out["usd_per_hour"] == pytest.approx(4.0 + 8.0 + 10.0 + 2.0 + 1.0)
    assert out["unknown_prices"] == 1  # shown as unknown, never as free
    assert out["today_usd"] == pytest.approx(4.0 * 1 + 8.0 * 0.5 + 10.0 * 2 + 0.5 + 0.0 + 1.0 * 12 + 0.25)
    kinds = sorted((w["kind"], w.get("node") or w.get("run_id")) for w in out["warnings"])
    assert kinds == [("budget", "local-priced"), ("idle_node", "spare")]


def test_costs_with_nothing_running_are_zero_and_quiet():
    from gaudi_nb.jupyter_server_ext.data import costs

    out = costs([], [])
    assert (out["usd_per_hour"], out["today_usd"], out["unknown_prices"], out["warnings"]) == (0.0, 0.0, 0, [])
