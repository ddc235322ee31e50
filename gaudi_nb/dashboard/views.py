"""The dashboard's pages (Fleet, Runs, Run detail, Costs): Panel and HoloViews views over a DashboardData, bound to one session's state."""
from __future__ import annotations

import html
import time
from typing import Any, Dict, List, Optional, Tuple

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
import param

from .. import formatting
from ..events import ACTIVE_STATUSES
from ..notebook.panel import STATUS_COLOURS, cost_html, failure_html, header_html, metrics_html
from .data_store import DashboardData, RunDetail, filter_runs

HEATMAP_HEIGHT = 520
MAX_NODE_TICKS = 32  # more node names than this on the axis overlap: label every k-th node
EVENTS_SHOWN = 50
CURVE_POINTS = 100_000  # a Buffer's bound: a long run's curve keeps its newest points
RUNS_TABLE_TITLES = {
    "run_id": "run",
    "tokens_per_second": "tokens/s",
    "usd": "$ so far",
    "usd_per_million_tokens": "$/M tokens",
    "budget_usd": "budget $",
    "max_steps": "of",
    "created_at": "started",
}


class DashboardState(param.Parameterized):
    """One browser session's view of the shared DashboardData. The periodic callback only copies new
    snapshots in here (state); every view is bound to these parameters and redraws itself."""

    runs = param.DataFrame(default=pd.DataFrame(), doc="the Runs table, every run")
    fleet = param.DataFrame(default=pd.DataFrame(), doc="one row per node")
    costs = param.Dict(default={}, doc="spend by user, project and day; burn rate; budgets")
    selected_run = param.String(default="", doc="the run the detail page shows")
    page: Any = param.Selector(default="fleet", objects=["fleet", "runs", "run", "costs", "audit"], doc="the open page: only its widgets are fed")
    version = param.Integer(default=-1)
    detail_version = param.Integer(default=0, doc="grows when the selected run's detail has new events")
    heatmap_at = param.Number(default=0.0)

    def __init__(self, data: DashboardData, **params: Any) -> None:
        super().__init__(**params)
        self.data = data
        self.utilization_pipe = hv.streams.Pipe(data=data.heatmap("utilization"))
        self.memory_pipe = hv.streams.Pipe(data=data.heatmap("memory"))
        self._detail_seq = -2

    def update(self) -> None:
        """Take the data's newest snapshots (a no-op when nothing changed). The runs table follows every
        tick; the fleet, the money and the heat maps, which move by the second, once a second, and only
        when their content changed (each change redraws tables and plots in the browser)."""
        data = self.data
        if data.version != self.version:
            self.param.update(runs=data.runs, version=data.version)
            if not self.selected_run and len(data.runs):
                self.selected_run = str(data.runs["run_id"].iloc[0])
        if self.selected_run:
            detail = data.details.get(self.selected_run)
            if detail is not None and detail.seq != self._detail_seq:
                self._detail_seq = detail.seq
                self.detail_version += 1
        now = time.time()
        if now - self.heatmap_at >= 1.0:
            self.heatmap_at = now
            if self.page == "fleet":
                fleet = data.fleet(now)
                if not fleet.equals(self.fleet):
                    self.fleet = fleet
                for pipe, metric in ((self.utilization_pipe, "utilization"), (self.memory_pipe, "memory")):
                    heat = data.heatmap(metric, now)
                    if not _same_heatmap(heat, pipe.data):  # a redraw costs the server a render and the browser a repaint
                        pipe.send(heat)
            elif self.page == "costs":
                costs = data.costs(now)
                if not _same_costs(costs, self.costs):
                    self.costs = costs

    @param.depends("page", watch=True)
    def _opened(self) -> None:
        self.heatmap_at = 0.0  # the page just opened gets its slow parts at the next tick

    def detail(self) -> Optional[RunDetail]:
        if not self.selected_run:
            return None
        try:
            return self.data.detail(self.selected_run)
        except Exception:  # a run id that is gone (another store): the page says so
            return None


def _same_heatmap(new: Dict[str, Any], old: Optional[Dict[str, Any]]) -> bool:
    """What the image shows is the same: its cells (NaN where nothing was sampled), rows and node labels. The window's
    start and end move every tick, but the image is drawn in seconds before now."""
    return (old is not None and new["rows"] == old["rows"] and new["node_ticks"] == old["node_ticks"] and new["end"] - new["start"] == old["end"] - old["start"]
            and new["values"].shape == old["values"].shape and bool(np.array_equal(new["values"], old["values"], equal_nan=True)))


