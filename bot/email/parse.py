"""What Sluice understands of an email (ARCHITECTURE.md, "The flow": email in).

`parse_email(raw)` turns the bytes of a message into a `ParsedEmail`: the sender's own words (the
forwarder's note, or a reply with its quoted history cut off), the forwarded original (Gmail,
Outlook, Apple Mail text forwards, or a `message/rfc822` attachment), the attachments, and for a
reply the command it gives ("approve", "run first 10", "cancel"). A message Sluice cannot use
raises `MailError` whose message is the reply the sender gets.
"""

from __future__ import annotations

import re
from email import message_from_bytes, policy
from email.errors import (
    MultipartInvariantViolationDefect,
    NoBoundaryInMultipartDefect,
    StartBoundaryNotFoundDefect,
)
from email.message import EmailMessage, Message
from email.utils import getaddresses, parseaddr
from typing import Literal

from pydantic import BaseModel, Field

from core.errors import SluiceError
from core.text import html_to_text

MAX_MESSAGE_BYTES = 10 * 1024 * 1024
_FATAL_DEFECTS = (NoBoundaryInMultipartDefect, StartBoundaryNotFoundDefect,
                  MultipartInvariantViolationDefect)
_FORWARD_MARKERS = [
    re.compile(r"^-+ ?Forwarded message ?-+\s*$", re.I),           # Gmail
    re.compile(r"^-+ ?Original Message ?-+\s*$", re.I),            # Outlook
    re.compile(r"^Begin forwarded message:\s*$", re.I),             # Apple Mail
    re.compile(r"^_{10,}\s*$"),                                     # Outlook (HTML) rule
]
_HEADER_LINE = re.compile(r"^[>\s]*\*?(From|Sent|Date|To|Cc|Subject|Reply-To)\*?:\s*(.*)$", re.I)
_OUTLOOK_BLOCK = re.compile(r"^\*?From:\*? .+\n\*?(Sent|Date):\*? ", re.I | re.M)
_WROTE = re.compile(r"^(On .{4,200}wrote:|Le .{4,200}a écrit :|Am .{4,200}schrieb .*:)\s*$",
                    re.I)


class MailError(SluiceError):
    """A message Sluice cannot use; `message` is the reply its sender gets."""

    code = "mail_unusable"


class Command(BaseModel):
    action: Literal["approve", "run_first", "cancel"]
    count: int | None = None


class MailAttachment(BaseModel):
    name: str
    content_type: str
    size: int
    data: bytes = Field(default=b"", exclude=True, repr=False)


class ForwardedMessage(BaseModel):
    sender: str = ""
    date: str = ""
    subject: str = ""
    to: str = ""
    body: str = ""


class ParsedEmail(BaseModel):
    message_id: str = ""
    sender: str
    sender_name: str = ""
    to: list[str] = Field(default_factory=list)
    subject: str = ""
    in_reply_to: str = ""
    references: list[str] = Field(default_factory=list)
    note: str = Field(default="", description="The sender's own words, quoted history removed.")
    forwarded: ForwardedMessage | None = None
    attachments: list[MailAttachment] = Field(default_factory=list)
    command: Command | None = None
    warnings: list[str] = Field(default_factory=list)

    @property
    def request_text(self) -> str:
        """The request as the planner reads it: the note, then what was forwarded."""
        parts = [self.note.strip() or self.subject.strip()]
        if self.forwarded is not None:
            fwd = self.forwarded
            parts.append(f"Forwarded email from {fwd.sender} ({fwd.date}), subject "
                         f"{fwd.subject!r}:\n{fwd.body.strip()}")
        if self.attachments:
            parts.append("Attached: " + ", ".join(a.name for a in self.attachments))
        return "\n\n".join(p for p in parts if p)[:20_000]


