"""Studies, series and instances received over DICOM.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "studies",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("study_instance_uid", sa.String(64), nullable=False, unique=True),
        sa.Column("study_date", sa.String(8)),
        sa.Column("study_description", sa.String(64)),
        sa.Column("accession_number", sa.String(16)),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("first_received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_received_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_studies_last_received_at", "studies", ["last_received_at"])
    op.create_table(
        "series",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "study_id",
            sa.Integer(),
            sa.ForeignKey("studies.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("series_instance_uid", sa.String(64), nullable=False, unique=True),
        sa.Column("modality", sa.String(16)),
        sa.Column("series_number", sa.Integer()),
        sa.Column("series_description", sa.String(64)),
        sa.Column("body_part_examined", sa.String(16)),
        sa.Column("calling_ae_title", sa.String(16)),
        sa.Column("first_received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_received_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_series_study_id", "series", ["study_id"])
    op.create_table(
        "instances",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "series_id",
            sa.Integer(),
            sa.ForeignKey("series.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False, unique=True),
        sa.Column("sop_class_uid", sa.String(64), nullable=False),
        sa.Column("instance_number", sa.Integer()),
        sa.Column("transfer_syntax_uid", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("path", sa.String(400), nullable=False, unique=True),
        sa.Column("calling_ae_title", sa.String(16)),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_instances_series_id", "instances", ["series_id"])


def downgrade() -> None:
    op.drop_table("instances")
    op.drop_table("series")
    op.drop_table("studies")
