"""The store's tables, as SQLAlchemy declares them: runs, their events, nodes and the audit trail (the
migrations in gaudi_nb/migrations/ make them; store.py reads and writes them)."""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from sqlalchemy import JSON, BigInteger, Float, Integer, String, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# A step is 64 bits (revision 0007): BIGINT on PostgreSQL; SQLite's INTEGER is 64 bits already.
BIG_INTEGER = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    pass


class RunRow(Base):
    __tablename__ = "runs"
    run_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    name: Mapped[Optional[str]] = mapped_column(String(256))
    kind: Mapped[str] = mapped_column(String(32), default="train")  # train | batch
    status: Mapped[str] = mapped_column(String(32), index=True)
    target: Mapped[str] = mapped_column(String(256))
    run_dir: Mapped[Optional[str]] = mapped_column(String(1024))
    created_at: Mapped[float] = mapped_column(Float, index=True)
    ended_at: Mapped[Optional[float]] = mapped_column(Float)
    steps_completed: Mapped[int] = mapped_column(BIG_INTEGER, default=0)
    cost_usd: Mapped[Optional[float]] = mapped_column(Float)
    events_offset: Mapped[int] = mapped_column(BigInteger, default=0)
    events_count: Mapped[int] = mapped_column(Integer, default=0)
    summary: Mapped[Dict[str, Any]] = mapped_column(JSON)
    owner: Mapped[Optional[str]] = mapped_column(String(128))  # who started the run; null for runs older than the column


class EventRow(Base):
    __tablename__ = "events"
    __table_args__ = (UniqueConstraint("run_id", "seq", name="uq_events_run_seq"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(128))  # every query names its run: uq_events_run_seq serves it (revision 0005)
    seq: Mapped[int] = mapped_column(Integer)
    type: Mapped[str] = mapped_column(String(32))
    t: Mapped[float] = mapped_column(Float)
    rank: Mapped[Optional[int]] = mapped_column(Integer)
    step: Mapped[Optional[int]] = mapped_column(BIG_INTEGER)
    payload: Mapped[Dict[str, Any]] = mapped_column(JSON)


class NodeRow(Base):
    """A node: attached over SSH (revision 0003), and for a machine gaudi_nb provisioned, which one, its price and lifetime (0004)
    and the time it was billed for (0006)."""

    __tablename__ = "nodes"
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    url: Mapped[str] = mapped_column(String(512))  # ssh://user@host:port
    user: Mapped[str] = mapped_column(String(128))
    host: Mapped[str] = mapped_column(String(256))
    port: Mapped[int] = mapped_column(Integer)
    identity_file: Mapped[Optional[str]] = mapped_column(String(1024))
    jump: Mapped[Optional[str]] = mapped_column(String(512))
    python: Mapped[Optional[str]] = mapped_column(String(1024))  # the interpreter on the node that has gaudi_nb
    home: Mapped[Optional[str]] = mapped_column(String(1024))  # the node's GAUDI_NB_HOME, absolute
    accelerator: Mapped[Optional[str]] = mapped_column(String(32))
    device_count: Mapped[Optional[int]] = mapped_column(Integer)
    driver_version: Mapped[Optional[str]] = mapped_column(String(128))
    firmware_version: Mapped[Optional[str]] = mapped_column(String(256))
    gaudi_nb_version: Mapped[Optional[str]] = mapped_column(String(64))
    owner: Mapped[Optional[str]] = mapped_column(String(128))
    attached_at: Mapped[float] = mapped_column(Float)
    # a machine gaudi_nb provisioned (revision 0004); null for a node only attached over SSH
    provider: Mapped[Optional[str]] = mapped_column(String(32))
    region: Mapped[Optional[str]] = mapped_column(String(64))
    instance_id: Mapped[Optional[str]] = mapped_column(String(128))
    instance_type: Mapped[Optional[str]] = mapped_column(String(64))
    group: Mapped[Optional[str]] = mapped_column(String(128))  # the --name the machines were provisioned under
    state: Mapped[Optional[str]] = mapped_column(String(32))  # pending | running | stopping | stopped | terminated
    price_per_hour: Mapped[Optional[float]] = mapped_column(Float)  # null: unknown, never free
    price_source: Mapped[Optional[str]] = mapped_column(String(512))
    launched_at: Mapped[Optional[float]] = mapped_column(Float)
    terminated_at: Mapped[Optional[float]] = mapped_column(Float)
    cost_usd: Mapped[Optional[float]] = mapped_column(Float)  # the lifetime's spend, written at termination
    resources: Mapped[Optional[Dict[str, Any]]] = mapped_column(JSON)  # what bootstrap made or reused (key, groups, network)
    idle_minutes: Mapped[Optional[float]] = mapped_column(Float)  # the autostop watchdog's settings
    budget_usd: Mapped[Optional[float]] = mapped_column(Float)
    # billed while it runs (revision 0006): the current running interval's start (null while stopped),
    # and the running intervals before it, [[start, end], ...]
    running_since: Mapped[Optional[float]] = mapped_column(Float)
    billed_intervals: Mapped[Optional[List[List[float]]]] = mapped_column(JSON)


class AuditRow(Base):
    """Who changed what, when and from where (revision 0007; gaudi_nb/audit.py writes and reads it)."""

    __tablename__ = "audit"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    t: Mapped[float] = mapped_column(Float, index=True)
    actor: Mapped[str] = mapped_column(String(128))  # the database role (PostgreSQL's current_user) or the login name
    user: Mapped[str] = mapped_column(String(128))  # the person: the actor, or a served view's logged-in user
    action: Mapped[str] = mapped_column(String(32))  # train | stop | resume | attach | detach | provision | start | down | team ...
    target: Mapped[str] = mapped_column(String(256))  # a run id, a node or group name, a role
    outcome: Mapped[str] = mapped_column(String(16))  # ok | refused
    origin: Mapped[str] = mapped_column(String(256))  # "<door> on <host>", or a served view's client address
    detail: Mapped[Optional[Dict[str, Any]]] = mapped_column(JSON)


NODE_FIELDS = tuple(column.name for column in NodeRow.__table__.columns)
