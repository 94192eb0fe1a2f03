"""Slack surface: thread and message mapping, seen deliveries, slack-sdk OAuth tables

Revision ID: 0005_slack
Revises: 0003

The installation, bot and OAuth state tables are slack-sdk's own definitions
(`SQLAlchemyInstallationStore`, `SQLAlchemyOAuthStateStore`), created here so that every
process finds them and the schema stays under Alembic.
"""
import sqlalchemy as sa
from alembic import op
from slack_sdk.oauth.installation_store.sqlalchemy import SQLAlchemyInstallationStore
from slack_sdk.oauth.state_store.sqlalchemy import SQLAlchemyOAuthStateStore

revision = "0005_slack"
down_revision = "0007_vault"
branch_labels = None
depends_on = None


def _slack_sdk_metadata() -> sa.MetaData:
    metadata = sa.MetaData()
    SQLAlchemyInstallationStore.build_installations_table(metadata, "slack_installations")
    SQLAlchemyInstallationStore.build_bots_table(metadata, "slack_bots")
    SQLAlchemyOAuthStateStore.build_oauth_states_table(metadata, "slack_oauth_states")
    return metadata


def upgrade() -> None:
    op.create_table(
        "slack_threads",
        sa.Column("thread_id", sa.String(length=40), sa.ForeignKey("threads.id"),
                  primary_key=True),
        sa.Column("team_id", sa.String(length=40), nullable=False),
        sa.Column("channel", sa.String(length=40), nullable=False),
        sa.Column("thread_ts", sa.String(length=40), nullable=False),
        sa.Column("user", sa.String(length=40), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("team_id", "channel", "thread_ts"),
    )
    op.create_table(
        "slack_messages",
        sa.Column("message_id", sa.String(length=40), primary_key=True),
        sa.Column("thread_id", sa.String(length=40), sa.ForeignKey("threads.id"),
                  nullable=False),
        sa.Column("channel", sa.String(length=40), nullable=False),
        sa.Column("ts", sa.String(length=40), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("files", sa.JSON(), nullable=False),
    )
    op.create_index("ix_slack_messages_thread_id", "slack_messages", ["thread_id"])
    op.create_index("ix_slack_messages_ts", "slack_messages", ["ts"])
    op.create_table(
        "slack_seen",
        sa.Column("key", sa.String(length=200), primary_key=True),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
    )
    _slack_sdk_metadata().create_all(op.get_bind())


def downgrade() -> None:
    _slack_sdk_metadata().drop_all(op.get_bind())
    op.drop_table("slack_seen")
    op.drop_table("slack_messages")
    op.drop_table("slack_threads")
