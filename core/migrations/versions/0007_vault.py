"""credentials: the vault of connections' encrypted credentials, per workspace

Revision ID: 0007_vault
Revises: 0003
"""
import sqlalchemy as sa
from alembic import op

revision = "0007_vault"
down_revision = "0006_automations"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "credentials",
        sa.Column("workspace", sa.String(length=100), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("service", sa.String(length=50), nullable=False),
        sa.Column("sealed", sa.LargeBinary(), nullable=False),
        sa.Column("fields", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("workspace", "name"),
    )


def downgrade() -> None:
    op.drop_table("credentials")
