"""The live run panel: PanelState folds events, the views render them, the device grid, static output, and reattaching after a kernel restart."""
from __future__ import annotations

import json
import os
import re
import time
from types import SimpleNamespace

import pytest
from conftest import wait_for

from gaudi_nb.events import make_event
from gaudi_nb.notebook import panel as panel_module
from gaudi_nb.notebook.device_grid import DeviceGrid, grid_summary, grid_values, widgets_dir
from gaudi_nb.notebook.panel import PanelState, RunPanel, cost_html, display_mode, header_html, svg_line_chart
from gaudi_nb.notebook.static import render_png, text_summary

RUN = "r1"
GIB = 1024**3


def run_start(price=None, budget=None, max_steps=10):
    return make_event("run_start", RUN, t=100.0, spec={"max_steps": max_steps, "nodes": 1, "budget_usd": budget, "target": "local"}, accelerator="hpu",
                      trainer="optimum-habana", price_per_hour=price, price_source="explicit price_per_hour" if price else "unknown")


def step(n, t, loss=None, warmup=False, attempt=1):
    return make_event("step", RUN, rank=0, t=t, step=n, attempt=attempt, loss=loss if loss is not None else 5.0 - 0.1 * n, step_time_s=0.5, tokens=1000, samples=8,
                      tokens_per_second=2000.0 + n, warmup=warmup, memory={"in_use_bytes": 3 * GIB})


def devices(n, util=50.0):
    return [{"index": i, "kind": "hpu", "label": f"hpu {i}", "utilization_pct": util, "memory_used_bytes": 32 * GIB, "memory_total_bytes": 128 * GIB} for i in range(n)]


def test_state_folds_steps_evals_telemetry_and_cost():
    events = [run_start(price=36.0, budget=1.0), make_event("worker_start", RUN, rank=0, t=101.0, world_size=8, precision="bf16", trainer="optimum-habana", accelerator="hpu")]
    events += [step(1, 110.0, warmup=True), step(2, 111.0), step(3, 112.0), step(4, 113.0)]
    events += [make_event("eval", RUN, t=113.5, step=4, eval_loss=4.9), make_event("telemetry", RUN, t=114.0, source="hlml", devices=devices(8))]
    events += [make_event("cost", RUN, t=114.0, elapsed_s=14.0, usd=0.14, price_per_hour=36.0, nodes=1)]
    state = PanelState.from_events(RUN, events)
    assert state.step == 4 and state.max_steps == 10 and state.status == "running"
    assert [s for s, _ in state.loss] == [1, 2, 3, 4]
    assert state.eval_loss == [(4, 4.9)]
    assert [s for s, _ in state.throughput] == [2, 3, 4]  # warmup left out
    assert len(state.devices) == 8
    # steady pace: 1 s per step after the first measured step, 6 steps left of 10 → 6 s
    assert state.eta_seconds() == pytest.approx(6.0)
    html = header_html(state)
    assert 'data-step="4"' in html and 'data-max-steps="10"' in html and "hpu × 8" in html
    cost = cost_html(state)
    assert "$0.1400" in cost and "budget $1.00" in cost and 'data-fraction="0.1400"' in cost


def test_unknown_price_is_shown_as_unknown_not_zero():
    state = PanelState.from_events(RUN, [run_start(price=None), step(1, 101.0), make_event("cost", RUN, t=102.0, elapsed_s=2.0, usd=None, price_per_hour=None, nodes=1)])
    cost = cost_html(state)
    assert "unknown" in cost and "$0.00" not in cost
    assert "unknown: set price_per_hour or instance_type" in cost


def test_a_failed_run_shows_its_reason_and_last_log_lines():
    events = [run_start(), step(1, 101.0), make_event("run_end", RUN, t=102.0, status="failed", exit_code=1, reason="rank 0: RuntimeError: out of memory", last_log_lines=["line a", "RuntimeError: out of memory"])]
    state = PanelState.from_events(RUN, events)
    assert state.done and state.failure()["reason"].endswith("out of memory")
    html = panel_module.failure_html(state)
    assert "out of memory" in html and "line a" in html
    summary = text_summary(state)
    assert "failed" in summary and "last log lines:" in summary