def _same_costs(new: Dict[str, Any], old: Dict[str, Any]) -> bool:
    if set(new) != set(old):
        return False
    return all(new[k].equals(old[k]) if isinstance(new[k], pd.DataFrame) else new[k] == old[k] for k in new)


# -- Fleet ---------------------------------------------------------------------------------
def _heatmap_image(data: Dict[str, Any], title: str, unit: str) -> hv.Image:
    values = data["values"]
    rows = max(1, values.shape[0])
    window = data["end"] - data["start"]
    # rows top-down as listed (Image's first row is its top); x in seconds before now
    image = hv.Image(values if values.shape[0] else np.full((1, values.shape[1]), np.nan), bounds=(-window, 0, 0, rows), kdims=["seconds ago", "device"], vdims=[hv.Dimension(unit, range=(0, 100))])
    ticks = data["node_ticks"]
    if len(ticks) > MAX_NODE_TICKS:
        stride = int(np.ceil(len(ticks) / MAX_NODE_TICKS))
        ticks = ticks[::stride]
    yticks = [(rows - y, name) for y, name in ticks]  # bounds count from the bottom
    names = [row.split(" ")[0] for row in data["rows"]]
    boundaries = [rows - i for i in range(1, len(names)) if names[i] != names[i - 1]]
    # one glyph for all the lines: an HLine each was a plot each, and HoloViews' per-plot hook walked every renderer
    # of the figure at each redraw (128 nodes: 8 s of the server's CPU for one page's first draw)
    lines = hv.HLines(boundaries).opts(color="white", line_width=1)
    return (image.opts(cmap="viridis", clim=(0, 100), colorbar=True, yticks=yticks or [(0.5, "no telemetry yet")], title=title, responsive=True, height=HEATMAP_HEIGHT, tools=["hover"], clipping_colors={"NaN": "#eeeeee"}, xlabel="seconds ago", ylabel="") * lines).opts(
        responsive=True, height=HEATMAP_HEIGHT
    )


