"""Browser acceptance: real JupyterLab, Debian Chromium driven by Playwright.

Issue 3: the quickstart's live panel and the launcher. Issue 7: the quickstart as shipped, run once
for the session (conftest's `quickstart`), reads in JupyterLab as the finished run's numbers and words, never None. Issue 9: the
remote-node notebook attaches the test sshd and shows the same live panel for a run there.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest
from conftest import REPO
from jupyterlab_server import jupyterlab

pytestmark = pytest.mark.slow
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOTS = REPO / "out" / "screenshots"

if not Path(CHROMIUM).exists():
    pytest.skip("Debian chromium is not installed (apt-get install -y chromium chromium-driver)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")


def set_parameters(notebook: Path, **values: object) -> None:
    """Rewrite the parameters cell of a copy, as a person would before Run All."""
    nb = json.loads(notebook.read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    lines = "".join(cell["source"]).splitlines()
    for name, value in values.items():
        lines = [f"{name} = {value!r}" if line.startswith(f"{name} =") else line for line in lines]
    cell["source"] = "\n".join(lines)
    notebook.write_text(json.dumps(nb))


def inject_parameters(notebook: Path, source: str) -> None:
    """Add a cell tagged injected-parameters after the parameters cell, as papermill does: the test's settings, the notebook untouched."""
    nb = json.loads(notebook.read_text())
    at = next(i for i, c in enumerate(nb["cells"]) if "parameters" in c.get("metadata", {}).get("tags", []))
    nb["cells"].insert(at + 1, {"cell_type": "code", "id": "injected-parameters", "metadata": {"tags": ["injected-parameters"]}, "source": source, "outputs": [], "execution_count": None})
    notebook.write_text(json.dumps(nb))


def add_notebook(path: Path, *sources: str) -> None:
    cells = [{"cell_type": "code", "metadata": {}, "source": s, "outputs": [], "execution_count": None} for s in sources]
    nb = {"cells": cells, "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}, "nbformat": 4, "nbformat_minor": 5}
    path.write_text(json.dumps(nb))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab")
    home = tmp_path_factory.mktemp("gaudi_home")
    shutil.copy(REPO / "notebooks" / "01_quickstart.ipynb", root)
    # long enough to still be training while the test looks; a price and budget so the meter has numbers; one
    # rank (the notebook as shipped trains two, which the papermill execution covers) to halve its CPU
    set_parameters(root / "01_quickstart.ipynb", devices=1, max_steps=160, price_per_hour=13.11, budget_usd=2.0)
    add_notebook(root / "launcher.ipynb", "import gaudi_nb\ngaudi_nb.launcher(devices=1, max_steps=12, price_per_hour=13.11, budget_usd=1.0)")
    env = {**os.environ, "GAUDI_NB_HOME": str(home), "JUPYTER_CONFIG_DIR": str(root / ".jupyter_config")}
    env.pop("GAUDI_NB_PANEL", None)
    with jupyterlab(root, env) as server:
        yield {**server, "root": root, "home": home}
    # runs the notebooks started go on detached: stop them so they do not outlive the test
    for run in (home / "runs").glob("*") if (home / "runs").exists() else []:
        (run / "control").mkdir(exist_ok=True)
        (run / "control" / "stop_request.json").write_text('{"reason": "stopped"}')


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def open_notebook(page, lab, name, height=1500):
    """Open name in the lab's page: the first by its URL (a workspace of its own, so no tab another run left is
    restored), the next ones in the same page, with the tabs before them closed (their kernels go on, as after a page close)."""
    page.set_viewport_size({"width": 1400, "height": height})
    if not page.url.startswith(lab["base"]):
        page.goto(f"{lab['base']}/lab/workspaces/{Path(name).stem}/tree/{name}?reset&token={lab['token']}")
    else:
        page.evaluate("""async name => {
            const app = window.jupyterapp;
            const before = Array.from(app.shell.widgets('main'));
            await app.commands.execute('docmanager:open', {path: name});  // first: an empty main area would open a Launcher tab
            for (const widget of before) {
                if (widget.context) { widget.context.model.dirty = false; }  // the run's outputs need not be saved
                widget.dispose();
            }
        }""", name)
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
    kernel_idle(page)
    news = page.locator(".jp-toast-button", has_text="No")  # the news question would cover the panel
    if news.count():
        news.first.click()


def kernel_idle(page, timeout=90_000):
    # the execution indicator says idle while the kernel is still connecting: wait for the status bar too
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=timeout)
    page.get_by_text("| Idle").first.wait_for(timeout=timeout)


