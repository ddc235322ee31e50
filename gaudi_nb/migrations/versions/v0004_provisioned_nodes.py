"""Provisioned nodes: which cloud machine a node is, its group, state, price and lifetime (gaudi-nb nodes provision / down)."""
from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: Union[str, None] = "0003"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

# all nullable: a node attached over SSH has none of them
COLUMNS = (
    ("provider", sa.String(32)),
    ("region", sa.String(64)),
    ("instance_id", sa.String(128)),
    ("instance_type", sa.String(64)),
    ("group", sa.String(128)),
    ("state", sa.String(32)),
    ("price_per_hour", sa.Float()),
    ("price_source", sa.String(512)),
    ("launched_at", sa.Float()),
    ("terminated_at", sa.Float()),
    ("cost_usd", sa.Float()),
    ("resources", sa.JSON()),
    ("idle_minutes", sa.Float()),
    ("budget_usd", sa.Float()),
)


def upgrade() -> None:
    for name, kind in COLUMNS:
        op.add_column("nodes", sa.Column(name, kind, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("nodes") as batch:  # SQLite drops columns by copying the table
        for name, _ in reversed(COLUMNS):
            batch.drop_column(name)
