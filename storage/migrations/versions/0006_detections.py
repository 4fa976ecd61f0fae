"""Detections: the lesions a model found, each with its place, size and score.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.add_column(sa.Column("detections", sa.JSON()))


def downgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("detections")