def run_all(page):
    """Run → Run All Cells, once more if the first code cell did not start (a click during kernel startup)."""
    for _ in range(2):
        menu(page, "Run", "Run All Cells")
        try:
            page.wait_for_function(
                "() => { const p = document.querySelector('.jp-Notebook .jp-CodeCell .jp-InputPrompt'); return p && /\\[(\\d+|\\*)\\]/.test(p.textContent); }",
                timeout=20_000,
            )
            return
        except sync_api.TimeoutError:
            kernel_idle(page)
    raise AssertionError("Run All Cells did not start the notebook")


def menu(page, top, item):
    page.locator(".lm-MenuBar-itemLabel", has_text=top).first.click()
    page.locator(".lm-Menu-itemLabel").get_by_text(item, exact=True).first.click()


def step_of(locator) -> int:
    return int(locator.get_attribute("data-step"))


def step_passes(page, past: int, what: str, timeout: int = 60_000) -> None:
    """Wait until the first panel's step counter is past `past` (a loaded machine is slower, never wrong)."""
    try:
        page.wait_for_function("n => { const e = document.querySelector('.gaudi-nb-panel .gaudi-nb-step'); return e && +e.dataset.step > n; }",
                               arg=past, timeout=timeout)
    except sync_api.TimeoutError:
        raise AssertionError(f"{what}: the step stayed at {past} for {timeout / 1000:.0f} s") from None


@pytest.fixture(scope="module")
def lab_page(browser, lab):
    """One page for the module's notebooks; every failed request in it is recorded (each test checks them all)."""
    page = browser.new_page(viewport={"width": 1400, "height": 1500})
    failed = []
    page.on("requestfailed", lambda r: failed.append((r.resource_type, r.url, r.failure)))
    yield page, failed
    page.close()


@pytest.fixture
def pages(lab_page, lab, request):
    """Opens a test's notebook in the module's page; a test that failed leaves a screenshot."""
    page, failed = lab_page
    failures = request.session.testsfailed

    def open_(name, height=1500):
        open_notebook(page, lab, name, height)
        return page, failed

    yield open_
    if request.session.testsfailed > failures:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"failed_{request.node.name}.png"))


