"""Review worker claims and reconcile marks: review_outbox rows carry the claiming worker's identity and start time
(`claimed_by`, `claimed_by_started_at`), review_workers holds each worker identity's current incarnation and its
heartbeat, and review_task_sync the Label Studio `updated_at` of each task as the worker last read it whole.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# Frozen copies of the types in connectors/db/models.py: a migration must not change when the models do.
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("review_outbox") as batch:
        batch.add_column(sa.Column("claimed_by", sa.Text(), nullable=True))
        batch.add_column(sa.Column("claimed_by_started_at", TIMESTAMP, nullable=True))
    op.create_table(
        "review_workers",
        sa.Column("worker_id", sa.Text(), nullable=False),
        sa.Column("started_at", TIMESTAMP, nullable=False),
        sa.Column("heartbeat_at", TIMESTAMP, nullable=False),
        sa.Column("host", sa.Text(), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("worker_id", name="pk_review_workers"),
    )
    op.create_table(
        "review_task_sync",
        sa.Column("task_id", sa.BigInteger(), nullable=False),
        sa.Column("label_studio_updated_at", TIMESTAMP, nullable=False),
        sa.Column("synced_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("task_id", name="pk_review_task_sync"),
    )


def downgrade() -> None:
    op.drop_table("review_task_sync")
    op.drop_table("review_workers")
    with op.batch_alter_table("review_outbox") as batch:
        batch.drop_column("claimed_by_started_at")
        batch.drop_column("claimed_by")
