"""Local HTTP fakes of SaaS APIs, following each vendor's published endpoints and error bodies.

Each fake is an aiohttp application served on a random loopback port (`serve`); the official SDK
under test is pointed at it with its base URL. A fake keeps its state in plain Python objects
the test can read to see what a user would see in the vendor's UI.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web


@asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    """Serve `app` on 127.0.0.1 with a free port; yields its base URL (no trailing slash)."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
