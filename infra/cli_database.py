"""The database as the command line opens it: settings from the environment, the engine, the
schema brought up to date, and a SluiceError printed in red with exit status 1.

Shared by the commands that read or change what Sluice stored (`jobs`, `automations`,
`connect`/`connections`, `plan`, `rules`).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import typer
from rich.console import Console
from sqlalchemy.ext.asyncio import AsyncEngine

from core.db import engine_for, migrate
from core.errors import SluiceError
from core.settings import Settings, load_settings

T = TypeVar("T")


@asynccontextmanager
async def opened_database(settings: Settings) -> AsyncIterator[AsyncEngine]:
    """The engine of the configured database, migrated; disposed of on the way out."""
    engine = engine_for(settings)
    try:
        await migrate(engine)
        yield engine
    finally:
        await engine.dispose()


def run_with_database(work: Callable[[Settings, AsyncEngine], Awaitable[T]]) -> T:
    """Run `work(settings, engine)` to completion; a SluiceError becomes its message on stderr
    and exit status 1."""
    async def main() -> T:
        settings = load_settings(dict(os.environ))
        async with opened_database(settings) as engine:
            return await work(settings, engine)

    try:
        return asyncio.run(main())
    except SluiceError as exc:
        Console(stderr=True).print(f"[red]{exc.message}[/red]")
        raise typer.Exit(1) from None
