"""RunStore: runs and their events in SQL (SQLite by default, PostgreSQL for teams), through SQLAlchemy."""
from __future__ import annotations

import re
import time
import zlib
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from sqlalchemy import create_engine, delete, event, func, select, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from . import audit, migrations, paths, team
from .errors import NotAllowedError, NotFoundError, SpecError
from .jsontext import dumps_for_store, loads
from .rundir import check_run_id
from .store_tables import BIG_INTEGER, NODE_FIELDS, AuditRow, Base, EventRow, NodeRow, RunRow  # noqa: F401 (the tables, as the store's users import them)
from .summary import empty_summary, fold, public

_engines: Dict[str, Engine] = {}

# Each store's run summaries as this process last wrote them, keyed by run id: (events_count,
# events_offset, created_at, summary). An ingest that finds its run's row still at that count and offset
# folds the cached dict instead of decoding the column again (decoding it was the largest cost of a
# fleet's tick); any other writer moves the count, and a run registered again under the same id (a store
# made anew at the same URL) has another created_at, so a stale entry is never used.
_summaries: Dict[str, Dict[str, Tuple[int, int, float, Dict[str, Any]]]] = {}
_SUMMARIES_KEPT = 4096


def _engine(url: str) -> Engine:
    if url not in _engines:
        if url.startswith("sqlite"):
            _private_database(url)
            engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, json_serializer=dumps_for_store, json_deserializer=loads)

            @event.listens_for(engine, "connect")
            def _sqlite_pragmas(dbapi_connection: Any, _: Any) -> None:
                # WAL lets the notebook, the CLI and the dashboard read while one of them ingests.
                cursor = dbapi_connection.cursor()
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=NORMAL")
                cursor.close()

        else:
            engine = create_engine(url, pool_pre_ping=True, json_serializer=dumps_for_store, json_deserializer=loads)
        try:
            _upgrade_schema(engine)
        except BaseException:
            engine.dispose()  # not cached, so nobody else would close its connections
            raise
        _engines[url] = engine
        _identities.pop(url, None)  # a new engine (a store made anew at this URL): ask again who we are
    return _engines[url]


def _private_database(url: str) -> None:
    """A new SQLite store is made owner-only (0600) before SQLite opens it; its -wal and -shm files take that mode."""
    from sqlalchemy.engine import make_url

    database = make_url(url).database
    if database and database != ":memory:" and not database.startswith("file:"):
        from pathlib import Path

        from .private import private_dir, private_file

        path = Path(database).expanduser()
        private_dir(path.parent)
        private_file(path)


# pg_advisory_xact_lock's key: one per database, held only while a migration runs
_MIGRATION_LOCK_KEY = zlib.crc32(b"gaudi_nb.store.migrate")


def _schema_version(engine: Engine) -> Optional[str]:
    """The revision recorded in the database, in one query; None when it has no version table yet."""
    try:
        with engine.connect() as connection:
            return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except DBAPIError:
        return None


def _upgrade_schema(engine: Engine) -> None:
    """Migrate the database to this code's schema; the common case (already there) costs one query and no Alembic import."""
    if _schema_version(engine) == migrations.HEAD:
        return
    with engine.connect() as connection:
        # Two processes may open a fresh store at once (the CLI and an agent): the first takes the
        # lock and migrates; the second waits, then finds the schema current and changes nothing.
        _lock_for_migration(connection)
        migrations.upgrade(connection)
        connection.commit()


def _lock_for_migration(connection: Connection) -> None:
    """Begin the migration's transaction holding a lock that other openers of the same database wait on."""
    if connection.dialect.name == "sqlite":
        # the write lock up front (busy timeout: 30 s); SQLite's DDL is transactional, so a failed migration leaves nothing
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    elif connection.dialect.name == "postgresql":
        # released at commit or rollback, so a crashed opener cannot leave it held
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})


def _lock_for_ingest(connection: Connection) -> None:
    """Begin an ingest's transaction so that the runs' offsets it reads stay true until it commits."""
    if connection.dialect.name == "sqlite":
        # the write lock before the read (busy timeout: 30 s), not at the first UPDATE: two readers that
        # both read an offset and then both wrote would add the same events twice
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    # PostgreSQL: the read takes row locks itself (SELECT ... FOR UPDATE)


_current_user = team.local_user  # the login name: a SQLite store's user

# who each store's connections are (their role, the team's policies): asked once a while per process
_identities: Dict[str, Tuple[float, team.Identity]] = {}
IDENTITY_TTL_S = 30.0