def test_a_lost_run_ends_the_panel_and_says_why():
    reason = "its agent (pid 4242) stopped beating at 10:00:00 and its process is gone; nobody metered the run after that"
    events = [run_start(price=36.0), step(1, 101.0), make_event("run_end", RUN, t=130.0, status="lost", exit_code=None, reason=reason, ended_by="client")]
    state = PanelState.from_events(RUN, events)
    assert state.done  # the live loop stops polling
    assert "agent (pid 4242)" in panel_module.failure_html(state)
    assert 'data-status="lost"' in header_html(state)


def test_telemetry_without_devices_keeps_the_last_sample_that_had_them():
    state = PanelState.from_events(RUN, [run_start(), make_event("telemetry", RUN, t=1.0, source="host", devices=devices(2)), make_event("telemetry", RUN, t=2.0, source="host", devices=[])])
    assert len(state.devices) == 2


def test_svg_chart_is_self_contained_and_decimated():
    points = [(i, 10.0 / i) for i in range(1, 5001)]
    svg = svg_line_chart([("loss", points, "#000", False)], title="loss")
    assert svg.startswith("<svg") and svg.endswith("</svg>") and "http" not in svg.replace('xmlns="http://www.w3.org/2000/svg"', "")
    coords = re.search(r'points="([^"]+)"', svg).group(1).split()
    assert len(coords) <= panel_module.PLOT_POINTS and 'data-points="5000"' in svg
    assert "waiting" in svg_line_chart([("loss", [], "#000", False)])


@pytest.mark.parametrize("count", [8, 64, 1024])
def test_grid_values_and_summary_read_the_same_at_any_scale(count):
    sample = devices(count, util=40.0)
    sample[0]["utilization_pct"] = None
    values = grid_values(sample)
    assert len(values["utilization"]) == count and values["utilization"][0] == -1 and values["memory_pct"][1] == 25
    summary = grid_summary(sample)
    assert summary["count"] == count and summary["idle"] == 0 and "1 unknown" in summary["text"]
    assert f"{count} × hpu" in summary["text"]


def test_device_grid_front_end_ships_as_files_with_no_cdn():
    folder = widgets_dir()
    js = (folder / "device_grid.js").read_text()
    assert "export default" in js and "render" in js
    assert not re.search(r"https?://", js) and not re.search(r"https?://", (folder / "device_grid.css").read_text())
    grid = DeviceGrid()
    grid.show(devices(8), "hlml")
    assert grid.title == "devices (hlml)" and len(grid.utilization) == 8


def test_display_mode(monkeypatch):
    monkeypatch.setenv("GAUDI_NB_PANEL", "live")
    assert display_mode() == "live"
    monkeypatch.setenv("GAUDI_NB_PANEL", "static")
    assert display_mode() == "static"
    monkeypatch.delenv("GAUDI_NB_PANEL")
    assert display_mode() == "static"  # no kernel here: nothing renders widgets
    assert display_mode("live") == "live"


def test_static_output_is_a_png_and_a_summary():
    events = [run_start(price=3.6), *[step(n, 100.0 + n) for n in range(1, 11)], make_event("telemetry", RUN, t=111.0, source="hlml", devices=devices(64)),
              make_event("cost", RUN, t=111.0, elapsed_s=11.0, usd=0.011, price_per_hour=3.6, nodes=1), make_event("run_end", RUN, t=112.0, status="succeeded", exit_code=0)]
    state = PanelState.from_events(RUN, events)
    png = render_png(state)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    text = text_summary(state)
    assert "succeeded, step 10/10" in text and "$3.60/h" in text and "64 × hpu" in text


