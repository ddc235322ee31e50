"""What a person may do from the dashboard: Stop on the run page, shown only where they may stop that run."""
from __future__ import annotations

from typing import Any, Optional, Tuple

import panel as pn

from .. import api
from ..audit import acting_for
from ..errors import GaudiNbError
from ..events import ACTIVE_STATUSES
from ..team import Identity


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
