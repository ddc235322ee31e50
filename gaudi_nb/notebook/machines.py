"""The launcher's Machines tab: attach a node, provision machines (price and autostop shown first), and the machines list.

The forms are built from AttachSpec's and ProvisionSpec's fields (spec.option_fields), as `gaudi-nb nodes attach|provision`
and the magics are, and a refusal shows the line the CLI prints. Slow work (SSH, a cloud) runs off the kernel's thread.
"""
from __future__ import annotations

import html
import threading
import time
from typing import Any, Callable, Dict, List, Optional

from .. import formatting
from ..errors import GaudiNbError
from ..machine_spec import AttachSpec, ProvisionSpec
from ..spec import OptionField, option_fields

STYLE = {"description_width": "110px"}
ERROR = '<span class="gaudi-nb-error" style="color:#c62828">{}</span>'
OK = '<span class="gaudi-nb-ok" style="color:#2e7d32">{}</span>'


def error_line(exc: BaseException) -> str:
    """The line `gaudi-nb` prints for the same refusal."""
    return ERROR.format(html.escape(f"error: {exc}"))


def field_widget(field: OptionField, choices: Optional[List[Any]] = None) -> Any:
    """One spec field as a form widget: a checkbox, a drop-down of its choices, or a text box (empty: not given)."""
    import ipywidgets as w

    label = field.name.replace("_", " ")
    if field.type is bool:
        return w.Checkbox(value=bool(field.default), description=label, indent=False, tooltip=field.help, layout=w.Layout(width="auto", margin="0 12px 0 0"))
    options = choices if choices is not None else (list(field.choices) if field.choices else None)
    if options is not None:
        values = [o[1] if isinstance(o, tuple) else o for o in options]
        value = field.default if field.default in values else (values[0] if field.required and values else None)
        return w.Dropdown(options=options, value=value, description=label, tooltip=field.help, style=STYLE, layout=w.Layout(width="480px"))
    text = "" if field.default is None else str(field.default)
    return w.Text(value=text, placeholder=placeholder(field.help), description=label, tooltip=field.help, style=STYLE, layout=w.Layout(width="480px"))


def placeholder(help_text: str) -> str:
    """What an empty box means, short enough to read in it: the default where the help names one, else its first clause."""
    if "default: " in help_text:
        shown = "default: " + help_text.split("default: ", 1)[1]
        return shown.rstrip(")") if shown.count(")") > shown.count("(") else shown
    return help_text.removeprefix("autostop: ").split(";")[0].split(": ")[0].split(" (")[0]


def form_values(widgets: Dict[str, Any], spec: Any) -> Dict[str, Any]:
    """The form as the spec's keyword options: an empty text box is "not given"; a number is read as the CLI reads it
    (so a refusal is the CLI's line, word for word); the spec checks the rest."""
    types = {f.name: f.type for f in option_fields(spec)}
    values = {}
    for name, widget in widgets.items():
        value = widget.value
        if isinstance(value, str):
            value = value.strip() or None
            if value is not None and types.get(name) in (int, float):
                try:
                    value = types[name](value)
                except ValueError:
                    pass  # the spec says what it must be
        values[name] = value
    return values


def instance_types(provider: str) -> List[Any]:
    from ..cost import catalog

    seen: Dict[str, Any] = {}
    for price in catalog.load_catalog():
        if price.provider == provider and price.instance_type not in seen:
            seen[price.instance_type] = (f"{price.instance_type} · {price.accelerator_count}× {price.accelerator}", price.instance_type)
    return list(seen.values())


