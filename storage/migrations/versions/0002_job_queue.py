"""Job queue, study results versions and the series attributes routing needs.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        batch.add_column(sa.Column("results_version", sa.Integer(), nullable=False,
                                   server_default="0"))
        batch.add_column(sa.Column("completed_at", sa.DateTime(timezone=True)))
        batch.add_column(sa.Column("completion_reason", sa.String(32)))
    with op.batch_alter_table("series") as batch:
        batch.add_column(sa.Column("sop_class_uid", sa.String(64)))
        batch.add_column(sa.Column("slice_thickness", sa.Double()))
        batch.add_column(sa.Column("convolution_kernel", sa.String(64)))
        batch.add_column(sa.Column("orientation", sa.String(8)))
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("dedupe_key", sa.String(255), nullable=False, unique=True),
        sa.Column("study_id", sa.Integer(), sa.ForeignKey("studies.id", ondelete="SET NULL")),
        sa.Column("results_version", sa.Integer()),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("sort_key", sa.Double(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("run_after", sa.Double(), nullable=False),
        sa.Column("lease_owner", sa.String(64)),
        sa.Column("lease_expires_at", sa.Double()),
        sa.Column("last_error", sa.Text()),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.Column("finished_at", sa.Double()),
    )
    op.create_index("ix_jobs_claim", "jobs", ["state", "sort_key"])
    op.create_index("ix_jobs_study_id", "jobs", ["study_id"])


def downgrade() -> None:
    op.drop_table("jobs")
    with op.batch_alter_table("series") as batch:
        for column in ("orientation", "convolution_kernel", "slice_thickness", "sop_class_uid"):
            batch.drop_column(column)
    with op.batch_alter_table("studies") as batch:
        for column in ("completion_reason", "completed_at", "results_version"):
            batch.drop_column(column)
