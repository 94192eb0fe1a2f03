"""automations, automation_runs, mail: saved automations and email threads

Revision ID: 0006_automations
Revises: 0003
"""
import sqlalchemy as sa
from alembic import op

revision = "0006_automations"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "automations",
        sa.Column("id", sa.String(length=40), primary_key=True),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("source_run_id", sa.String(length=40), nullable=False),
        sa.Column("thread_id", sa.String(length=40), sa.ForeignKey("threads.id"),
                  nullable=False, index=True),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("program", sa.Text(), nullable=False),
        sa.Column("estimate", sa.JSON(), nullable=False),
        sa.Column("inputs", sa.JSON(), nullable=False),
        sa.Column("budget_usd", sa.Float(), nullable=False),
        sa.Column("policy", sa.String(length=10), nullable=False),
        sa.Column("schedule", sa.String(length=100), nullable=True),
        sa.Column("webhook_secret", sa.String(length=100), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_by", sa.String(length=100), nullable=False),
        sa.Column("last_fired_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "automation_runs",
        sa.Column("run_id", sa.String(length=40), primary_key=True),
        sa.Column("automation_id", sa.String(length=40), sa.ForeignKey("automations.id"),
                  nullable=False, index=True),
        sa.Column("trigger", sa.String(length=20), nullable=False),
        sa.Column("idempotency_key", sa.String(length=200), nullable=True),
        sa.Column("callback_url", sa.Text(), nullable=True),
        sa.Column("callback_status", sa.String(length=100), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("automation_id", "idempotency_key"),
    )
    op.create_table(
        "mail",
        sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("key", sa.String(length=300), nullable=False, unique=True),
        sa.Column("direction", sa.String(length=3), nullable=False),
        sa.Column("thread_id", sa.String(length=40), nullable=True, index=True),
        sa.Column("message_id", sa.String(length=300), nullable=False, index=True),
        sa.Column("sender", sa.String(length=300), nullable=False),
        sa.Column("recipients", sa.JSON(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("mail")
    op.drop_table("automation_runs")
    op.drop_table("automations")
