"""Slack Web API clients and where their tokens come from.

Single-workspace mode takes the bot token from the settings. Multi-workspace mode installs the
app with OAuth (`/slack/install`, `/slack/oauth_redirect`) and keeps installations and OAuth states
in slack-sdk's own SQLAlchemy stores, on our database through its async engine
(`AsyncSQLAlchemyInstallationStore`, `AsyncSQLAlchemyOAuthStateStore`; the tables come from
Alembic revision 0005). Every client talks to `SLACK_API_URL` and retries on 429 after the
`Retry-After` the answer gives, and on dropped connections.
"""

from __future__ import annotations

import logging

from slack_sdk.http_retry.async_handler import AsyncRetryHandler
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
)
from slack_sdk.oauth.installation_store.sqlalchemy import AsyncSQLAlchemyInstallationStore
from slack_sdk.oauth.state_store.sqlalchemy import AsyncSQLAlchemyOAuthStateStore
from slack_sdk.web.async_client import AsyncWebClient

from core.errors import ConfigurationError
from core.settings import Settings
from core.store import Store

log = logging.getLogger(__name__)

BOT_SCOPES = ["app_mentions:read", "chat:write", "chat:write.public", "commands", "files:read",
              "files:write", "im:history", "im:read", "im:write", "users:read"]
RATE_LIMIT_RETRIES = 10
OAUTH_STATE_TTL_S = 600


def retry_handlers() -> list[AsyncRetryHandler]:
    return [AsyncRateLimitErrorRetryHandler(max_retry_count=RATE_LIMIT_RETRIES),
            AsyncConnectionErrorRetryHandler(max_retry_count=2)]


def web_client(settings: Settings, token: str | None = None) -> AsyncWebClient:
    return AsyncWebClient(token=token, base_url=settings.slack_api_url,
                          retry_handlers=retry_handlers())


class SlackTokens:
    """The bot token for a workspace: the configured one, or the workspace's installation."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.installations: AsyncSQLAlchemyInstallationStore | None = None
        self.states: AsyncSQLAlchemyOAuthStateStore | None = None
        if settings.slack_bot_token is None:
            if not (settings.slack_client_id and settings.slack_client_secret):
                raise ConfigurationError(
                    "Slack needs SLACK_BOT_TOKEN (one workspace) or SLACK_CLIENT_ID and "
                    "SLACK_CLIENT_SECRET (installs by OAuth); see README, 'Connect to Slack'.")
            self.installations = AsyncSQLAlchemyInstallationStore(
                client_id=settings.slack_client_id, engine=store.engine)
            self.states = AsyncSQLAlchemyOAuthStateStore(
                expiration_seconds=OAUTH_STATE_TTL_S, engine=store.engine)

    async def bot_token(self, team_id: str) -> str:
        if self.settings.slack_bot_token is not None:
            return self.settings.slack_bot_token.get_secret_value()
        assert self.installations is not None
        bot = await self.installations.async_find_bot(enterprise_id=None, team_id=team_id)
        if bot is None or not bot.bot_token:
            raise ConfigurationError(f"Sluice is not installed in Slack workspace {team_id}; "
                                     "install it from /slack/install.")
        return bot.bot_token

    async def client(self, team_id: str) -> AsyncWebClient:
        return web_client(self.settings, await self.bot_token(team_id))
