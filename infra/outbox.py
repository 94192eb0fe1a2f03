"""The local SMTP outbox: a real aiosmtpd server on loopback that stores what Sluice sends.

On embedded defaults, `mail.send` delivers here instead of the world; the console lists it and
`GET /api/outbox` returns it. A repeated Message-ID is accepted and stored once, so a retried
send after a crash never shows up twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from core.store import Store

log = logging.getLogger(__name__)
MAX_MESSAGE = 10 * 1024 * 1024


class OutboxHandler:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.received = 0
        self.duplicates = 0  # repeated Message-IDs, stored once (a send redone after a crash)

    async def handle_DATA(self, _server: SMTP, _session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        parsed = message_from_bytes(raw, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        fallback_id = f"<{hashlib.sha256(raw).hexdigest()[:32]}@outbox>"
        message_id = str(parsed.get("Message-ID") or fallback_id)
        stored = await self.store.add_outbox(
            message_id=message_id, sender=str(envelope.mail_from or ""),
            recipients=[str(r) for r in envelope.rcpt_tos], subject=str(parsed.get("Subject", "")),
            body=_text_of(parsed), raw=raw)
        self.received += 1
        if not stored:
            self.duplicates += 1
            log.info("outbox: %s already delivered; stored once", message_id)
        return "250 Message accepted for delivery"


def _text_of(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain", "html"))
    if part is None:
        return ""
    content: Any = part.get_content()
    return str(content)


class Outbox:
    """The running server; `port` is the bound port (useful with port=0)."""

    def __init__(self, server: asyncio.base_events.Server, handler: OutboxHandler) -> None:
        self.server = server
        self.handler = handler
        self.port = int(server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()


async def start_outbox(store: Store, *, host: str = "127.0.0.1", port: int = 0) -> Outbox:
    handler = OutboxHandler(store)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, data_size_limit=MAX_MESSAGE, enable_SMTPUTF8=True,
                     hostname="sluice-outbox"),
        host=host, port=port)
    return Outbox(server, handler)