def _payload_text(event: Dict[str, Any]) -> str:
    """An event's JSON text for the payload column: the line it was read from when there is one (a
    writer's json.dumps, so valid JSON unless it holds a NaN or an infinity, which PostgreSQL refuses)."""
    line = getattr(event, "line", None)
    if line is not None and "NaN" not in line and "Infinity" not in line:
        return line
    return dumps_for_store(event)


def _marks(connection: Connection) -> Tuple[str, str]:
    """The driver's parameter marker, plain and for JSON text: PostgreSQL types the text as JSON, SQLite
    takes it as it is (its CAST AS JSON would make it a number)."""
    mark = "?" if connection.dialect.paramstyle == "qmark" else "%s"
    return mark, mark if connection.dialect.name == "sqlite" else f"CAST({mark} AS JSON)"


# A tick's two executemany statements go to the driver as they are: SQLAlchemy's per-row parameter
# processing was a fifth of a fleet's tick. Their columns are RunRow's and EventRow's (a test checks
# that what they write reads back through the models).
def _insert_events(connection: Connection, rows: List[Tuple[Any, ...]]) -> None:
    """Event rows: (run_id, seq, type, t, rank, step, payload JSON text)."""
    mark, json_mark = _marks(connection)
    columns = ", ".join(connection.dialect.identifier_preparer.quote(c) for c in ("run_id", "seq", "type", "t", "rank", "step", "payload"))
    connection.exec_driver_sql(f"INSERT INTO events ({columns}) VALUES ({', '.join([mark] * 6)}, {json_mark})", rows)


def _update_runs(connection: Connection, rows: List[Tuple[Any, ...]]) -> None:
    """Runs after a tick: (events_offset, events_count, summary JSON text, status, ended_at, steps_completed, cost_usd, name, run_id)."""
    mark, json_mark = _marks(connection)
    quote = connection.dialect.identifier_preparer.quote
    columns = ("events_offset", "events_count", "summary", "status", "ended_at", "steps_completed", "cost_usd", "name")
    assignments = ", ".join(f"{quote(c)} = {json_mark if c == 'summary' else mark}" for c in columns)
    connection.exec_driver_sql(f"UPDATE runs SET {assignments} WHERE run_id = {mark}", rows)


