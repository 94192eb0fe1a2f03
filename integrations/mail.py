"""Local mail: send through an SMTP server, read `.eml` files from the mailbox folder.

Implements the embedded default of ARCHITECTURE.md ("a local SMTP outbox"). Sending goes through
`smtplib` in a thread. A write carries an idempotency key from the runtime; the Message-ID is
derived from it, so the same logical send always has the same Message-ID and the outbox can drop
a repeat; after a crash, a send left unconfirmed is looked up in the outbox (`delivered`) before it
is sent again. The inbox is a folder of `.eml` files; a message counts as read when its `Status`
header contains "R" (the mbox convention mail clients use), otherwise it is unread.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import re
from collections.abc import Awaitable, Callable
from email import policy
from email.charset import QP, Charset
from email.header import Header
from email.message import EmailMessage, Message
from email.mime.text import MIMEText
from email.parser import BytesParser
from email.utils import (
    formataddr,
    formatdate,
    getaddresses,
    make_msgid,
    parseaddr,
    parsedate_to_datetime,
)
from pathlib import Path
from typing import Any, TypedDict

from core.errors import IntegrationError
from core.text import html_to_text
from integrations._smtp import SmtpSender
from integrations.base import ActionSpec, Found, Integration, Preview, action

logger = logging.getLogger(__name__)

_ADDRESS = re.compile(
    r"^[^@\s<>(),;:\"\[\]\\]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*$"
)
_PARTS = re.compile(r'(?:"[^"]*"|<[^>]*>|[^,;])+')  # addresses split on , or ; outside quotes


class Attachment(TypedDict):
    """A file attached to an email (its content is not loaded)."""

    name: str
    content_type: str
    size: int


class Email(TypedDict):
    """One received email. `sender`, `to` and `cc` hold bare addresses ("ana@example.com")."""

    id: str
    sender: str
    sender_name: str
    to: list[str]
    cc: list[str]
    subject: str
    date: dt.datetime | None
    text: str
    attachments: list[Attachment]
    unread: bool


def message_id_for(idempotency_key: str) -> str:
    """The Message-ID a send with `idempotency_key` gets: the same key, the same id."""
    return f"<{hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]}@sluice>"


def _addresses(value: str | list[str] | None, field: str) -> list[str]:
    """`value` as a list of formatted, validated addresses ("Ana <ana@example.com>")."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    result = []
    for raw in (part.strip() for item in items for part in _PARTS.findall(str(item))):
        if not raw:
            continue
        name, address = parseaddr(raw)
        if address and not address.isascii():
            raise IntegrationError(
                f"{raw!r} in {field}: an address with letters beyond ASCII (an accent in the "
                "part before @) cannot be sent from here; ask for the person's plain address.",
                field=field, address=raw)
        if not _ADDRESS.match(address) or address not in raw or "\n" in raw or "\r" in raw:
            raise IntegrationError(
                f"{raw!r} in {field} is not an email address. Write addresses like "
                "'ana@example.com' or 'Ana Lima <ana@example.com>'.",
                field=field, address=raw,
            )
        result.append(formataddr((name, address)))
    return result


def _one_line(text: str) -> str:
    return " ".join(str(text).split())




def _body_text(message: EmailMessage) -> str:
    body = message.get_body(preferencelist=("plain", "html"))
    if not isinstance(body, EmailMessage):
        return ""
    try:
        content = str(body.get_content())
    except (LookupError, ValueError):
        payload = body.get_payload(decode=True)
        content = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    if body.get_content_type() == "text/html":
        return html_to_text(content)
    return content.strip()


def _attachments(message: EmailMessage) -> list[Attachment]:
    found: list[Attachment] = []
    for part in message.iter_attachments():
        content_type = part.get_content_type()
        default = "forwarded.eml" if content_type == "message/rfc822" else "attachment"
        payload = part.get_payload(decode=True)
        size = len(payload) if isinstance(payload, bytes) else len(part.as_bytes())
        found.append(Attachment(name=part.get_filename() or default,
                                content_type=content_type, size=size))
    return found


def _date(message: EmailMessage) -> dt.datetime | None:
    raw = str(message.get("Date", "") or "")
    try:
        parsed = parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)


