"""What a person may do from the dashboard: Stop on the run page, shown only where they may stop that run, and Down
on the Fleet page, shown only to admins."""
from __future__ import annotations

import html
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

import panel as pn

from .. import api, formatting
from ..audit import acting_for
from ..cost.billing import with_spend
from ..errors import GaudiNbError
from ..events import ACTIVE_STATUSES
from ..nodes.teardown import down
from ..team import Identity

ERROR = '<span class="gaudi-nb-error" style="color:#c62828">{}</span>'
OK = '<span class="gaudi-nb-ok" style="color:#2e7d32">{}</span>'


def _owner_and_status(state: Any) -> Tuple[Optional[str], Optional[str]]:
    frame = state.runs
    if frame is None or not len(frame) or not state.selected_run:
        return None, None
    rows = frame[frame["run_id"] == state.selected_run]
    if not len(rows):
        return None, None
    owner = rows["owner"].iloc[0]
    return (None if owner in (None, "unknown") else str(owner)), str(rows["status"].iloc[0])


def stop_control(state: Any, person: Identity, origin: str) -> pn.viewable.Viewable:
    """A Stop button for the selected run, visible only to its owner (a member) or an admin while it is active.

    The person's role decides here; the store's own role decides again below it (a dashboard whose
    database role is a member cannot stop a teammate's run for anyone). The audit entry names the person.
    """
    button = pn.widgets.Button(label="Stop", color="danger", visible=False, width=90, css_classes=["gaudi-nb-stop"])
    message = pn.pane.Markdown("", css_classes=["gaudi-nb-stop-message"], sizing_mode="stretch_width")

    def refresh(*_: Any) -> None:
        owner, status = _owner_and_status(state)
        button.visible = status in ACTIVE_STATUSES and person.may_change(owner) and person.role != "viewer"

    def clicked(_: Any) -> None:
        run_id = state.selected_run
        owner, _status = _owner_and_status(state)
        store = state.data.store
        with acting_for(person.user or "unknown", origin):
            try:
                person.check("stop", f"run {run_id}", owner, force=True)  # an admin's click is their --force
            except GaudiNbError as exc:
                store.audit("stop", run_id, outcome="refused", detail={"owner": owner, "reason": str(exc)})
                message.object = str(exc)
                return
            try:
                # the store's role acts for the person: on someone else's run that is an admin's --force, audited as such
                message.object = api.stop(run_id, store=store, force=owner != store.identity.user).line()
            except GaudiNbError as exc:
                message.object = str(exc)
        refresh()

    button.on_click(clicked)
    state.param.watch(refresh, ["selected_run", "version"])
    refresh()
    return pn.Row(button, message, sizing_mode="stretch_width")


# -- the Fleet page's Down ------------------------------------------------------------------
DOWN_QUESTION = "terminate {name}? its disk is deleted"  # what the launcher's Machines tab asks, word for word


