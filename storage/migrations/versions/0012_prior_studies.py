"""Prior studies: the earlier studies of a patient chosen for a study's results
version, retrieved from the PACS for the models that compare with them.

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "prior_studies",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("study_id", sa.Integer(), sa.ForeignKey("studies.id", ondelete="CASCADE"), nullable=False,
                  index=True),
        sa.Column("results_version", sa.Integer(), nullable=False),
        sa.Column("prior_study_instance_uid", sa.String(64), nullable=False, index=True),
        sa.Column("study_date", sa.String(8), nullable=True),
        sa.Column("instances", sa.Integer(), nullable=True),
        sa.Column("chosen_at", sa.Double(), nullable=False),
        sa.UniqueConstraint("study_id", "results_version", "prior_study_instance_uid"),
    )


def downgrade() -> None:
    op.drop_table("prior_studies")
