"""What a value was decided from: product_attributes.readings, for a single-choice model value of the product
decision (learner/inference/product_decision.py), JSON {"decided_from": "photos" | "title" | "photos+title",
"title": {"value", "confidence"} | null, "photos": {"value", "confidence"} | null}: the title's and the photos' own
readings, both kept when they conflict (withheld_by 'title_photo_conflict'); null for every other row (annotators'
values, multi-label and detector values, existing rows).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# A frozen copy of the type in connectors/db/models.py: a migration must not change when the models do.
JSON_TYPE = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.add_column("product_attributes", sa.Column("readings", JSON_TYPE, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("product_attributes") as batch:  # SQLite cannot drop a column in place
        batch.drop_column("readings")
