"""plans: the sample run; check_failures: which rules models break most

Revision ID: 0004
Revises: 0003
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("plans", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sample", sa.JSON(), nullable=True))
    op.create_table(
        "check_failures",
        sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(length=40), nullable=False),
        sa.Column("model", sa.String(length=100), nullable=False),
        sa.Column("stage", sa.String(length=20), nullable=False),
        sa.Column("rule", sa.String(length=100), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_check_failures_request_id", "check_failures", ["request_id"])
    op.create_index("ix_check_failures_rule", "check_failures", ["rule"])


def downgrade() -> None:
    op.drop_index("ix_check_failures_rule", table_name="check_failures")
    op.drop_index("ix_check_failures_request_id", table_name="check_failures")
    op.drop_table("check_failures")
    with op.batch_alter_table("plans", schema=None) as batch_op:
        batch_op.drop_column("sample")
