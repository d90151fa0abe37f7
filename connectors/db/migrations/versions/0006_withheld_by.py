"""Why a suggestion: product_attributes.withheld_by names what kept a model value that its group's threshold alone
would have auto-filled as a suggestion ("unfamiliar_photo": the shift guard found the photo unlike the training
photos); null for every other row (existing rows included).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("product_attributes", sa.Column("withheld_by", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("product_attributes") as batch:  # SQLite cannot drop a column in place
        batch.drop_column("withheld_by")
