"""Thread messages as email: an email thread gets what the console thread shows.

After every rendered event (and after an inbound email is handled) `mirror_thread` sends each
new Sluice message of an email thread to the person who started it: the acknowledgement, the
plan with "reply approve / run first N / cancel", questions, decisions, the result with its CSV
attached. `progress_milestone` sends one "halfway" note per run. Each message is mailed once
(its `out:<message id>` key in the mail log).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from urllib.parse import urlencode

from bot.deps import BotDeps
from bot.email.outgoing import Outgoing, address_for, message_id_for, reply_subject, send
from core.mail_log import MailLog
from core.settings import Settings
from core.types import Button, JobEvent, Message, Thread

log = logging.getLogger(__name__)
MAILED_KINDS = {"ack", "note", "plan", "question", "decision", "status", "result", "error"}


async def mirror_thread(deps: BotDeps, thread_id: str) -> int:
    """Mail the thread's Sluice messages not mailed yet; returns how many were sent."""
    thread = await deps.store.find_thread(thread_id)
    if thread is None or thread.surface != "email":
        return 0
    mail_log = MailLog(deps.store)
    records = await mail_log.of_thread(thread_id)
    person = next((r.sender for r in records if r.direction == "in"), None)
    if person is None:
        return 0
    sent_keys = {r.key for r in records}
    sent = 0
    for message in thread.messages:
        if message.author != "sluice" or message.kind not in MAILED_KINDS:
            continue
        if f"out:{message.id}" in sent_keys:
            continue
        await _mail_message(deps, thread, message, person)
        sent += 1
    return sent


async def progress_milestone(deps: BotDeps, event: JobEvent) -> None:
    """One "halfway there" email per run of an email thread."""
    progress = event.progress
    if progress is None or progress.total is None or progress.total < 4 or event.run_id is None:
        return
    visited = progress.done + progress.failed
    if visited * 2 < progress.total or visited >= progress.total:  # the result mail follows
        return
    thread = await deps.store.find_thread(event.thread_id)
    if thread is None or thread.surface != "email":
        return
    key = f"half:{event.run_id}"
    mail_log = MailLog(deps.store)
    if await mail_log.has(key):
        return
    text = (f"Halfway: {progress.done} of {progress.total} done, {progress.failed} failed, "
            f"{'price unknown' if progress.price_unknown else f'${progress.cost_usd:.4f}'} so "
            "far. I'll write again when it finishes.")
    records = await mail_log.of_thread(thread.id)
    person = next((r.sender for r in records if r.direction == "in"), None)
    if person:
        await _send(deps, thread, key=key, text=text, person=person)


async def _mail_message(deps: BotDeps, thread: Thread, message: Message, person: str) -> None:
    files = []
    for attachment in message.attachments:
        meta, data = await deps.store.get_attachment(attachment.id)
        files.append((meta.name, meta.content_type, data))
    text = message.text + reply_hint(deps.settings, message, person)
    await _send(deps, thread, key=f"out:{message.id}", text=text, person=person, files=files)


async def _send(deps: BotDeps, thread: Thread, *, key: str, text: str, person: str,
                files: list[tuple[str, str, bytes]] | None = None) -> None:
    mail_log = MailLog(deps.store)
    records = await mail_log.of_thread(thread.id)
    first_in = next((r for r in records if r.direction == "in"), None)
    chain = [r.message_id for r in records if r.message_id]
    settings = deps.settings
    mail = Outgoing(to=person, subject=reply_subject(first_in.subject if first_in else
                                                     thread.title),
                    text=text, message_id=message_id_for(settings, f"{key.replace(':', '.')}."
                                                         f"{thread.id}"),
                    sender=address_for(settings, thread.id),
                    in_reply_to=chain[-1] if chain else "", references=chain, files=files or [])
    raw = await send(settings, mail)
    await mail_log.add(key=key, direction="out", message_id=mail.message_id,
                       sender=mail.sender, recipients=[person], subject=mail.subject, raw=raw,
                       thread_id=thread.id)
    log.info("emailed %s in thread %s to %s", key, thread.id, person)


def reply_hint(settings: Settings, message: Message, person: str) -> str:
    """What to reply to decide a message with buttons, and signed links for `person` when
    links are on."""
    words = [_word(b) for b in message.buttons]
    choices = [w for w in words if w]
    if not choices:
        return ""
    hint = "\n\nReply " + ", ".join(f"“{c}”" for c in choices[:-1])
    hint += (" or " if len(choices) > 1 else "") + f"“{choices[-1]}”."
    until = int(time.time() + settings.link_days * 86_400)
    links = [f"{b.label}: {signed_link(settings, message.id, b, person=person, until=until)}"
             for b in message.buttons if settings.signing_key and _word(b)]
    return hint + ("\nOr open:\n" + "\n".join(links) if links else "")


def _word(button: Button) -> str | None:
    if button.action in ("approve", "raise_budget", "resolve_done"):
        return "approve"
    if button.action == "run_first":
        return f"run first {button.count}"
    if button.action in ("cancel", "cancel_run"):
        return "cancel"
    return None


def link_signature(key: str, message_id: str, action: str, value: str, person: str,
                   until: str) -> str:
    """The HMAC of a link's decision, who it was sent to and until when it is valid."""
    payload = "\n".join((message_id, action, value, person, until)).encode()
    return hmac.new(key.encode(), payload, hashlib.sha256).hexdigest()


def signed_link(settings: Settings, message_id: str, button: Button, *, person: str,
                until: int) -> str:
    """A link that shows `button`'s decision, for `person` to confirm, until `until` (unix
    seconds)."""
    assert settings.signing_key is not None
    query = {"message": message_id, "action": button.action, "value": button.value,
             "for": person, "until": str(until)}
    query["sig"] = link_signature(settings.signing_key, *query.values())
    return f"{settings.effective_public_url}/email/decide?{urlencode(query)}"
