"""Settings, read once at an entry point from an environment mapping (STYLE.md rule 4).

Every variable has the `SLUICE_` prefix except the conventional `REDIS_URL` and `DATABASE_URL`,
which are honoured as-is (the prefixed spelling works too). A `.env` file in the working directory
is read as well. A bad value fails at start with the variable's name and the fix.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import AliasChoices, Field, PrivateAttr, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings.sources.utils import parse_env_vars

from core.errors import ConfigurationError
from core.types import Synchronous


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SLUICE_", env_file=".env", extra="ignore", populate_by_name=True
    )

    home: Path = Field(default=Path(".sluice"), description="State folder: database, Redis, files.")
    redis_url: str | None = Field(
        default=None, validation_alias=AliasChoices("SLUICE_REDIS_URL", "REDIS_URL")
    )
    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("SLUICE_DATABASE_URL", "DATABASE_URL")
    )
    sqlite_synchronous: Synchronous = Field(
        default="normal", description="SQLite's `synchronous` (WAL mode): `normal` keeps every "
        "commit through any crash of a process; `full` also through a power loss, at an fsync "
        "per commit.")

    console_host: str = "127.0.0.1"
    console_port: int = Field(default=8700, ge=0, le=65535)
    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(default=8725, ge=0, le=65535, description="Local SMTP outbox port.")
    mail_from: str = "sluice@localhost"
    smtp_dedups_message_id: bool = Field(
        default=True, description="The SMTP server drops a repeated Message-ID (the local outbox "
        "does), so an unconfirmed send may be redone after a crash. Set false for a relay.")
    smtp_is_outbox: bool = Field(
        default=True, description="The SMTP server is Sluice's local outbox, which stores what it "
        "receives in Sluice's database: after a crash, a send left unconfirmed is looked up there "
        "instead of sent again. Set false for a relay.")

    # Email in (inbound SMTP in the bot process; `sluice up` turns it on) and signed links.
    email_inbound: bool = Field(default=False, description="Start the inbound SMTP server.")
    email_host: str = "127.0.0.1"
    email_port: int = Field(default=8726, ge=0, le=65535, description="Inbound SMTP port.")
    email_allow: str = Field(default="", description="Comma-separated senders who may start "
                             "work by email: addresses, or @domain for a whole domain.")
    email_max_mb: float = Field(default=10.0, gt=0, le=100)
    signing_key: str | None = Field(default=None, description="Signs console approval links "
                                    "sent by email; none, no links.")
    link_days: float = Field(default=7.0, gt=0, le=90, description="How long a signed link in "
                             "an email stays valid.")
    public_url: str | None = Field(default=None, description="The console's address as "
                                   "people reach it (links in email); default host and port.")

    imap_host: str | None = Field(default=None, description="Poll this IMAP server instead "
                                  "of (or besides) inbound SMTP.")
    imap_port: int = Field(default=993, ge=1, le=65535)
    imap_ssl: bool = True
    imap_user: str | None = None
    imap_password: str | None = None
    imap_every_s: float = Field(default=30.0, gt=0)

    # Models. With no key, every task kind goes to the scripted model server.
    model: str = Field(default="openai/gpt-4o-mini", description="litellm model for planning.")
    model_api_key: str | None = None
    model_api_base: str | None = None
    scripted_model_url: str | None = Field(
        default=None, description="Base URL of a running scripted model server (set by `up`)."
    )
    scripted_scenario: Path | None = None
    scripted_price_as: str = Field(
        default="gpt-4o-mini", description="Known model whose prices the scripted model reports."
    )
    model_timeout_s: float = Field(default=60.0, gt=0)
    models_file: Path | None = Field(
        default=None, description="YAML or TOML file mapping task kinds to model chains "
        "(default: HOME/models.yaml or HOME/models.toml when present).")
    plan_rounds: int = Field(default=3, ge=1, le=10)
    plan_sample_items: int = Field(default=3, ge=0, le=100, description="Items the planner's "
                                   "sample run visits (0: no sample run).")
    plan_sample_wall_s: float = Field(default=120.0, gt=0)
    plan_typecheck: bool = Field(default=True, description="Type-check programs with mypy.")
    typecheck_cache_dir: Path | None = Field(default=None, description="mypy's cache (default: "
                                             "~/.cache/sluice/mypy, shared by checkouts).")
    auto_approve_below_usd: float = Field(
        default=0.05, ge=0, description="A plan estimated below this, with no writes, runs at "
        "once without asking (0: always ask).")

    # Integrations (local defaults).
    sheets_dir: Path | None = None
    mailbox_dir: Path | None = None

    files_dir: Path | None = Field(default=None, description="Uploaded files programs can "
                                   "read (integrations.files); default: files/ in the home.")

    # Connections to other services (integrations.vault, `sluice connect`).
    workspace: str = Field(default="default", min_length=1, max_length=100,
                           description="Whose connections a worker loads from the vault.")
    vault_key: str | None = Field(
        default=None, description="Fernet key that encrypts stored credentials; without it, "
        "a key file in the state folder (vault.key) is created on first use.")

    # Sandbox limits.
    sandbox_cpu_s: int = Field(default=300, ge=1)
    sandbox_wall_s: float = Field(default=3600.0, gt=0)
    sandbox_memory_mb: int = Field(default=2048, ge=64)
    sandbox_output_kb: int = Field(default=256, ge=1)
    sandbox_isolation: str = Field(
        default="auto", pattern="^(auto|bwrap|unshare|rlimits)$",
        description="auto picks the strongest available.",
    )

    run_budget_usd: float = Field(
        default=1.0, ge=0, description="Spend at which a run pauses and asks (at least twice "
        "the plan's estimate).")

    keep_connections_s: float = Field(default=300.0, ge=0, description="How long a worker "
                                      "keeps a connection to an MCP server or a mail account "
                                      "open after its last use, for the next plan or run.")
    lease_ttl_s: float = Field(default=10.0, gt=0, description="A running job's lease; a "
                               "run whose worker stops renewing it resumes elsewhere.")
    sweep_every_s: float = Field(default=5.0, gt=0, description="How often workers look for "
                                 "runs whose lease expired.")

    worker_poll_delay_s: float = Field(default=0.05, gt=0)

    # Slack (bot/slack). Single workspace: bot token + signing secret; several workspaces:
    # client id + secret + signing secret (OAuth); Socket Mode when an app token is set.
    slack_bot_token: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("SLUICE_SLACK_BOT_TOKEN", "SLACK_BOT_TOKEN"))
    slack_signing_secret: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("SLUICE_SLACK_SIGNING_SECRET", "SLACK_SIGNING_SECRET"))
    slack_app_token: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("SLUICE_SLACK_APP_TOKEN", "SLACK_APP_TOKEN"))
    slack_client_id: str | None = Field(
        default=None, validation_alias=AliasChoices("SLUICE_SLACK_CLIENT_ID", "SLACK_CLIENT_ID"))
    slack_client_secret: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("SLUICE_SLACK_CLIENT_SECRET", "SLACK_CLIENT_SECRET"))
    slack_api_url: str = Field(
        default="https://slack.com/api/", pattern="^https?://.+/$",
        validation_alias=AliasChoices("SLUICE_SLACK_API_URL", "SLACK_API_URL"),
        description="Slack Web API base URL, ending in '/' (GovSlack, Enterprise proxies).")
    slack_approvers: str = Field(
        default="", description="Comma-separated Slack user ids (U…) who may decide any plan or "
        "run, besides the person who asked.")
    slack_min_interval_s: float = Field(
        default=1.0, ge=0, description="Least time between two Slack writes in one channel "
        "(chat.postMessage allows about one a second per channel).")

    # The environment these settings were read from, for values named indirectly (a models
    # file's `api_key_env`). Private: never in repr, dumps or errors.
    _environ: Mapping[str, str] = PrivateAttr(default_factory=dict)

    def environ_value(self, name: str) -> str | None:
        """The variable `name` from the environment mapping (or .env) these settings came from."""
        return self._environ.get(name) or None

    @property
    def using_scripted_model(self) -> bool:
        return not self.model_api_key

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.home / 'sluice.db').resolve()}"

    @property
    def effective_sheets_dir(self) -> Path:
        return self.sheets_dir or self.home / "sheets"

    @property
    def effective_mailbox_dir(self) -> Path:
        return self.mailbox_dir or self.home / "mailbox"

    @property
    def effective_public_url(self) -> str:
        return (self.public_url or f"http://{self.console_host}:{self.console_port}").rstrip("/")

    @property
    def effective_files_dir(self) -> Path:
        return self.files_dir or self.home / "files"

    @field_validator("slack_bot_token", "slack_signing_secret", "slack_app_token",
                     "slack_client_id", "slack_client_secret", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """`SLACK_BOT_TOKEN=` (an empty line in .env) means not set."""
        return None if value == "" else value

    @property
    def slack_enabled(self) -> bool:
        """Whether the Slack surface starts: a bot token or OAuth client credentials are set."""
        return bool(self.slack_bot_token or (self.slack_client_id and self.slack_client_secret))

    @property
    def slack_approver_ids(self) -> frozenset[str]:
        return frozenset(u.strip() for u in self.slack_approvers.split(",") if u.strip())

    def require_redis_url(self) -> str:
        if not self.redis_url:
            raise ConfigurationError(
                "REDIS_URL is not set. Start everything with `sluice up` (it runs an embedded "
                "Redis), or set REDIS_URL=redis://host:6379/0."
            )
        return self.redis_url


class _MappingEnvSource(EnvSettingsSource):
    """The environment source, reading a mapping we were handed instead of `os.environ`."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(dict(self._environ), self.case_sensitive, self.env_ignore_empty,
                              self.env_parse_none_str)


