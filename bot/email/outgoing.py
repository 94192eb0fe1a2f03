"""Composing and sending Sluice's emails: every reply keeps its thread.

A reply has a unique `Message-ID`, `In-Reply-To` the last message of the conversation,
`References` the whole chain, a "Re:" subject, and comes from `sluice+THREAD@domain` so that the
answer to it finds its thread again (plus-addressing). Mail goes out through SMTP: the local
outbox on embedded defaults, a relay with `SLUICE_SMTP_HOST`/`SLUICE_SMTP_PORT`.
"""

from __future__ import annotations

import asyncio
import re
import smtplib
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formataddr, formatdate

from core.settings import Settings

_RE = re.compile(r"^\s*((re|fwd?|aw|wg|tr)\s*:\s*)+", re.I)


@dataclass
class Outgoing:
    to: str
    subject: str
    text: str
    message_id: str
    sender: str
    in_reply_to: str = ""
    references: list[str] = field(default_factory=list)
    files: list[tuple[str, str, bytes]] = field(default_factory=list)  # name, type, data

    def compose(self) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = formataddr(("Sluice", self.sender))
        msg["To"] = self.to
        msg["Subject"] = self.subject
        msg["Date"] = formatdate(localtime=False, usegmt=True)
        msg["Message-ID"] = self.message_id
        if self.in_reply_to:
            msg["In-Reply-To"] = self.in_reply_to
        if self.references:
            msg["References"] = " ".join(self.references[-20:])
        msg["Auto-Submitted"] = "auto-replied"
        msg.set_content(self.text)
        for name, content_type, data in self.files:
            main, _, sub = content_type.partition("/")
            msg.add_attachment(data, maintype=main or "application",
                               subtype=sub or "octet-stream", filename=name)
        return msg


def reply_subject(subject: str) -> str:
    """"Re: " once, whatever prefixes the subject already had."""
    bare = _RE.sub("", subject).strip() or "your message"
    return f"Re: {bare}"


def address_for(settings: Settings, tag: str | None = None) -> str:
    """Sluice's address, plus-addressed with `tag` (a thread or automation id) when given."""
    local, _, domain = settings.mail_from.partition("@")
    return f"{local}+{tag}@{domain}" if tag else settings.mail_from


def plus_tag(settings: Settings, address: str) -> str | None:
    """The tag of `sluice+TAG@domain`, or None for another address."""
    local, _, domain = address.lower().partition("@")
    own_local, _, own_domain = settings.mail_from.lower().partition("@")
    base, plus, tag = local.partition("+")
    if base != own_local or domain != own_domain or not plus:
        return None
    return tag or None


def message_id_for(settings: Settings, key: str) -> str:
    domain = settings.mail_from.partition("@")[2] or "sluice"
    return f"<{key}@{domain}>"


async def send(settings: Settings, mail: Outgoing) -> bytes:
    """Send through SMTP; returns the bytes sent. Raises OSError/SMTPException on failure."""
    msg = mail.compose()
    # Flattened here: `send_message` would write a line that begins with "From " as ">From ".
    data = msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))

    def deliver() -> None:
        with smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=30) as smtp:
            smtp.sendmail(settings.mail_from, [mail.to], data)

    await asyncio.to_thread(deliver)
    return data