def fleet_page(state: DashboardState, controls: Optional[pn.viewable.Viewable] = None) -> pn.viewable.Viewable:
    """Every node, idle ones that cost money first, and the device heat maps; `controls` (an admin's Down) under the table."""
    banner = pn.pane.Alert("no nodes yet", alert_type="light", css_classes=["gaudi-nb-fleet-banner"])
    table = pn.widgets.Tabulator(
        pd.DataFrame(columns=["node", "state", "address", "accelerator", "devices", "active_runs", "runs", "utilization_pct", "usd_per_hour", "usd"]),
        show_index=False,
        disabled=True,
        sizing_mode="stretch_width",
        titles={"utilization_pct": "utilization % (1 min)", "usd_per_hour": "$/h now", "usd": "spent", "active_runs": "active runs"},
        formatters={"utilization_pct": {"type": "money", "symbol": "", "precision": 1}, "devices": {"type": "money", "symbol": "", "precision": 0}},
        layout="fit_data_stretch",
        pagination="local",
        page_size=10,  # 128 nodes would push the heat maps off the page; idle nodes that cost money come first
        css_classes=["gaudi-nb-fleet-table"],
    )
    table.style.apply(lambda row: ["background-color:#fdecea;color:#b71c1c" if row["state"] == "idle, costs money" else "" for _ in row], axis=1)

    def show(*_: Any) -> None:
        fleet = state.fleet
        if state.page != "fleet" or fleet is None or not len(fleet):
            return  # a hidden Tabulator given data throws in the browser: the open page only
        # money as every view writes it (gaudi_nb.formatting); a machine's $/h now, else the price its runs pay
        shown = fleet.drop(columns=["price_per_hour"])
        per_hour = [price if provisioned is None or pd.isna(provisioned) else provisioned for price, provisioned in zip(fleet["price_per_hour"], fleet["usd_per_hour"], strict=True)]
        shown["usd_per_hour"] = [formatting.rate(None if pd.isna(v) else float(v)) for v in per_hour]
        shown["usd"] = ["" if pd.isna(v) else formatting.money(float(v)) for v in fleet["usd"]]  # empty: an attached node's runs meter it
        # unknowns as empty cells, not NaN (object columns: a list with None would be read back as float NaN); device counts as whole numbers
        shown["devices"] = pd.Series([None if pd.isna(v) else int(v) for v in shown["devices"]], index=shown.index, dtype=object)
        for column in ("utilization_pct",):
            shown[column] = pd.Series([None if pd.isna(v) else float(v) for v in shown[column]], index=shown.index, dtype=object)
        table.value = shown
        costly = fleet[fleet["state"] == "idle, costs money"]
        if not len(costly):
            busy = int((fleet["state"] == "busy").sum())
            banner.param.update(object=f"{len(fleet)} node(s), {busy} busy; no idle node is costing money.", alert_type="success")
            return
        per_hour = costly["price_per_hour"].astype(float).sum()
        names = ", ".join(costly["node"].astype(str))
        banner.param.update(object=f"**{len(costly)} idle node(s) cost money: {formatting.rate(per_hour)}** ({html.escape(names)}). Stop or detach them, or start a run.", alert_type="danger")

    state.param.watch(show, ["fleet", "page"])
    show()
    utilization = hv.DynamicMap(lambda data: _heatmap_image(data, "device utilization (%)", "utilization %"), streams=[state.utilization_pipe])
    memory = hv.DynamicMap(lambda data: _heatmap_image(data, "device memory in use (% of the device's)", "memory %"), streams=[state.memory_pipe])
    return pn.Column(
        pn.pane.Markdown("## Fleet\nEvery node: this machine, attached nodes and any a run reports from. Idle nodes that cost money come first, in red."),
        banner,
        table,
        *([controls] if controls is not None else []),
        pn.pane.Markdown("Each row of a map is one device, grouped by node (white lines); ten minutes in 5 s bins, grey where nothing was sampled."),
        pn.Row(pn.pane.HoloViews(utilization, sizing_mode="stretch_width", css_classes=["gaudi-nb-heatmap"]), pn.pane.HoloViews(memory, sizing_mode="stretch_width", css_classes=["gaudi-nb-heatmap"]), sizing_mode="stretch_width"),
        sizing_mode="stretch_width",
        name="Fleet",
    )


# -- Runs ----------------------------------------------------------------------------------
def runs_page(state: DashboardState, on_open: Any = None) -> pn.viewable.Viewable:
    status = pn.widgets.Select(label="status", options=[""] + list(STATUS_COLOURS), value="", width=160)
    owner = pn.widgets.Select(label="owner", options=[""], value="", width=160)
    text = pn.widgets.TextInput(label="search", placeholder="run, name, model or project", width=260)
    active_only = pn.widgets.Checkbox(label="active only", value=False)
    table = pn.widgets.Tabulator(
        pd.DataFrame(columns=list(RUNS_TABLE_TITLES)),
        show_index=False,
        disabled=True,
        selectable=False,  # a click opens the run; a selected row's blue would hide the status colours
        pagination="local",
        page_size=25,
        sizing_mode="stretch_width",
        titles=RUNS_TABLE_TITLES,
        hidden_columns=["kind", "budget_usd", "name", "target", "devices", "max_steps", "status_text"],
        layout="fit_data_fill",
        formatters={
            "usd": {"type": "money", "symbol": "$", "precision": 4},
            "usd_per_million_tokens": {"type": "money", "symbol": "$", "precision": 2},
            "tokens_per_second": {"type": "money", "symbol": "", "precision": 0},
            "loss": {"type": "money", "symbol": "", "precision": 4},
            "created_at": {"type": "datetime", "outputFormat": "yyyy-MM-dd HH:mm:ss"},
        },
        header_filters={"run_id": {"type": "input", "func": "like", "placeholder": "filter"}, "model": {"type": "input", "func": "like", "placeholder": "filter"}, "project": {"type": "input", "func": "like", "placeholder": "filter"}},
        css_classes=["gaudi-nb-runs-table"],
    )
    # the status as every view says it (`pending: Resources` while a scheduler holds the run), coloured by the status itself
    table.style.apply(lambda row: [f"color:{STATUS_COLOURS.get(str(row['status']).split(':')[0], '#333')};font-weight:600" if column == "status" else "" for column in row.index], axis=1)
    counts = pn.pane.Markdown("", css_classes=["gaudi-nb-runs-count"])

    def refresh(*_: Any) -> None:
        frame = state.runs
        if state.page != "runs":
            return  # a hidden Tabulator given data throws in the browser: the open page only
        if frame is None or not len(frame):
            counts.object = "no runs in this store yet: start one with `gaudi-nb train` or `%gaudi_train`"
            return
        owners = [""] + sorted(str(o) for o in frame["owner"].dropna().unique())
        if owners != owner.options:
            owner.options = owners
        shown = filter_runs(frame, status=status.value or None, owner=owner.value or None, text=text.value_input or text.value or "", active_only=active_only.value)
        shown = shown.assign(created_at=shown["created_at"].dt.tz_localize(None), status=shown["status_text"])
        if not shown.equals(table.value):
            table.value = shown
        active = int(frame["status"].isin(ACTIVE_STATUSES).sum())
        counts.object = f"{len(shown)} of {len(frame)} runs shown · {active} active · updated {time.strftime('%H:%M:%S')}"

    state.param.watch(refresh, ["runs", "page"])
    for widget in (status, owner, active_only):
        widget.param.watch(refresh, "value")
    text.param.watch(refresh, "value_input")

    def clicked(event: Any) -> None:
        try:
            run_id = str(table.value["run_id"].iloc[event.row])
        except (IndexError, KeyError):
            return
        state.selected_run = run_id
        if on_open is not None:
            on_open(run_id)

    table.on_click(clicked)
    refresh()
    return pn.Column(
        pn.pane.Markdown("## Runs\nEvery run in the store, live. Click a run for its detail; filter with the boxes or the column headers; sort by any column."),
        pn.Row(status, owner, text, active_only),
        counts,
        table,
        sizing_mode="stretch_width",
        name="Runs",
    )