def test_quickstart_panel_is_live_and_the_kernel_stays_free(pages, lab):
    page, failed = pages("01_quickstart.ipynb")
    run_all(page)
    step = page.locator(".gaudi-nb-panel .gaudi-nb-step").first
    step.wait_for(timeout=120_000)
    # the panel counts steps as the ranks report them (CPU ranks start in about 15 s)
    page.wait_for_function("() => { const e = document.querySelector('.gaudi-nb-panel .gaudi-nb-step'); return e && +e.dataset.step >= 2; }", timeout=120_000)
    step_passes(page, step_of(step), "the step counter did not advance")
    assert int(step.get_attribute("data-max-steps")) == 160

    # Run All has reached the cell that waits for the run: the panel goes on updating beside it
    page.locator(".jp-OutputArea-output", has_text="to end (the panel above stays live)").wait_for(timeout=60_000)
    step_passes(page, step_of(step), "the panel stopped updating while a cell waited for the run")
    # as the notebook says: interrupting the kernel ends the wait, the run goes on, the kernel is free
    menu(page, "Kernel", "Interrupt Kernel")
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)
    last = page.locator(".jp-Notebook .jp-CodeCell").last
    last.click()
    page.keyboard.press("Escape")
    page.keyboard.press("b")  # a new cell below the last one
    page.keyboard.press("Enter")
    page.keyboard.type("print('kernel free', 6 * 7)")
    started = time.monotonic()
    menu(page, "Run", "Run Selected Cell")
    page.locator(".jp-OutputArea-output", has_text="kernel free 42").wait_for(timeout=20_000)
    elapsed = time.monotonic() - started
    assert elapsed < 5, f"a trivial cell took {elapsed:.1f} s while the panel was live"
    still = step_of(step)
    assert still < 160, "the run had already finished: the interrupt did not leave it running beside a free kernel"
    step_passes(page, still, "the panel stopped updating after another cell ran")

    # wait for telemetry in the grid and a few more steps so the screenshot shows a live run
    page.wait_for_selector(".gaudi-nb-panel .gnb-cell", timeout=30_000)
    page.locator(".gaudi-nb-panel").first.scroll_into_view_if_needed()
    time.sleep(1)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.locator(".gaudi-nb-panel").first.screenshot(path=str(SCREENSHOTS / "jupyterlab_panel.png"))
    page.screenshot(path=str(SCREENSHOTS / "jupyterlab_quickstart.png"))
    assert page.locator(".gaudi-nb-panel .gaudi-nb-status").first.get_attribute("data-status") in ("running", "stopping", "succeeded")
    assert "$" in page.locator(".gaudi-nb-panel .gaudi-nb-usd").first.inner_text()

    # the Stop button ends the run cleanly, and the panel says so
    page.locator(".gaudi-nb-panel button", has_text="Stop").first.click()
    page.wait_for_selector(".gaudi-nb-panel .gaudi-nb-status[data-status='stopped']", timeout=120_000)
    page.screenshot(path=str(SCREENSHOTS / "jupyterlab_quickstart_stopped.png"))

    # stopped after a checkpoint: the same button resumes the run, and the panel follows the next attempt
    resume = page.locator(".gaudi-nb-panel button", has_text="Resume").first
    resume.wait_for(timeout=30_000)
    stopped_at = step_of(step)
    resume.click()
    page.wait_for_selector(".gaudi-nb-panel .gaudi-nb-attempt[data-attempt='2']", timeout=60_000)
    page.wait_for_function(f"() => +document.querySelector('.gaudi-nb-panel .gaudi-nb-step').dataset.step > {stopped_at}", timeout=120_000)
    page.locator(".gaudi-nb-panel").first.screenshot(path=str(SCREENSHOTS / "jupyterlab_panel_resumed.png"))
    page.locator(".gaudi-nb-panel button", has_text="Stop").first.click()  # nothing left running for the next test
    page.wait_for_selector(".gaudi-nb-panel .gaudi-nb-status[data-status='stopped']", timeout=120_000)
    scripts = [f for f in failed if f[0] == "script" or f[1].split("?")[0].endswith((".js", ".mjs"))]
    assert not scripts, f"scripts failed to load: {scripts}"


# what a newcomer must never read where a number or a word belongs
NONE_SHOWN = re.compile(r"\bNone\b")


def all_cells_ran(page, timeout=240_000):
    """Run All has finished: every code cell has an execution count, and the kernel is idle."""
    page.wait_for_function(
        """() => {
            const prompts = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')];
            const indicator = document.querySelector('.jp-Notebook-ExecutionIndicator');
            return prompts.length > 0 && prompts.every(p => /\\[\\d+\\]/.test(p.textContent))
                && indicator && indicator.dataset.status === 'idle';
        }""",
        timeout=timeout,
    )


