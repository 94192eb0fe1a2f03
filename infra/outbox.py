"""The local SMTP outbox: a real aiosmtpd server on loopback that stores what Sluice sends.

On embedded defaults, `mail.send` delivers here instead of the world; the console lists it and
`GET /api/outbox` returns it. A repeated Message-ID is accepted and stored once, so a retried
send after a crash never shows up twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from email import message_from_bytes
from email.errors import HeaderParseError
from email.header import decode_header, make_header
from email.message import Message
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from core.store import Store

log = logging.getLogger(__name__)
MAX_MESSAGE = 10 * 1024 * 1024


class OutboxHandler:
    """Stores each mail before answering 250; mails received while a commit is under way share
    the next one (each() sends several at once)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.received = 0
        self.duplicates = 0  # repeated Message-IDs, stored once (a send redone after a crash)
        self._waiting: list[tuple[dict[str, Any], asyncio.Future[bool]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def handle_DATA(self, _server: SMTP, _session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        message_id, subject, body = read_mail(raw)
        message_id = message_id or f"<{hashlib.sha256(raw).hexdigest()[:32]}@outbox>"
        try:
            stored = await self._stored({
                "message_id": message_id, "sender": str(envelope.mail_from or ""),
                "recipients": [str(r) for r in envelope.rcpt_tos], "subject": subject,
                "body": body, "raw": raw})
        except Exception:  # a one-line temporary failure: the sender keeps the mail and retries
            log.exception("outbox: could not store %s", message_id)
            return "451 4.3.0 The outbox could not store the mail; it was not kept, send it again"
        self.received += 1
        if not stored:
            self.duplicates += 1
            log.info("outbox: %s already delivered; stored once", message_id)
        return "250 Message accepted for delivery"

    async def _stored(self, mail: dict[str, Any]) -> bool:
        """Whether `mail` was stored (False: its Message-ID was there), once committed."""
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.append((mail, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_waiting())
        return await done

    async def _write_waiting(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, []
            try:
                answers = await self.store.add_outbox([mail for mail, _ in batch])
            except Exception as exc:  # each session answers its client with the error
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
                continue
            for (_, done), stored in zip(batch, answers, strict=True):
                if not done.done():
                    done.set_result(stored)


def read_mail(raw: bytes) -> tuple[str | None, str, str]:
    """(Message-ID, subject, text body) of a received mail.

    Parsed with the compat32 policy and decoded here: the `email.policy.default` parse costs
    ten times as much (its header objects), and the outbox only shows these three.
    """
    parsed = message_from_bytes(raw)
    message_id = parsed.get("Message-ID")
    return (None if message_id is None else _header_text(message_id),
            _header_text(parsed.get("Subject", "")), _text_of(parsed))


def _header_text(value: Any) -> str:
    """A header's text: RFC 2047 words decoded, lines unfolded, undecodable bytes replaced."""
    try:
        text = str(make_header(decode_header(str(value))))
    except (HeaderParseError, LookupError, UnicodeError, ValueError):
        text = str(value)
    return re.sub(r"\r?\n[ \t]", " ", text).strip()


def _text_of(message: Message) -> str:
    """The first text/plain part that is not an attachment, else the first text/html one."""
    for wanted in ("text/plain", "text/html"):
        for part in message.walk():
            if part.get_content_type() != wanted or part.get_content_disposition() == "attachment":
                continue
            payload = part.get_payload(decode=True)
            if not isinstance(payload, bytes):
                continue
            charset = part.get_content_charset() or "utf-8"
            try:
                return payload.decode(charset, errors="replace")
            except LookupError:  # a charset Python does not know
                return payload.decode("utf-8", errors="replace")
    return ""


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