def parse_email(raw: bytes, *, max_bytes: int = MAX_MESSAGE_BYTES) -> ParsedEmail:
    """Read a whole message; raises MailError with the reply its sender should get."""
    if len(raw) > max_bytes:
        raise MailError(f"Your message is {_size(len(raw))}; I accept up to "
                        f"{_size(max_bytes)}. Nothing was done, and your message is kept. Send "
                        "it again with smaller or fewer attachments (or a link to them).")
    msg = message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    if any(isinstance(d, _FATAL_DEFECTS) for part in msg.walk() for d in part.defects):
        raise MailError("I could not read the structure of your message (its MIME parts are "
                        "broken). Send it again from your mail client, or forward it as an "
                        "attachment.")
    name, sender = parseaddr(str(msg.get("From", "")))
    if "@" not in sender:
        raise MailError("Your message has no sender address I can reply to.")
    warnings: list[str] = []
    text = _body_text(msg, warnings)
    attachments, attached = _attachments(msg, warnings)
    note, forwarded = split_forward(text)
    if forwarded is None and attached is not None:
        forwarded = attached
    parsed = ParsedEmail(
        message_id=str(msg.get("Message-ID", "")).strip(), sender=sender.lower(),
        sender_name=name, to=[a.lower() for _n, a in getaddresses(
            [str(v) for v in msg.get_all("To", []) + msg.get_all("Cc", [])]) if a],
        subject=_clean(str(msg.get("Subject", ""))), in_reply_to=str(
            msg.get("In-Reply-To", "")).strip(),
        references=str(msg.get("References", "")).split(), note=strip_quoted(note),
        forwarded=forwarded, attachments=attachments, warnings=warnings)
    parsed.command = read_command(parsed.note) if parsed.in_reply_to else None
    if not parsed.note.strip() and forwarded is None and not attachments:
        raise MailError("Your message arrived empty: I found no text and no attachments. Write "
                        "what you would like done, and send it again.")
    return parsed


def _size(n: int) -> str:
    return f"{n / 1_048_576:.1f} MB" if n >= 1_048_576 else f"{n / 1024:.0f} KB"


def _clean(value: str) -> str:
    return " ".join(value.split())


def _decode(part: Message, warnings: list[str]) -> str:
    payload = part.get_payload(decode=True)
    data = payload if isinstance(payload, bytes) else b""
    charset = part.get_content_charset() or "utf-8"
    try:
        return data.decode(charset, errors="replace")
    except LookupError:
        warnings.append(f"Part of your message is in a character set I do not know ({charset}); "
                        "I read it as UTF-8, so some characters may be wrong.")
        return data.decode("utf-8", errors="replace")


def _own_parts(msg: Message) -> list[Message]:
    """The leaf parts of `msg`, not descending into attached messages."""
    if msg.get_content_type() == "message/rfc822":
        return []
    if not msg.is_multipart():
        return [msg]
    payload = msg.get_payload()
    return [leaf for sub in payload if isinstance(sub, Message) for leaf in _own_parts(sub)] \
        if isinstance(payload, list) else []


def _body_text(msg: EmailMessage, warnings: list[str]) -> str:
    plain = html = None
    for part in _own_parts(msg):
        if part.get_content_disposition() == "attachment":
            continue
        if part.get_content_type() == "text/plain" and plain is None:
            plain = _decode(part, warnings)
        elif part.get_content_type() == "text/html" and html is None:
            html = _decode(part, warnings)
    if plain is not None and plain.strip():
        return plain.replace("\r\n", "\n")
    return html_to_text(html or "")