def _bare(message: EmailMessage, header: str) -> list[tuple[str, str]]:
    values = [str(v) for v in message.get_all(header, [])]
    return [(name, address) for name, address in getaddresses(values) if address]


def read_email(path: Path) -> Email:
    """Parse one `.eml` file into an Email."""
    return parse_email(path.read_bytes(), fallback_id=path.stem)


def parse_message(data: bytes) -> EmailMessage:
    message = BytesParser(_class=EmailMessage, policy=policy.default).parsebytes(data)
    assert isinstance(message, EmailMessage)
    return message


def parse_email(data: bytes, *, fallback_id: str) -> Email:
    """Parse a raw RFC 5322 message into an Email (`id` is its Message-ID, else fallback_id)."""
    message = parse_message(data)
    senders = _bare(message, "From")
    return Email(
        id=str(message.get("Message-ID", "") or "").strip() or fallback_id,
        sender=senders[0][1] if senders else "",
        sender_name=senders[0][0] if senders else "",
        to=[address for _, address in _bare(message, "To")],
        cc=[address for _, address in _bare(message, "Cc")],
        subject=_one_line(str(message.get("Subject", "") or "")),
        date=_date(message),
        text=_body_text(message),
        attachments=_attachments(message),
        unread="R" not in str(message.get("Status", "") or ""),
    )


def _newest_first(email: Email) -> tuple[dt.datetime, str]:
    return (email["date"] or dt.datetime.min.replace(tzinfo=dt.UTC), email["id"])


def compose(
    sender: str, to: str | list[str], subject: str, body: str, *, cc: str | list[str] | None,
    reply_to: str | None, idempotency_key: str | None,
) -> Message:
    """A plain-text email from `sender`; its Message-ID comes from `idempotency_key` when given.

    Built with the compat32 API, encoding each part here (names and subject as RFC 2047 words,
    the body 7bit when it is ASCII in short lines, else quoted-printable UTF-8): the
    `EmailMessage` API parses every header it is given into objects, 1.4 ms an email against
    0.1 ms, spent in the worker's event loop.

    Raises:
        IntegrationError: an address is not one, or there is no recipient.
    """
    recipients = _addresses(to, "to")
    if not recipients:
        raise IntegrationError("to needs at least one address, e.g. 'ana@example.com'.")
    text = "".join(f"{line}\n" for line in str(body).splitlines()) or "\n"
    charset = Charset("utf-8")
    if text.isascii() and max(map(len, text.splitlines())) <= _MAX_7BIT_LINE:
        charset.body_encoding = None  # type: ignore[assignment]  # 7bit, as it is
    else:
        charset.body_encoding = QP
    message = MIMEText(text, "plain", charset)  # type: ignore[arg-type]  # a Charset is fine
    message["From"] = _sender(sender)
    message["To"] = ", ".join(recipients)
    if copies := _addresses(cc, "cc"):
        message["Cc"] = ", ".join(copies)
    if reply_to:
        message["Reply-To"] = ", ".join(_addresses(reply_to, "reply_to"))
    title = _one_line(subject)
    # A Header is folded knowing its name (a str of encoded words would start a line of its own).
    message["Subject"] = (title if title.isascii()  # type: ignore[assignment]
                          else Header(title, "utf-8", header_name="Subject"))
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = (
        message_id_for(idempotency_key) if idempotency_key else make_msgid(domain="sluice")
    )
    return message


_MAX_7BIT_LINE = 998  # RFC 5322: at most 998 characters a line, the CRLF not counted


def _sender(sender: str) -> str:
    """The From header for the configured sending address (a name is RFC 2047-encoded)."""
    name, address = parseaddr(sender)
    if not address or not address.isascii():
        raise IntegrationError(f"The sending address {sender!r} is not an ASCII email address; "
                               "set one like 'Sluice <team@example.com>'.")
    return formataddr((name, address))


