"""The live run panel: its HTML (pure functions of a PanelState) and RunPanel (the ipywidgets view)."""
from __future__ import annotations

import html
import os
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .. import formatting
from ..api import RESUMABLE_STATUSES  # the API says what can go on; the button only shows it
from ..cost import meter
from ..runs_table import status_text
from .panel_state import PanelState

# Points drawn in the loss and throughput plots; the state keeps every step.
PLOT_POINTS = 400
# A step shows within a quarter second (p95, benchmarks/latency.py); an idle tick costs a few ms of the kernel.
UPDATE_INTERVAL_S = 0.1
STATUS_COLOURS = {
    "pending": "#888",
    "starting": "#64b5f6",
    "running": "#1976d2",
    "stopping": "#f39c12",
    "succeeded": "#2e7d32",
    "stopped": "#6d4c41",
    "budget_exceeded": "#c62828",
    "failed": "#c62828",
    "lost": "#6a1b9a",  # the agent died: nobody metered the run after its last heartbeat
}


# -- pure HTML rendering (the view sets these strings on widgets) -------------------
def fmt_num(value: Optional[float], digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _decimate(points: Sequence[Tuple[int, float]], limit: int = PLOT_POINTS) -> List[Tuple[int, float]]:
    if len(points) <= limit:
        return list(points)
    stride = len(points) / (limit - 1)
    picked = [points[int(i * stride)] for i in range(limit - 1)]
    return picked + [points[-1]]


def svg_line_chart(
    series: Sequence[Tuple[str, Sequence[Tuple[int, float]], str, bool]],
    *,
    width: int = 460,
    height: int = 170,
    x_max: Optional[int] = None,
    title: str = "",
    y_format: str = "{:.3g}",
    empty: str = "waiting for the first step…",
) -> str:
    """A small self-contained SVG chart: series are (name, [(x, y)], colour, markers)."""
    pad_l, pad_r, pad_t, pad_b = 46, 10, 18, 22
    plot_w, plot_h = width - pad_l - pad_r, height - pad_t - pad_b
    points = [p for _, pts, _, _ in series for p in pts]
    head = f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" class="gaudi-nb-chart" role="img" aria-label="{html.escape(title)}">'
    parts = [head, f'<text x="{pad_l}" y="12" font-size="11" font-weight="600" fill="currentColor">{html.escape(title)}</text>']
    if not points:
        parts.append(f'<text x="{pad_l + 8}" y="{pad_t + plot_h / 2}" font-size="11" fill="#888">{html.escape(empty)}</text></svg>')
        return "".join(parts)
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    x_lo, x_hi = min(xs), max(max(xs), x_max or 0)
    y_lo, y_hi = min(ys), max(ys)
    if x_hi == x_lo:
        x_hi = x_lo + 1
    if y_hi == y_lo:
        y_lo, y_hi = y_lo - 0.5 * (abs(y_lo) or 1), y_hi + 0.5 * (abs(y_hi) or 1)
    margin = (y_hi - y_lo) * 0.06
    y_lo, y_hi = y_lo - margin, y_hi + margin

    def sx(x: float) -> float:
        return pad_l + (x - x_lo) / (x_hi - x_lo) * plot_w

    def sy(y: float) -> float:
        return pad_t + (1 - (y - y_lo) / (y_hi - y_lo)) * plot_h

    # frame, grid and tick labels
    parts.append(f'<rect x="{pad_l}" y="{pad_t}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#ccc" stroke-width="1"/>')
    for frac in (0.0, 0.5, 1.0):
        y = y_lo + frac * (y_hi - y_lo)
        py = sy(y)
        parts.append(f'<line x1="{pad_l}" x2="{pad_l + plot_w}" y1="{py:.1f}" y2="{py:.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{pad_l - 4}" y="{py + 3:.1f}" font-size="10" text-anchor="end" fill="#666">{html.escape(y_format.format(y))}</text>')
    for x in (x_lo, (x_lo + x_hi) / 2, x_hi):
        parts.append(f'<text x="{sx(x):.1f}" y="{height - 6}" font-size="10" text-anchor="middle" fill="#666">{int(round(x))}</text>')
    legend_x = width - pad_r - 4
    for name, pts, colour, markers in reversed(series):
        if not pts:
            continue
        shown = _decimate(pts)
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in shown)
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.6" points="{coords}" class="gaudi-nb-series" data-name="{html.escape(name)}" data-points="{len(pts)}"/>')
        if markers:
            parts.extend(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.6" fill="{colour}"/>' for x, y in shown[-60:])
        label = f"{name} {y_format.format(pts[-1][1])}"
        parts.append(f'<text x="{legend_x}" y="12" font-size="10" text-anchor="end" fill="{colour}">{html.escape(label)}</text>')
        legend_x -= 7 * len(label) + 12
    parts.append("</svg>")
    return "".join(parts)


def header_html(state: PanelState) -> str:
    s = state.summary
    status = state.status
    colour = STATUS_COLOURS.get(status, "#888")
    max_steps = state.max_steps
    acc = s.get("accelerator")
    device = f"{acc} × {s.get('device_count') or '?'}" if acc else "starting…"
    target = s.get("target")
    if target and target != "local":
        device += f" on {target}"  # a remote run says where it runs
    extras = ", ".join(str(v) for v in (s.get("precision"), s.get("trainer"), s.get("execution_mode")) if v)
    eta = state.eta_seconds()
    pct = min(100.0, 100.0 * state.step / max_steps) if max_steps else 0.0
    return (
        '<div class="gaudi-nb-header" style="display:flex;flex-wrap:wrap;gap:14px;align-items:baseline;font-size:13px">'
        f'<span class="gaudi-nb-status" data-status="{status}" style="background:{colour};color:#fff;border-radius:3px;padding:1px 7px;font-weight:600">{html.escape(status_text({"status": status, "pending_reason": s.get("pending_reason")}))}</span>'
        f'<span class="gaudi-nb-run-id" style="font-family:monospace">{html.escape(state.run_id)}</span>'
        f'<span class="gaudi-nb-step" data-step="{state.step}" data-max-steps="{max_steps or ""}" style="font-variant-numeric:tabular-nums"><b>step {state.step}</b> / {max_steps or "?"}</span>'
        f'<span class="gaudi-nb-eta">ETA {"done" if state.done else formatting.duration(eta)}</span>'
        f'<span class="gaudi-nb-device" style="color:#555">{html.escape(device)}{" (" + html.escape(extras) + ")" if extras else ""}</span>'
        f"{attempt_html(state)}"
        "</div>"
        f'<div style="height:4px;background:#e8e8e8;border-radius:2px;margin:4px 0 2px"><div style="height:4px;width:{pct:.1f}%;background:{colour};border-radius:2px"></div></div>'
    )


def attempt_html(state: PanelState) -> str:
    """attempt 2 · crash from step 10, with the reason on hover; nothing for a run's first attempt."""
    restarts = state.summary.get("restarts") or []
    if not restarts:
        return ""
    last = restarts[-1]
    label = f"attempt {state.summary.get('attempt')} · {last.get('cause')} from step {last.get('from_step')}"
    return f'<span class="gaudi-nb-attempt" data-attempt="{state.summary.get("attempt")}" title="{html.escape(str(last.get("reason") or ""))}" style="color:#888;font-size:11px">{html.escape(label)}</span>'


def metrics_html(state: PanelState) -> str:
    m = state.summary["metrics"]
    now = state.tokens_per_second_now()
    steady = m.get("tokens_per_second")
    rows = [
        ("loss", f"{fmt_num(m.get('first_loss'))} → {fmt_num(m.get('final_loss'))}"),
        ("eval loss", fmt_num(m.get("eval_loss"))),
        ("tokens/s", f"{now:,.0f} now · {steady:,.0f} mean" if now and steady else "measuring…" if not state.done else "unknown"),
        ("model FLOPs", flops_text(m)),
        ("step time", f"{m['step_time_s']:.3f} s" if m.get("step_time_s") else "—"),
        ("tokens seen", f"{m.get('tokens_seen') or 0:,}"),
    ]
    if state.last_memory_bytes is not None:
        rows.append(("rank 0 memory", f"{state.last_memory_bytes / 1024**3:,.2f} GB"))
    lora, parameters = state.summary.get("lora"), state.summary.get("parameters") or {}
    if lora and parameters.get("total"):
        rows.append(("LoRA", f"{parameters['trainable']:,} of {parameters['total']:,} parameters train (rank {lora.get('rank')})"))
    batch = batch_text(state.summary)
    if batch:
        rows.append(("batch", batch))
    return _table(rows, "gaudi-nb-metrics")


def batch_text(s: Dict[str, Any]) -> str:
    """The per-device batch, how --batch-size auto found it, and a scaled learning rate, in one line."""
    b, lr = s.get("batch_size") or {}, s.get("learning_rate") or {}
    if not b.get("per_device") or (b.get("how") == "given" and lr.get("scaling") in (None, "none")):
        return ""  # a batch the user gave and an unscaled rate: the spec already says both
    parts = [f"{b['per_device']} per device" + (f" · {b['global']} global" if b.get("global") else "")]
    if b.get("how") == "searched":
        parts.append(f"auto: searched, {b.get('trials')} trials in {b.get('search_s') or 0:.1f} s")
    elif b.get("how") == "cached":
        parts.append("auto: from the cache")
    if lr.get("scaling") not in (None, "none") and lr.get("scaled") is not None:
        parts.append(f"lr {lr['scaled']:.3g} ({lr['scaling']} from {lr.get('base'):.3g} at {lr.get('base_batch_size')})")
    return " · ".join(parts)  # the metrics table escapes it


def flops_text(m: Dict[str, Any]) -> str:
    """Achieved TFLOP/s (6 × parameters × mean tokens/s) and MFU, or why MFU is unknown."""
    if m.get("tflops") is None:
        return "—"
    if m.get("mfu") is None:
        return f"{m['tflops']:,.3g} TFLOP/s · MFU unknown (no peak for this device)"
    return f"{m['tflops']:,.3g} TFLOP/s · MFU {m['mfu']:.1%}"


def cost_html(state: PanelState) -> str:
    c = state.summary["cost"]
    price = c.get("price_per_hour")
    rows = [
        ("spent", f'<span class="gaudi-nb-usd">{formatting.money(c.get("usd"))}</span>'),
        ("$ per 1M tokens", formatting.money(c.get("usd_per_million_tokens"))),
        ("projected", formatting.money(c.get("projected_usd")) if not state.done else formatting.money(c.get("usd")) + " (final)"),
        ("price", formatting.rate(price) + (f" × {c.get('nodes')} nodes" if (c.get("nodes") or 1) > 1 else "") if price is not None else "unknown: set price_per_hour or instance_type"),
    ]
    source = c.get("price_source")
    if source and price is not None:
        rows.append(("source", f'<span style="color:#666">{html.escape(str(source))}</span>'))
    budget = c.get("budget_usd")
    fraction = meter.budget_fraction(budget, c.get("usd"))
    if budget is None:
        bar = '<div style="color:#666">no budget set</div>'
    elif fraction is None:
        bar = f'<div style="color:#666">budget {formatting.money(budget)} · spend unknown (no price)</div>'
    else:
        colour = "#2e7d32" if fraction < 0.75 else "#f39c12" if fraction < 1 else "#c62828"
        bar = (
            f'<div class="gaudi-nb-budget" data-fraction="{fraction:.4f}">budget {formatting.money(budget)} · {formatting.money(c.get("budget_left_usd"))} left ({100 * fraction:.0f}% spent)'
            f'<div style="height:8px;background:#e8e8e8;border-radius:3px;margin-top:2px;width:220px"><div style="height:8px;width:{min(100.0, 100 * fraction):.1f}%;background:{colour};border-radius:3px"></div></div></div>'
        )
    return '<div class="gaudi-nb-cost"><div style="font-weight:600;font-size:12px">cost</div>' + _table(rows, "", raw=True) + bar + "</div>"


def failure_html(state: PanelState) -> str:
    failure = state.failure()
    if failure is None:
        exit_info = state.summary.get("exit") or {}
        if state.done and exit_info.get("reason"):
            return f'<div class="gaudi-nb-reason" style="color:#6d4c41">{html.escape(str(exit_info["reason"]))}</div>'
        return ""
    lines = "\n".join(failure["last_log_lines"][-20:])
    log = f'<pre style="max-height:220px;overflow:auto;background:#fbeaea;padding:6px;font-size:11px;white-space:pre-wrap">{html.escape(lines)}</pre>' if lines else ""
    return f'<div class="gaudi-nb-failure" style="color:#c62828"><b>failed:</b> {html.escape(str(failure["reason"]))}</div>{log}'


def _table(rows: Sequence[Tuple[str, str]], css_class: str, raw: bool = False) -> str:
    body = "".join(
        f'<tr><td style="color:#666;padding:1px 10px 1px 0;text-align:left">{html.escape(k)}</td><td style="text-align:left;font-variant-numeric:tabular-nums">{v if raw else html.escape(v)}</td></tr>'
        for k, v in rows
    )
    return f'<table class="{css_class}" style="font-size:12px;border-collapse:collapse">{body}</table>'


def loss_chart(state: PanelState) -> str:
    return svg_line_chart(
        [("loss", state.loss, "#1976d2", False), ("eval loss", state.eval_loss, "#e65100", True)],
        x_max=state.max_steps,
        title="loss",
    )


def throughput_chart(state: PanelState) -> str:
    return svg_line_chart([("tokens/s", state.throughput, "#00897b", False)], width=300, height=120, x_max=state.max_steps, title="tokens/s", y_format="{:,.0f}", empty="measuring after warmup…")


class RunFeed:
    """New events of one run from the store, synced from the node on each poll (what views read)."""

    def __init__(self, run: Any) -> None:
        self.run = run
        self.seq = -1

    def poll(self) -> List[Dict[str, Any]]:
        self.run.sync()
        fresh = self.run.store.events(self.run.run_id, after_seq=self.seq)
        self.seq += len(fresh)
        return fresh


# the run's button: (label, icon, style, disabled, tooltip) for each of its modes
BUTTON_LOOKS = {
    "stop": ("Stop", "stop", "danger", False, "stop after a checkpoint (the ranks finish two steps)"),
    "stopping": ("stopping…", "stop", "danger", True, "the ranks finish two steps and save a checkpoint"),
    "resume": ("Resume", "play", "success", False, "continue from the last checkpoint as the next attempt (gaudi-nb resume)"),
    "resuming": ("resuming…", "play", "success", True, "starting the next attempt"),
    "ended": ("ended", "check", "", True, "the run has ended"),
}



class RunPanel:
    """The live panel for one run: header, loss and throughput charts, cost meter, device grid,
    Stop button (Resume once it ended with a checkpoint), failure details. A daemon thread polls the run's events and updates the widgets,
    so the kernel stays free for other cells."""

    def __init__(self, run: Any, interval_s: float = UPDATE_INTERVAL_S) -> None:
        import ipywidgets as w

        from .device_grid import DeviceGrid
        from .run_button import RunButton

        self.run = run
        self.interval_s = interval_s
        self.state = PanelState(run.run_id)
        self.feed = RunFeed(run)
        self.updates = 0
        self.last_error: Optional[str] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()

        self.header = w.HTML()
        self.loss_plot = w.HTML()
        self.throughput_plot = w.HTML()
        self.metrics = w.HTML()
        self.cost = w.HTML()
        self.grid = DeviceGrid()
        self.failure = w.HTML()
        self.note = w.HTML()
        self._button = "stop"
        self.stop_button = RunButton(run_id=run.run_id)  # Stop (through the server while the kernel is busy), or Resume once the run can go on
        self.stop_button.on_click(self._on_button)
        right = w.VBox([self.metrics, self.cost], layout=w.Layout(min_width="300px", padding="0 0 0 12px"))
        charts = w.VBox([self.loss_plot, self.throughput_plot])
        self.widget = w.VBox(
            [w.HBox([self.header, self.stop_button], layout=w.Layout(justify_content="space-between", align_items="center")), w.HBox([charts, right], layout=w.Layout(flex_flow="row wrap")), self.grid, self.failure, self.note],
            layout=w.Layout(border="1px solid #ddd", padding="6px 10px", width="100%"),
        )
        self.widget.add_class("gaudi-nb-panel")
        self.render()

    # -- lifecycle -----------------------------------------------------------
    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    def start(self) -> "RunPanel":
        """Replay the run's history, then keep updating in the background until it ends."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=f"gaudi-nb-panel-{self.run.run_id}", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop updating (the run goes on)."""
        self._stop.set()

    @property
    def live(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.refresh()
                self.last_error = None
            except Exception as exc:  # a locked store or a vanished run folder must not kill the panel
                self.last_error = f"{type(exc).__name__}: {exc}"
                self.note.value = f'<span style="color:#c62828">panel update failed, retrying: {html.escape(self.last_error)}</span>'
            if self.state.done:
                return
            self._stop.wait(max(0.05, self.interval_s - (time.monotonic() - started)))

    def refresh(self) -> bool:
        """Read new events and update the view; True if any arrived."""
        with self._lock:
            fresh = self.feed.poll()
            changed = self.state.apply(fresh)
            if changed:
                self.render()
            return changed

    # -- view ---------------------------------------------------------------
    def render(self) -> None:
        state = self.state
        self.updates += 1
        self.header.value = header_html(state)
        self.loss_plot.value = loss_chart(state)
        self.throughput_plot.value = throughput_chart(state)
        self.metrics.value = metrics_html(state)
        self.cost.value = cost_html(state)
        self.grid.show(state.devices, state.device_source)
        if state.done and not state.devices:
            self.grid.placeholder = "no telemetry was recorded"
        self.failure.value = failure_html(state)
        self._show_button(self._button_for(state))

    # -- the one button: Stop while it runs, Resume once it ended with a checkpoint to go on from ----
    def _button_for(self, state: PanelState) -> str:
        if state.status == "stopping":
            return "stopping"
        if state.done:
            if self._button == "resuming":
                return "resuming"  # until the restart event arrives
            return "resume" if state.status in RESUMABLE_STATUSES and state.summary.get("checkpoints") else "ended"
        return "stopping" if self._button == "stopping" else "stop"

    def _show_button(self, mode: str) -> None:
        self._button = mode
        description, icon, style, disabled, tooltip = BUTTON_LOOKS[mode]
        if mode == "ended":
            icon = "check" if self.state.status == "succeeded" else "stop"
        button = self.stop_button
        with button.hold_sync():
            button.mode, button.description, button.icon, button.button_style, button.disabled, button.tooltip = mode, description, icon, style, disabled, tooltip

    def _on_button(self, _button: Any = None) -> None:
        if self._button == "resume":
            self._on_resume()
        elif self._button == "stop":
            self._on_stop()

    def _on_stop(self, _button: Any = None) -> None:
        self._show_button("stopping")
        try:
            self.run.stop()
        except Exception as exc:
            self.note.value = f'<span style="color:#c62828">stop failed: {html.escape(str(exc))}</span>'
            self._show_button("stop")

    def _on_resume(self) -> None:
        """`gaudi-nb resume` from the panel, off the kernel's thread (a remote node can take seconds to answer);
        the panel then follows the new attempt."""
        self._show_button("resuming")
        self.note.value = ""

        def resume() -> None:
            try:
                self.run.resume()
            except Exception as exc:  # a refusal is one line that says what to do (a higher budget, ...)
                self.note.value = f'<span style="color:#c62828">resume failed: {html.escape(str(exc))}</span>'
                self._show_button("resume")
                return
            self._thread = None
            self._stop.clear()
            self.start()

        threading.Thread(target=resume, name=f"gaudi-nb-resume-{self.run.run_id}", daemon=True).start()


# -- where the panel shows: a live frontend, or static output in a headless run ------------
def display_mode(requested: Optional[str] = None) -> str:
    """'live' in a frontend that renders widgets, 'static' under papermill/nbconvert/nbval.

    $GAUDI_NB_PANEL (live|static) wins. Otherwise a kernel whose current request does not
    allow stdin is driven by a headless client (nbclient, which papermill and nbconvert use,
    and nbval both send allow_stdin=False; JupyterLab and VS Code send True).
    """
    mode = (requested or os.environ.get("GAUDI_NB_PANEL") or "auto").lower()
    if mode in ("live", "static"):
        return mode
    try:
        from IPython import get_ipython

        ip = get_ipython()
    except ImportError:
        return "static"
    kernel = getattr(ip, "kernel", None)
    if kernel is None:
        return "static"  # terminal IPython or a plain script: no widget frontend
    return "live" if getattr(kernel, "_allow_stdin", True) else "static"


def show(run: Any, mode: Optional[str] = None, interval_s: float = UPDATE_INTERVAL_S, timeout: Optional[float] = None) -> Optional[RunPanel]:
    """Show a run: a live panel (returned) in a frontend; in a headless run, wait for the
    run to end and leave its final state as an image and a text summary."""
    from IPython.display import display

    if display_mode(mode) == "static":
        from .static import show_static

        run.wait(timeout=timeout, poll_s=1.0)
        show_static(PanelState.from_events(run.run_id, run.events()))
        return None
    panel = RunPanel(run, interval_s=interval_s)
    display(panel)
    panel.start()
    return panel


__all__ = ["PanelState", "RunFeed", "RunPanel", "display_mode", "show", "svg_line_chart"]
