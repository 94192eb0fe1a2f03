"""The credentials vault: connections' secrets, encrypted at rest, per workspace.

See ARCHITECTURE.md, "The sandbox holds no secrets". Credentials are stored in the `credentials`
table as one Fernet token per connection (the fields as JSON), keyed by workspace and connection
name. The key comes from `SLUICE_VAULT_KEY`, else from `vault.key` in the state folder, created
with mode 0600 the first time something is stored. Only the worker decrypts them, to build the
integration objects that hold them; programs, prompts, logs, the journal and error messages never
see a value (the catalog scrubs every secret value from messages, see `Credentials.secrets`).
"""

from __future__ import annotations

import builtins
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import delete, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from core.db import CredentialRow
from core.errors import ConfigurationError, NotFoundError
from core.settings import Settings
from core.types import utcnow

KEY_FILE = "vault.key"


class Credentials(dict[str, str]):
    """One connection's fields (values are secrets), with its `name` and `service`.

    `secret_fields` names the fields whose values are scrubbed from messages (all of them until
    the service's declaration narrows it); URL-valued fields contribute their password too.
    """

    def __init__(self, name: str, service: str, fields: Mapping[str, str], *,
                 secret_fields: frozenset[str] = frozenset()) -> None:
        super().__init__(fields)
        self.name = name
        self.service = service
        self.secret_fields = secret_fields

    def __repr__(self) -> str:  # never the values
        return f"Credentials({self.name!r}, {self.service!r}, fields={sorted(self)})"

    def secrets(self) -> builtins.list[str]:
        """The values to scrub from anything a program or a log sees."""
        found: builtins.list[str] = []
        for field, value in self.items():
            if field in self.secret_fields and value:
                found.append(value)
                found += _json_values(value)
            password = _url_password(value)
            if password:
                found.append(password)
        return found


def _json_values(value: str) -> builtins.list[str]:
    """The values of a JSON object field (an MCP server's env or headers)."""
    if not value.lstrip().startswith("{"):
        return []
    try:
        data = json.loads(value)
    except json.JSONDecodeError:
        return []
    return [str(v) for v in data.values()] if isinstance(data, dict) else []


def _url_password(value: str) -> str | None:
    if "://" not in value:
        return None
    try:
        return make_url(value).password
    except (ArgumentError, ValueError):
        return None


@dataclass(frozen=True)
class ConnectionInfo:
    """What `sluice connections list` shows: never a value."""

    name: str
    service: str
    fields: builtins.list[str]
    created_at: datetime
    updated_at: datetime


def load_key(settings: Settings, *, create: bool) -> bytes | None:
    """The vault key: `SLUICE_VAULT_KEY`, else the key file (made, 0600, when `create`).

    Raises:
        ConfigurationError: the key is not a Fernet key, or the key file is readable by others.
    """
    if settings.vault_key:
        return _checked(settings.vault_key.encode(), "SLUICE_VAULT_KEY")
    path = settings.home / KEY_FILE
    if path.exists():
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise ConfigurationError(
                f"The vault key file {path} can be read by other users (mode {mode:o}). Run "
                f"`chmod 600 {path}`.")
        return _checked(path.read_bytes().strip(), str(path))
    if not create:
        return None
    return _create_key_file(path)


def _create_key_file(path: Path) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Fernet.generate_key()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first: use theirs
        return _checked(path.read_bytes().strip(), str(path))
    with os.fdopen(fd, "wb") as handle:
        handle.write(key + b"\n")
    return key


def _checked(key: bytes, source: str) -> bytes:
    try:
        Fernet(key)
    except (ValueError, TypeError):
        raise ConfigurationError(
            f"{source} is not a vault key (32 url-safe base64-encoded bytes). Make one with "
            "`python -c 'from cryptography.fernet import Fernet; "
            "print(Fernet.generate_key().decode())'`.") from None
    return key


class Vault:
    """Stored connections of every workspace. The key is read when first needed."""

    def __init__(self, engine: AsyncEngine, key: Callable[[bool], bytes | None]) -> None:
        """`key(create)` returns the Fernet key (None when there is none and `create` is False)."""
        self._session = async_sessionmaker(engine, expire_on_commit=False)
        self._key = key

    @classmethod
    def from_settings(cls, settings: Settings, engine: AsyncEngine) -> Vault:
        return cls(engine, lambda create: load_key(settings, create=create))

    async def put(self, workspace: str, name: str, service: str, fields: Mapping[str, str]) -> None:
        """Store (or replace) the connection `name` of `workspace`."""
        sealed = self._fernet(create=True).encrypt(json.dumps(dict(fields)).encode())
        async with self._session() as s, s.begin():
            row = await s.get(CredentialRow, (workspace, name))
            if row is None:
                s.add(CredentialRow(workspace=workspace, name=name, service=service,
                                    sealed=sealed, fields=sorted(fields), created_at=utcnow(),
                                    updated_at=utcnow()))
            else:
                row.service, row.sealed, row.fields = service, sealed, sorted(fields)
                row.updated_at = utcnow()

    async def get(self, workspace: str, name: str) -> Credentials:
        """The connection `name`'s credentials. Raises NotFoundError listing the connections."""
        async with self._session() as s:
            row = await s.get(CredentialRow, (workspace, name))
        if row is None:
            names = [info.name for info in await self.list(workspace)]
            raise NotFoundError(f"There is no connection {name!r} in workspace {workspace!r}. "
                                f"Connections: {', '.join(names) or 'none yet'}.", name=name)
        return self._open(row)

    async def list(self, workspace: str) -> builtins.list[ConnectionInfo]:
        async with self._session() as s:
            rows = (await s.scalars(select(CredentialRow)
                                    .where(CredentialRow.workspace == workspace)
                                    .order_by(CredentialRow.name))).all()
        return [ConnectionInfo(r.name, r.service, list(r.fields), r.created_at, r.updated_at)
                for r in rows]

    async def load_all(self, workspace: str) -> builtins.list[Credentials]:
        """Every connection of `workspace`, decrypted, by name."""
        async with self._session() as s:
            rows = (await s.scalars(select(CredentialRow)
                                    .where(CredentialRow.workspace == workspace)
                                    .order_by(CredentialRow.name))).all()
        return [self._open(row) for row in rows]

    async def remove(self, workspace: str, name: str) -> bool:
        """Forget the connection `name`; False when there was none."""
        async with self._session() as s, s.begin():
            result = await s.execute(delete(CredentialRow).where(
                CredentialRow.workspace == workspace, CredentialRow.name == name))
        return bool(getattr(result, "rowcount", 0))

    def _fernet(self, *, create: bool) -> Fernet:
        key = self._key(create)
        if key is None:
            raise ConfigurationError(
                "Connections are stored, but there is no vault key: set SLUICE_VAULT_KEY to the "
                "key they were stored with, or restore the vault.key file in the state folder.")
        return Fernet(key)

    def _open(self, row: CredentialRow) -> Credentials:
        try:
            data = json.loads(self._fernet(create=False).decrypt(row.sealed))
        except InvalidToken:
            raise ConfigurationError(
                f"The credentials of connection {row.name!r} cannot be decrypted with this "
                "vault key (SLUICE_VAULT_KEY or vault.key in the state folder is not the key "
                "they were stored with). Restore that key, or store them again with "
                f"`sluice connect {row.service} --name {row.name}`.", name=row.name) from None
        return Credentials(row.name, row.service, {str(k): str(v) for k, v in data.items()},
                           secret_fields=frozenset(data))