class LocalMail(Integration):
    """Email: send messages and read the team's inbox."""

    name = "mail"
    summary = "Email: send messages, read the inbox (text and attachment names)."

    def __init__(
        self, *, smtp_host: str, smtp_port: int, sender: str, mailbox: Path,
        timeout_s: float = 30.0, server_dedups: bool = False,
        delivered: Callable[[str], Awaitable[bool]] | None = None,
    ) -> None:
        self.server_dedups = server_dedups
        self.delivered = delivered  # whether the server holds a Message-ID (Sluice's outbox)
        self.smtp_host = smtp_host
        self.smtp_port = smtp_port
        self.sender = sender
        self.mailbox = Path(mailbox)
        self.timeout_s = timeout_s
        self._smtp = SmtpSender(smtp_host, smtp_port, timeout_s=timeout_s)

    def redo_is_safe(self, spec: ActionSpec) -> bool:
        """A resend is safe only when the server drops a repeated Message-ID (the outbox does)."""
        return spec.name == "send" and self.server_dedups

    @action("write", preview="send {n} emails")
    async def send(
        self,
        to: str | list[str],
        subject: str,
        body: str,
        *,
        cc: str | list[str] | None = None,
        reply_to: str | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        """Send a plain-text email and return its Message-ID.

        `to` and `cc` take one address or a list: "ana@example.com" or
        "Ana Lima <ana@example.com>". The email comes from the team's address; `reply_to` sets
        where answers go. A bad address raises IntegrationError naming it, before anything is
        sent. Leave `idempotency_key` out: the runtime sets it so a retried job never sends the
        same email twice.
        """
        message = compose(self.sender, to, subject, body, cc=cc, reply_to=reply_to,
                          idempotency_key=idempotency_key)
        await asyncio.to_thread(self._smtp.send, message)
        return str(message["Message-ID"])

    async def aclose(self) -> None:
        await asyncio.to_thread(self._smtp.close)

    async def confirm_send(self, *_message: Any, idempotency_key: str | None = None,
                           **_options: Any) -> Found | None:
        """After a crash: when the server is Sluice's outbox, done when it holds the Message-ID
        this send gets (from `idempotency_key` alone), else not done. A relay cannot be asked."""
        if self.delivered is None or not idempotency_key:
            return None
        message_id = message_id_for(idempotency_key)
        if await self.delivered(message_id):
            return Found(done=True, result=message_id)
        return Found(done=False)

    async def preview_send(
        self,
        to: str | list[str],
        subject: str,
        body: str,
        *,
        cc: str | list[str] | None = None,
        reply_to: str | None = None,
        idempotency_key: str | None = None,
    ) -> Preview:
        """The email `send` would send (addresses checked the same way), without sending it."""
        message = compose(self.sender, to, subject, body, cc=cc, reply_to=reply_to,
                          idempotency_key=idempotency_key)
        details = {"to": _addresses(to, "to"), "cc": _addresses(cc, "cc"),
                   "subject": subject, "body": body}
        shown_to = ", ".join(details["to"])
        return Preview(text=f"email to {shown_to}: “{subject}”", details=details,
                       result=str(message["Message-ID"]))

    @action("read")
    async def inbox(self, *, unread_only: bool = False, limit: int | None = None) -> list[Email]:
        """Received emails, newest first.

        Each Email has id, sender (bare address), sender_name, to, cc, subject, date (a
        datetime, or None when missing), text (plain text; HTML is reduced to text),
        attachments (name, content_type, size in bytes) and unread. `unread_only=True` keeps
        the unread ones; `limit` keeps the newest `limit`.
        """
        if limit is not None and limit < 0:
            raise IntegrationError(f"limit must be 0 or more, not {limit}.", limit=limit)
        emails = await asyncio.to_thread(self._read_mailbox)
        if unread_only:
            emails = [e for e in emails if e["unread"]]
        return emails if limit is None else emails[:limit]

    async def describe(self) -> dict[str, Any]:
        """The sending address and how many emails (and unread ones) the inbox holds."""
        emails = await asyncio.to_thread(self._read_mailbox)
        unread = sum(1 for e in emails if e["unread"])
        return {"sender": self.sender, "inbox": {"emails": len(emails), "unread": unread}}

    def _read_mailbox(self) -> list[Email]:
        if not self.mailbox.is_dir():
            return []
        emails = []
        for path in sorted(self.mailbox.glob("*.eml")):
            try:
                emails.append(read_email(path))
            except Exception:  # one broken file must not hide the rest of the inbox
                logger.warning("skipping unreadable email %s", path.name, exc_info=True)
        return sorted(emails, key=_newest_first, reverse=True)
