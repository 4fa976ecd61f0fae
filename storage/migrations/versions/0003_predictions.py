"""Predictions: what a model found in a series, per results version.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "predictions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("study_id", sa.Integer(), sa.ForeignKey("studies.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("results_version", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("model_version", sa.String(32), nullable=False),
        sa.Column("route", sa.String(64)),
        sa.Column("series_instance_uid", sa.String(64), nullable=False),
        sa.Column("job_id", sa.Integer(), sa.ForeignKey("jobs.id", ondelete="SET NULL")),
        sa.Column("device", sa.String(16), nullable=False),
        sa.Column("outputs", sa.JSON(), nullable=False),
        sa.Column("measurements", sa.JSON(), nullable=False),
        sa.Column("findings", sa.JSON(), nullable=False),
        sa.Column("provenance", sa.JSON(), nullable=False),
        sa.Column("labelmap_path", sa.String(400)),
        sa.Column("load_seconds", sa.Double(), nullable=False),
        sa.Column("inference_seconds", sa.Double(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.UniqueConstraint("study_id", "model", "results_version", "series_instance_uid",
                            name="uq_predictions_run"),
    )
    op.create_index("ix_predictions_study_id", "predictions", ["study_id"])


def downgrade() -> None:
    op.drop_table("predictions")
