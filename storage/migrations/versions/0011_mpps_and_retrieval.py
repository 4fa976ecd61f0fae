"""Modality Performed Procedure Steps (MPPS) as modalities report them, so that a study
completes when exactly the instances a completed step lists have arrived; throttles
(the next turn of a rate shared by all processes, e.g. retrievals from the PACS).

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "performed_procedures",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False, unique=True),
        sa.Column("study_instance_uid", sa.String(64), nullable=True, index=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("instance_uids", sa.JSON(), nullable=False),
        sa.Column("calling_ae_title", sa.String(16), nullable=True),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
    )
    op.create_table(
        "throttles",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("next_at", sa.Double(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("throttles")
    op.drop_table("performed_procedures")
