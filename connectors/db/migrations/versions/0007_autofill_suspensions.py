"""Audited precision that acts: review_annotations.model_fill (what the model had done with the value an annotator
answered: 'auto', 'suspended', 'suggestion'; null for rows recorded before, whose payloads did not say), and
autofill_suspensions (a group's auto-fill suspended for one model version until resumed).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# Frozen copies of the types in connectors/db/models.py: a migration must not change when the models do.
JSON_TYPE = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
BIGINT_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("review_annotations", sa.Column("model_fill", sa.String(length=12), nullable=True))
    op.create_table(
        "autofill_suspensions",
        sa.Column("id", BIGINT_ID, autoincrement=True, nullable=False),
        sa.Column("attribute", sa.Text(), nullable=False),
        sa.Column("model_version", sa.Text(), nullable=False),
        sa.Column("suspended_at", TIMESTAMP, nullable=False),
        sa.Column("suspended_by", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("figures", JSON_TYPE, nullable=False),
        sa.Column("resumed_at", TIMESTAMP, nullable=True),
        sa.Column("resumed_by", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_autofill_suspensions"),
    )
    op.create_index(
        "ix_autofill_suspensions_open",
        "autofill_suspensions",
        ["attribute", "model_version"],
        unique=True,
        postgresql_where=sa.text("resumed_at IS NULL"),
        sqlite_where=sa.text("resumed_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_autofill_suspensions_open", table_name="autofill_suspensions")
    op.drop_table("autofill_suspensions")
    with op.batch_alter_table("review_annotations") as batch:  # SQLite cannot drop a column in place
        batch.drop_column("model_fill")
