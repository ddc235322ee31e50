"""A run's final state as static output for headless notebooks: a PNG (matplotlib) and a text summary."""
from __future__ import annotations

import io
import math
from typing import List

from .. import formatting
from .panel import PanelState, fmt_num


def text_summary(state: PanelState) -> str:
    """The panel in words: what a batch notebook reader sees under the image."""
    s = state.summary
    m, c = s["metrics"], s["cost"]
    lines = [
        f"run {state.run_id}: {state.status}, step {state.step}/{state.max_steps or '?'}",
        f"accelerator: {s.get('accelerator') or 'unknown'} × {s.get('device_count') or '?'} ({s.get('precision') or '?'}, {s.get('trainer') or '?'})",
        f"loss: {fmt_num(m.get('first_loss'))} → {fmt_num(m.get('final_loss'))}; eval loss {fmt_num(m.get('eval_loss'))}",
        "throughput: " + (f"{m['tokens_per_second']:,.0f} tokens/s (warmup left out)" if m.get("tokens_per_second") else "unknown"),
        f"cost: {formatting.money(c.get('usd'))}" + (f" at {formatting.rate(c.get('price_per_hour'))}" if c.get("price_per_hour") is not None else " (no price: set price_per_hour or instance_type)"),
        f"$ per 1M tokens: {formatting.money(c.get('usd_per_million_tokens'))}",
    ]
    if c.get("budget_usd") is not None:
        lines.append(f"budget: {formatting.money(c['budget_usd'])}, left {formatting.money(c.get('budget_left_usd'))}")
    if c.get("elapsed_s") is not None:
        lines.append(f"wall clock: {formatting.duration(c['elapsed_s'])}")
    if state.devices:
        from .device_grid import grid_summary

        lines.append("devices (last sample): " + grid_summary(state.devices)["text"])
    exit_info = s.get("exit") or {}
    if exit_info.get("reason"):
        lines.append(f"reason: {exit_info['reason']}")
    failure = state.failure()
    if failure and failure["last_log_lines"]:
        lines.append("last log lines:")
        lines.extend("  " + line for line in failure["last_log_lines"][-20:])
    return "\n".join(lines)


def render_png(state: PanelState, dpi: int = 90) -> bytes:
    """Loss (and eval loss), tokens/s and the last device sample in one figure."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 3.2), dpi=dpi, layout="constrained")
    ax_loss, ax_tps, ax_dev = fig.subplots(1, 3, width_ratios=[1.3, 1, 1])
    if state.loss:
        ax_loss.plot([p[0] for p in state.loss], [p[1] for p in state.loss], color="#1976d2", lw=1.4, label="loss")
    if state.eval_loss:
        ax_loss.plot([p[0] for p in state.eval_loss], [p[1] for p in state.eval_loss], "o-", color="#e65100", ms=3, lw=1, label="eval loss")
    ax_loss.set(title=f"{state.run_id}: {state.status}", xlabel="step", ylabel="loss")
    ax_loss.title.set_fontsize(9)
    if state.loss or state.eval_loss:
        ax_loss.legend(fontsize=8)
    else:
        ax_loss.text(0.5, 0.5, "no steps recorded", ha="center", transform=ax_loss.transAxes, color="#888")
    if state.throughput:
        ax_tps.plot([p[0] for p in state.throughput], [p[1] for p in state.throughput], color="#00897b", lw=1.4)
    else:
        ax_tps.text(0.5, 0.5, "no measured steps", ha="center", transform=ax_tps.transAxes, color="#888")
    ax_tps.set(title="tokens/s (warmup left out)", xlabel="step")
    ax_tps.title.set_fontsize(9)
    _devices(ax_dev, state)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _devices(ax, state: PanelState) -> None:  # type: ignore[no-untyped-def]
    util: List[float] = [float("nan") if d.get("utilization_pct") is None else float(d["utilization_pct"]) for d in state.devices]
    ax.set_title(f"devices, last sample ({state.device_source or 'no telemetry'})", fontsize=9)
    if not util:
        ax.text(0.5, 0.5, "no telemetry", ha="center", transform=ax.transAxes, color="#888")
        ax.set_xticks([])
        ax.set_yticks([])
        return
    if len(util) <= 32:
        known = [0.0 if math.isnan(u) else u for u in util]
        ax.bar(range(len(util)), known, color="#26a69a")
        labels = [str(d.get("label") or d.get("index", i)) for i, d in enumerate(state.devices)]
        ax.set_xticks(range(len(util)), labels if len(util) <= 8 else [str(i) for i in range(len(util))], fontsize=8)
        ax.set(ylim=(0, max(100.0, *known) * 1.05), ylabel="utilization %")
        return
    cols = math.ceil(math.sqrt(len(util)))
    rows = math.ceil(len(util) / cols)
    import numpy as np

    grid = np.full(rows * cols, np.nan)
    grid[: len(util)] = util
    image = ax.imshow(grid.reshape(rows, cols), vmin=0, vmax=100, cmap="GnBu")
    ax.figure.colorbar(image, ax=ax, label="utilization %")
    ax.set_xticks([])
    ax.set_yticks([])


def show_static(state: PanelState) -> None:
    from IPython.display import Image, display

    display(Image(data=render_png(state), format="png"))
    print(text_summary(state))


__all__ = ["render_png", "show_static", "text_summary"]
