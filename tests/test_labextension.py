"""The JupyterLab extension (issue 12): a real JupyterLab with a real local run in its store, driven by Chromium.

The sidebar lists the run and its step advances, the status bar shows the dollar rate, Stop (after its
confirmation) ends the run `stopped`; REST and WebSocket answer nothing without Jupyter's token; the
extension loads with no console error and no failed script; the wheel ships the built assets.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest
from conftest import BIN, REPO
from jupyterlab_server import jupyterlab, without_rfc3987

pytestmark = pytest.mark.slow
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOTS = REPO / "out" / "screenshots"
LABEXTENSION = REPO / "extensions" / "labextension"
PRICE = 13.11

if not Path(CHROMIUM).exists():
    pytest.skip("Debian chromium is not installed (apt-get install -y chromium chromium-driver)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")
if not (LABEXTENSION / "package.json").exists():
    pytest.fail("the lab extension is not built: ./scripts/build-labextension (scripts/setup-env runs it)", pytrace=False)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """One JupyterLab for the module, its store in a GAUDI_NB_HOME of its own (empty at first), and this process pointed at it too."""
    root = tmp_path_factory.mktemp("lab")
    home = tmp_path_factory.mktemp("gaudi_home")
    notebook = {"cells": [{"cell_type": "code", "metadata": {}, "source": "", "outputs": [], "execution_count": None}],
                "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}, "nbformat": 4, "nbformat_minor": 5}
    (root / "scratch.ipynb").write_text(json.dumps(notebook))
    saved = os.environ.get("GAUDI_NB_HOME")
    os.environ["GAUDI_NB_HOME"] = str(home)  # gaudi_nb.train in this process writes the same store
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(root / ".jupyter_config")}
    env.pop("GAUDI_NB_STORE_URL", None)
    env.pop("GAUDI_NB_DASHBOARD_URL", None)
    with jupyterlab(root, env) as server:
        yield {**server, "root": root, "home": home}
    if saved is None:
        os.environ.pop("GAUDI_NB_HOME", None)
    else:
        os.environ["GAUDI_NB_HOME"] = saved


@pytest.fixture(scope="module")
def run(lab):
    """A local torch-free run (tests/scriptrun.py), still stepping while the tests look; stopped at the end whatever happened."""
    import scriptrun

    import gaudi_nb

    loop = scriptrun.write_loop(lab["root"], step_s=0.5)  # about a CPU run's pace
    handle = gaudi_nb.train(script=str(loop), devices=1, max_steps=100_000, warmup_steps=2, price_per_hour=PRICE, budget_usd=50.0)
    yield handle
    if not handle.done:
        handle.stop()
        handle.wait(timeout=120)


@pytest.fixture(scope="module")
def page(lab):
    """The lab in Chromium with scratch.ipynb open; every console error, page error and failed or refused script is recorded."""
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.problems = []  # type: ignore[attr-defined]
        page.on("console", lambda m: m.type == "error" and page.problems.append(f"console: {m.text} ({m.location.get('url')})"))
        page.on("pageerror", lambda e: page.problems.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: r.resource_type == "script" and page.problems.append(f"script failed: {r.url} {r.failure}"))
        page.on("response", lambda r: r.request.resource_type == "script" and r.status >= 400 and page.problems.append(f"script {r.status}: {r.url}"))
        page.goto(f"{lab['base']}/lab/workspaces/gaudi/tree/scratch.ipynb?reset&token={lab['token']}")
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
        news = page.locator(".jp-toast-button", has_text="No")  # JupyterLab's news question would cover the page
        if news.count():
            news.first.click()
        page.locator(".jp-SideBar .lm-TabBar-tab[data-id='gaudi-nb-sidebar']").click()
        page.wait_for_selector("#gaudi-nb-sidebar", state="visible", timeout=30_000)
        yield page
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "labextension_last.png"))
        browser.close()


def shoot(locator, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    locator.screenshot(path=str(SCREENSHOTS / name))


def test_an_empty_store_says_so_and_how_to_begin(page):
    empty = page.locator("#gaudi-nb-sidebar .gaudi-nb-empty")
    empty.wait_for(state="visible", timeout=30_000)
    assert "No nodes and no runs yet" in empty.inner_text()
    assert "%gaudi_attach ssh://" in empty.inner_text() and "%gaudi_train" in empty.inner_text()
    assert page.locator(".gaudi-nb-ticker-rate").inner_text() == "$0.00/h"
    shoot(page.locator("#gaudi-nb-sidebar"), "labextension_sidebar_empty.png")


def test_the_sidebar_lists_the_run_and_its_step_advances(page, run):
    row = page.locator(f"#gaudi-nb-sidebar .gaudi-nb-run[data-run-id='{run.run_id}']")
    row.wait_for(timeout=60_000)
    page.wait_for_function(
        "id => { const e = document.querySelector(`.gaudi-nb-run[data-run-id='${id}'] .gaudi-nb-step`); return e && +e.dataset.step >= 3; }",
        arg=run.run_id, timeout=120_000)
    step = row.locator(".gaudi-nb-step")
    first = int(step.get_attribute("data-step"))
    page.wait_for_function(  # the sidebar moves without a reload
        "([id, n]) => +document.querySelector(`.gaudi-nb-run[data-run-id='${id}'] .gaudi-nb-step`).dataset.step > n", arg=[run.run_id, first], timeout=60_000)
    assert row.get_attribute("data-status") == "running"
    assert re.search(r"loss \d+\.\d+", row.inner_text()) and "tok/s" in row.inner_text() and "$" in row.inner_text()
    # this machine is a node while it trains, with a utilization bar per device
    page.locator("#gaudi-nb-sidebar .gaudi-nb-node[data-node='local'] .gaudi-nb-bar").first.wait_for(timeout=30_000)

    ticker = page.locator(".gaudi-nb-ticker")
    assert ticker.locator(".gaudi-nb-ticker-rate").inner_text() == f"${PRICE:.2f}/h"
    assert re.fullmatch(r"· today \$\d+\.\d+", ticker.locator(".gaudi-nb-ticker-today").inner_text())
    assert "gaudi-nb-warning" not in (ticker.get_attribute("class") or "")
    shoot(page.locator("#gaudi-nb-sidebar"), "labextension_sidebar.png")
    shoot(page.locator("#jp-main-statusbar"), "labextension_statusbar.png")


def test_a_click_on_the_run_opens_its_live_panel_in_the_notebook(page, run):
    page.locator(f".gaudi-nb-run[data-run-id='{run.run_id}'] .gaudi-nb-run-name").click()
    # Python with the id quoted, not a magic line: IPython would evaluate {…} in a run id from the store
    cell = page.locator(".jp-Notebook .jp-CodeCell", has_text=f'notebook.show(get_run("{run.run_id}"));')
    cell.wait_for(timeout=60_000)
    # the magic's live panel, counting the same run's steps
    page.wait_for_function("() => { const e = document.querySelector('.gaudi-nb-panel .gaudi-nb-step'); return e && +e.dataset.step >= 1; }", timeout=90_000)


def test_stop_from_the_sidebar_asks_first_then_ends_the_run_stopped(page, run):
    row = page.locator(f"#gaudi-nb-sidebar .gaudi-nb-run[data-run-id='{run.run_id}']")
    row.locator(".gaudi-nb-stop").click()
    dialog = page.locator(".jp-Dialog")
    dialog.wait_for(timeout=10_000)
    assert "Stop the run?" in dialog.inner_text()
    shoot(dialog.locator(".jp-Dialog-content"), "labextension_stop_dialog.png")
    dialog.locator(".jp-Dialog-button.jp-mod-warn").click()
    run.wait(timeout=120)
    assert run.status == "stopped"
    page.wait_for_selector(f".gaudi-nb-run[data-run-id='{run.run_id}'][data-status='stopped']", timeout=30_000)
    assert row.locator(".gaudi-nb-stop").is_hidden(), "an ended run still offers Stop"
    page.wait_for_function("() => document.querySelector('.gaudi-nb-ticker-rate').textContent === '$0.00/h'", timeout=30_000)
    shoot(page.locator("#gaudi-nb-sidebar"), "labextension_sidebar_stopped.png")


def test_an_idle_machine_that_bills_turns_the_ticker_to_warning(page, lab):
    from gaudi_nb.store import RunStore

    store = RunStore()
    store.add_node({"name": "spare-gaudi", "url": "ssh://ubuntu@10.0.0.9", "user": "ubuntu", "host": "10.0.0.9", "port": 22, "provider": "aws",
                    "instance_type": "dl1.24xlarge", "state": "running", "price_per_hour": PRICE, "launched_at": time.time() - 600, "accelerator": "hpu", "device_count": 8})
    try:
        ticker = page.locator(".gaudi-nb-ticker.gaudi-nb-warning")
        ticker.wait_for(timeout=30_000)  # the shared reader rereads nodes every few seconds
        assert ticker.locator(".gaudi-nb-ticker-rate").inner_text() == f"${PRICE:.2f}/h"
        assert "spare-gaudi is up and idle" in ticker.get_attribute("title")
        node = page.locator("#gaudi-nb-sidebar .gaudi-nb-node.gaudi-nb-idle-billing[data-node='spare-gaudi']")
        assert "running · idle · $13.11/h" in node.inner_text() and "hpu × 8" in node.inner_text()
        shoot(page.locator("#jp-main-statusbar"), "labextension_statusbar_warning.png")
        shoot(page.locator("#gaudi-nb-sidebar"), "labextension_sidebar_idle_node.png")
    finally:
        store.remove_node("spare-gaudi")
    page.locator(".gaudi-nb-ticker:not(.gaudi-nb-warning)").wait_for(timeout=30_000)


def palette(page, label: str) -> None:
    """Run a command by its label from the command palette (View → Activate Command Palette)."""
    page.locator(".lm-MenuBar-itemLabel", has_text="View").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Activate Command Palette").first.click()
    page.locator(".lm-CommandPalette-input").fill(label)
    page.locator(".lm-CommandPalette-item", has_text=label).first.click()


def test_attach_from_the_palette_asks_for_the_address_and_says_why_it_failed(page):
    palette(page, "Gaudi: Attach a Node…")
    dialog = page.locator(".jp-Dialog")
    dialog.locator(".gaudi-nb-attach-url").fill("ssh://nobody@127.0.0.1:1")
    dialog.locator(".gaudi-nb-attach-name").fill("nowhere")
    shoot(dialog.locator(".jp-Dialog-content"), "labextension_attach_dialog.png")
    dialog.locator(".jp-Dialog-button.jp-mod-accept").click()
    page.locator(".Toastify__toast", has_text="Could not attach: cannot reach ssh://nobody@127.0.0.1:1 (connection refused): check the port").wait_for(timeout=30_000)
    # the browser logs the refused request itself; that one was asked for
    page.problems[:] = [p for p in page.problems if not ("/gaudi-nb/nodes" in p and "status of 400" in p)]


def test_the_dashboard_command_says_how_to_start_one_when_none_is_configured(page):
    palette(page, "Gaudi: Open the Team Dashboard")
    dialog = page.locator(".jp-Dialog")
    dialog.wait_for(timeout=10_000)
    assert "not configured" in dialog.inner_text() and "gaudi-nb dashboard" in dialog.inner_text() and "GAUDI_NB_DASHBOARD_URL" in dialog.inner_text()
    dialog.locator(".jp-Dialog-button.jp-mod-accept").click()


def test_the_launcher_command_with_no_notebook_open_makes_one_and_shows_the_form(page):
    page.get_by_text("| Idle").first.wait_for(timeout=90_000)
    palette(page, "Close All Tabs")
    try:  # scratch.ipynb has a cell the sidebar added: JupyterLab asks before dropping it
        page.locator(".jp-Dialog .jp-Dialog-button", has_text="Discard").click(timeout=5_000)
    except sync_api.TimeoutError:
        pass
    page.wait_for_function("() => !document.querySelector('.jp-NotebookPanel')", timeout=30_000)
    palette(page, "Gaudi: Open the Run Launcher")
    page.locator(".jp-NotebookPanel .jp-CodeCell", has_text="gaudi_nb.launcher()").wait_for(timeout=60_000)
    page.locator(".jp-NotebookPanel .gaudi-nb-launcher").first.wait_for(timeout=90_000)
    # JupyterLab's debugger logs this when a notebook closes before its kernel answered the debugger
    # (run alone, this test closes scratch.ipynb seconds after its kernel started): JupyterLab's, not ours
    page.problems[:] = [p for p in page.problems if "Could not restore the debugger state: Canceled future for debug_request" not in p]


def test_the_extension_loaded_with_no_console_error_and_no_failed_script(page):
    # after everything above: the sidebar, the ticker, the dialog and the notebook cell all ran
    scripts = page.evaluate("() => performance.getEntriesByType('resource').map(e => e.name).filter(n => n.includes('gaudi-nb-jupyterlab'))")
    assert any("remoteEntry" in name for name in scripts), scripts
    assert page.problems == [], page.problems


# -- Jupyter's auth guards every route --------------------------------------------------------


def http(lab, method: str, path: str, token: str | None = None) -> tuple[int, str]:
    url = f"{lab['base']}/gaudi-nb/{path}" + (f"?token={token}" if token else "")
    request = urllib.request.Request(url, method=method, data=b"{}" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_rest_answers_nothing_without_the_token(lab, run):
    status, body = http(lab, "GET", "runs", lab["token"])
    assert status == 200 and run.run_id in body  # the same request with the token: the run is there
    for method, path in [("GET", "runs"), ("GET", f"runs/{run.run_id}"), ("GET", "nodes"), ("GET", "costs"), ("GET", "config"),
                         ("POST", f"runs/{run.run_id}/stop"), ("POST", "nodes")]:
        for token in (None, "wrong-token"):
            status, body = http(lab, method, path, token)
            assert status in (401, 403), f"{method} {path} token={token}: {status}"
            assert run.run_id not in body and "usd" not in body, body[:300]


def test_the_websocket_pushes_each_second_pauses_and_refuses_without_the_token(lab, run):
    from tornado.httpclient import HTTPClientError
    from tornado.websocket import websocket_connect

    url = lab["base"].replace("http", "ws") + "/gaudi-nb/updates"

    async def talk() -> dict:
        refused = []
        for suffix in ("", "?token=wrong-token"):
            try:
                socket = await websocket_connect(url + suffix)
                refused.append(await socket.read_message())  # must not get here
            except HTTPClientError as exc:
                refused.append(exc.code)
        socket = await websocket_connect(f"{url}?token={lab['token']}")
        first = json.loads(await socket.read_message())
        started = time.monotonic()
        second = json.loads(await socket.read_message())
        gap = time.monotonic() - started
        await socket.write_message(json.dumps({"paused": True}))
        while (message := json.loads(await socket.read_message()))["type"] != "state":
            pass
        paused_state = message
        try:
            quiet = await asyncio.wait_for(socket.read_message(), timeout=2.5)
        except asyncio.TimeoutError:
            quiet = None
        await socket.write_message(json.dumps({"paused": False, "interval_ms": 300}))
        resumed = [json.loads(await socket.read_message()) for _ in range(4)]
        socket.close()
        return {"refused": refused, "first": first, "second": second, "gap": gap, "paused": paused_state, "quiet": quiet, "resumed": resumed}

    # in a thread of its own: Playwright's sync API keeps an event loop running in this one
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        result = pool.submit(asyncio.run, talk()).result(timeout=60)
    assert result["refused"] == [403, 403]
    assert result["first"]["type"] == "snapshot" and any(r["run_id"] == run.run_id for r in result["first"]["runs"])
    assert set(result["first"]) >= {"nodes", "runs", "costs"}
    assert 0.5 < result["gap"] < 2.5, f"snapshots {result['gap']:.2f} s apart"
    assert result["paused"] == {"type": "state", "paused": True, "interval_ms": 1000}
    assert result["quiet"] is None, "a paused socket went on pushing"
    assert result["resumed"][0] == {"type": "state", "paused": False, "interval_ms": 300}
    assert all(m["type"] == "snapshot" for m in result["resumed"][1:])


# -- packaging -----------------------------------------------------------------------------------


def test_both_extensions_are_enabled_in_the_venv():
    # both at once: each imports every installed extension, seconds apiece
    lab_list, server_list = (subprocess.Popen([str(BIN / "jupyter"), *command], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                              env=without_rfc3987(dict(os.environ)))
                             for command in (("labextension", "list"), ("server", "extension", "list")))

    def listed(process: subprocess.Popen) -> str:
        return re.sub(r"\x1b\[[0-9;]*m", "", process.communicate(timeout=120)[0])  # without the colours

    out = listed(lab_list)
    assert re.search(r"gaudi-nb-jupyterlab v\S+ enabled OK \(python, gaudi_nb\)", out), out
    out = listed(server_list)
    assert re.search(r"gaudi_nb\.jupyter_server_ext .*enabled", out) and re.search(r"gaudi_nb\.jupyter_server_ext\s+OK", out), out


def test_the_wheel_ships_the_built_lab_extension_and_the_server_config(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "-q", "-w", str(tmp_path)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("gaudi_nb-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    data = f"gaudi_nb-{wheel.name.split('-')[1]}.data/data/"  # what pip installs under sys.prefix
    labext = data + "share/jupyter/labextensions/gaudi-nb-jupyterlab/"
    assert labext + "package.json" in names and labext + "install.json" in names
    built = {p.name for p in (LABEXTENSION / "static").iterdir()}
    assert built and {labext + "static/" + name for name in built} <= set(names)
    assert any(re.fullmatch(re.escape(labext) + r"static/remoteEntry\.[0-9a-f]+\.js", n) for n in names)
    assert data + "etc/jupyter/jupyter_server_config.d/gaudi_nb.json" in names
    assert "gaudi_nb/jupyter_server_ext/handlers.py" in names
