"""Shadow predictions: made for routes in shadow mode, never triaged or sent clinically;
and the routes' shadow history (each promotion or demotion, when the node started with it).

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.add_column(sa.Column("shadow", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_table(
        "route_changes",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("route", sa.String(64), nullable=False, index=True),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("shadow", sa.Boolean(), nullable=False),
        sa.Column("detail", sa.String(200), nullable=False),
        sa.Column("at", sa.Double(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("route_changes")
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("shadow")
