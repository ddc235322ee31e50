"""The audit trail: who changed what, when and from where, one row per action in the store's `audit` table.

Every door that changes something (train, stop, resume, attach, detach, provision, start, down, team
changes) writes an entry, in the same transaction as the change where the change is a store write
(a run registered, a node recorded). `actor` is the database role that wrote it (PostgreSQL's
`current_user`, which a team's policy checks: nobody appends under another's name; the login name on
SQLite); `user` is the person, who differs from the actor only behind a served view (the dashboard's
login, the Jupyter user), which says so in `origin`. Refused attempts are entries too (outcome `refused`).
"""
from __future__ import annotations

import contextlib
import re
import socket
import time
from contextvars import ContextVar
from typing import Any, Dict, Iterator, List, Optional, Tuple

from sqlalchemy import text
from sqlalchemy.engine import Connection

from .errors import SpecError
from .jsontext import dumps_for_store

# (person, origin) while a served view acts for someone; None: the process acts for whoever runs it
_acting: ContextVar[Optional[Tuple[str, str]]] = ContextVar("gaudi_nb_acting", default=None)
_door = {"name": "api"}  # the door this process is: cli, api, notebook, dashboard, jupyter


@contextlib.contextmanager
def through(name: str) -> Iterator[None]:
    """Entries written inside name this door (the CLI's `main` is `cli`): `<door> on <host>`; the door
    before is back afterwards, so a CLI command run inside another program leaves that program's door."""
    before, _door["name"] = _door["name"], name
    try:
        yield
    finally:
        _door["name"] = before


@contextlib.contextmanager
def acting_for(person: str, origin: str) -> Iterator[None]:
    """Entries written inside are on behalf of `person` (a served view's logged-in user) from `origin`."""
    token = _acting.set((person, origin))
    try:
        yield
    finally:
        _acting.reset(token)


def acting_person() -> Optional[str]:
    acting = _acting.get()
    return acting[0] if acting else None


def origin() -> str:
    acting = _acting.get()
    return acting[1] if acting else f"{_door['name']} on {socket.gethostname()}"


def insert_entry(connection: Connection, action: str, target: str, *, outcome: str = "ok", detail: Optional[Dict[str, Any]] = None, actor: Optional[str] = None) -> None:
    """Append one entry on `connection`, in whatever transaction it is in (the caller commits).
    On PostgreSQL the actor is the database's `current_user`, never a name the client claims."""
    values = {"t": time.time(), "person": acting_person(), "action": action, "target": str(target)[:256], "outcome": outcome,
              "origin": origin()[:256], "detail": dumps_for_store(detail or {}), "actor": actor or "unknown"}
    if connection.dialect.name == "postgresql":
        who, detail_sql = "current_user", "CAST(:detail AS JSON)"
    else:
        who, detail_sql = ":actor", ":detail"
    connection.execute(text(
        f'INSERT INTO audit (t, actor, "user", action, target, outcome, origin, detail) '
        f"VALUES (:t, {who}, COALESCE(:person, {who}), :action, :target, :outcome, :origin, {detail_sql})"
    ), values)


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(value: str) -> float:
    """'90m', '2h', '7d', '1w' (or seconds) as seconds; anything else is one line, exit 2."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", value or "")
    if not match:
        raise SpecError(f"--since {value!r}: give a duration like 30m, 2h, 7d or 1w")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def entries(connection: Connection, *, since_s: Optional[float] = None, user: Optional[str] = None, limit: int = 500) -> List[Dict[str, Any]]:
    """The newest entries first; `user` matches the person or the database role that acted."""
    where: List[str] = []
    values: Dict[str, Any] = {"limit": limit}
    if since_s is not None:
        where.append("t >= :since")
        values["since"] = time.time() - since_s
    if user:
        where.append('("user" = :who OR actor = :who)')
        values["who"] = user
    rows = connection.execute(text(
        'SELECT id, t, actor, "user", action, target, outcome, origin, detail FROM audit'
        + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY t DESC, id DESC LIMIT :limit"
    ), values).mappings().all()
    return [_entry(row) for row in rows]


def _entry(row: Any) -> Dict[str, Any]:
    from .jsontext import loads

    detail = row["detail"]
    if isinstance(detail, (str, bytes)):
        detail = loads(detail)
    return {"id": row["id"], "t": row["t"], "time": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["t"])), "user": row["user"], "actor": row["actor"],
            "action": row["action"], "target": row["target"], "outcome": row["outcome"], "origin": row["origin"], "detail": detail or {}}


def line(entry: Dict[str, Any]) -> str:
    """One entry as the CLI prints it: time, who, what, on what, how it went, from where."""
    who = entry["user"] if entry["user"] == entry["actor"] else f"{entry['user']} (as {entry['actor']})"
    detail = entry.get("detail") or {}
    extra = " --force" if detail.get("force") else ""
    why = f": {detail['reason']}" if entry["outcome"] != "ok" and detail.get("reason") else ""
    return f"{entry['time']}  {who:<14} {entry['action']}{extra} {entry['target']}  {entry['outcome']}{why}  ({entry['origin']})"