class MachinesTab:
    """Attach, provision, and the machines with state, dollars so far, Start and Down (Down asks first)."""

    def __init__(self, on_change: Optional[Callable[[], None]] = None) -> None:
        import ipywidgets as w

        from ..nodes.providers import providers

        self.on_change = on_change or (lambda: None)
        self.attach_fields = {f.name: field_widget(f) for f in option_fields(AttachSpec)}
        self.attach_button = w.Button(description="Attach", icon="plug", button_style="primary", layout=w.Layout(width="120px"))
        self.attach_message = w.HTML()
        provider_names = [name for name in providers.names()]
        fields = {f.name: f for f in option_fields(ProvisionSpec)}
        self.provision_fields = {
            name: field_widget(f, provider_names if name == "provider" else instance_types(provider_names[0]) if name == "instance_type" else None)
            for name, f in fields.items()
        }
        self.provision_fields["provider"].value = provider_names[0]
        self.quote = w.HTML()
        self.provision_button = w.Button(description="Provision", icon="cloud", button_style="warning", layout=w.Layout(width="120px"))
        self.provision_message = w.HTML()
        self.rows = w.VBox()
        self.list_message = w.HTML()
        self.refresh_button = w.Button(description="Refresh", icon="refresh", layout=w.Layout(width="100px"))
        self.attach_button.on_click(lambda _: self._off_thread(self.attach))
        self.provision_button.on_click(lambda _: self._off_thread(self.provision))
        self.refresh_button.on_click(lambda _: self._off_thread(self.refresh))
        self.provision_fields["provider"].observe(self._provider_changed, "value")
        for widget in self.provision_fields.values():
            widget.observe(lambda _change: self.show_quote(), "value")
        checkboxes = lambda group: w.HBox([v for v in group.values() if isinstance(v, w.Checkbox)])  # noqa: E731
        boxes = lambda group: [v for v in group.values() if not isinstance(v, w.Checkbox)]  # noqa: E731
        self.widget = w.VBox([
            w.HTML("<b>attach a machine over SSH</b>"), *boxes(self.attach_fields), checkboxes(self.attach_fields),
            w.HBox([self.attach_button, self.attach_message], layout=w.Layout(align_items="center")),
            w.HTML("<b>provision cloud machines</b> <small>(billed while they run)</small>"), *boxes(self.provision_fields), checkboxes(self.provision_fields),
            self.quote, w.HBox([self.provision_button, self.provision_message], layout=w.Layout(align_items="center")),
            w.HBox([w.HTML("<b>machines</b>"), self.refresh_button], layout=w.Layout(align_items="center", justify_content="space-between")),
            self.rows, self.list_message,
        ], layout=w.Layout(padding="4px 6px"))
        self.widget.add_class("gaudi-nb-machines")
        self.show_quote()
        self.refresh(ask_clouds=False)

    # -- the forms ---------------------------------------------------------------
    def _off_thread(self, work: Callable[[], Any]) -> None:
        threading.Thread(target=work, name="gaudi-nb-machines", daemon=True).start()

    def _provider_changed(self, change: Dict[str, Any]) -> None:
        self.provision_fields["instance_type"].options = instance_types(str(change["new"]))

    def provision_spec(self) -> ProvisionSpec:
        return ProvisionSpec.from_options(**form_values(self.provision_fields, ProvisionSpec))

    def show_quote(self) -> None:
        """The price per hour and the autostop settings of what Provision would make, before anything is made."""
        try:
            spec = self.provision_spec()
            quote = spec.quote()
        except GaudiNbError as exc:
            self.quote.value = error_line(exc)
            return
        each = "price unknown" if quote["price_per_hour"] is None else f"{formatting.rate(quote['price_per_hour'])} each"
        total = "" if quote["total_per_hour"] is None or spec.count == 1 else f", {formatting.rate(quote['total_per_hour'])} in all"
        self.quote.value = (
            f'<div class="gaudi-nb-quote">{spec.count} × {html.escape(quote["instance_type"])} ({html.escape(quote["accelerator"])}) in {html.escape(quote["region"])}: '
            f"<b>{each}{total}</b>{' (spot)' if spec.spot else ''} · {html.escape(spec.autostop())}<br><small>{html.escape(quote['source'])}</small></div>"
        )

    def attach(self) -> Optional[Dict[str, Any]]:
        from ..nodes.attach import attach

        self.attach_button.disabled = True
        self.attach_message.value = "attaching…"
        try:
            spec = AttachSpec.from_options(**form_values(self.attach_fields, AttachSpec))
            record: Dict[str, Any] = attach(**spec.keywords(), progress=lambda message: setattr(self.attach_message, "value", html.escape(message)))
        except GaudiNbError as exc:
            self.attach_message.value = error_line(exc)
            return None
        finally:
            self.attach_button.disabled = False
        devices = f"{record.get('device_count')}× {record.get('accelerator')}" if record.get("device_count") else str(record.get("accelerator") or "unknown")
        self.attach_message.value = OK.format(html.escape(f"attached {record['name']} ({record['url']}: {devices}); train there: target {record['name']}"))
        self.refresh(ask_clouds=False)
        self.on_change()
        return record

    def provision(self) -> Optional[List[Dict[str, Any]]]:
        from ..nodes.provision import provision

        self.provision_button.disabled = True
        try:
            spec = self.provision_spec()
            self.provision_message.value = "provisioning…"
            records = provision(**spec.keywords(), progress=lambda message: setattr(self.provision_message, "value", html.escape(message)))
        except GaudiNbError as exc:
            self.provision_message.value = error_line(exc)
            return None
        finally:
            self.provision_button.disabled = False
        self.provision_message.value = OK.format(html.escape(f"{'attached' if spec.attach else 'running'}: {', '.join(r['name'] for r in records)}; billed until Down"))
        self.refresh(ask_clouds=False)
        self.on_change()
        return records

    # -- the machines list ----------------------------------------------------------
    def machines(self, ask_clouds: bool = True) -> List[Dict[str, Any]]:
        """The nodes as `gaudi-nb nodes list` shows them (terminated ones left out), each with its cost so far."""
        from ..cost.billing import with_spend
        from ..nodes.attach import nodes
        from ..nodes.provision import refresh

        records = nodes()
        if ask_clouds:
            records = refresh(records, progress=lambda message: setattr(self.list_message, "value", html.escape(message)))
        return with_spend([r for r in records if r.get("state") != "terminated"])

    def refresh(self, ask_clouds: bool = True) -> None:
        try:
            records = self.machines(ask_clouds)
        except GaudiNbError as exc:
            self.list_message.value = error_line(exc)
            return
        self.rows.children = tuple(self._row(record) for record in records)
        self.list_message.value = "" if records else "<i>no machines yet: attach one or provision one above</i>"

    def _row(self, record: Dict[str, Any]) -> Any:
        import ipywidgets as w

        cost = record["cost"]
        state = str(record.get("state") or "attached")
        spent = "—" if cost.get("hours") is None else formatting.money(cost.get("usd"))
        price = "" if cost.get("price_per_hour") is None else f" · {formatting.rate(cost['price_per_hour'])}"
        where = f"{record.get('user')}@{record.get('host')}"
        label = w.HTML(f'<span class="gaudi-nb-machine" data-name="{html.escape(record["name"])}" data-state="{html.escape(state)}"><b>{html.escape(record["name"])}</b> '
                       f"{html.escape(where)} · {html.escape(state)} · spent {spent}{price}</span>", layout=w.Layout(width="560px"))
        row = w.HBox([label], layout=w.Layout(align_items="center"))
        if record.get("provider"):
            start = w.Button(description="Start", icon="play", disabled=state != "stopped", layout=w.Layout(width="90px"))
            down = w.Button(description="Down", icon="power-off", button_style="danger", disabled=state == "terminated", layout=w.Layout(width="90px"))
            start.on_click(lambda _: self._off_thread(lambda: self._machine_verb("start", record["name"])))
            down.on_click(lambda _: self._ask_down(record["name"], row))
            row.children = (label, start, down)
        return row

    def _ask_down(self, name: str, row: Any) -> None:
        """Down asks first: it terminates the machines (the disk goes) and stops their bill."""
        import ipywidgets as w

        question = w.HTML(f'<span class="gaudi-nb-confirm" style="white-space:nowrap">terminate {html.escape(name)}? its disk is deleted</span>',
                          layout=w.Layout(width="auto", margin="0 8px"))
        yes = w.Button(description="Yes, down", button_style="danger", layout=w.Layout(width="100px"))
        no = w.Button(description="Cancel", layout=w.Layout(width="80px"))
        before = row.children
        yes.on_click(lambda _: self._off_thread(lambda: self._machine_verb("down", name)))
        no.on_click(lambda _: setattr(row, "children", before))
        row.children = (*before[:1], question, yes, no)

    def _machine_verb(self, verb: str, name: str) -> None:
        from ..nodes import provision as provisioning

        self.list_message.value = f"{verb} {html.escape(name)}…"
        started = time.monotonic()
        try:
            getattr(provisioning, verb)(name, progress=lambda message: setattr(self.list_message, "value", html.escape(message)))
        except GaudiNbError as exc:
            self.list_message.value = error_line(exc)
            return
        self.refresh(ask_clouds=False)
        self.list_message.value = OK.format(html.escape(f"{verb}: {name} in {time.monotonic() - started:.0f} s"))
        self.on_change()


__all__ = ["MachinesTab", "error_line", "field_widget", "form_values"]
