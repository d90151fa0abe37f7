"""Initial schema: products, product_attributes (one current value per product and attribute), processing_log
(idempotency key per product, image and model version).

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Frozen copies of the types in connectors/db/models.py: a migration must not change when the models do.
JSON_TYPE = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
BIGINT_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "products",
        sa.Column("product_id", sa.Text(), nullable=False),
        sa.Column("title", sa.Text(), nullable=True),
        sa.Column("category_hint", sa.Text(), nullable=True),
        sa.Column("first_seen_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.Column("last_event_id", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("product_id", name="pk_products"),
    )
    op.create_table(
        "product_attributes",
        sa.Column("product_id", sa.Text(), nullable=False),
        sa.Column("attribute", sa.Text(), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("value_is_list", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("alternatives", JSON_TYPE, nullable=False),
        sa.Column("source", sa.String(length=8), nullable=False),
        sa.Column("model_version", sa.Text(), nullable=True),
        sa.Column("box", JSON_TYPE, nullable=True),
        sa.Column("image_digest", sa.Text(), nullable=True),
        sa.Column("annotator", sa.Text(), nullable=True),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.CheckConstraint("confidence >= 0 AND confidence <= 1", name="ck_product_attributes_confidence_range"),
        sa.CheckConstraint("source IN ('model', 'human')", name="ck_product_attributes_source_kind"),
        sa.CheckConstraint(
            "(source = 'model' AND model_version IS NOT NULL AND annotator IS NULL)"
            " OR (source = 'human' AND annotator IS NOT NULL)",
            name="ck_product_attributes_provenance",
        ),
        sa.ForeignKeyConstraint(
            ["product_id"],
            ["products.product_id"],
            name="fk_product_attributes_product_id_products",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("product_id", "attribute", name="pk_product_attributes"),
    )
    op.create_table(
        "processing_log",
        sa.Column("id", BIGINT_ID, autoincrement=True, nullable=False),
        sa.Column("product_id", sa.Text(), nullable=False),
        sa.Column("image_digest", sa.Text(), nullable=False),
        sa.Column("model_version", sa.Text(), nullable=False),
        sa.Column("image_url", sa.Text(), nullable=False),
        sa.Column("event_id", sa.Text(), nullable=True),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("first_processed_at", TIMESTAMP, nullable=False),
        sa.Column("last_seen_at", TIMESTAMP, nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="1", nullable=False),
        sa.CheckConstraint("attempts >= 1", name="ck_processing_log_attempts_positive"),
        sa.PrimaryKeyConstraint("id", name="pk_processing_log"),
        sa.UniqueConstraint(
            "product_id",
            "image_digest",
            "model_version",
            name="uq_processing_log_product_id_image_digest_model_version",
        ),
    )


def downgrade() -> None:
    op.drop_table("processing_log")
    op.drop_table("product_attributes")
    op.drop_table("products")
