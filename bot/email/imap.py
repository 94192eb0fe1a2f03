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

import aioimaplib

from bot.deps import BotDeps
from bot.email.inbound import InboundMail
from core.errors import ConfigurationError

log = logging.getLogger(__name__)
_LITERAL = re.compile(rb"\{(\d+)\}$")


class ImapError(ConfigurationError):
    code = "imap_error"


async def _connect(deps: BotDeps) -> aioimaplib.IMAP4:
    settings = deps.settings
    assert settings.imap_host is not None
    if settings.imap_ssl:
        client: aioimaplib.IMAP4 = aioimaplib.IMAP4_SSL(
            host=settings.imap_host, port=settings.imap_port, timeout=30,
            ssl_context=ssl.create_default_context())
    else:
        client = aioimaplib.IMAP4(host=settings.imap_host, port=settings.imap_port, timeout=30)
    await client.wait_hello_from_server()
    response = await client.login(settings.imap_user or "", settings.imap_password or "")
    if response.result != "OK":
        raise ImapError(f"The IMAP server {settings.imap_host} refused the login of "
                        f"{settings.imap_user!r}. Check SLUICE_IMAP_USER and "
                        "SLUICE_IMAP_PASSWORD.")
    return client


def _literal(lines: list[bytes | bytearray]) -> bytes | None:
    """The message bytes in a FETCH response: the literal after a line ending in {size}."""
    for i, line in enumerate(lines[:-1]):
        if isinstance(line, bytes | bytearray) and _LITERAL.search(bytes(line)):
            return bytes(lines[i + 1])
    return None


async def poll_once(deps: BotDeps) -> int:
    """Handle every unseen message in INBOX; returns how many were handled."""
    client = await _connect(deps)
    inbound = InboundMail(deps)
    handled = 0
    try:
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
    finally:
        await client.logout()
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
