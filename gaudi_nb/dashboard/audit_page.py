"""The dashboard's Audit page: the store's audit trail (who changed what, when, from where; refusals in red)."""
from __future__ import annotations

import html
from typing import Any, Dict, List

import panel as pn

from ..audit import parse_since

AUDIT_SHOWN = 200
SINCE = {"last hour": "1h", "last 24 hours": "24h", "last 7 days": "7d", "last 30 days": "30d", "all": ""}
REFUSED_COLOUR = "#c62828"


def audit_html(entries: List[Dict[str, Any]]) -> str:
    """The entries as an HTML table; every value escaped (they are data: run ids, names, reasons)."""
    if not entries:
        return '<p class="gaudi-nb-audit-empty">no entries for this filter</p>'
    head = "".join(f"<th>{name}</th>" for name in ("time", "user", "action", "on", "outcome", "from", "detail"))
    rows = []
    for entry in entries:
        detail = dict(entry.get("detail") or {})
        reason = detail.pop("reason", None)
        colour = REFUSED_COLOUR if entry["outcome"] != "ok" else "#2e7d32"
        action = entry["action"] + (" --force" if detail.get("force") else "")
        who = entry["user"] if entry["user"] == entry["actor"] else f"{entry['user']} (as {entry['actor']})"
        extra = ", ".join(f"{k}: {v}" for k, v in detail.items() if v not in (None, False, "", []))
        cells = [entry["time"], who, action, entry["target"], entry["outcome"] + (f": {reason}" if reason else ""), entry["origin"], extra]
        styled = [f'<td style="color:{colour};font-weight:600">{html.escape(str(c))}</td>' if i == 4 else f"<td>{html.escape(str(c))}</td>" for i, c in enumerate(cells)]
        rows.append(f'<tr class="gaudi-nb-audit-{html.escape(entry["outcome"])}">{"".join(styled)}</tr>')
    style = ("<style>.gaudi-nb-audit td,.gaudi-nb-audit th{padding:4px 10px;text-align:left;border-bottom:1px solid #eee;font-size:13px;vertical-align:top}"
             ".gaudi-nb-audit td:nth-child(-n+3){white-space:nowrap}</style>")
    return f'{style}<table class="gaudi-nb-audit"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def audit_page(state: Any) -> pn.viewable.Viewable:
    """Filters (a user, how far back) over the newest AUDIT_SHOWN entries, read again each second while the page is open."""
    user = pn.widgets.TextInput(label="user", placeholder="anyone", width=220)
    since = pn.widgets.Select(label="since", options=SINCE, value="7d", width=160)
    table = pn.pane.HTML(audit_html([]), sizing_mode="stretch_width", css_classes=["gaudi-nb-audit-table"])
    shown: Dict[str, Any] = {"key": None}

    def show(*_: Any) -> None:
        if state.page != "audit":
            return
        entries = state.data.store.audit_entries(since_s=parse_since(since.value) if since.value else None, user=(user.value or "").strip() or None, limit=AUDIT_SHOWN)
        key = (tuple(e["id"] for e in entries), user.value, since.value)
        if key != shown["key"]:  # redrawn only when something changed
            shown["key"] = key
            table.object = audit_html(entries)

    state.param.watch(show, ["page", "heatmap_at"])
    user.param.watch(show, "value")
    since.param.watch(show, "value")
    note = pn.pane.Markdown("Every change to the store: runs started, stopped and resumed, machines attached, provisioned, started and taken down, team changes, and refused attempts. `gaudi-nb audit` prints the same.", styles={"color": "#555"})
    return pn.Column(pn.Row(user, since), note, table, name="Audit", sizing_mode="stretch_width")