def load_settings(environ: Mapping[str, str] | None = None, *, env_file: bool = True) -> Settings:
    """Read settings once from `environ` (default: the process environment) and `.env`.

    Raises:
        ConfigurationError: naming each bad variable and what it expects.
    """
    source_env = os.environ if environ is None else environ

    class _Settings(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            mapped = _MappingEnvSource(settings_cls, source_env)
            return (init_settings, mapped, dotenv_settings) if env_file else (init_settings, mapped)

    try:
        settings = _Settings()
    except ValidationError as exc:
        raise ConfigurationError(_explain(exc)) from None
    settings._environ = {**(_dotenv_values() if env_file else {}), **source_env}
    return settings


def _dotenv_values() -> dict[str, str]:
    """Every variable of `.env` in the working directory (a models file's keys may live there)."""
    from dotenv import dotenv_values

    path = Path(".env")
    if not path.is_file():
        return {}
    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def _explain(exc: ValidationError) -> str:
    lines = ["Sluice could not start because of its settings:"]
    for err in exc.errors():
        name = "SLUICE_" + "_".join(str(p) for p in err["loc"]).upper()
        lines.append(f"- {name}: {err['msg']} (got {err.get('input')!r}). Fix it in the "
                     "environment or in .env.")
    return "\n".join(lines)