def test_quickstart_run_all_shows_the_finished_run_in_numbers_and_words(pages, lab, quickstart, tmp_path):
    """Issue 7: the quickstart as shipped, after Run All (the session's one execution), read in JupyterLab: the finished run, not None."""
    nb = json.loads(quickstart.read_text())
    for cell in nb["cells"]:  # the live panel is a view of a kernel that is gone: a saved notebook keeps no widget state
        cell["outputs"] = [o for o in cell.get("outputs", []) if "application/vnd.jupyter.widget-view+json" not in o.get("data", {})]
    (lab["root"] / "quickstart_as_shipped.ipynb").write_text(json.dumps(nb))
    page, failed = pages("quickstart_as_shipped.ipynb", height=3400)  # tall enough to show every cell at once
    page.locator(".jp-OutputArea-output", has_text="all steps done").wait_for(timeout=60_000)
    page.locator(".jp-Notebook .jp-Cell").first.scroll_into_view_if_needed()
    shot = tmp_path / "quickstart_run_all.png"
    page.screenshot(path=str(shot))
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, SCREENSHOTS / "jupyterlab_quickstart_run_all.png")

    outputs = [o.text_content() for o in page.locator(".jp-Notebook .jp-CodeCell .jp-OutputArea-output").all()]
    text = "\n".join(outputs)
    assert "Traceback" not in text and "Error" not in text, text[-3000:]
    shown = [line for line in text.splitlines() if NONE_SHOWN.search(line)]
    assert not shown, f"outputs show None where a number or a word belongs: {shown}"
    # the metrics cell read the run after it ended: final numbers, and words for what is not known
    assert re.search(r": succeeded, step 30/30\b", text), text[-3000:]
    assert re.search(r"\bcpu × 2 \(\w+", text), text[-3000:]
    assert re.search(r"loss \d+\.\d{3} → \d+\.\d{3}", text), text[-3000:]
    assert re.search(r"throughput [\d,]+ tokens/s", text), text[-3000:]
    assert "cost unknown: no price per hour was given" in text  # no price in the notebook as shipped: unknown, not None or $0
    assert "{'status': 'succeeded', 'all steps done': True, 'loss went down': True}" in text
    scripts = [f for f in failed if f[0] == "script"]
    assert not scripts, f"scripts failed to load: {scripts}"


def test_launcher_widget_launches_a_run_with_its_panel(pages, lab):
    page, failed = pages("launcher.ipynb")
    run_all(page)
    launcher = page.locator(".gaudi-nb-launcher").first
    launcher.wait_for(timeout=60_000)
    # the choices come from the registries and the catalog
    model = launcher.locator("input").nth(0)
    assert model.input_value() == "tiny-llama"
    launcher.locator("button", has_text="Launch").click()
    page.wait_for_function("() => { const e = document.querySelector('.gaudi-nb-launcher .gaudi-nb-panel .gaudi-nb-step'); return e && +e.dataset.step >= 3; }", timeout=120_000)
    page.wait_for_selector(".gaudi-nb-launcher .gnb-cell", timeout=30_000)
    time.sleep(1)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    launcher.screenshot(path=str(SCREENSHOTS / "jupyterlab_launcher.png"))
    assert "started" in launcher.inner_text()
    scripts = [f for f in failed if f[0] == "script"]
    assert not scripts, f"scripts failed to load: {scripts}"