def _attachments(msg: EmailMessage, warnings: list[str]
                 ) -> tuple[list[MailAttachment], ForwardedMessage | None]:
    """Files attached to `msg`, including those of an attached message; and that message."""
    files: list[MailAttachment] = []
    forwarded: ForwardedMessage | None = None
    for part in msg.iter_attachments():
        if part.get_content_type() == "message/rfc822":
            inner = part.get_payload()
            inner_msg = inner[0] if isinstance(inner, list) else inner
            if isinstance(inner_msg, EmailMessage):
                inner_files, _ = _attachments(inner_msg, warnings)
                files += inner_files
                forwarded = forwarded or ForwardedMessage(
                    sender=str(inner_msg.get("From", "")), date=str(inner_msg.get("Date", "")),
                    subject=_clean(str(inner_msg.get("Subject", ""))),
                    to=str(inner_msg.get("To", "")), body=_body_text(inner_msg, warnings))
            continue
        data = part.get_payload(decode=True)
        if not isinstance(data, bytes):
            continue
        name = part.get_filename() or f"attachment-{len(files) + 1}"
        files.append(MailAttachment(name=name[:200], content_type=part.get_content_type(),
                                    size=len(data), data=data))
    return files, forwarded


def split_forward(text: str) -> tuple[str, ForwardedMessage | None]:
    """(the forwarder's note, the forwarded message) of a text body; None when not a forward."""
    lines = text.split("\n")
    start = _forward_start(lines)
    if start is None:
        return text.strip(), None
    note = "\n".join(lines[:start]).strip()
    headers: dict[str, str] = {}
    marker = lines[start].strip().lstrip(">").strip()
    i = start + 1 if any(m.match(marker) for m in _FORWARD_MARKERS) else start
    while i < len(lines) and not lines[i].strip().lstrip(">").strip():
        i += 1
    while i < len(lines):
        match = _HEADER_LINE.match(lines[i])
        if not match:
            break
        headers.setdefault(match.group(1).lower(), match.group(2).strip())
        i += 1
    body = _unquote("\n".join(lines[i:])).strip()
    return note, ForwardedMessage(sender=headers.get("from", ""),
                                  date=headers.get("date") or headers.get("sent", ""),
                                  subject=headers.get("subject", ""), to=headers.get("to", ""),
                                  body=body)


def _forward_start(lines: list[str]) -> int | None:
    for i, line in enumerate(lines):
        bare = line.strip().lstrip(">").strip()
        if any(m.match(bare) for m in _FORWARD_MARKERS) and _headers_follow(lines, i + 1):
            return i
    joined = "\n".join(lines)
    match = _OUTLOOK_BLOCK.search(joined)
    if match is not None:
        return joined[:match.start()].count("\n")
    return None


def _headers_follow(lines: list[str], start: int) -> bool:
    return any(_HEADER_LINE.match(line) for line in lines[start:start + 4])


def _unquote(text: str) -> str:
    lines = text.split("\n")
    quoted = [line for line in lines if line.strip()]
    if quoted and all(line.startswith(">") for line in quoted):
        return "\n".join(line[1:].removeprefix(" ") for line in lines)
    return text


def strip_quoted(text: str) -> str:
    """A reply's own words: quoted lines and everything from "On … wrote:" down are removed."""
    kept = []
    for line in text.split("\n"):
        bare = line.strip()
        if _WROTE.match(bare) or any(m.match(bare) for m in _FORWARD_MARKERS[:2]):
            break
        if bare.startswith(">"):
            continue
        kept.append(line.rstrip())
    return "\n".join(kept).strip()


_APPROVE = re.compile(r"^(yes[,!. ]*)?(approve|approved|go ahead|run it|run all|ok|okay|yes)\b")
_RUN_FIRST = re.compile(r"^(please )?(only )?run (only )?(the )?first (\d{1,7})\b")
_CANCEL = re.compile(r"^(please )?(cancel|stop|no|don'?t)\b")


def read_command(reply: str) -> Command | None:
    """The decision a reply gives, from its first line with words; None when it is unclear."""
    first = next((line for line in reply.split("\n") if line.strip()), "")
    words = re.sub(r"[*_\"'`]+", "", first).strip().lower()
    if match := _RUN_FIRST.match(words):
        return Command(action="run_first", count=max(1, int(match.group(5))))
    if _CANCEL.match(words):
        return Command(action="cancel")
    if _APPROVE.match(words):
        return Command(action="approve")
    return None


