"""`gaudi-nb dashboard`: serve the team dashboard over the run store."""
from __future__ import annotations

from typing import List, Optional

import typer


def dashboard_command(
    store: Optional[str] = typer.Option(None, "--store", help="the run store's URL (default: GAUDI_NB_STORE_URL, else the SQLite store in GAUDI_NB_HOME); one with a password as env:VAR or file:PATH"),
    address: str = typer.Option("127.0.0.1", "--address", help="address to listen on; 0.0.0.0 shares it with the network (turn on --basic-auth or --oauth-provider first)"),
    port: int = typer.Option(5006, "--port", help="port to listen on"),
    basic_auth: Optional[str] = typer.Option(None, "--basic-auth", "--auth", help="log in first: a password for any user name (env:VAR or file:PATH keeps it out of ps), or a JSON file of {user: password} (Panel's basic auth)"),
    oauth_provider: Optional[str] = typer.Option(None, "--oauth-provider", help="log in through an OAuth provider Panel knows (github, google, azure, okta, generic, ...)"),
    oauth_key: Optional[str] = typer.Option(None, "--oauth-key", help="the OAuth client id (or PANEL_OAUTH_KEY)"),
    oauth_secret: Optional[str] = typer.Option(None, "--oauth-secret", help="the OAuth client secret: env:VAR or file:PATH (or PANEL_OAUTH_SECRET)"),
    oauth_redirect_uri: Optional[str] = typer.Option(None, "--oauth-redirect-uri", help="the URL the provider sends people back to"),
    cookie_secret: Optional[str] = typer.Option(None, "--cookie-secret", help="signs login cookies: env:VAR or file:PATH (or PANEL_COOKIE_SECRET); without it logins end when the dashboard restarts"),
    allow_origin: Optional[List[str]] = typer.Option(None, "--allow-origin", help="HOST:PORT people reach the dashboard by, when not this address (a proxy, a DNS name); repeatable"),
    roles: Optional[str] = typer.Option(None, "--roles", help="a JSON file {login: viewer|member|admin}: members stop their own runs, admins anything; a login not in it reads only"),
    oauth_allow: Optional[List[str]] = typer.Option(None, "--oauth-allow", help="a user (or org:NAME) OAuth lets in; repeatable; required with --oauth-provider off 127.0.0.1"),
    show: bool = typer.Option(False, "--show", help="open it in a browser"),
) -> None:
    """Serve the team dashboard: every node, run and dollar in the store, live (Fleet, Runs, Run detail, Costs)."""
    from ..private import secret_value
    from .access import check_oauth
    from .app import serve

    check_oauth(address, oauth_provider, oauth_allow)  # before anything is printed or served
    # each secret may be env:VAR or file:PATH, so it is not in `ps` for the host's other users
    store, basic_auth, oauth_secret, cookie_secret = (None if value is None else secret_value(value, flag) for value, flag in (
        (store, "--store"), (basic_auth, "--basic-auth"), (oauth_secret, "--oauth-secret"), (cookie_secret, "--cookie-secret")))

    where = f"http://{address}:{port}/"
    typer.echo(f"gaudi-nb dashboard at {where} (Ctrl-C stops it)" + ("" if basic_auth or oauth_provider else "; no login: anyone who can reach this address sees every run"))
    serve(
        store,
        address=address,
        port=port,
        basic_auth=basic_auth,
        oauth_provider=oauth_provider,
        oauth_key=oauth_key,
        oauth_secret=oauth_secret,
        oauth_redirect_uri=oauth_redirect_uri,
        cookie_secret=cookie_secret,
        allow_origins=allow_origin,
        roles=roles,
        oauth_allow=oauth_allow,
        show=show,
    )
