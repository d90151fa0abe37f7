"""The product's description: products.description, the event's optional longer text about the product (stored like
the title: the last non-empty one an event carried); null for every product written before (existing rows included).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("products", sa.Column("description", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("products") as batch:  # SQLite cannot drop a column in place
        batch.drop_column("description")
