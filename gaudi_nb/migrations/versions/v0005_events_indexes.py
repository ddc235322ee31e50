"""Events keep one index besides their key: (run_id, seq). Every query of events names its run, which
that index serves; the run_id and type indexes cost each insert two more B-tree writes (about a third
of SQLite's time for a fleet's stream) and served no query."""
from __future__ import annotations

from typing import Sequence, Union

from alembic import op

revision: str = "0005"
down_revision: Union[str, None] = "0004"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.drop_index("ix_events_run_id", table_name="events")
    op.drop_index("ix_events_type", table_name="events")


def downgrade() -> None:
    op.create_index("ix_events_run_id", "events", ["run_id"])
    op.create_index("ix_events_type", "events", ["type"])
