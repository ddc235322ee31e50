"""The run store's schema history (Alembic), applied in code when a store is opened: no alembic.ini needed."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import GaudiNbError

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy.engine import Connection

# The newest revision in versions/. RunStore compares the database's version with it in one
# query, so an up-to-date store never imports Alembic; a test checks it against the scripts.
HEAD = "0008"
# The schema that gaudi_nb made with create_all before it had migrations.
BASELINE = "0001"
SCRIPT_LOCATION = Path(__file__).resolve().parent


def config(connection: "Connection | None" = None, url: "str | None" = None) -> "Config":
    """An Alembic config built in code; migrations run on `connection` (RunStore's) or on `url`."""
    from alembic.config import Config

    cfg = Config()
    # ConfigParser would read a % in the path as interpolation
    cfg.set_main_option("script_location", str(SCRIPT_LOCATION).replace("%", "%%"))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["connection"] = connection
    return cfg


def upgrade(connection: "Connection") -> None:
    """Bring the database on `connection` to HEAD; the caller holds the migration lock and commits.

    A database made before migrations existed (tables, no alembic_version) is stamped at the
    baseline first, so its data stays and only the later revisions run.
    """
    from alembic import command
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from sqlalchemy import inspect

    cfg = config(connection)
    current = MigrationContext.configure(connection).get_current_revision()
    if current is None and inspect(connection).has_table("runs"):
        command.stamp(cfg, BASELINE)
    elif current is not None and current not in {script.revision for script in ScriptDirectory.from_config(cfg).walk_revisions()}:
        raise GaudiNbError(
            f"the store's schema is at revision {current!r}, which this gaudi_nb does not know: "
            "a newer gaudi_nb upgraded it (upgrade gaudi_nb), or the database holds another application's Alembic version table (use a database of its own)"
        )
    command.upgrade(cfg, "head")
