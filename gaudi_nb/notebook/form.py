"""The launcher widget: Train (a form whose choices come from the registries and the price catalog; Launch shows the run
panel below) and Machines (attach, provision, the machines list: notebook/machines.py)."""
from __future__ import annotations

import html
import typing
from typing import Any, Callable, Dict, List, Optional, Tuple

from .. import api, formatting
from ..errors import GaudiNbError
from ..spec import RunSpec


def target_choices() -> List[Tuple[str, str]]:
    """(label, value): this machine, then every attached node (gaudi-nb nodes attach, or the Machines tab)."""
    from ..store import RunStore
    from ..targets import targets

    choices = [(name if name != "local" else "local (this machine)", name) for name in targets.names()]
    list_nodes = getattr(RunStore(), "list_nodes", None)
    for node in list_nodes() if list_nodes is not None else []:
        detail = f"{node.get('accelerator') or '?'} × {node.get('device_count') or '?'}"
        choices.append((f"{node['name']} ({node.get('user')}@{node.get('host')}, {detail})", node["name"]))
    return choices


def model_choices() -> List[str]:
    from ..presets import model_presets

    return model_presets.names()


def dataset_choices() -> List[str]:
    from ..presets import dataset_presets

    return dataset_presets.names()


def instance_choices() -> List[Tuple[str, str]]:
    from ..cost import catalog

    rows: List[Tuple[str, str]] = [("none: price unknown unless set below", "")]
    for p in catalog.load_catalog():
        rate = "price unknown" if p.on_demand_per_hour is None else formatting.rate(p.on_demand_per_hour)
        rows.append((f"{p.instance_type} · {p.accelerator_count}× {p.accelerator} · {rate}", p.instance_type))
    return rows


def precision_choices() -> List[str]:
    return [str(a) for a in typing.get_args(RunSpec.model_fields["precision"].annotation)]


def _optional_float(text: str, name: str) -> Optional[float]:
    text = text.strip().lstrip("$")
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise GaudiNbError(f"{name}: a number in dollars, or empty (got {text!r})") from None


class Launcher:
    """Pick target, model, dataset, devices, precision, steps, budget and price, then Launch."""

    def __init__(self, **defaults: Any) -> None:
        import ipywidgets as w

        spec_defaults = {name: field.default for name, field in RunSpec.model_fields.items()}
        spec_defaults.update(defaults)
        style = {"description_width": "110px"}
        wide = w.Layout(width="420px")
        self.target = w.Dropdown(options=target_choices(), value=spec_defaults.get("target") or "local", description="target", style=style, layout=wide)
        self.model = w.Combobox(options=model_choices(), value=spec_defaults["model"], placeholder="preset or org/name", description="model", ensure_option=False, style=style, layout=wide)
        self.dataset = w.Combobox(options=dataset_choices(), value=spec_defaults["dataset"], placeholder="preset, file or org/name", description="dataset", ensure_option=False, style=style, layout=wide)
        self.devices = w.BoundedIntText(value=spec_defaults["devices"], min=1, max=1024, description="devices", style=style, layout=w.Layout(width="220px"))
        self.precision = w.Dropdown(options=precision_choices(), value=spec_defaults["precision"], description="precision", style=style, layout=w.Layout(width="220px"))
        self.max_steps = w.BoundedIntText(value=spec_defaults["max_steps"], min=1, max=10_000_000, description="max steps", style=style, layout=w.Layout(width="220px"))
        self.instance_type = w.Dropdown(options=instance_choices(), value=spec_defaults.get("instance_type") or "", description="instance type", style=style, layout=wide)
        self.price_per_hour = w.Text(value="" if spec_defaults.get("price_per_hour") is None else str(spec_defaults["price_per_hour"]), placeholder="empty: the instance type's price", description="$ per hour", style=style, layout=w.Layout(width="300px"))
        self.budget_usd = w.Text(value="" if spec_defaults.get("budget_usd") is None else str(spec_defaults["budget_usd"]), placeholder="empty: no budget", description="budget $", style=style, layout=w.Layout(width="300px"))
        self.button = w.Button(description="Launch", icon="play", button_style="success", layout=w.Layout(width="120px"))
        self.message = w.HTML()
        self.panels = w.VBox()
        self.button.on_click(self._on_launch)
        self.runs: List[api.Run] = []
        self.last_panel: Any = None
        self._callbacks: List[Callable[[api.Run], None]] = []
        form = w.VBox(
            [
                w.HTML("<b>gaudi_nb · launch a training run</b>"),
                self.target, self.model, self.dataset,
                w.HBox([self.devices, self.precision, self.max_steps]),
                self.instance_type,
                w.HBox([self.price_per_hour, self.budget_usd]),
                w.HBox([self.button, self.message], layout=w.Layout(align_items="center")),
            ],
            layout=w.Layout(border="1px solid #ddd", padding="6px 10px"),
        )
        from .machines import MachinesTab

        # the Machines tab attaches and provisions from the same specs as gaudi-nb nodes; a new node is a target here at once
        self.machines = MachinesTab(on_change=self._targets_changed)
        self.tabs = w.Tab(children=[form, self.machines.widget])
        self.tabs.set_title(0, "Train")
        self.tabs.set_title(1, "Machines")
        self.widget = w.VBox([self.tabs, self.panels])
        self.widget.add_class("gaudi-nb-launcher")

    def _targets_changed(self) -> None:
        chosen = self.target.value
        self.target.options = target_choices()
        if chosen in [value for _, value in self.target.options]:
            self.target.value = chosen

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    def on_launch(self, callback: Callable[[api.Run], None], remove: bool = False) -> None:
        """Call callback(run) after each launch."""
        if remove:
            self._callbacks.remove(callback)
        else:
            self._callbacks.append(callback)

    def options(self) -> Dict[str, Any]:
        """The form as gaudi_nb.train() keywords."""
        return {
            "target": self.target.value,
            "model": self.model.value.strip(),
            "dataset": self.dataset.value.strip(),
            "devices": self.devices.value,
            "precision": self.precision.value,
            "max_steps": self.max_steps.value,
            "instance_type": self.instance_type.value or None,
            "price_per_hour": _optional_float(self.price_per_hour.value, "$ per hour"),
            "budget_usd": _optional_float(self.budget_usd.value, "budget"),
        }

    def launch(self) -> Optional[api.Run]:
        """What the Launch button does: start the run, show its panel below; errors show in the form."""
        from .panel import RunPanel

        try:
            run = api.train(self.options())
        except GaudiNbError as exc:
            self.message.value = f'<span class="gaudi-nb-error" style="color:#c62828">{html.escape(str(exc))}</span>'
            return None
        self.message.value = f'<span style="color:#2e7d32">started {html.escape(run.run_id)}</span>'
        self.runs.append(run)
        panel = RunPanel(run)
        self.last_panel = panel
        self.panels.children = (panel.widget, *self.panels.children)
        panel.start()
        for callback in list(self._callbacks):
            callback(run)
        return run

    def _on_launch(self, _button: Any = None) -> None:
        self.button.disabled = True
        try:
            self.launch()
        finally:
            self.button.disabled = False


__all__ = ["Launcher", "dataset_choices", "instance_choices", "model_choices", "precision_choices", "target_choices"]
