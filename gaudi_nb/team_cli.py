"""`gaudi-nb team init|add|list` and `gaudi-nb audit`: thin over gaudi_nb.team and the store's audit trail."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.text import Text

from . import audit, team
from .errors import SpecError
from .store import RunStore

team_app = typer.Typer(help="A team on a PostgreSQL store: roles and row-level security (SQLite stays single-user).", no_args_is_help=True)

out = Console()


@team_app.command("init")
def init_command() -> None:
    """Make the team's roles and policies on this PostgreSQL store (once, as the role that owns its tables); you become its admin."""
    store = RunStore()
    made = team.init(store.engine)
    store.forget_identity()
    out.print(Text(f"team on {made['database']}: {made['admin']} is admin; everyone reads, owners and admins change. "
                   f"Next: gaudi-nb team add NAME --role viewer|member|admin --password-file FILE"), soft_wrap=True)


@team_app.command("add")
def add_command(
    name: str = typer.Argument(..., help="the person's database role (made when missing)"),
    role: str = typer.Option(..., "--role", help="viewer (reads), member (changes own runs and machines) or admin (changes anything, with --force)"),
    password_file: Optional[Path] = typer.Option(None, "--password-file", help="a file whose first line is the new role's password (never on the command line)"),
) -> None:
    """Give a database role its place in the team, making the role when it is missing."""
    password = None
    if password_file is not None:
        try:
            lines = password_file.expanduser().read_text().splitlines()
        except OSError as exc:
            raise SpecError(f"--password-file {password_file}: {exc.strerror or exc}: give a readable file holding the password") from None
        password = lines[0].strip() if lines else ""
        if not password:
            raise SpecError(f"--password-file {password_file} is empty: put the password on its first line")
    store = RunStore()
    added = team.add(store.engine, name, role, password)
    out.print(Text(f"{added['name']} is {added['role']} ({team.CAN[added['role']]})" + (" (role created)" if added["created"] else "")), soft_wrap=True)


@team_app.command("list")
def list_command(as_json: bool = typer.Option(False, "--json", help="print JSON rows")) -> None:
    """Who is what in this store's team."""
    rows = team.members(RunStore().engine)
    if as_json:
        out.print_json(json.dumps(rows))
        return
    if not rows:
        out.print("nobody: gaudi-nb team add NAME --role member")
        return
    width = max(len(r["name"]) for r in rows)
    for row in rows:
        out.print(Text(f"{row['name']:<{width}}  {row['role']:<6}  {row['can']}" + ("" if row["login"] else "  (cannot log in)")), soft_wrap=True)


def audit_command(
    since: Optional[str] = typer.Option(None, "--since", help="only entries this recent: 30m, 2h, 7d, 1w"),
    user: Optional[str] = typer.Option(None, "--user", help="only what this person (or database role) did"),
    limit: int = typer.Option(500, "--limit", help="at most this many entries, newest first"),
    as_json: bool = typer.Option(False, "--json", help="print the entries as JSON"),
) -> None:
    """The audit trail: who changed what (train, stop, resume, nodes, team), when, from where, and what was refused."""
    rows = RunStore().audit_entries(since_s=audit.parse_since(since) if since else None, user=user, limit=limit)
    if as_json:
        out.print_json(json.dumps(rows))
        return
    if not rows:
        out.print("no entries" + (" for that filter" if since or user else ""))
        return
    for row in rows:
        out.print(Text(audit.line(row)), soft_wrap=True)
