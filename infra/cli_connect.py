"""`sluice connect SERVICE` and `sluice connections list | remove NAME`: the credentials vault.

`connect` asks for the service's fields (secrets without echo) or reads them from a JSON object
(`--from-json FILE`, `-` for standard input), checks that the connection works by describing
it, and stores it encrypted in the workspace's vault (integrations.vault). Values are never
printed; an error that quotes one shows *** instead.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from core.errors import ConfigurationError, InvalidInputError, SluiceError
from core.settings import Settings
from infra.cli_database import run_with_database
from integrations.catalog import scrub
from integrations.registry import (
    SERVICES,
    Service,
    build_integration,
    check_connection_name,
    service,
)
from integrations.vault import KEY_FILE, Credentials, Vault

connections_app = typer.Typer(help="List and remove stored connections.", no_args_is_help=True)
out = Console()
err = Console(stderr=True)
T = TypeVar("T")


def _with_vault(work: Callable[[Settings, Vault], Awaitable[T]]) -> T:
    return run_with_database(
        lambda settings, engine: work(settings, Vault.from_settings(settings, engine)))


def connect_command(
    service_name: Annotated[str, typer.Argument(
        metavar="SERVICE", help=f"One of: {', '.join(sorted(SERVICES))}.")],
    name: Annotated[str | None, typer.Option(
        help="The name programs use for it (default: the service's name).")] = None,
    from_json: Annotated[Path | None, typer.Option(
        "--from-json", help="Read the fields from a JSON object in this file ('-': stdin).")]
        = None,
    check: Annotated[bool, typer.Option(help="Check the connection works before storing it.")]
        = True,
) -> None:
    """Store a service's credentials, encrypted, so jobs can use it as an integration."""
    try:
        spec = service(service_name)
        connection = check_connection_name(name or spec.name)
        fields = spec.check(_read_json(from_json) if from_json else _ask(spec))
    except InvalidInputError as exc:
        err.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(2) from None

    async def work(settings: Settings, vault: Vault) -> None:
        credentials = Credentials(connection, spec.name, fields)
        if check:
            await _check(credentials, settings)
        await vault.put(settings.workspace, connection, spec.name, fields)
        key_from = "SLUICE_VAULT_KEY" if settings.vault_key else str(settings.home / KEY_FILE)
        out.print(f"Stored [bold]{connection}[/bold] ({spec.name}) in workspace "
                  f"'{settings.workspace}'; programs use it as `{connection}`. It is encrypted "
                  f"with the key in {key_from}: keep a copy, without it the credentials are lost.")

    _with_vault(work)


async def _check(credentials: Credentials, settings: Settings) -> None:
    """Build the integration and describe it; a failure stops here, with secrets scrubbed."""
    try:
        integration = build_integration(credentials, settings)
    except SluiceError as exc:
        raise ConfigurationError(scrub(exc.message, credentials.secrets())) from None
    try:
        integration = await integration.ready()
        described = await integration.describe()
    except Exception as exc:
        text = exc.message if isinstance(exc, SluiceError) else f"{type(exc).__name__}: {exc}"
        raise ConfigurationError(
            f"Could not reach {credentials.service} with these settings: "
            f"{scrub(text, credentials.secrets())}. Nothing was stored; fix the fields and try "
            "again, or store them anyway with --no-check.") from None
    finally:
        await integration.aclose()
    out.print(f"Connected: {_summary(described)}")


def _summary(described: dict[str, Any]) -> str:
    names = list(described)
    shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
    return shown or "it answers (nothing to list)"


def _read_json(path: Path) -> dict[str, str]:
    text = sys.stdin.read() if str(path) == "-" else path.read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"{path} is not JSON ({exc.msg} at line {exc.lineno}); give "
                                'an object such as {"url": "..."}.') from None
    if not isinstance(data, dict) or not all(isinstance(v, str | int | float | bool)
                                             for v in data.values()):
        raise InvalidInputError(f"{path} must hold one JSON object of field name -> text, such "
                                'as {"url": "..."}.')
    return {str(k): str(v) for k, v in data.items()}


def _ask(spec: Service) -> dict[str, str]:
    out.print(f"Connecting {spec.name}: {spec.summary}")
    answers: dict[str, str] = {}
    for field in spec.fields:
        default = field.default if field.default is not None else (
            None if field.required else "")
        answers[field.name] = str(typer.prompt(field.prompt, default=default,
                                               hide_input=field.secret,
                                               show_default=not field.secret and bool(default)))
    return answers


@connections_app.command("list")
def list_connections() -> None:
    """The workspace's connections: names, services and field names (never values)."""
    infos = _with_vault(lambda settings, vault: vault.list(settings.workspace))
    if not infos:
        out.print("No connections yet. Add one with `sluice connect SERVICE`.")
        return
    table = Table()
    for column in ("name", "service", "fields", "updated"):
        table.add_column(column)
    for info in infos:
        table.add_row(info.name, info.service, ", ".join(info.fields),
                      info.updated_at.strftime("%Y-%m-%d %H:%M"))
    out.print(table)


@connections_app.command("remove")
def remove_connection(name: str) -> None:
    """Forget a connection and its credentials."""
    removed = _with_vault(lambda settings, vault: vault.remove(settings.workspace, name))
    if not removed:
        err.print(f"[red]There is no connection {name!r}. See `sluice connections list`.[/red]")
        raise typer.Exit(1)
    out.print(f"Removed {name}.")
