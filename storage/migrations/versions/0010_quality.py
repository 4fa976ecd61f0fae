"""The trust loop: each prediction's case profile (scanner, protocol, patient group,
image statistics) for subgroups and drift; reference standards (report labels from CSV
or HL7, reference SEGs) and their comparisons; drift alerts; the last computed quality
report of each model.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.add_column(sa.Column("case_profile", sa.JSON(), nullable=True))
    op.create_index("ix_predictions_model_created", "predictions", ["model", "created_at"])
    op.create_table(
        "reference_labels",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("case_key", sa.String(80), nullable=False, index=True),
        sa.Column("finding", sa.String(64), nullable=False),
        sa.Column("present", sa.Boolean(), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("detail", sa.String(200), nullable=False, server_default=""),
        sa.Column("recorded_at", sa.Double(), nullable=False),
        sa.UniqueConstraint("source", "case_key", "finding", name="uq_reference_labels_case"),
    )
    op.create_table(
        "segment_comparisons",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("prediction_id", sa.Integer(), sa.ForeignKey("predictions.id", ondelete="CASCADE"),
                  nullable=False, index=True),
        sa.Column("segment", sa.String(64), nullable=False),
        sa.Column("reference_sop_instance_uid", sa.String(64), nullable=False),
        sa.Column("reference_segment", sa.String(64), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("dice", sa.Double(), nullable=False),
        sa.Column("hd95_mm", sa.Double(), nullable=True),
        sa.Column("predicted_ml", sa.Double(), nullable=False),
        sa.Column("reference_ml", sa.Double(), nullable=False),
        sa.Column("recorded_at", sa.Double(), nullable=False),
        sa.UniqueConstraint("prediction_id", "segment", "reference_sop_instance_uid",
                            name="uq_segment_comparisons_pair"),
    )
    op.create_table(
        "drift_alerts",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("signal", sa.String(64), nullable=False),
        sa.Column("value", sa.Double(), nullable=False),
        sa.Column("threshold", sa.Double(), nullable=False),
        sa.Column("detail", sa.String(300), nullable=False),
        sa.Column("raised_at", sa.Double(), nullable=False),
        sa.Column("cleared_at", sa.Double(), nullable=True),
    )
    op.create_index("ix_drift_alerts_open", "drift_alerts", ["model", "signal", "cleared_at"])
    op.create_table(
        "quality_reports",
        sa.Column("model", sa.String(64), primary_key=True),
        sa.Column("report", sa.JSON(), nullable=False),
        sa.Column("computed_at", sa.Double(), nullable=False),
        sa.Column("seconds", sa.Double(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("quality_reports")
    op.drop_index("ix_drift_alerts_open", "drift_alerts")
    op.drop_table("drift_alerts")
    op.drop_table("segment_comparisons")
    op.drop_table("reference_labels")
    op.drop_index("ix_predictions_model_created", "predictions")
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("case_profile")
