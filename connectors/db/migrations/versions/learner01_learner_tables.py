"""Learner tables: learner_runs (one row per retraining run and its outcome), learner_locks (leases where the
database has no advisory locks, i.e. SQLite), learner_jobs (APScheduler 3's SQLAlchemyJobStore table).

Revision ID: learner01
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "learner01"
down_revision = "0001"
branch_labels = None
depends_on = None

# Frozen copies of the types in connectors/db/models.py: a migration must not change when the models do.
JSON_TYPE = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
BIGINT_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "learner_runs",
        sa.Column("id", BIGINT_ID, autoincrement=True, nullable=False),
        sa.Column("started_at", TIMESTAMP, nullable=False),
        sa.Column("finished_at", TIMESTAMP, nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("holder", sa.Text(), nullable=False),
        sa.Column("champion_version", sa.Text(), nullable=True),
        sa.Column("challenger_version", sa.Text(), nullable=True),
        sa.Column("corrections_used", sa.Integer(), server_default="0", nullable=False),
        sa.Column("corrections_until", TIMESTAMP, nullable=True),
        sa.Column("detail", JSON_TYPE, nullable=False),
        sa.CheckConstraint(
            "status IN ('running', 'promoted', 'rejected', 'failed', 'skipped', 'abandoned')",
            name="ck_learner_runs_status_kind",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_learner_runs"),
    )
    op.create_table(
        "learner_locks",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("holder", sa.Text(), nullable=False),
        sa.Column("acquired_at", TIMESTAMP, nullable=False),
        sa.Column("expires_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_learner_locks"),
    )
    op.create_table(
        "learner_jobs",
        sa.Column("id", sa.Unicode(length=191), nullable=False),
        sa.Column("next_run_time", sa.Float(precision=25), nullable=True),
        sa.Column("job_state", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_learner_jobs"),
    )
    op.create_index("ix_learner_jobs_next_run_time", "learner_jobs", ["next_run_time"])


def downgrade() -> None:
    op.drop_index("ix_learner_jobs_next_run_time", table_name="learner_jobs")
    op.drop_table("learner_jobs")
    op.drop_table("learner_locks")
    op.drop_table("learner_runs")
