"""Review loop: review_outbox (products chosen for human review, sent to Label Studio by the review worker),
review_annotations (what annotators said, per attribute, with provenance and whether the model was right) and
review_sync_state (the review worker's polling watermark).

Revision ID: 0002
Revises: learner01
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "learner01"
branch_labels = None
depends_on = None

# Frozen copies of the types in connectors/db/models.py: a migration must not change when the models do.
JSON_TYPE = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
BIGINT_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "review_outbox",
        sa.Column("id", BIGINT_ID, autoincrement=True, nullable=False),
        sa.Column("product_id", sa.Text(), nullable=False),
        sa.Column("image_digest", sa.Text(), nullable=False),
        sa.Column("model_version", sa.Text(), nullable=False),
        sa.Column("image_url", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("priority", sa.Float(), server_default="0", nullable=False),
        sa.Column("payload", JSON_TYPE, nullable=False),
        sa.Column("status", sa.String(length=8), server_default="pending", nullable=False),
        sa.Column("task_id", sa.BigInteger(), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.Column("next_attempt_at", TIMESTAMP, nullable=False),
        sa.Column("sent_at", TIMESTAMP, nullable=True),
        sa.CheckConstraint("status IN ('pending', 'sent', 'failed')", name="ck_review_outbox_status_kind"),
        sa.CheckConstraint("attempts >= 0", name="ck_review_outbox_attempts_non_negative"),
        sa.PrimaryKeyConstraint("id", name="pk_review_outbox"),
        sa.UniqueConstraint(
            "product_id",
            "image_digest",
            "model_version",
            name="uq_review_outbox_product_id_image_digest_model_version",
        ),
    )
    op.create_index("ix_review_outbox_status_next_attempt_at", "review_outbox", ["status", "next_attempt_at"])
    op.create_table(
        "review_annotations",
        sa.Column("id", BIGINT_ID, autoincrement=True, nullable=False),
        sa.Column("task_id", sa.BigInteger(), nullable=False),
        sa.Column("annotation_id", sa.BigInteger(), nullable=False),
        sa.Column("outbox_id", sa.BigInteger(), nullable=True),
        sa.Column("product_id", sa.Text(), nullable=False),
        sa.Column("attribute", sa.Text(), nullable=False),
        sa.Column("value", sa.Text(), nullable=True),
        sa.Column("value_is_list", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("box", JSON_TYPE, nullable=True),
        sa.Column("annotator", sa.Text(), nullable=False),
        sa.Column("annotation_created_at", TIMESTAMP, nullable=False),
        sa.Column("annotation_updated_at", TIMESTAMP, nullable=False),
        sa.Column("lead_time_s", sa.Float(), nullable=True),
        sa.Column("model_value", sa.Text(), nullable=True),
        sa.Column("model_was_right", sa.Boolean(), nullable=True),
        sa.Column("state", sa.String(length=12), server_default="active", nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("revision", sa.Text(), nullable=False),
        sa.Column("recorded_at", TIMESTAMP, nullable=False),
        sa.CheckConstraint("state IN ('active', 'deleted', 'superseded')", name="ck_review_annotations_state_kind"),
        sa.PrimaryKeyConstraint("id", name="pk_review_annotations"),
        sa.UniqueConstraint(
            "annotation_id",
            "attribute",
            "revision",
            name="uq_review_annotations_annotation_id_attribute_revision",
        ),
    )
    op.create_index("ix_review_annotations_product_id_attribute", "review_annotations", ["product_id", "attribute"])
    op.create_index("ix_review_annotations_task_id", "review_annotations", ["task_id"])
    op.create_table(
        "review_sync_state",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_review_sync_state"),
    )


def downgrade() -> None:
    op.drop_table("review_sync_state")
    op.drop_index("ix_review_annotations_task_id", table_name="review_annotations")
    op.drop_index("ix_review_annotations_product_id_attribute", table_name="review_annotations")
    op.drop_table("review_annotations")
    op.drop_index("ix_review_outbox_status_next_attempt_at", table_name="review_outbox")
    op.drop_table("review_outbox")
