"""Services that can be connected, and the catalog of one workspace's integrations.

See ARCHITECTURE.md, "AI-friendly integrations". A service module declares one `Service`: the
credential fields `sluice connect SERVICE` asks for and a factory that turns stored
`Credentials` into an `Integration`. Registering a service is one line in `SERVICES` ("name":
"module:attribute"); modules load only when their service is used, so a connector's SDK costs
nothing to workspaces that do not use it.

`build_catalog()` is what workers call: the local integrations (sheets, mail, ai) plus one
integration per stored connection of the workspace, under the connection's name, with every secret
value handed to the catalog to scrub.
"""

from __future__ import annotations

import importlib
import keyword
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine

from core.errors import ConfigurationError, InvalidInputError, SluiceError
from core.protocols import Completion, ModelClient
from core.settings import Settings
from core.store import Store
from integrations.ai import AI
from integrations.base import Integration
from integrations.catalog import Catalog, local_integrations, scrub
from integrations.files import Files
from integrations.kept import KeptConnections
from integrations.vault import Credentials, Vault

logger = logging.getLogger(__name__)
IntegrationT = TypeVar("IntegrationT", bound=Integration)

# Service name -> "module:attribute" of its `Service`. One line per service.
SERVICES: dict[str, str] = {
    "airtable": "integrations.saas.services:AIRTABLE",
    "google_docs": "integrations.saas.services:GOOGLE_DOCS",
    "google_sheets": "integrations.saas.services:GOOGLE_SHEETS",
    "hubspot": "integrations.saas.services:HUBSPOT",
    "imap": "integrations.imap:SERVICE",
    "mcp": "integrations.mcp_client:SERVICE",
    "quickbooks": "integrations.saas.services:QUICKBOOKS",
    "sql": "integrations.sql:SERVICE",
}
# Names a connection may not take: the local integrations and the program's runtime names.
RESERVED = frozenset({"sheets", "mail", "ai", "files", "each", "now", "today", "Row",
                      "IntegrationError", "print", "len", "range", "list", "dict"})


@dataclass(frozen=True)
class CredentialField:
    """One thing `sluice connect` asks for. `secret` values are never shown or logged."""

    name: str
    prompt: str
    secret: bool = False
    required: bool = True
    default: str | None = None


Factory = Callable[[Credentials, Settings], Integration]


@dataclass(frozen=True)
class Service:
    """A kind of connection: what to ask for, and how to build its integration."""

    name: str
    summary: str
    fields: tuple[CredentialField, ...]
    factory: Factory

    def check(self, fields: Mapping[str, str]) -> dict[str, str]:
        """The fields to store: known names only, required ones present, defaults filled in.

        Raises:
            InvalidInputError: naming the unknown or missing fields and the ones expected.
        """
        known = {f.name: f for f in self.fields}
        unknown = sorted(set(fields) - set(known))
        expected = ", ".join(f"{f.name}{'' if f.required else ' (optional)'}"
                             for f in self.fields)
        if unknown:
            raise InvalidInputError(f"{self.name} has no field {', '.join(unknown)}. Fields: "
                                    f"{expected}.", fields=unknown)
        result = {name: str(value) for name, value in fields.items() if str(value) != ""}
        for field in self.fields:
            if field.name not in result and field.default is not None:
                result[field.name] = field.default
        missing = [f.name for f in self.fields if f.required and f.name not in result]
        if missing:
            raise InvalidInputError(f"{self.name} needs {', '.join(missing)}. Fields: "
                                    f"{expected}.", fields=missing)
        return result


def register(name: str, target: str) -> None:
    """Make the `Service` at "module:attribute" connectable as `name` (plugins, tests)."""
    SERVICES[name] = target


def service(name: str) -> Service:
    """The service called `name`. Raises InvalidInputError listing the services there are."""
    target = SERVICES.get(name)
    if target is None:
        raise InvalidInputError(f"There is no service {name!r} to connect. Services: "
                                f"{', '.join(sorted(SERVICES))}.", service=name)
    module, _, attribute = target.partition(":")
    found = getattr(importlib.import_module(module), attribute)
    if not isinstance(found, Service):
        raise TypeError(f"{target} is not a Service")
    return found


def check_connection_name(name: str) -> str:
    """`name` if a program can use it as a variable; else InvalidInputError saying why."""
    if not name.isidentifier() or keyword.iskeyword(name) or name.startswith("_"):
        raise InvalidInputError(f"{name!r} cannot be a connection name: programs use it as a "
                                "variable, so use letters, digits and _ (e.g. 'crm', "
                                "'warehouse').", name=name)
    if name in RESERVED:
        raise InvalidInputError(f"{name!r} is taken by Sluice itself; pick another name with "
                                "--name.", name=name)
    return name


def named(cls: type[IntegrationT], name: str) -> type[IntegrationT]:
    """`cls` under another program name (a second SQL database called `warehouse`, say)."""
    if getattr(cls, "name", None) == name:
        return cls
    return type(cls.__name__, (cls,), {"name": name, "__doc__": cls.__doc__,
                                       "__module__": cls.__module__})


def build_integration(credentials: Credentials, settings: Settings) -> Integration:
    """The integration for one stored connection, named as the connection."""
    spec = service(credentials.service)
    credentials.secret_fields = frozenset(f.name for f in spec.fields if f.secret)
    integration = spec.factory(credentials, settings)
    if integration.name != credentials.name:
        raise TypeError(f"the {spec.name} factory named its integration {integration.name!r}, "
                        f"not {credentials.name!r}; use registry.named()")
    return integration


async def build_catalog(
    settings: Settings,
    models: ModelClient,
    *,
    engine: AsyncEngine,
    thread_id: str | None = None,
    on_completion: Callable[[Completion], None] | None = None,
    kept: KeptConnections | None = None,
) -> Catalog:
    """The local integrations, `files` (with `thread_id`'s attachments), and the workspace's
    connections, every secret value handed to the catalog to scrub.

    A connection that cannot be built (its service was removed, its fields are wrong) is left out
    with a warning naming it, so one broken connection does not stop every job. With `kept` (a
    worker's), connections to servers stay open between catalogs (`integrations.kept`).
    """
    integrations = local_integrations(settings, models, on_completion=on_completion,
                                      delivered=Store(engine).outbox_has)
    ai = next(i for i in integrations if isinstance(i, AI))
    integrations.append(Files(folder=settings.effective_files_dir, ai=ai, engine=engine,
                              thread_id=thread_id))
    secrets = [settings.model_api_key or ""]
    try:
        stored = await Vault.from_settings(settings, engine).load_all(settings.workspace)
    except ConfigurationError as exc:
        logger.error("the workspace's connections are left out: %s", exc.message)
        stored = []
    for credentials in stored:
        try:
            integrations.append(await build_integration(credentials, settings).ready(kept=kept))
        except Exception as exc:  # one broken connection must not stop every job
            why = exc.message if isinstance(exc, SluiceError) else type(exc).__name__
            logger.warning("connection %r (%s) left out: %s", credentials.name,
                           credentials.service, scrub(why, credentials.secrets()))
        secrets += credentials.secrets()
    return Catalog(integrations, secrets=secrets)