class RunStore:
    def __init__(self, url: Optional[str] = None) -> None:
        self.url = url or paths.store_url()
        self.engine = _engine(self.url)

    # -- who is asking ------------------------------------------------------
    @property
    def identity(self) -> team.Identity:
        """Who this store's connections act as: PostgreSQL's current_user and team role, or the login name on SQLite."""
        if self.engine.dialect.name != "postgresql":
            return team.Identity(_current_user())
        cached = _identities.get(self.url)
        if cached is None or time.monotonic() - cached[0] > IDENTITY_TTL_S:
            with self.engine.connect() as connection:
                cached = _identities[self.url] = (time.monotonic(), team.identity(connection))
        return cached[1]

    def forget_identity(self) -> None:
        """Ask again who this store's connections are (after team init or a change of role)."""
        _identities.pop(self.url, None)

    def may_change(self, owner: Optional[str]) -> bool:
        return self.identity.may_change(owner)

    def guard(self, action: str, target: str, owner: Optional[str], *, force: bool = False, what: str = "") -> None:
        """Refuse (NotAllowedError, one line) an action on someone else's run or machine unless the caller is an
        admin with force; a refusal is an audit entry too."""
        try:
            self.identity.check(action, what or target, owner, force)
        except NotAllowedError as exc:
            self.audit(action, target, outcome="refused", detail={"owner": owner, "force": force, "reason": str(exc)})
            raise

    def audit(self, action: str, target: str, *, outcome: str = "ok", detail: Optional[Dict[str, Any]] = None) -> None:
        """Append an entry for an action that is not a store write itself (a stop, a resume, a refusal)."""
        with self.engine.begin() as connection:
            audit.insert_entry(connection, action, target, outcome=outcome, detail=detail, actor=self.identity.user)

    def audit_entries(self, *, since_s: Optional[float] = None, user: Optional[str] = None, limit: int = 500) -> List[Dict[str, Any]]:
        with self.engine.connect() as connection:
            return audit.entries(connection, since_s=since_s, user=user, limit=limit)

    # -- writing -----------------------------------------------------------
    def register(self, run_id: str, *, spec: Dict[str, Any], target: str, run_dir: Optional[str], kind: str = "train", name: Optional[str] = None, owner: Optional[str] = None) -> None:
        """Add a pending run and its audit entry in one transaction; `owner` (who started it) defaults to the
        database's current_user (the login name on SQLite)."""
        check_run_id(run_id)
        summary = empty_summary(run_id)
        summary.update(spec=spec, target=target, run_dir=run_dir, name=name or spec.get("name"), max_steps=spec.get("max_steps"), kind=kind)
        owner = owner or self.identity.user
        with Session(self.engine) as session, session.begin():
            session.add(RunRow(run_id=run_id, name=summary["name"], kind=kind, status="pending", target=target, run_dir=run_dir, created_at=time.time(), summary=summary, owner=owner))
            session.flush()  # the run's row first: a refused insert raises here, before the entry
            audit.insert_entry(session.connection(), kind, run_id, detail={"target": target, "owner": owner}, actor=self.identity.user)

    def offset(self, run_id: str) -> int:
        check_run_id(run_id)
        with Session(self.engine) as session:
            value = session.scalar(select(RunRow.events_offset).where(RunRow.run_id == run_id))
        if value is None:
            raise NotFoundError(f"no run '{run_id}' in the store: gaudi-nb runs lists them")
        return int(value)

    def ingest(self, run_id: str, events: Sequence[Dict[str, Any]], start_offset: int, end_offset: int) -> int:
        """Add events read from [start_offset, end_offset) of the run's stream; returns how many were added.

        Idempotent: the offset moves only if it still equals start_offset, in the same
        transaction as the inserts, so a second ingest of the same bytes adds nothing
        (and two readers racing on one run cannot both add them).
        """
        return self.ingest_many([(run_id, events, start_offset, end_offset)]).get(run_id, 0)

    def ingest_many(self, batches: Sequence[Tuple[str, Sequence[Dict[str, Any]], int, int]]) -> Dict[str, int]:
        """`ingest` for many runs in one transaction (a reader's tick over a fleet): each batch is
        (run_id, events, start_offset, end_offset); returns how many events each run got.

        A fleet's readers take in thousands of events a second, so a tick costs one read of the runs'
        rows, one executemany of the events and one of the runs, whatever the number of runs. A batch
        whose start is no longer its run's offset (another reader took those bytes) adds nothing; an
        unknown run raises NotFoundError and nothing of the tick is written.
        """
        batches = [b for b in batches if b[3] > b[2]]
        if not batches:
            return {}
        if len({b[0] for b in batches}) != len(batches):
            raise ValueError("ingest_many: one batch per run in a tick")
        wanted = sorted(b[0] for b in batches)
        with self.engine.connect() as connection:
            _lock_for_ingest(connection)
            query = select(RunRow.run_id, RunRow.events_offset, RunRow.events_count, RunRow.created_at, RunRow.name, RunRow.owner).where(RunRow.run_id.in_(wanted)).order_by(RunRow.run_id)
            if connection.dialect.name == "postgresql":
                query = query.with_for_update()  # the rows stay ours until commit, locked in one order: no deadlock between readers
            current = {row.run_id: row for row in connection.execute(query)}
            missing = [run_id for run_id in wanted if run_id not in current]
            if missing and self.identity.team:
                # a teammate's run is hidden from FOR UPDATE by the team's policy: read, never written (its owner's reader ingests it)
                missing = sorted(set(missing) - set(connection.execute(select(RunRow.run_id).where(RunRow.run_id.in_(missing))).scalars()))
            if missing:
                connection.rollback()
                raise NotFoundError(f"no run '{missing[0]}' in the store: gaudi-nb runs lists them")
            batches = [b for b in batches if b[0] in current and self.may_change(current[b[0]].owner)]
            cache = _summaries.setdefault(self.url, {})
            summaries = {}
            for run_id, _, start_offset, _ in batches:
                row = current[run_id]
                cached = cache.pop(run_id, None)  # back in the cache only once this tick has committed
                if row.events_offset == start_offset and cached is not None and cached[:3] == (row.events_count, row.events_offset, row.created_at):
                    summaries[run_id] = cached[3]
            stale = [run_id for run_id, _, start_offset, _ in batches if run_id not in summaries and current[run_id].events_offset == start_offset]
            if stale:
                summaries.update((run_id, summary) for run_id, summary in connection.execute(select(RunRow.run_id, RunRow.summary).where(RunRow.run_id.in_(stale))))
            added: Dict[str, int] = {}
            event_rows: List[Tuple[Any, ...]] = []
            run_rows: List[Tuple[Any, ...]] = []
            folded: Dict[str, Dict[str, Any]] = {}
            for run_id, events, start_offset, end_offset in batches:
                row = current[run_id]
                if row.events_offset != start_offset:
                    added[run_id] = 0
                    continue
                seq = row.events_count
                for i, e in enumerate(events):
                    event_rows.append((run_id, seq + i, str(e.get("type")), float(e.get("t") or 0), e.get("rank"), e.get("step"), _payload_text(e)))
                summary = fold(summaries[run_id], events, in_place=True)  # out of the cache for this tick: nobody else holds it
                run_rows.append((end_offset, seq + len(events), dumps_for_store(summary), summary["status"], summary["ended_at"], summary["steps_completed"], summary["cost"]["usd"], summary.get("name") or row.name, run_id))
                folded[run_id] = summary
                added[run_id] = len(events)
            if event_rows:
                _insert_events(connection, event_rows)
            if run_rows:
                _update_runs(connection, run_rows)
            connection.commit()
        for end_offset, count, _, _, _, _, _, _, run_id in run_rows:
            cache[run_id] = (count, end_offset, current[run_id].created_at, folded[run_id])
        while len(cache) > _SUMMARIES_KEPT:
            cache.pop(next(iter(cache)), None)
        return added

    # -- reading -----------------------------------------------------------
    def get(self, run_id: str) -> Dict[str, Any]:
        """The run record (as `gaudi-nb show RUN --json` prints it). A unique prefix of the id is enough."""
        check_run_id(run_id)
        with Session(self.engine) as session:
            row = session.get(RunRow, run_id) or self._by_prefix(session, run_id)
            return public(dict(row.summary, kind=row.kind, created_at=row.created_at, owner=row.owner))

    def resolve(self, run_id: str) -> str:
        """The whole id of a run given by its id or a unique prefix; SpecError for what is not an id."""
        check_run_id(run_id)
        with Session(self.engine) as session:
            row = session.get(RunRow, run_id) or self._by_prefix(session, run_id)
            return row.run_id

    def _by_prefix(self, session: Session, prefix: str) -> RunRow:
        rows = session.scalars(select(RunRow).where(RunRow.run_id.startswith(prefix, autoescape=True)).limit(2)).all()
        if len(rows) == 1:
            return rows[0]
        if not rows:
            raise NotFoundError(f"no run '{prefix}' in the store: gaudi-nb runs lists them")
        raise NotFoundError(f"'{prefix}' matches several runs: give more of the run id")

    def list(self, limit: int = 50, status: Optional[str] = None, kind: Optional[str] = None) -> List[Dict[str, Any]]:
        query = select(RunRow).order_by(RunRow.created_at.desc()).limit(limit)
        if status:
            query = query.where(RunRow.status == status)
        if kind:
            query = query.where(RunRow.kind == kind)
        with Session(self.engine) as session:
            return [public(dict(row.summary, kind=row.kind, created_at=row.created_at, owner=row.owner)) for row in session.scalars(query)]

    def events(self, run_id: str, types: Optional[Iterable[str]] = None, after_seq: int = -1, limit: Optional[int] = None) -> List[Dict[str, Any]]:
        """The run's events after `after_seq`, in order; at most `limit` (a reader pages through a long run)."""
        check_run_id(run_id)
        query = select(EventRow.payload).where(EventRow.run_id == run_id, EventRow.seq > after_seq).order_by(EventRow.seq).limit(limit)
        if types:
            query = query.where(EventRow.type.in_(list(types)))
        with Session(self.engine) as session:
            return list(session.scalars(query))

    def count_events(self, run_id: str) -> int:
        with Session(self.engine) as session:
            return int(session.scalar(select(func.count()).select_from(EventRow).where(EventRow.run_id == run_id)) or 0)

    def run_ids(self) -> List[str]:
        with Session(self.engine) as session:
            return list(session.scalars(select(RunRow.run_id)))

    # -- nodes -------------------------------------------------------------
    def add_node(self, record: Dict[str, Any]) -> Dict[str, Any]:
        """Record an attached node; `owner` defaults to the current user, `attached_at` to now."""
        values = _node_values(record)
        values.setdefault("owner", self.identity.user)
        values.setdefault("attached_at", time.time())
        missing = [name for name in ("name", "url", "user", "host", "port") if values.get(name) in (None, "")]
        if missing:
            raise SpecError(f"a node record needs {', '.join(missing)}")
        action = "provision" if values.get("provider") else "attach"
        try:
            with Session(self.engine) as session, session.begin():
                session.add(NodeRow(**values))
                session.flush()
                audit.insert_entry(session.connection(), action, values["name"], detail={"url": values["url"], "group": values.get("group")}, actor=self.identity.user)
        except IntegrityError:
            raise SpecError(f"a node named '{values['name']}' is attached already: pick another --name, or gaudi-nb nodes detach {values['name']}") from None
        return self.get_node(values["name"])

    def get_node(self, name: str) -> Dict[str, Any]:
        with Session(self.engine) as session:
            row = session.get(NodeRow, name)
            if row is None:
                raise NotFoundError(f"no node '{name}' is attached: gaudi-nb nodes list shows them")
            return _node_record(row)

    def list_nodes(self, group: Optional[str] = None) -> List[Dict[str, Any]]:
        """Every node (attached, provisioned, terminated ones too); `group`: only the machines provisioned under that name."""
        query = select(NodeRow).order_by(NodeRow.name)
        if group is not None:
            query = query.where(NodeRow.group == group)
        with Session(self.engine) as session:
            return [_node_record(row) for row in session.scalars(query)]

    def update_node(self, name: str, **fields: Any) -> Dict[str, Any]:
        values = _node_values(fields)
        values.pop("name", None)
        try:
            with Session(self.engine) as session, session.begin():
                row = session.get(NodeRow, name)
                if row is None:
                    raise NotFoundError(f"no node '{name}' is attached: gaudi-nb nodes list shows them")
                for key, value in values.items():
                    setattr(row, key, value)
        except StaleDataError:  # the team's policy hid the row from this UPDATE: someone else's machine
            raise NotAllowedError(f"node {name} belongs to {self.get_node(name).get('owner')}: only its owner or an admin changes its record") from None
        return self.get_node(name)

    def remove_node(self, name: str) -> Dict[str, Any]:
        """Forget a node; returns the record it had."""
        try:
            with Session(self.engine) as session, session.begin():
                row = session.get(NodeRow, name)
                if row is None:
                    raise NotFoundError(f"no node '{name}' is attached: gaudi-nb nodes list shows them")
                record = _node_record(row)
                if not session.connection().execute(delete(NodeRow).where(NodeRow.name == name)).rowcount:  # the team's policy hid it: someone else's
                    raise StaleDataError(name)
                audit.insert_entry(session.connection(), "detach", name, detail={"url": record["url"], "owner": record["owner"]}, actor=self.identity.user)
        except StaleDataError:
            raise NotAllowedError(f"node {name} belongs to {record.get('owner')}: only its owner or an admin detaches it") from None
        return record


