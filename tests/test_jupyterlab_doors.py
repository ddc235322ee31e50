"""Browser acceptance for the widget doors (issue 18, points 7 and 8): in a real JupyterLab and Chromium, the panel's Stop
stops a run while the kernel is busy in run.wait(), and the launcher's Machines tab attaches a node and lists the machines."""
from __future__ import annotations

import json
import os
import time

import pytest
from conftest import REPO
from jupyterlab_server import jupyterlab
from test_jupyterlab import CHROMIUM, CHROMIUM_ARGS, add_notebook, open_notebook, run_all

pytestmark = pytest.mark.slow
SCREENSHOTS = REPO / "out" / "screenshots"
sync_api = pytest.importorskip("playwright.sync_api")

# a torch-free script run: a step every 0.2 s until it is asked to stop
SLOW_SCRIPT = """import time
from gaudi_nb.worker.script import report, should_stop
for step in range(1, 100001):
    time.sleep(0.2)
    report(step=step, loss=1.0 / step, tokens=100)
    if should_stop():
        break
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab_doors")
    home = tmp_path_factory.mktemp("gaudi_home_doors")
    (root / "slow.py").write_text(SLOW_SCRIPT)
    add_notebook(
        root / "stop_while_busy.ipynb",
        "import gaudi_nb\nrun = gaudi_nb.train(script='slow.py', name='busy', max_steps=100000, price_per_hour=1.0)\nfrom gaudi_nb.notebook import show\nshow(run);",
        "run.wait()  # the kernel is busy here until the run ends\nprint('waited:', run.status)",
    )
    add_notebook(root / "machines.ipynb", "import gaudi_nb\nlauncher = gaudi_nb.launcher()\nlauncher")
    env = {**os.environ, "GAUDI_NB_HOME": str(home), "JUPYTER_CONFIG_DIR": str(root / ".jupyter_config")}
    env.pop("GAUDI_NB_PANEL", None)
    with jupyterlab(root, env) as server:
        yield {**server, "root": root, "home": home}
    for run in (home / "runs").glob("*") if (home / "runs").exists() else []:
        (run / "control").mkdir(exist_ok=True)
        (run / "control" / "stop_request.json").write_text('{"reason": "stopped"}')


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def page(browser):
    """One page for the module's notebooks (a page load costs Chromium ~5 CPU-s): open_notebook opens each in it."""
    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    yield page
    page.close()


def test_stop_works_while_a_cell_waits_for_the_run(page, lab):
    open_notebook(page, lab, "stop_while_busy.ipynb", height=1400)
    run_all(page)
    page.wait_for_function("() => { const e = document.querySelector('.gaudi-nb-panel .gaudi-nb-step'); return e && +e.dataset.step >= 3; }", timeout=120_000)
    # the second cell runs run.wait(): the kernel is busy, and would read a widget's click only after it
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='busy']", timeout=30_000)
    time.sleep(1)
    page.locator(".gaudi-nb-panel button", has_text="Stop").first.click()
    # the run stops, so run.wait() returns and the cell prints: the click reached the run without the kernel
    page.locator(".jp-OutputArea-output", has_text="waited: stopped").wait_for(timeout=90_000)
    page.wait_for_selector(".gaudi-nb-panel .gaudi-nb-status[data-status='stopped']", timeout=30_000)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.locator(".gaudi-nb-panel").first.screenshot(path=str(SCREENSHOTS / "jupyterlab_stop_while_busy.png"))
    (run_dir,) = (lab["home"] / "runs").glob("busy-*")
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert any(e["type"] == "stop_requested" for e in events)
    assert [e["status"] for e in events if e["type"] == "run_end"] == ["stopped"]


def test_the_launchers_machines_tab_shows_the_price_before_anything_is_made(page, lab):
    open_notebook(page, lab, "machines.ipynb", height=1400)
    run_all(page)
    launcher = page.locator(".gaudi-nb-launcher").first
    launcher.wait_for(timeout=60_000)
    launcher.locator(".lm-TabBar-tab", has_text="Machines").first.click()
    machines = launcher.locator(".gaudi-nb-machines")
    quote = machines.locator(".gaudi-nb-quote")
    quote.wait_for(timeout=30_000)
    assert "dl1.24xlarge" in quote.inner_text() and "$13.11/h each" in quote.inner_text() and "autostop off" in quote.inner_text()
    # a bad value: the line the CLI prints, in place of the price
    count = machines.get_by_role("textbox", name="count", exact=True)  # not "account" (a Slurm field)
    count.fill("0")
    count.press("Enter")
    machines.locator(".gaudi-nb-error", has_text="error: count: input should be greater than or equal to 1 (got 0)").wait_for(timeout=30_000)
    assert "no machines yet" in machines.inner_text()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    machines.screenshot(path=str(SCREENSHOTS / "jupyterlab_machines_tab.png"))
