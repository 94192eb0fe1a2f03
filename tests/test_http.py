"""Retries, Retry-After and pagination (integrations.http) against a real loopback server."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from core.errors import IntegrationError
from integrations.http import (
    Retry,
    RetryPolicy,
    classify_status,
    collect,
    pages,
    retry_after_seconds,
    with_retries,
)


class StatusError(Exception):
    def __init__(self, status: int, headers: dict[str, str]) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.headers = headers


def by_status(exc: BaseException) -> Retry | None:
    return classify_status(exc.status, exc.headers) if isinstance(exc, StatusError) else None


class Server:
    """Answers each path with the next scripted (status, headers) and counts the requests."""

    def __init__(self) -> None:
        self.script: dict[str, list[tuple[int, dict[str, str]]]] = {}
        self.hits: dict[str, int] = {}
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        path = request.path
        self.hits[path] = self.hits.get(path, 0) + 1
        if path == "/items":
            return self.page(request)
        queue = self.script.get(path) or [(200, {})]
        status, headers = queue.pop(0) if len(queue) > 1 else queue[0]
        return web.json_response({"ok": status == 200}, status=status, headers=headers)

    def page(self, request: web.Request) -> web.Response:
        start = int(request.query.get("after", "0"))
        items = list(range(start, min(start + 3, 8)))
        more = {"next": str(items[-1] + 1)} if items and items[-1] + 1 < 8 else {}
        return web.json_response({"results": items, "paging": more})


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    fake = Server()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    fake.url = f"http://127.0.0.1:{port}"
    yield fake
    await runner.cleanup()


async def _get(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as response:
        if response.status != 200:
            raise StatusError(response.status, dict(response.headers))
        return await response.json()


async def test_rate_limit_is_retried_after_the_servers_wait(server: Server) -> None:
    server.script["/contacts"] = [(429, {"Retry-After": "7"}), (503, {}), (200, {})]
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    async with aiohttp.ClientSession() as session:
        result = await with_retries(lambda: _get(session, f"{server.url}/contacts"),
                                    idempotent=True, classify=by_status, sleep=sleep)
    assert result == {"ok": True}
    assert server.hits["/contacts"] == 3
    assert waits[0] == 7.0 and 0.5 <= waits[1] <= 1.0  # the server's wait, then back-off


async def test_writes_are_retried_on_429_only(server: Server) -> None:
    server.script["/send"] = [(503, {}), (200, {})]
    server.script["/create"] = [(429, {"Retry-After": "0"}), (200, {})]

    async def sleep(seconds: float) -> None:
        return None

    async with aiohttp.ClientSession() as session:
        with pytest.raises(StatusError):
            await with_retries(lambda: _get(session, f"{server.url}/send"), idempotent=False,
                               classify=by_status, sleep=sleep)
        assert await with_retries(lambda: _get(session, f"{server.url}/create"),
                                  idempotent=False, classify=by_status, sleep=sleep)
    assert server.hits == {"/send": 1, "/create": 2}


async def test_final_errors_and_exhausted_retries_are_raised(server: Server) -> None:
    server.script["/missing"] = [(404, {})]
    server.script["/down"] = [(503, {})]

    async def sleep(seconds: float) -> None:
        return None

    async with aiohttp.ClientSession() as session:
        with pytest.raises(StatusError, match="404"):
            await with_retries(lambda: _get(session, f"{server.url}/missing"),
                               idempotent=True, classify=by_status, sleep=sleep)
        with pytest.raises(StatusError, match="503"):
            await with_retries(lambda: _get(session, f"{server.url}/down"), idempotent=True,
                               classify=by_status, sleep=sleep, policy=RetryPolicy(attempts=3))
    assert server.hits == {"/missing": 1, "/down": 3}


async def test_a_long_retry_after_fails_now_with_a_clear_message(server: Server) -> None:
    server.script["/slow"] = [(429, {"Retry-After": "3600"})]
    async with aiohttp.ClientSession() as session:
        with pytest.raises(IntegrationError) as info:
            await with_retries(lambda: _get(session, f"{server.url}/slow"), idempotent=True,
                               classify=by_status, what="hubspot.search")
    assert info.value.message == (
        "hubspot.search is rate limited: the service asks to wait 3600 s, longer than 120 s. "
        "Try again later or with fewer calls.")


def test_retry_after_as_http_date() -> None:
    now = dt.datetime(2026, 11, 27, 1, 0, 0, tzinfo=dt.UTC)
    assert retry_after_seconds("Fri, 27 Nov 2026 01:00:30 GMT", now=now) == 30.0
    assert retry_after_seconds("Fri, 27 Nov 2026 00:59:00 GMT", now=now) == 0.0
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None


async def test_pages_walks_every_page(server: Server) -> None:
    async with aiohttp.ClientSession() as session:
        async def fetch(cursor: str | None) -> tuple[list[int], str | None]:
            url = f"{server.url}/items" + (f"?after={cursor}" if cursor else "")
            body = await _get(session, url)
            return body["results"], body["paging"].get("next")

        assert await collect(pages(fetch)) == list(range(8))
        assert server.hits["/items"] == 3
        assert await collect(pages(fetch, limit=4)) == [0, 1, 2, 3]

    async def stuck(cursor: str | None) -> tuple[list[int], str | None]:
        return [1], "same"

    with pytest.raises(IntegrationError, match="cursor 'same' twice"):
        await collect(pages(stuck))