# -- Run detail ----------------------------------------------------------------------------
def _frame(points: List[Tuple[Any, float]], x: str, y: str) -> pd.DataFrame:
    if points:
        return pd.DataFrame(points, columns=[x, y])
    # an empty Buffer fixes its columns' types: a time axis must start as datetimes, not numbers
    return pd.DataFrame({x: pd.Series(dtype="datetime64[ns]" if x == "time" else float), y: pd.Series(dtype=float)})


class CurveFeed:
    """One curve of the selected run, streamed through a bounded hv.streams.Buffer: the whole history once,
    then only the points that arrived since."""

    def __init__(self, x: str, y: str) -> None:
        self.x, self.y = x, y
        self.buffer = hv.streams.Buffer(_frame([], x, y), length=CURVE_POINTS, index=False)
        self.run_id: Optional[str] = None
        self.sent = 0

    def feed(self, run_id: str, points: List[Tuple[Any, float]]) -> None:
        if run_id != self.run_id:
            self.buffer.clear()
            self.run_id, self.sent = run_id, 0
        if len(points) > self.sent:
            self.buffer.send(_frame(points[self.sent :], self.x, self.y))
            self.sent = len(points)


def detail_page(state: DashboardState, controls: Optional[pn.viewable.Viewable] = None) -> pn.viewable.Viewable:
    """One run's page; `controls` (the Stop a person may use) sit by the run picker."""
    picker = pn.widgets.AutocompleteInput(label="run", options=[], value=state.selected_run, restrict=False, min_characters=1, case_sensitive=False, width=420, placeholder="a run id (or click one on Runs)", search_strategy="includes")
    loss = CurveFeed("step", "loss")
    throughput = CurveFeed("step", "tokens_per_second")
    utilization = CurveFeed("time", "utilization_pct")
    cost = CurveFeed("time", "usd")
    plots = pn.Row(
        pn.pane.HoloViews(hv.DynamicMap(lambda data: hv.Curve(data, "step", "loss").opts(title="loss", responsive=True, height=240, color="#1976d2", tools=["hover"]), streams=[loss.buffer]), sizing_mode="stretch_width"),
        pn.pane.HoloViews(hv.DynamicMap(lambda data: hv.Curve(data, "step", "tokens_per_second").opts(title="tokens/s (after warmup)", responsive=True, height=240, color="#00897b", tools=["hover"]), streams=[throughput.buffer]), sizing_mode="stretch_width"),
        sizing_mode="stretch_width",
    )
    # 0-100 unless the data passes it: a CPU rank's utilization is top's (100 a core), so two busy cores read 200
    plots2 = pn.Row(
        pn.pane.HoloViews(hv.DynamicMap(lambda data: hv.Curve(data, "time", hv.Dimension("utilization_pct", soft_range=(0, 100))).opts(title="mean device utilization (%)", responsive=True, height=200, color="#6a1b9a", tools=["hover"]), streams=[utilization.buffer]), sizing_mode="stretch_width"),
        pn.pane.HoloViews(hv.DynamicMap(lambda data: hv.Curve(data, "time", "usd").opts(title="dollars spent", responsive=True, height=200, color="#e65100", tools=["hover"]), streams=[cost.buffer]), sizing_mode="stretch_width"),
        sizing_mode="stretch_width",
    )
    header = pn.pane.HTML("", sizing_mode="stretch_width", css_classes=["gaudi-nb-detail-header"])
    numbers = pn.pane.HTML("")
    money = pn.pane.HTML("")
    failure = pn.pane.HTML("")
    # a plain table: the newest events, rewritten whole as they come (a Tabulator would page, but throws when fed while its tab opens)
    events = pn.pane.DataFrame(pd.DataFrame(columns=["time", "type", "node", "rank", "what"]), index=False, max_rows=EVENTS_SHOWN, justify="left", sizing_mode="stretch_width", css_classes=["gaudi-nb-events-table"], styles={"font-size": "12px", "max-height": "420px", "overflow": "auto", "text-align": "left"})
    logs = pn.pane.Str("", sizing_mode="stretch_width", styles={"max-height": "320px", "overflow": "auto", "font-size": "11px", "background": "#f7f7f7"})
    manifest = pn.pane.JSON({}, depth=2, sizing_mode="stretch_width", theme="light")
    manifest_note = pn.pane.Markdown("")

    def show(*_: Any) -> None:
        if state.page != "run":
            return  # a hidden Tabulator given data throws in the browser: the open page only
        if state.runs is not None and len(state.runs):
            picker.options = list(state.runs["run_id"])
        if picker.value != state.selected_run:
            picker.value = state.selected_run
        detail = state.detail()
        if detail is None:
            header.object = f"<i>{'no run ' + html.escape(state.selected_run) if state.selected_run else 'no run selected'}</i>"
            return
        run_id = detail.run_id
        s = detail.state
        header.object = header_html(s)
        numbers.object = metrics_html(s)
        money.object = cost_html(s)
        failure.object = failure_html(s)
        loss.feed(run_id, s.loss)
        throughput.feed(run_id, s.throughput)
        utilization.feed(run_id, [(pd.Timestamp(t, unit="s"), u) for t, u in detail.utilization])
        cost.feed(run_id, [(pd.Timestamp(t, unit="s"), u) for t, u in detail.cost])
        newest = detail.events_frame().head(EVENTS_SHOWN)
        events.object = newest.assign(time=newest["time"].dt.strftime("%H:%M:%S")) if len(newest) else newest  # none read yet: an empty table
        logs.object = detail.log_tail() or "(no training log on this machine)"
        found = detail.manifest()
        if found is None:
            manifest_note.object = "The reproducibility manifest is written for batch runs (`gaudi-nb batch`); this run has none." if detail.record.get("kind") != "batch" else "The batch run's manifest is not written yet."
            manifest.object = {}
        else:
            manifest_note.object = f"Manifest: `{html.escape(str((detail.record.get('batch') or {}).get('manifest_path')))}`"
            manifest.object = found

    def picked(event: Any) -> None:
        if event.new and event.new != state.selected_run:
            state.selected_run = str(event.new)

    picker.param.watch(picked, "value")
    state.param.watch(show, ["selected_run", "detail_version", "version", "page"])
    show()
    return pn.Column(
        pn.pane.Markdown("## Run detail"),
        picker,
        *([controls] if controls is not None else []),
        header,
        pn.Row(numbers, money, failure),
        plots,
        plots2,
        pn.Tabs(("Events", events), ("Logs", logs), ("Manifest", pn.Column(manifest_note, manifest)), sizing_mode="stretch_width"),
        sizing_mode="stretch_width",
        name="Run detail",
    )