class FakeRun:
    """A Run stand-in over a list of events, to drive the panel's thread without training."""

    def __init__(self, events):
        self.run_id = RUN
        self.all = list(events)
        self.stopped = False
        self.store = SimpleNamespace(events=lambda run_id, after_seq=-1: self.all[after_seq + 1:])

    def sync(self):
        return 0

    def stop(self, reason="stopped"):
        self.stopped = True
        return True

    def resume(self):
        self.resumed = getattr(self, "resumed", 0) + 1
        if self.refuse:
            raise RuntimeError(self.refuse)
        self.all.append(make_event("restart", RUN, t=110.0, attempt=2, cause="resume", from_step=2, reason="resumed after it ended stopped"))
        return self

    refuse = None


def test_panel_thread_updates_at_least_once_a_second_and_stops_at_run_end():
    run = FakeRun([run_start(), step(1, 101.0)])
    panel = RunPanel(run, interval_s=0.2).start()
    try:
        wait_for(lambda: panel.state.step == 1, timeout=10, poll_s=0.02, what="the first step on the panel")
        assert panel.live
        run.all.append(step(2, 102.0))
        # once a second at the latest: measured from the step's arrival, however loaded the machine
        arrived = time.monotonic()
        wait_for(lambda: 'data-step="2"' in panel.header.value, timeout=10, poll_s=0.02, what="step 2 on the panel")
        assert time.monotonic() - arrived < 1.0 and panel.state.step == 2
        panel._on_stop()
        assert run.stopped and panel.stop_button.disabled
        run.all.append(make_event("run_end", RUN, t=103.0, status="stopped", exit_code=0, reason="stopped on request"))
        wait_for(lambda: not panel.live, timeout=10, poll_s=0.02, what="the panel to stop at the run's end")
        assert panel.state.status == "stopped"
        assert "stopped on request" in panel.failure.value
    finally:
        panel.close()


def test_the_button_resumes_a_stopped_run_with_a_checkpoint_and_the_panel_follows_the_new_attempt():
    stopped = [run_start(), step(1, 101.0, loss=2.0), step(2, 102.0, loss=1.5), make_event("checkpoint", RUN, t=102.5, step=2, path="/c/checkpoint-2", reason="stopped"),
               make_event("run_end", RUN, t=103.0, status="stopped", exit_code=0, reason="stopped on request")]
    run = FakeRun(stopped)
    panel = RunPanel(run, interval_s=0.1).start()
    try:
        wait_for(lambda: not panel.live, timeout=10, poll_s=0.05, what="the panel to stop")
        button = panel.stop_button
        assert (button.description, button.disabled, button.icon) == ("Resume", False, "play")
        run.refuse = "run r1 has spent $1.0000 of its $1 budget: resume with a higher --budget-usd"
        button.click()
        wait_for(lambda: "resume with a higher --budget-usd" in panel.note.value, timeout=10, poll_s=0.05, what="the refusal under the button")
        assert button.description == "Resume" and not button.disabled
        run.refuse = None
        button.click()
        wait_for(lambda: panel.live and button.description == "Stop", timeout=10, poll_s=0.05, what="attempt 2 live, its button a Stop again")
        assert run.resumed == 2 and panel.state.attempt == 2 and not button.disabled
        run.all.append(step(3, 111.0, loss=1.2, attempt=2))
        wait_for(lambda: panel.state.step == 3, timeout=10, poll_s=0.05, what="attempt 2's step on the panel")
        assert 'data-attempt="2"' in panel.header.value
        button.click()
        assert run.stopped and button.description == "stopping…" and button.disabled
        run.all.append(make_event("run_end", RUN, t=112.0, status="succeeded", exit_code=0))
        wait_for(lambda: not panel.live, timeout=10, poll_s=0.05, what="the panel to stop") and (button.description, button.disabled, button.icon) == ("ended", True, "check")
    finally:
        panel.close()


def test_a_stopped_run_without_a_checkpoint_has_nothing_to_resume():
    run = FakeRun([run_start(), step(1, 101.0), make_event("run_end", RUN, t=103.0, status="stopped", exit_code=0, reason="stopped on request")])
    panel = RunPanel(run, interval_s=0.1).start()
    try:
        wait_for(lambda: not panel.live, timeout=10, poll_s=0.05, what="the panel to stop")
        assert (panel.stop_button.description, panel.stop_button.disabled) == ("ended", True)
    finally:
        panel.close()


