"""Who started each run: runs.owner (null for runs recorded before it existed)."""
from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: Union[str, None] = "0001"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("owner", sa.String(128), nullable=True))


def downgrade() -> None:
    # SQLite drops a column by copying the table; batch mode does that and is a plain ALTER elsewhere
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("owner")