# -- Costs ---------------------------------------------------------------------------------
def _budgets_html(frame: Optional[pd.DataFrame]) -> str:
    if frame is None or not len(frame):
        return "<p>No budgets: give a run <code>budget_usd</code>, or set monthly budgets per user and project in <code>$GAUDI_NB_HOME/budgets.json</code>.</p>"
    rows = []
    for _, r in frame.iterrows():
        fraction = r["fraction"]
        if fraction is None or pd.isna(fraction):
            bar = "spend unknown (no price)"
        else:
            colour = "#2e7d32" if fraction < 0.75 else "#f39c12" if fraction < 1 else "#c62828"
            bar = f'<div style="width:220px;height:10px;background:#e8e8e8;border-radius:3px"><div style="width:{min(100.0, 100 * fraction):.1f}%;height:10px;background:{colour};border-radius:3px"></div></div> {100 * fraction:.0f}%'
        rows.append(f"<tr><td>{html.escape(str(r['budget']))}</td><td>{formatting.money(None if pd.isna(r['usd']) else float(r['usd']))}</td><td>{formatting.money(float(r['budget_usd']))}</td><td style='display:flex;gap:6px;align-items:center'>{bar}</td></tr>")
    return "<table class='gaudi-nb-budgets' style='font-size:13px;border-collapse:collapse' cellpadding='4'><tr><th align=left>budget</th><th align=left>spent</th><th align=left>of</th><th align=left>how close</th></tr>" + "".join(rows) + "</table>"


