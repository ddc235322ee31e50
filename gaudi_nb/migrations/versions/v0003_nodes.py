"""Attached nodes: one row per node a client attached over SSH (gaudi-nb nodes attach)."""
from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: Union[str, None] = "0002"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        "nodes",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("url", sa.String(512), nullable=False),
        sa.Column("user", sa.String(128), nullable=False),
        sa.Column("host", sa.String(256), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("identity_file", sa.String(1024), nullable=True),
        sa.Column("jump", sa.String(512), nullable=True),
        sa.Column("python", sa.String(1024), nullable=True),
        sa.Column("home", sa.String(1024), nullable=True),
        sa.Column("accelerator", sa.String(32), nullable=True),
        sa.Column("device_count", sa.Integer(), nullable=True),
        sa.Column("driver_version", sa.String(128), nullable=True),
        sa.Column("firmware_version", sa.String(256), nullable=True),
        sa.Column("gaudi_nb_version", sa.String(64), nullable=True),
        sa.Column("owner", sa.String(128), nullable=True),
        sa.Column("attached_at", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("nodes")