def _node_values(record: Dict[str, Any]) -> Dict[str, Any]:
    unknown = sorted(set(record) - set(NODE_FIELDS))
    if unknown:
        raise SpecError(f"unknown node field(s) {', '.join(unknown)}: a node has {', '.join(NODE_FIELDS)}")
    check_node_paths({"name": record.get("name"), **{k: record[k] for k in ("home", "python") if k in record}})
    return dict(record)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_COMMAND_NAME = re.compile(r"[A-Za-z0-9._+-]+")


def check_node_paths(record: Dict[str, Any]) -> Dict[str, Any]:
    """The record, if its `home` and `python` are what gaudi_nb puts there (an absolute path; a path or a command
    name), else SpecError: they go into the node's command lines (quoted), and a shared store's row is not trusted."""
    home, python = record.get("home"), record.get("python")
    name = record.get("name")
    if home is not None and (not isinstance(home, str) or not home.startswith("/") or _CONTROL.search(home)):
        raise SpecError(f"node {name!r}: its recorded home {str(home)[:80]!r} is not an absolute path: gaudi-nb nodes detach {name}, then attach it again")
    if python is not None and (not isinstance(python, str) or _CONTROL.search(python) or not (python.startswith("/") or _COMMAND_NAME.fullmatch(python))):
        raise SpecError(f"node {name!r}: its recorded python {str(python)[:80]!r} is not a path or a command name: gaudi-nb nodes detach {name}, then attach it again")
    return record


def _node_record(row: NodeRow) -> Dict[str, Any]:
    return {name: getattr(row, name) for name in NODE_FIELDS}