def _provisioned(records: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The machines gaudi_nb provisioned that are not terminated yet (an attached node has no Down: gaudi_nb did not make it)."""
    return [r for r in records if r.get("provider") and r.get("state") != "terminated"]


def _take_down(store: Any, name: str, owner: Optional[str], person: Identity, origin: str) -> str:
    """nodes/teardown.down, the one road `gaudi-nb nodes down` takes, for the person: their audit entry, the CLI's lines."""
    started = time.monotonic()
    with acting_for(person.user or "unknown", origin):
        try:
            # the store's role acts for the admin: on someone else's machine that is their --force, audited as such
            records = with_spend(down(name, store=store, force=owner != store.identity.user))
        except GaudiNbError as exc:
            return ERROR.format(html.escape(f"error: {exc}"))  # the line the CLI prints for the same failure
    ended = "; ".join(f"{r['name']} ({r.get('instance_id')}): {r.get('state')}, cost {formatting.money(r['cost'].get('usd'))}" for r in records)
    return OK.format(html.escape(f"down {name} in {time.monotonic() - started:.0f} s: {ended}"))


def down_control(state: Any, person: Identity, origin: str) -> pn.viewable.Viewable:
    """A Down per provisioned machine, for admins: it asks first, as the launcher's Machines tab does, then takes the
    machine down through nodes/teardown.down. Viewers and members never see it; a click that reaches the server from
    them anyway (a forged request) is refused and audited, as Stop's is. The store's own role decides again below."""
    admin = person.role == "admin"  # without a login the person is the store's own user (SQLite: who may do everything)
    rows = pn.Column(sizing_mode="stretch_width")
    message = pn.pane.HTML("", css_classes=["gaudi-nb-down-message"], sizing_mode="stretch_width")
    box = pn.Column(pn.pane.Markdown("**Provisioned machines** (an admin's Down terminates one and stops its bill)"), rows, message,
                    visible=False, sizing_mode="stretch_width", css_classes=["gaudi-nb-machines"])
    shown: Dict[str, Any] = {"machines": None}

    def refused(name: str, owner: Optional[str]) -> bool:
        if admin:
            return False
        reason = (f"{person.user} is a {person.role} in this team: only an admin takes machines down from the dashboard"
                  + ("; viewers read" if person.role == "viewer" else f" (on your own machines: gaudi-nb nodes down {name})"))
        with acting_for(person.user or "unknown", origin):
            state.data.store.audit("down", name, outcome="refused", detail={"owner": owner, "reason": reason})
        message.object = ERROR.format(html.escape(f"error: {reason}"))
        return True

    def row(record: Dict[str, Any]) -> pn.viewable.Viewable:
        name, owner = str(record["name"]), record.get("owner")
        label = pn.pane.HTML(f'<span class="gaudi-nb-machine" data-name="{html.escape(name)}"><b>{html.escape(name)}</b> {html.escape(str(record.get("instance_type") or ""))} '
                             f'{html.escape(str(record.get("instance_id") or ""))} · {html.escape(str(record.get("state") or ""))} · owner {html.escape(str(owner or "unknown"))}</span>', width=560, align=("start", "center"))
        down_button = pn.widgets.Button(label="Down", color="danger", visible=admin, width=90, css_classes=["gaudi-nb-down"])
        question = pn.pane.HTML(f'<span class="gaudi-nb-confirm">{html.escape(DOWN_QUESTION.format(name=name))}</span>', visible=False, align=("start", "center"))
        yes = pn.widgets.Button(label="Yes, down", color="danger", visible=False, width=100, css_classes=["gaudi-nb-down-yes"])
        cancel = pn.widgets.Button(label="Cancel", visible=False, width=80, css_classes=["gaudi-nb-down-cancel"])

        def asking(on: bool) -> None:
            question.visible = yes.visible = cancel.visible = on
            down_button.visible = admin and not on

        def confirmed(_: Any) -> None:
            if refused(name, owner):
                return
            yes.disabled = cancel.disabled = True
            message.object = html.escape(f"taking down {name}: terminating, then waiting until the cloud says terminated…")
            # off the server's loop (EC2 takes a minute to say terminated, and that loop serves every session);
            # Panel sends a thread's changes to the page through the loop
            threading.Thread(target=finish, name=f"gaudi-nb-down-{name}", daemon=True).start()

        def finish() -> None:
            message.object = _take_down(state.data.store, name, owner, person, origin)
            yes.disabled = cancel.disabled = False
            asking(False)
            state.data.node_records = state.data.store.list_nodes()  # the reader reads nodes every few seconds: now, once
            refresh()

        down_button.on_click(lambda _: None if refused(name, owner) else asking(True))
        cancel.on_click(lambda _: asking(False))
        yes.on_click(confirmed)
        return pn.Row(label, down_button, question, yes, cancel, css_classes=["gaudi-nb-machine-row"])

    def refresh(*_: Any) -> None:
        machines = _provisioned(state.data.node_records)
        key = [(r["name"], r.get("state"), r.get("instance_id")) for r in machines]
        if key == shown["machines"]:
            return  # rebuilt only when the machines change: a click's question stays open meanwhile
        shown["machines"] = key
        rows.objects = [row(r) for r in machines]
        box.visible = admin and bool(machines)

    state.param.watch(refresh, ["fleet", "version"])
    refresh()
    return box
