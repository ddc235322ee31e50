"""The dashboard app: the four pages in one layout, served by Panel (`gaudi-nb dashboard`) or shown in a notebook."""
from __future__ import annotations

import gc
import html
import os
import secrets
import tempfile
import threading
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..errors import MissingExtraError
from ..store import RunStore
from .data_store import DashboardData

UPDATE_INTERVAL_MS = 100  # a step shows within ~two ticks: the 250 ms p95 target with room for the browser
PAGES = ("fleet", "runs", "run", "costs", "audit")
TITLE = "gaudi-nb dashboard"

# Panel's own login page loads its logo from Panel's CDN: this one has nothing to fetch (Jinja2, Panel's variables)
LOGIN_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>gaudi-nb dashboard: log in</title>
<style>body{font-family:system-ui,sans-serif;display:flex;justify-content:center;margin-top:12vh;color:#222}
form{display:flex;flex-direction:column;gap:10px;width:280px}input{padding:7px;font-size:14px}
button{padding:8px;font-size:14px;background:#1976d2;color:#fff;border:0;border-radius:3px}.error{color:#c62828}</style></head>
<body><form action="{{ login_endpoint }}" method="post">
<h2 style="margin:0 0 8px">gaudi-nb dashboard</h2>
{% if errormessage %}<div class="error">{{ errormessage }}</div>{% endif %}
<input name="username" type="text" placeholder="user name" autocomplete="username" required autofocus>
<input name="password" type="password" placeholder="password" autocomplete="current-password" required>
<button type="submit">Log in</button></form></body></html>
"""

_shared: Dict[str, DashboardData] = {}
# who may do what behind this process's served dashboard: {login: role} from --roles (set by serve)
_roles: Dict[str, str] = {}
# whether a login is configured: only then is Panel's user cookie a person (signed); without one, nobody logged in
_auth: Dict[str, bool] = {"login": False}
_shared_lock = threading.Lock()


def _panel() -> Any:
    try:
        import holoviews as hv
        import panel as pn
    except ImportError:
        raise MissingExtraError("panel", "dashboard", "the team dashboard") from None
    return pn, hv


def shared_data(store: Optional[str] = None, *, follow: bool = True, interval_s: float = UPDATE_INTERVAL_MS / 1000) -> DashboardData:
    """One DashboardData per store in this process, kept current by its own thread: every browser
    session reads it, so ten open tabs cost one reader, not ten."""
    url = store or RunStore().url
    with _shared_lock:
        data = _shared.get(url)
        if data is None:
            data = _shared[url] = DashboardData(RunStore(url), follow=follow)
            data.refresh()
            data.start(interval_s)
        return data


def settle_heap() -> None:
    """Move everything loaded so far (Panel, Bokeh, pandas, the store's first read) out of the garbage
    collector's reach, in a process that serves the dashboard and nothing else. Each full collection
    walked all of it: pauses of 50-160 ms in the reader's tick, most of one update's 95th percentile."""
    gc.collect()
    gc.freeze()


def stop_shared() -> None:
    with _shared_lock:
        for data in _shared.values():
            data.stop()
        _shared.clear()


def _extensions(inline: bool) -> Any:
    """Panel's resources from this machine, never a CDN, so the dashboard works on a cluster without internet.

    Served: Panel's server mode (every script and stylesheet from the dashboard's own /static; `inline`
    would point stylesheets of components drawn later, such as a page opened after the first, at Panel's
    CDN). In a notebook: inline, in the notebook's output.
    """
    pn, hv = _panel()
    pn.extension("tabulator", inline=inline, notifications=False, design="bootstrap")
    pn.config.inline = inline
    hv.extension("bokeh", inline=inline, logo=False)
    return pn, hv


def build(data: DashboardData, page: Optional[str] = None, run_id: Optional[str] = None, *, inline: bool = False, login: Optional[str] = None, origin: str = "dashboard") -> Any:
    """The layout for one session: a header and the pages as tabs; its periodic callback only moves state.
    `login`: the person logged in (their role from --roles decides what they may stop); none: the store's own user."""
    pn, _ = _extensions(inline)
    from .access import person
    from .audit_page import audit_page
    from .controls import down_control, stop_control
    from .views import DashboardState, costs_page, detail_page, fleet_page, runs_page

    state = DashboardState(data, page=page if page in PAGES else "fleet")
    if run_id:
        state.selected_run = run_id
    state.update()
    # dynamic: the browser holds only the open page. With all five in the page, every change of layout (a click's
    # question showing) made Bokeh re-measure every view of every page: ~2 s and 4 CPU-s in Chromium per click, not 0.4
    tabs = pn.Tabs(sizing_mode="stretch_width", css_classes=["gaudi-nb-pages"], dynamic=True)

    def open_run(_: str) -> None:
        tabs.active = PAGES.index("run")

    who = person(login, _roles, data.store.identity)
    tabs.extend([fleet_page(state, down_control(state, who, origin)), runs_page(state, on_open=open_run), detail_page(state, stop_control(state, who, origin)), costs_page(state), audit_page(state)])
    tabs.active = PAGES.index(state.page)
    tabs.param.watch(lambda event: setattr(state, "page", PAGES[event.new]), "active")
    store_name = data.store.url.split("@")[-1]  # never the password of a PostgreSQL URL
    header = pn.pane.HTML(
        f'<div style="display:flex;gap:14px;align-items:baseline"><span style="font-size:20px;font-weight:700">{TITLE}</span>'
        f'<span style="color:#666;font-size:12px">store: {html.escape(store_name)} · live every {UPDATE_INTERVAL_MS} ms</span>'
        f'<span class="gaudi-nb-person" style="color:#666;font-size:12px;margin-left:auto">{html.escape(str(who.user))} · {who.role if who.team else "owner of this store"}</span></div>',
        sizing_mode="stretch_width",
    )
    layout = pn.Column(header, tabs, sizing_mode="stretch_width", css_classes=["gaudi-nb-dashboard"])
    layout._gaudi_nb_state = state  # tests and show() reach the session's state through the layout
    return layout, state


def session(data: DashboardData) -> Any:
    """What one browser session gets: pages from ?page=fleet|runs|run|costs|audit&run=ID, and a 100 ms periodic callback."""
    pn, _ = _panel()
    args = pn.state.session_args if pn.state.curdoc is not None else {}

    def arg(name: str) -> Optional[str]:
        values = args.get(name) or []
        return values[0].decode() if values else None

    doc = pn.state.curdoc
    if doc is not None and "dist_url" not in doc._template_variables:
        # Panel sets the page's resource root only after the session is built; a component made before that
        # (a page's Markdown, drawn when its tab opens) would fetch its stylesheet from Panel's CDN instead
        from panel.io.resources import LOCAL_DIST

        doc._template_variables["dist_url"] = f"{pn.state.rel_path}/{LOCAL_DIST}" if pn.state.rel_path else LOCAL_DIST
    request = doc.session_context.request if doc is not None and doc.session_context is not None else None
    origin = f"dashboard from {getattr(request, 'remote_ip', None) or 'unknown'}"
    layout, state = build(data, page=arg("page"), run_id=arg("run"), login=pn.state.user if _auth["login"] else None, origin=origin)
    pn.state.add_periodic_callback(state.update, period=UPDATE_INTERVAL_MS)
    return layout


def serve(
    store: Optional[str] = None,
    *,
    address: str = "127.0.0.1",
    port: int = 5006,
    basic_auth: Optional[str] = None,
    oauth_provider: Optional[str] = None,
    oauth_key: Optional[str] = None,
    oauth_secret: Optional[str] = None,
    oauth_redirect_uri: Optional[str] = None,
    cookie_secret: Optional[str] = None,
    allow_origins: Optional[List[str]] = None,
    roles: Optional[str] = None,
    oauth_allow: Optional[List[str]] = None,
    threaded: bool = False,
    show: bool = False,
    follow: bool = True,
) -> Any:
    """Serve the dashboard with Panel; threaded=True returns the running server (tests), else this blocks.

    Authentication is Panel's own: `basic_auth` is a password for any user name or a JSON file of
    {user: password}; `oauth_provider` (github, google, azure, okta, generic, ...) with its key and secret.
    With either, every page and every websocket needs a login first. `roles` (a JSON file {login: role})
    decides what each login may do (viewer when not listed); `oauth_allow` lists the users (or org:NAME)
    OAuth lets in, required off loopback.
    """
    from .access import allowed, check_oauth, load_roles

    check_oauth(address, oauth_provider, oauth_allow)
    _roles.clear()
    _roles.update(load_roles(roles))
    pn, _ = _extensions(inline=False)
    if oauth_allow:
        allow = list(oauth_allow)
        pn.config.authorize_callback = lambda user_info: allowed(allow, user_info)
    _auth["login"] = bool(basic_auth or oauth_provider)
    data = shared_data(store, follow=follow)
    if not threaded:
        settle_heap()
    origins = [f"{address}:{port}", f"127.0.0.1:{port}", f"localhost:{port}", *(allow_origins or [])]
    options: Dict[str, Any] = {}
    if basic_auth or oauth_provider:
        # a login lives in a signed cookie: a secret per process unless given (then logins survive a restart)
        options["cookie_secret"] = cookie_secret or os.environ.get("PANEL_COOKIE_SECRET") or secrets.token_hex(32)
    if basic_auth:
        options["basic_auth"] = basic_auth
        login = Path(tempfile.mkdtemp(prefix="gaudi-nb-dashboard-")) / "login.html"
        login.write_text(LOGIN_PAGE)
        options["login_template"] = str(login)
    if oauth_provider:
        options.update(oauth_provider=oauth_provider, oauth_key=oauth_key or os.environ.get("PANEL_OAUTH_KEY"), oauth_secret=oauth_secret or os.environ.get("PANEL_OAUTH_SECRET"))
        if oauth_redirect_uri:
            options["oauth_redirect_uri"] = oauth_redirect_uri
        options["oauth_encryption_key"] = os.environ.get("PANEL_OAUTH_ENCRYPTION_KEY") or None
    return pn.serve(
        lambda: session(data),
        address=address,
        port=port,
        websocket_origin=origins,
        show=show,
        threaded=threaded,
        title=TITLE,
        **{k: v for k, v in options.items() if v is not None},
    )


def notebook_view(store: Optional[str] = None, *, page: Optional[str] = None, run_id: Optional[str] = None) -> Any:
    """The same pages inside a notebook, live through a periodic callback in the kernel."""
    pn, _ = _extensions(inline=True)
    data = shared_data(store)
    layout, state = build(data, page=page, run_id=run_id, inline=True)
    layout._gaudi_nb_callback = pn.state.add_periodic_callback(state.update, period=UPDATE_INTERVAL_MS * 5)
    return layout


__all__ = ["serve", "build", "session", "notebook_view", "shared_data", "stop_shared", "PAGES", "UPDATE_INTERVAL_MS"]
