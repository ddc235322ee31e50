"""A provisioned machine is billed while it runs, not while it is stopped: the start of its current running
interval (running_since, null while stopped) and the running intervals before it (billed_intervals, [[start, end], ...])."""
from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: Union[str, None] = "0005"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.add_column("nodes", sa.Column("running_since", sa.Float(), nullable=True))
    op.add_column("nodes", sa.Column("billed_intervals", sa.JSON(), nullable=True))
    # a machine recorded before: billed from its launch, as it was counted until now
    op.execute("UPDATE nodes SET running_since = launched_at WHERE provider IS NOT NULL AND launched_at IS NOT NULL AND terminated_at IS NULL")


def downgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("billed_intervals")
        batch.drop_column("running_since")
