"""IMAP polling against a real Dovecot server on loopback (see tests/_dovecot.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bot.deps import BotDeps
from bot.email.imap import poll_once
from core.errors import ConfigurationError
from infra.redis import EmbeddedRedis
from tests._dovecot import DOVECOT, MISSING, Dovecot
from tests._dovecot import dovecot as running_dovecot
from tests._stack import Stack
from tests.test_email_flow import ANA, ENV, FIXTURES, compose

pytestmark = pytest.mark.skipif(DOVECOT is None, reason=MISSING)
USER = "sluice"
PASSWORD = "imap-test-password"


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    with running_dovecot(user=USER, password=PASSWORD) as server:
        yield server


def imap_env(server: Dovecot, password: str = PASSWORD) -> dict[str, str]:
    return {**ENV, "SLUICE_IMAP_HOST": "127.0.0.1", "SLUICE_IMAP_PORT": str(server.port),
            "SLUICE_IMAP_SSL": "false", "SLUICE_IMAP_USER": USER,
            "SLUICE_IMAP_PASSWORD": password, "SLUICE_IMAP_EVERY_S": "0.2"}


async def test_poll_reads_unseen_messages_once(redis_server: EmbeddedRedis, tmp_path: Path,
                                               dovecot: Dovecot) -> None:
    async with Stack.running(redis_url=redis_server.url, home=tmp_path, env=ENV) as stack:
        settings = stack.settings.model_copy(update={
            "imap_host": "127.0.0.1", "imap_port": dovecot.port, "imap_ssl": False,
            "imap_user": USER, "imap_password": PASSWORD})
        deps = BotDeps(settings=settings, store=stack.store, redis=stack.redis)
        dovecot.deliver("fwd", (FIXTURES / "outlook_forward.eml").read_bytes().replace(
            b"ben@acme.example", ANA.encode()))
        dovecot.deliver("ask", compose("Count the signups", message_id="<imap.2@acme.example>"))
        assert await poll_once(deps) == 2
        assert await poll_once(deps) == 0  # flagged \Seen: not read again
        threads = await stack.ok("GET", "/api/threads")
        assert sorted(t["title"] for t in threads) == ["FW: Purchase order PO-7731", "Signups"]
        outlook = next(t for t in threads if t["title"].startswith("FW:"))
        [files] = await stack.messages(outlook["id"], "files")
        assert files["attachments"][0]["name"] == "PO-7731.pdf"
        acks = [m for m in await stack.outbox_mails() if ANA in m["recipients"]]
        assert len(acks) == 2


async def test_wrong_password_says_which_setting(redis_server: EmbeddedRedis, tmp_path: Path,
                                                 dovecot: Dovecot) -> None:
    async with Stack.running(redis_url=redis_server.url, home=tmp_path, env=ENV) as stack:
        settings = stack.settings.model_copy(update={
            "imap_host": "127.0.0.1", "imap_port": dovecot.port, "imap_ssl": False,
            "imap_user": USER, "imap_password": "wrong"})
        deps = BotDeps(settings=settings, store=stack.store, redis=stack.redis)
        with pytest.raises(ConfigurationError, match="SLUICE_IMAP_PASSWORD"):
            await poll_once(deps)


async def test_the_bot_polls_imap_when_configured(redis_server: EmbeddedRedis, tmp_path: Path,
                                                  dovecot: Dovecot) -> None:
    dovecot.deliver("ask", compose("Count the signups"))
    async with Stack.running(redis_url=redis_server.url, home=tmp_path,
                             env=imap_env(dovecot)) as stack:
        async with asyncio.timeout(30):
            while not await stack.ok("GET", "/api/threads"):
                await asyncio.sleep(0.05)
        [thread] = await stack.ok("GET", "/api/threads")
        assert thread["surface"] == "email"


@pytest.fixture
async def silent_imap() -> AsyncIterator[int]:
    """An IMAP server that greets, then never answers (CAPABILITY goes unanswered); its port."""
    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"* OK ready\r\n")
        await writer.drain()
        with contextlib.suppress(ConnectionError):
            await reader.read()  # until the client goes
        writer.close()

    server = await asyncio.start_server(greet, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()


def _imap_tasks() -> list[str]:
    return [name for t in asyncio.all_tasks() if not t.done()
            and "IMAP4" in (name := t.get_coro().__qualname__)]  # type: ignore[union-attr]


async def test_a_server_that_stalls_after_its_greeting_times_out_the_poll(
        redis_server: EmbeddedRedis, tmp_path: Path, silent_imap: int) -> None:
    async with Stack.running(redis_url=redis_server.url, home=tmp_path, env=ENV) as stack:
        settings = stack.settings.model_copy(update={
            "imap_host": "127.0.0.1", "imap_port": silent_imap, "imap_ssl": False,
            "imap_user": USER, "imap_password": PASSWORD})
        deps = BotDeps(settings=settings, store=stack.store, redis=stack.redis)
        async with asyncio.timeout(10):  # it used to wait for ever
            with pytest.raises(TimeoutError):
                await poll_once(deps, login_timeout_s=0.5)
            # Cancelled while it waits for the server (the bot stopping): it ends at once too.
            poll = asyncio.create_task(poll_once(deps))
            await asyncio.sleep(0.3)
            poll.cancel()
            with pytest.raises(asyncio.CancelledError):
                await poll
        await asyncio.sleep(0)
        assert _imap_tasks() == []  # nothing of the client is left behind
