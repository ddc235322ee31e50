"""A team on one PostgreSQL store, kept apart by PostgreSQL itself: roles and row-level security.

`gaudi-nb team init` (an admin, once) makes three group roles for the store's database (viewer ⊂
member ⊂ admin) and the policies: everyone in the team reads runs, events, nodes and the audit
trail; a run's rows and a node's record change only for their owner or an admin; audit entries
are appended under one's own name and removed by nobody but an admin. Every person connects as
their own database role, so `owner` is the database's `current_user` and a client cannot claim
to be someone else. A SQLite store is one person's: there is no team and everything is allowed.

Pure SQL over a SQLAlchemy connection: no store import (the store asks this module who is asking).
"""
from __future__ import annotations

import getpass
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from .errors import GaudiNbError, NotAllowedError, SpecError

ROLES = ("viewer", "member", "admin")  # each holds the one before it
# what a role may do, for `team list` and the served views' buttons
CAN = {"viewer": "read", "member": "read; change own runs and machines", "admin": "read; change anything (--force)"}
TABLES = ("runs", "events", "nodes", "audit")
ROLE_NAME = re.compile(r"^[a-z_][a-z0-9_.-]{0,62}$")


@dataclass(frozen=True)
class Identity:
    """Who is asking: `user` (the database role on PostgreSQL, the login name on SQLite) and their team role.
    `team` is False where no policies hold (SQLite, or PostgreSQL before `team init`): then all is allowed."""

    user: Optional[str]
    role: str = "admin"
    team: bool = False

    def may_change(self, owner: Optional[str]) -> bool:
        """May this person write the rows of something `owner` owns (a run's events, a node's record)?"""
        return not self.team or self.role == "admin" or (self.role == "member" and owner is not None and owner == self.user)

    def check(self, action: str, what: str, owner: Optional[str], force: bool = False) -> None:
        """Raise NotAllowedError (one line) unless this person may `action` `what`, which `owner` owns.
        An admin acts on someone else's only with force, so that nobody stops a teammate's run by a slip."""
        if not self.team or (owner is not None and owner == self.user and self.role != "viewer"):
            return
        if self.role == "admin":
            if force:
                return
            raise NotAllowedError(f"{what} belongs to {owner or 'nobody recorded'}: as an admin, add --force to {action} it anyway (the audit trail records it)")
        if self.role == "viewer":
            raise NotAllowedError(f"{self.user} is a viewer in this team: viewers read; ask an admin for the member role (gaudi-nb team add {self.user} --role member)")
        raise NotAllowedError(f"{what} belongs to {owner or 'nobody recorded'}, not {self.user}: only its owner or an admin (with --force) may {action} it")


def local_user() -> Optional[str]:
    try:
        return getpass.getuser()
    except Exception:  # no login name in the environment and no passwd entry (a container's random uid)
        return None


def group_roles(database: str) -> Dict[str, str]:
    """The team's group roles, one set per database (roles are global to a PostgreSQL server; teams are per store)."""
    return {role: f"gnb_{database}_{role}"[:63] for role in ROLES}


def identity(connection: Connection) -> Identity:
    """Who this connection is, in one query: its role, and whether the store's team policies are on."""
    if connection.dialect.name != "postgresql":
        return Identity(local_user())
    row = connection.execute(text(
        "SELECT current_user AS user_name, current_database() AS db, "
        "COALESCE((SELECT relrowsecurity FROM pg_class WHERE oid = to_regclass('runs')), false) AS team"
    )).one()
    if not row.team:
        return Identity(row.user_name)
    groups = group_roles(row.db)
    held = set(connection.execute(
        text("SELECT rolname FROM pg_roles WHERE rolname = ANY(:names) AND pg_has_role(current_user, oid, 'member')"),
        {"names": list(groups.values())},
    ).scalars())
    role = next((r for r in reversed(ROLES) if groups[r] in held), "none")
    return Identity(row.user_name, role, True)


