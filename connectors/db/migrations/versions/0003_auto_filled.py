"""Selective prediction: product_attributes.auto_filled says whether a model value cleared its group's auto-fill
threshold (true) or is only a suggestion kept with its confidence (false). Existing rows were all written as
values, so they get true.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "product_attributes",
        sa.Column("auto_filled", sa.Boolean(), server_default=sa.true(), nullable=False),
    )


def downgrade() -> None:
    with op.batch_alter_table("product_attributes") as batch:  # SQLite cannot drop a column in place
        batch.drop_column("auto_filled")