# -- a real kernel: reattach after a restart ------------------------------------------------------
def _execute(kc, code: str, timeout: float = 120) -> str:
    out = []

    def hook(msg):
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            out.append("ERROR " + msg["content"]["ename"] + ": " + msg["content"]["evalue"])

    kc.execute_interactive(code, output_hook=hook, timeout=timeout)
    return "".join(out)


def test_watch_after_a_kernel_restart_shows_the_whole_history_and_keeps_updating(script_runs, gaudi_home, tmp_path):
    from jupyter_client.manager import KernelManager

    run = script_runs.train(devices=1, max_steps=100_000, step_s=0.2)  # started by an earlier kernel, say
    km = KernelManager(kernel_name="python3")
    km.start_kernel(env={**os.environ, "GAUDI_NB_HOME": str(gaudi_home), "GAUDI_NB_PANEL": "live"}, cwd=str(tmp_path))
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        wait_for(lambda: run.record()["steps_completed"] >= 6, what="step 6 of the run")
        km.restart_kernel(now=True)
        kc.wait_for_ready(timeout=60)
        probe = (
            "p = get_ipython().magics_manager.registry['GaudiMagics'].last_panel\n"
            "import json; print('STATE', json.dumps({'steps': [s for s, _ in p.state.loss], 'step': p.state.step, 'updates': p.updates, 'live': p.live}))"
        )

        def state():
            return json.loads(re.search(r"STATE (.*)", _execute(kc, probe)).group(1))

        _execute(kc, f"%load_ext gaudi_nb\nrun = %gaudi_watch {run.run_id[:18]}")
        first = wait_for(lambda: (s := state())["step"] >= 6 and s, timeout=60, poll_s=0.2, what="the replayed history on the panel")
        assert first["steps"] == list(range(1, first["step"] + 1)), "the panel lacks part of the loss history"
        assert first["live"]
        second = wait_for(lambda: (s := state())["step"] > first["step"] and s["updates"] > first["updates"] and s, timeout=60, poll_s=0.2,
                          what="the panel to go on updating")
        assert second["steps"] == list(range(1, second["step"] + 1))
    finally:
        run.stop()
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_a_rank_exiting_at_the_end_keeps_its_tile_and_a_remote_run_says_where():
    host = [{"index": i, "kind": "cpu", "label": f"cpu rank {i}", "utilization_pct": 50.0} for i in range(2)]
    start = make_event("run_start", RUN, t=100.0, spec={"max_steps": 2, "nodes": 1, "target": "gaudi-a"}, accelerator="cpu")
    events = [start, make_event("worker_start", RUN, rank=0, t=101.0, world_size=2, accelerator="cpu"), make_event("telemetry", RUN, t=102.0, source="host", devices=host)]
    events.append(make_event("telemetry", RUN, t=103.0, source="host", devices=host[:1]))  # rank 1 already gone
    state = PanelState.from_events(RUN, events)
    assert [d["label"] for d in state.devices] == ["cpu rank 0", "cpu rank 1"]
    assert "cpu × 2 on gaudi-a" in header_html(state)


def test_a_status_from_the_store_is_text_in_the_header_never_html():
    """The status went unescaped into an attribute: a row in a shared store could add markup and script to every viewer's page."""
    from gaudi_nb.notebook.panel import header_html
    from gaudi_nb.notebook.panel_state import PanelState

    state = PanelState("r1")
    state.summary.update(status='x" onmouseover="alert(1)"><img src=x onerror=alert(2)>', attempt='"><u>')
    state.summary["restarts"] = [{"cause": "crash", "from_step": 1, "reason": "r"}]
    page = header_html(state)
    assert "<img" not in page and 'onmouseover="' not in page and "<u>" not in page
    assert 'data-status="x&quot; onmouseover=&quot;alert(1)&quot;&gt;&lt;img' in page