def _require_postgres(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        raise SpecError("a team needs a PostgreSQL store (SQLite stays single-user): set GAUDI_NB_STORE_URL=postgresql+psycopg://ROLE@HOST/DB, then gaudi-nb team init")


def _quote(connection: Connection, name: str) -> str:
    return connection.dialect.identifier_preparer.quote_identifier(name)


def _policies(q: Dict[str, str]) -> List[str]:
    """The row-level policies: everyone in the team reads; owners (or admins) change; audit appends under one's own name."""
    admin = f"pg_has_role(current_user, '{q['admin_name']}', 'member')"
    own = f"(owner = current_user OR {admin})"
    own_run = f"EXISTS (SELECT 1 FROM runs r WHERE r.run_id = events.run_id AND (r.owner = current_user OR {admin}))"
    rules = {
        "runs": own, "nodes": own, "events": own_run,
    }
    sql = []
    for table in TABLES:
        sql += [f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY", f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY"]
        for name in ("team_read", "owner_insert", "owner_update", "owner_delete", "own_name_insert", "admin_delete"):
            sql.append(f"DROP POLICY IF EXISTS {name} ON {table}")
        sql.append(f"CREATE POLICY team_read ON {table} FOR SELECT USING (true)")  # the grants decide who is in the team
        if table == "audit":
            sql += ["CREATE POLICY own_name_insert ON audit FOR INSERT WITH CHECK (actor = current_user)",
                    f"CREATE POLICY admin_delete ON audit FOR DELETE USING ({admin})"]
            continue
        rule = rules[table]
        sql += [f"CREATE POLICY owner_insert ON {table} FOR INSERT WITH CHECK ({rule})",
                f"CREATE POLICY owner_update ON {table} FOR UPDATE USING ({rule}) WITH CHECK ({rule})",
                f"CREATE POLICY owner_delete ON {table} FOR DELETE USING ({rule})"]
    return sql


def init(engine: Engine) -> Dict[str, Any]:
    """Make the team's roles, grants and policies on this store (idempotent: run it again after an upgrade
    adds a table); the caller must own the store's tables and may create roles. Returns who became admin."""
    _require_postgres(engine)
    with engine.connect() as connection:
        database = connection.execute(text("SELECT current_database()")).scalar_one()
        groups = group_roles(database)
        q = {role: _quote(connection, name) for role, name in groups.items()}
        q["admin_name"] = groups["admin"].replace("'", "''")
        try:
            existing = set(connection.execute(text("SELECT rolname FROM pg_roles WHERE rolname = ANY(:n)"), {"n": list(groups.values())}).scalars())
            for role in ROLES:
                if groups[role] not in existing:
                    connection.exec_driver_sql(f"CREATE ROLE {q[role]} NOLOGIN")
            connection.exec_driver_sql(f"GRANT {q['viewer']} TO {q['member']}")
            connection.exec_driver_sql(f"GRANT {q['member']} TO {q['admin']}")
            connection.exec_driver_sql(f"GRANT {q['admin']} TO CURRENT_USER")
            all_tables = ", ".join(TABLES)
            for grant in (f"SELECT ON {all_tables}, alembic_version TO {q['viewer']}", f"INSERT ON audit TO {q['viewer']}",
                          f"USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {q['viewer']}",
                          f"INSERT, UPDATE, DELETE ON runs, events, nodes TO {q['member']}", f"DELETE ON audit TO {q['admin']}"):
                connection.exec_driver_sql(f"GRANT {grant}")
            for statement in _policies(q):
                connection.exec_driver_sql(statement)
            admin = connection.execute(text("SELECT current_user")).scalar_one()
            _audit(connection, "team init", database, {"admin": admin})
            connection.commit()
        except DBAPIError as exc:
            connection.rollback()
            raise GaudiNbError(f"team init: {_reason(exc)}: run it as the role that owns the store's tables and may create roles (CREATEROLE)") from None
    return {"database": database, "admin": admin, "roles": groups}


def add(engine: Engine, name: str, role: str, password: Optional[str] = None) -> Dict[str, Any]:
    """Give database role `name` its place in the team (creating it, with `password`, when it is missing);
    a role already in the team moves to the new one. Changes and its audit entry commit together."""
    _require_postgres(engine)
    if role not in ROLES:
        raise SpecError(f"--role {role}: use one of {', '.join(ROLES)}")
    if not ROLE_NAME.match(name):
        raise SpecError(f"{name!r} is not a role name gaudi_nb makes: lower-case letters, digits, _ . - (63 at most), starting with a letter or _")
    with engine.connect() as connection:
        me = identity(connection)
        if not me.team:
            raise SpecError("this store has no team yet: an admin runs gaudi-nb team init first")
        if me.role != "admin":
            why = f"{me.user} is a {me.role} in this team: only an admin changes who is what"
            _audit(connection, "team add", name, {"role": role, "reason": why}, outcome="refused")
            connection.commit()
            raise NotAllowedError(why)
        groups = group_roles(connection.execute(text("SELECT current_database()")).scalar_one())
        exists = connection.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :n"), {"n": name}).first() is not None
        try:
            if not exists:
                connection.exec_driver_sql(f"CREATE ROLE {_quote(connection, name)} LOGIN" + (f" PASSWORD {_literal(connection, password)}" if password else ""))
            elif password:
                connection.exec_driver_sql(f"ALTER ROLE {_quote(connection, name)} PASSWORD {_literal(connection, password)}")
            for other in ROLES:
                if other != role:
                    connection.exec_driver_sql(f"REVOKE {_quote(connection, groups[other])} FROM {_quote(connection, name)}")
            connection.exec_driver_sql(f"GRANT {_quote(connection, groups[role])} TO {_quote(connection, name)}")
            _audit(connection, "team add", name, {"role": role, "created": not exists, "password_set": bool(password)})
            connection.commit()
        except DBAPIError as exc:
            connection.rollback()
            raise GaudiNbError(f"team add {name}: {_reason(exc)}: an admin that may create roles (CREATEROLE) adds members") from None
    return {"name": name, "role": role, "created": not exists}


def members(engine: Engine) -> List[Dict[str, Any]]:
    """Who is what: every role that holds one of the team's roles directly, with its highest."""
    _require_postgres(engine)
    with engine.connect() as connection:
        groups = group_roles(connection.execute(text("SELECT current_database()")).scalar_one())
        rows = connection.execute(text(
            "SELECT m.rolname AS name, g.rolname AS grp, m.rolcanlogin AS login FROM pg_auth_members a "
            "JOIN pg_roles g ON g.oid = a.roleid JOIN pg_roles m ON m.oid = a.member WHERE g.rolname = ANY(:n)"
        ), {"n": list(groups.values())}).all()
    by_group = {name: role for role, name in groups.items()}
    found: Dict[str, Dict[str, Any]] = {}
    for row in rows:
        if row.name in by_group:  # the groups hold each other: not people
            continue
        role = by_group[row.grp]
        entry = found.setdefault(row.name, {"name": row.name, "role": role, "login": row.login})
        if ROLES.index(role) > ROLES.index(entry["role"]):
            entry["role"] = role
    return [dict(entry, can=CAN[entry["role"]]) for entry in sorted(found.values(), key=lambda e: (-ROLES.index(e["role"]), e["name"]))]


def _literal(connection: Connection, value: str) -> str:
    """A string literal for DDL, which takes no bind parameters (CREATE ROLE ... PASSWORD)."""
    from psycopg import sql

    return sql.Literal(value).as_string(connection.connection.driver_connection)


def _audit(connection: Connection, action: str, target: str, detail: Dict[str, Any], outcome: str = "ok") -> None:
    from .audit import insert_entry

    insert_entry(connection, action, target, outcome=outcome, detail=detail)


def _reason(exc: DBAPIError) -> str:
    return str(getattr(exc, "orig", exc)).strip().splitlines()[0]