def test_remote_node_notebook_trains_on_the_attached_node_with_the_live_panel(pages, lab, sshd, node_install, tmp_path):
    """Issue 9: notebooks/05_remote_node.ipynb under Run All attaches the test sshd and trains there; the panel is live and ends succeeded."""
    # the kernel is a child of the lab's server: its ssh client reads ~/.ssh from HOME, so the
    # injected parameters point HOME at a client home whose known_hosts trusts this sshd (the
    # notebook itself stays as a user gets it). The node's env is the session's one install.
    client_home = sshd.client_home(tmp_path / "client_home")
    name = "remote_node.ipynb"
    shutil.copy(REPO / "notebooks" / "05_remote_node.ipynb", lab["root"] / name)
    inject_parameters(lab["root"] / name, "\n".join([
        "# Parameters injected by the test: the node is the test's sshd on loopback",
        f"node_url = {sshd.url!r}",
        "node_name = 'loopback'",
        f"identity_file = {str(sshd.client_key)!r}",
        "import os",
        f"os.environ['HOME'] = {str(client_home)!r}  # its ~/.ssh/known_hosts trusts the test sshd's host key",
        "os.environ.pop('SSH_AUTH_SOCK', None)",
    ]))
    page, failed = pages(name, height=3200)  # tall enough to show every cell at once
    # every step the panel shows on its way, sampled in the page (the run may be quick)
    page.evaluate("""() => { window.__gnbSteps = []; setInterval(() => {
        const e = document.querySelector('.gaudi-nb-panel .gaudi-nb-step');
        if (e && !window.__gnbSteps.includes(+e.dataset.step)) window.__gnbSteps.push(+e.dataset.step); }, 100); }""")
    started = time.monotonic()
    run_all(page)
    page.locator(".gaudi-nb-panel .gaudi-nb-status[data-status='running']").first.wait_for(timeout=120_000)
    all_cells_ran(page, timeout=240_000)
    page.wait_for_selector(".gaudi-nb-panel .gaudi-nb-status[data-status='succeeded']", timeout=30_000)
    took = time.monotonic() - started
    panel = page.locator(".gaudi-nb-panel").first
    step = panel.locator(".gaudi-nb-step")
    page.wait_for_function("() => +document.querySelector('.gaudi-nb-panel .gaudi-nb-step').dataset.step === 20", timeout=30_000)  # the last update landed
    assert (step_of(step), step.get_attribute("data-max-steps")) == (20, "20")
    seen = page.evaluate("() => window.__gnbSteps")
    assert len([s for s in seen if 0 < s < 20]) >= 2, f"the panel did not count steps as they came: {seen}"
    page.locator(".jp-Notebook .jp-Cell").first.scroll_into_view_if_needed()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(tmp_path / "remote_node.png"))  # the whole notebook after Run All
    shutil.copy(tmp_path / "remote_node.png", SCREENSHOTS / "jupyterlab_remote_node.png")
    panel.screenshot(path=str(tmp_path / "remote_node_panel.png"))
    shutil.copy(tmp_path / "remote_node_panel.png", "/tmp/remote_node_panel.png")
    shutil.copy(tmp_path / "remote_node_panel.png", SCREENSHOTS / "jupyterlab_remote_node_panel.png")

    outputs = [o.text_content() for o in page.locator(".jp-Notebook .jp-CodeCell .jp-OutputArea-output").all()]
    text = "\n".join(outputs)
    assert "Traceback" not in text and "Error" not in text, text[-3000:]
    shown = [line for line in text.splitlines() if NONE_SHOWN.search(line)]
    assert not shown, f"outputs show None where a number or a word belongs: {shown}"
    assert f"attached: loopback ({sshd.url}" in text, text[:3000]
    run_id = panel.locator(".gaudi-nb-run-id").inner_text().strip()
    assert re.search(rf"{re.escape(run_id)}: succeeded on loopback, step 20/20\b", text), text[-3000:]
    assert re.search(r"loss \d+\.\d{3} → \d+\.\d{3}", text) and re.search(r"throughput [\d,]+ tokens/s", text), text[-3000:]
    assert "cost unknown: no price per hour was given" in text
    runs_row = page.locator(".gaudi-nb-runs tr", has_text=run_id)
    assert "loopback" in runs_row.inner_text() and "succeeded" in runs_row.inner_text()

    # it ran on the node, and its events came here once each: the local mirror of the node's stream
    events = [json.loads(line) for line in (lab["home"] / "runs" / run_id / "events.jsonl").read_text().splitlines()]
    start = next(e for e in events if e["type"] == "run_start")
    assert start["node"] == "loopback" and start["run_dir"].startswith(str(sshd.node_home))
    assert [e["step"] for e in events if e["type"] == "step"] == list(range(1, 21))
    print(f"\nremote notebook: Run All to succeeded in {took:.1f} s")
    scripts = [f for f in failed if f[0] == "script"]
    assert not scripts, f"scripts failed to load: {scripts}"
