"""IMAP polling, the alternative to inbound SMTP: read a mailbox's unseen messages.

With `SLUICE_IMAP_HOST` set, the bot logs in every `SLUICE_IMAP_EVERY_S` seconds, hands each
unseen message of INBOX to the same handler as inbound SMTP (`InboundMail`), then flags it
\\Seen. A message is fetched with BODY.PEEK, so one that could not be handled (the bot died
half-way) stays unseen and is read again; the mail log stores each message once.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from collections.abc import Awaitable

import aioimaplib

from bot.deps import BotDeps
from bot.email.inbound import InboundMail
from core.errors import ConfigurationError

log = logging.getLogger(__name__)
_LITERAL = re.compile(rb"\{(\d+)\}$")
_LOGIN_S = 30.0  # the greeting and the login together
_UNWIND_S = 5.0  # for aioimaplib's waits to finish once its client is dropped


class ImapError(ConfigurationError):
    code = "imap_error"


def _client(deps: BotDeps) -> aioimaplib.IMAP4:
    settings = deps.settings
    assert settings.imap_host is not None
    if settings.imap_ssl:
        return aioimaplib.IMAP4_SSL(host=settings.imap_host, port=settings.imap_port, timeout=30,
                                    ssl_context=ssl.create_default_context())
    return aioimaplib.IMAP4(host=settings.imap_host, port=settings.imap_port, timeout=30)


async def _log_in(deps: BotDeps, client: aioimaplib.IMAP4) -> None:
    settings = deps.settings
    await client.wait_hello_from_server()
    response = await client.login(settings.imap_user or "", settings.imap_password or "")
    if response.result != "OK":
        raise ImapError(f"The IMAP server {settings.imap_host} refused the login of "
                        f"{settings.imap_user!r}. Check SLUICE_IMAP_USER and "
                        "SLUICE_IMAP_PASSWORD.")


def _drop(client: aioimaplib.IMAP4) -> None:
    """Close the connection now and stop the client's own tasks.

    aioimaplib answers the server's greeting in a task that holds the protocol's state lock until
    the server answers CAPABILITY, with no time limit; a wait for the greeting that times out or
    is cancelled then waits for that lock for ever (and `wait_for` for it). Cancelling that task
    lets them finish.
    """
    protocol = client.protocol
    for task in list(protocol.tasks):
        task.cancel()
    if protocol.transport is not None:
        protocol.transport.close()


async def _settled(step: Awaitable[None], client: aioimaplib.IMAP4, *, timeout: float) -> None:
    """Await `step` for at most `timeout` seconds. On a timeout or a cancel the client is dropped
    first, so that aioimaplib's own waits inside `step` can finish (see `_drop`)."""
    task = asyncio.ensure_future(step)
    try:
        await asyncio.wait_for(asyncio.shield(task), timeout)
    except BaseException:
        _drop(client)
        task.cancel()
        await asyncio.wait({task}, timeout=_UNWIND_S)
        raise


def _literal(lines: list[bytes | bytearray]) -> bytes | None:
    """The message bytes in a FETCH response: the literal after a line ending in {size}."""
    for i, line in enumerate(lines[:-1]):
        if isinstance(line, bytes | bytearray) and _LITERAL.search(bytes(line)):
            return bytes(lines[i + 1])
    return None


async def poll_once(deps: BotDeps, *, login_timeout_s: float = _LOGIN_S) -> int:
    """Handle every unseen message in INBOX; returns how many were handled.

    Raises:
        TimeoutError: the server did not greet and log in within `login_timeout_s`.
        ImapError: the server refused the login.
    """
    client = _client(deps)
    inbound = InboundMail(deps)
    handled = 0
    try:
        await _settled(_log_in(deps, client), client, timeout=login_timeout_s)
        await client.select("INBOX")
        found = await client.uid_search("UNSEEN")
        uids = found.lines[0].split() if found.result == "OK" and found.lines else []
        for uid in (u.decode() for u in uids):
            fetched = await client.uid("fetch", uid, "(BODY.PEEK[])")
            raw = _literal(fetched.lines)
            if raw is None:
                log.error("IMAP message %s came without a body; left unseen", uid)
                continue
            await inbound.receive(raw, mail_from="",
                                  rcpt_tos=[deps.settings.imap_user or deps.settings.mail_from])
            await client.uid("store", uid, "+FLAGS.SILENT (\\Seen)")
            handled += 1
        await client.logout()
    finally:
        _drop(client)
    return handled


async def poll_forever(deps: BotDeps) -> None:
    every = deps.settings.imap_every_s
    while True:
        try:
            count = await poll_once(deps)
            if count:
                log.info("IMAP: handled %d new messages", count)
        except (OSError, TimeoutError, aioimaplib.Abort, ConfigurationError) as exc:
            log.error("IMAP poll of %s failed (%s); trying again in %.0f s",
                      deps.settings.imap_host, exc, every)
        await asyncio.sleep(every)