def _bars(frame: pd.DataFrame, column: str, title: str) -> hv.Bars:
    if frame is None or not len(frame):
        frame = pd.DataFrame({column: ["nothing spent yet"], "usd": [0.0]})
    top = frame.head(20)
    return hv.Bars(top, column, "usd").opts(title=title, responsive=True, height=260, color="#1976d2", tools=["hover"], xrotation=30 if len(top) > 6 else 0, ylabel="USD", framewise=True)


def costs_page(state: DashboardState) -> pn.viewable.Viewable:
    """Components made once and updated in place: a page redrawn whole every second would flicker."""
    burn = pn.indicators.String(label="burn rate now", value=formatting.rate(0.0), font_size="28pt", title_size="11pt", css_classes=["gaudi-nb-burn"])
    spent = pn.indicators.String(label="spent, machines and runs", value=formatting.money(0.0), font_size="28pt", title_size="11pt")
    active = pn.indicators.Number(label="active runs", value=0, format="{value}", font_size="28pt", title_size="11pt")
    unknown = pn.pane.Markdown("")
    pipes = {key: hv.streams.Pipe(data=pd.DataFrame()) for key in ("by_user", "by_project", "by_day")}
    plots = {
        key: pn.pane.HoloViews(hv.DynamicMap(lambda data, column=column, title=title: _bars(data, column, title), streams=[pipes[key]]), sizing_mode="stretch_width")
        for key, column, title in (("by_user", "owner", "spend by user"), ("by_project", "project", "spend by project"), ("by_day", "day", "spend by day (UTC)"))
    }
    budgets = pn.pane.HTML(_budgets_html(None), sizing_mode="stretch_width")

    def show(*_: Any) -> None:
        costs = state.costs
        if state.page != "costs" or not costs:
            return
        b = costs["burn"]
        burn.value, spent.value, active.value = formatting.rate(b["usd_per_hour"]), formatting.money(costs["total_usd"]), b["active_runs"]
        unknown.object = f"{b['unknown_prices']} machine(s) or active run(s) without a price (unknown, not zero)" if b["unknown_prices"] else ""
        for key, pipe in pipes.items():
            pipe.send(costs[key])
        budgets.object = _budgets_html(costs["budgets"])

    state.param.watch(show, ["costs", "page"])
    show()
    return pn.Column(
        pn.pane.Markdown("## Costs\nA provisioned machine is billed for the hours it runs, idle or not; a run elsewhere by its meter (price × wall clock per node). "
                         "Users and projects: each run's meter. A price that is unknown counts as unknown, never as zero."),
        pn.Row(burn, spent, active, unknown),
        pn.Row(plots["by_user"], plots["by_project"], sizing_mode="stretch_width"),
        plots["by_day"],
        pn.pane.Markdown("### Budgets"),
        budgets,
        sizing_mode="stretch_width",
        name="Costs",
    )


__all__ = ["DashboardState", "fleet_page", "runs_page", "detail_page", "costs_page", "CurveFeed"]
