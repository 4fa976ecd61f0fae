"""Triage: each study's priority and why, the timeline of its steps, and what each
inference worker reports about its device.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        batch.add_column(sa.Column("priority", sa.String(16), nullable=False, server_default="routine"))
        batch.add_column(sa.Column("priority_reason", sa.String(200)))
        batch.add_column(sa.Column("requested_priority", sa.String(16)))
    op.create_table(
        "study_events",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("study_id", sa.Integer(), sa.ForeignKey("studies.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("results_version", sa.Integer()),
        sa.Column("step", sa.String(32), nullable=False),
        sa.Column("detail", sa.String(400)),
        sa.Column("at", sa.Double(), nullable=False),
    )
    op.create_index("ix_study_events_study_id", "study_events", ["study_id", "at"])
    op.create_index("ix_study_events_step", "study_events", ["step", "at"])
    op.create_table(
        "worker_status",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("device", sa.String(16), nullable=False),
        sa.Column("gpu_memory_bytes", sa.BigInteger()),
        sa.Column("updated_at", sa.Double(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("worker_status")
    op.drop_table("study_events")
    with op.batch_alter_table("studies") as batch:
        batch.drop_column("requested_priority")
        batch.drop_column("priority_reason")
        batch.drop_column("priority")
