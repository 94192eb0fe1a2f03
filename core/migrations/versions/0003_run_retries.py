"""runs: retry_of and only_items (retry the failed items of a run)

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
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("retry_of", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("only_items", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("only_items")
        batch_op.drop_column("retry_of")
