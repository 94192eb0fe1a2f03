"""Email in: a message to Sluice becomes a request, a decision, or a trigger.

ARCHITECTURE.md, "The flow" (email, inbound SMTP). The raw message is stored first, whatever
follows, so nothing is lost. Then:
- a message Sluice cannot read (too big, broken MIME, empty) gets a reply saying why;
- a sender not on the allow-list (`SLUICE_EMAIL_ALLOW`) gets one polite reply, and nothing runs;
- `sluice+auto_…@` triggers that automation; `sluice+thr_…@` (or In-Reply-To a Sluice email)
  continues that thread: "approve", "run first N", "cancel" decide its open question, other
  words are a new request there;
- anything else starts a new email thread: the forwarded message and attachments become inputs.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from email.utils import parseaddr
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from bot.conversation import Decision, decide, receive_request
from bot.deps import BotDeps
from bot.email.mirror import mirror_thread
from bot.email.outgoing import Outgoing, address_for, message_id_for, plus_tag, reply_subject, send
from bot.email.parse import Command, MailError, ParsedEmail, parse_email, read_command
from core.automations import Automations
from core.errors import ConfigurationError, SluiceError
from core.mail_log import MailLog
from core.settings import Settings
from core.types import Message, Request, Thread

log = logging.getLogger(__name__)
TEXT_TYPES = ("text/", "application/json", "application/csv")
MAX_TEXT_INPUT = 200_000


def allowed(settings: Settings, sender: str) -> bool:
    """Whether `sender` is on the allow-list (addresses, or @domain entries)."""
    sender = sender.lower()
    for entry in (e.strip().lower() for e in settings.email_allow.split(",")):
        if entry and (sender == entry or (entry.startswith("@") and sender.endswith(entry))):
            return True
    return False


class InboundMail:
    """Handles one received message end to end; see the module docstring."""

    def __init__(self, deps: BotDeps) -> None:
        self.deps = deps
        self.mail_log = MailLog(deps.store)

    async def receive(self, raw: bytes, *, mail_from: str, rcpt_tos: list[str]) -> str | None:
        """Handle `raw`; returns the thread it went to, or None."""
        digest = hashlib.sha256(raw).hexdigest()[:32]
        key = f"in:{digest}"
        header_from = parseaddr(_header(raw, "From"))[1] or mail_from
        if not await self.mail_log.add(key=key, direction="in", raw=raw, sender=header_from,
                                       message_id=_header(raw, "Message-ID"),
                                       recipients=rcpt_tos, subject=_header(raw, "Subject")):
            log.info("email %s received again; handled once", key)
            return None
        try:
            parsed = parse_email(raw, max_bytes=int(self.deps.settings.email_max_mb * 1_048_576))
        except MailError as exc:
            await self.mail_log.update(key, error=exc.message)
            await self._reply_once(f"error:{digest}", header_from, _header(raw, "Subject"),
                                   _header(raw, "Message-ID"), exc.message)
            return None
        if not allowed(self.deps.settings, parsed.sender):
            await self.mail_log.update(key, error="sender not on the allow-list")
            await self._reply_once(f"denied:{parsed.sender}", parsed.sender, parsed.subject,
                                   parsed.message_id, _DENIED.format(sender=parsed.sender))
            return None
        return await self._route(key, parsed, rcpt_tos)

    async def _route(self, key: str, parsed: ParsedEmail, rcpt_tos: list[str]) -> str | None:
        tags = [t for t in (plus_tag(self.deps.settings, a) for a in [*rcpt_tos, *parsed.to])
                if t]
        automation_tag = next((t for t in tags if t.startswith("auto_")), None)
        if automation_tag:
            return await self._trigger(key, parsed, automation_tag)
        thread_id = next((t for t in tags if t.startswith("thr_")), None) or \
            await self.mail_log.thread_of([parsed.in_reply_to, *parsed.references])
        thread = await self.deps.store.find_thread(thread_id) if thread_id else None
        if thread is None:
            thread = await self.deps.store.create_thread(surface="email", title=parsed.subject,
                                                         external_ref=parsed.sender)
            await self.mail_log.update(key, thread_id=thread.id)
            await self._new_request(thread, parsed)
        else:
            await self.mail_log.update(key, thread_id=thread.id)
            await self._in_thread(thread, parsed)
        await mirror_thread(self.deps, thread.id)
        return thread.id

    async def _new_request(self, thread: Thread, parsed: ParsedEmail) -> None:
        attachments = [await self.deps.store.add_attachment(
            thread.id, name=a.name, content_type=a.content_type, data=a.data)
            for a in parsed.attachments]
        await self.deps.store.save_thread_values(
            thread.id, {"email": email_input(parsed)},
            {"email": f"the email that started this thread: {parsed.subject!r} from "
                      f"{parsed.sender}, {len(attachments)} attachments"})
        if attachments:
            names = ", ".join(a.name for a in attachments)
            await self.deps.store.add_message(
                thread.id, author="sluice", kind="files", attachments=attachments,
                text=f"Received {len(attachments)} attachment(s): {names}. The program reads "
                     "them as `email[\"attachments\"]` (text files with their text).")
        for warning in parsed.warnings:
            await self.deps.store.add_message(thread.id, author="sluice", kind="note",
                                              text=f"Note: {warning}")
        await receive_request(self.deps, Request(thread_id=thread.id, surface="email",
                                                 user=parsed.sender,
                                                 text=parsed.request_text))

    async def _in_thread(self, thread: Thread, parsed: ParsedEmail) -> None:
        command = parsed.command or read_command(parsed.note)  # in a thread, a reply anyway
        target = _open_question(thread, command) if command else None
        if target is not None and command is not None:
            await self._decide(thread, target, command, parsed.sender)
            return
        if _open_question(thread, None) is not None and len(parsed.note) < 60:
            await self.deps.store.add_message(
                thread.id, author="sluice", kind="note",
                text=f"I could not tell what “{parsed.note or '(empty)'}” decides. Reply "
                     "“approve”, “run first N” or “cancel” (or write a new request).")
            return
        if not parsed.note.strip():
            await self.deps.store.add_message(thread.id, author="sluice", kind="note",
                                              text="Your reply had no words of its own; "
                                                   "nothing changed.")
            return
        await receive_request(self.deps, Request(thread_id=thread.id, surface="email",
                                                 user=parsed.sender, text=parsed.request_text))

    async def _decide(self, thread: Thread, message: Message, command: Command,
                      user: str) -> None:
        button = next(b for b in message.buttons if _matches(b.action, command))
        decision = Decision(action=button.action, message_id=message.id, value=button.value,
                            user=user, count=command.count if command.action == "run_first"
                            else None)
        try:
            await decide(self.deps, decision)
        except SluiceError as exc:
            await self.deps.store.add_message(thread.id, author="sluice", kind="note",
                                              text=exc.message)

    async def _trigger(self, key: str, parsed: ParsedEmail, tag: str) -> str | None:
        automations = Automations(self.deps.store)
        try:
            automation = await automations.get(tag)
            triggered = await automations.trigger(
                automation, redis=self.deps.redis, trigger="email", user=parsed.sender,
                inputs={"email": email_input(parsed)}, idempotency_key=f"email:{key}")
        except SluiceError as exc:
            await self._reply_once(f"error:{key}", parsed.sender, parsed.subject,
                                   parsed.message_id, exc.message)
            return None
        await self.mail_log.update(key, thread_id=triggered.run.thread_id)
        if not await mirror_thread(self.deps, triggered.run.thread_id):
            state = "waits for approval in its thread" if triggered.waits_for_approval \
                else "is queued"
            url = f"{self.deps.settings.effective_public_url}/?thread={automation.thread_id}"
            await self._reply_once(f"started:{key}", parsed.sender, parsed.subject,
                                   parsed.message_id,
                                   f"Started automation “{automation.name}”: run "
                                   f"{triggered.run.id} {state}. Its progress and result are "
                                   f"in its thread: {url}")
        return triggered.run.thread_id

    async def _reply_once(self, key: str, to: str, subject: str, in_reply_to: str,
                          text: str) -> None:
        """A reply outside any thread (errors, the allow-list), sent once per `key`."""
        if not to or await self.mail_log.has(key):
            return
        settings = self.deps.settings
        mail = Outgoing(to=to, subject=reply_subject(subject), text=text,
                        message_id=message_id_for(settings, key.replace(":", ".").replace(
                            "@", ".")[:120]),
                        sender=address_for(settings), in_reply_to=in_reply_to,
                        references=[in_reply_to] if in_reply_to else [])
        try:
            raw = await send(settings, mail)
        except OSError:
            log.exception("could not send the %s reply to %s", key, to)
            return
        await self.mail_log.add(key=key, direction="out", message_id=mail.message_id,
                                sender=mail.sender, recipients=[to], subject=mail.subject,
                                raw=raw)


_DENIED = ("Hello,\n\nThanks for writing to Sluice. This address only takes work from people "
           "its workspace has allowed, and {sender} is not one of them yet, so nothing was "
           "done. If you should have access, ask your Sluice admin to add your address to "
           "SLUICE_EMAIL_ALLOW.\n\nThis is the only reply you will get from this address.")


def _matches(action: str, command: Command) -> bool:
    if command.action == "approve":
        return action in ("approve", "raise_budget", "resolve_done")
    if command.action == "run_first":
        return action == "run_first"
    return action in ("cancel", "cancel_run")


def _open_question(thread: Thread, command: Command | None) -> Message | None:
    """The latest Sluice message with a button the command (any, when None) can press."""
    for message in reversed(thread.messages):
        if message.author != "sluice" or not message.buttons:
            continue
        if command is None and message.kind in ("plan", "question"):
            return message
        if command is not None and any(_matches(b.action, command) for b in message.buttons):
            return message
    return None


def email_input(parsed: ParsedEmail) -> dict[str, Any]:
    """What a program reads of an email (`email` in the thread's variables)."""
    files = []
    for attachment in parsed.attachments:
        entry: dict[str, Any] = {"name": attachment.name,
                                 "content_type": attachment.content_type,
                                 "size": attachment.size}
        if attachment.content_type.startswith(TEXT_TYPES):
            entry["text"] = attachment.data.decode("utf-8", errors="replace")[:MAX_TEXT_INPUT]
        files.append(entry)
    forwarded = parsed.forwarded.model_dump() if parsed.forwarded else None
    return {"sender": parsed.sender, "subject": parsed.subject, "note": parsed.note,
            "forwarded": forwarded, "attachments": files}


def _header(raw: bytes, name: str) -> str:
    """One header from the raw bytes, read leniently (before the message is parsed)."""
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    prefix = name.lower().encode() + b":"
    for line in head.splitlines():
        if line.lower().startswith(prefix):
            return line[len(prefix):].decode("utf-8", errors="replace").strip()
    return ""


class InboundHandler:
    """aiosmtpd handler: accepts, stores and handles each message."""

    def __init__(self, deps: BotDeps) -> None:
        self.inbound = InboundMail(deps)

    async def handle_DATA(self, _server: SMTP, _session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        try:
            await self.inbound.receive(raw, mail_from=str(envelope.mail_from or ""),
                                       rcpt_tos=[str(r) for r in envelope.rcpt_tos])
        except Exception:
            log.exception("inbound email from %s could not be handled; it is kept",
                          envelope.mail_from)
        return "250 Message accepted for delivery"


class InboundServer:
    def __init__(self, server: asyncio.base_events.Server) -> None:
        self.server = server
        self.port = int(server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()


async def start_inbound(deps: BotDeps, *, host: str, port: int) -> InboundServer:
    """Listen for SMTP on host:port (0 picks a free port)."""
    handler = InboundHandler(deps)
    limit = int(deps.settings.email_max_mb * 1_048_576) * 2  # our own limit replies; this cuts
    loop = asyncio.get_running_loop()
    try:
        server = await loop.create_server(
            lambda: SMTP(handler, data_size_limit=limit, enable_SMTPUTF8=True,
                         hostname="sluice-inbound"),
            host=host, port=port)
    except OSError as exc:
        raise ConfigurationError(
            f"Inbound email cannot listen on {host}:{port} ({exc.strerror}). Set "
            "SLUICE_EMAIL_PORT to a free port, stop what is using it, or set "
            "SLUICE_EMAIL_INBOUND=false.") from None
    return InboundServer(server)
