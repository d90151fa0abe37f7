"""Instance masks: product_attributes.mask holds the mask of a detector value's strongest detection (or the one an
annotator drew) as COCO RLE, {"size": [height, width], "counts": "<compressed RLE>"}, in pixels of the original image;
null for every other row (existing rows included).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# Frozen copy of the type in connectors/db/models.py: a migration must not change when the models do.
JSON_TYPE = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.add_column("product_attributes", sa.Column("mask", JSON_TYPE, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("product_attributes") as batch:  # SQLite cannot drop a column in place
        batch.drop_column("mask")
