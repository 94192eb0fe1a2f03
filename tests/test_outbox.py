"""The local SMTP outbox (embedded default) against real smtplib clients: what it shows for
each mail, mails arriving at once, and a store that fails."""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.email.outgoing import Outgoing, send
from core.settings import Settings
from core.store import Store
from infra.outbox import Outbox, start_outbox


@pytest.fixture
async def outbox(engine: AsyncEngine) -> AsyncIterator[tuple[Outbox, Store]]:
    store = Store(engine)
    running = await start_outbox(store)
    yield running, store
    await running.stop()


def _mail(to: str, subject: str, message_id: str | None = None) -> EmailMessage:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "sluice@localhost", to, subject
    if message_id:
        message["Message-ID"] = message_id
    return message


def _send(port: int, *messages: EmailMessage) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        for message in messages:
            smtp.send_message(message)


async def test_the_outbox_shows_each_mail_as_its_sender_wrote_it(
        outbox: tuple[Outbox, Store]) -> None:
    running, store = outbox
    plain = _mail("ana@example.com", "Grüße — your budget for Café Ünïcode, a subject long "
                  "enough to be folded over two lines", "<plain@example.com>")
    plain.set_content("Hi Ana,\nwhat is your budget? 🙂\n")
    alternative = _mail("bo@example.com", "Both")
    alternative.set_content("the plain words\n")
    alternative.add_alternative("<p>the <b>html</b> words</p>", subtype="html")
    attached = _mail("cy@example.com", "With a file")
    attached.set_content("See the file.\n", cte="quoted-printable")
    attached.add_attachment(b"Item,Amount\nTea,20\n", maintype="text", subtype="plain",
                            filename="lines.txt")
    html = _mail("di@example.com", "Only html")
    html.set_content("<p>only html</p>", subtype="html")
    await asyncio.to_thread(_send, running.port, plain, alternative, attached, html)

    mails = await store.list_outbox()
    assert [(m.recipients, m.subject) for m in mails] == [
        (["ana@example.com"], "Grüße — your budget for Café Ünïcode, a subject long enough to "
                              "be folded over two lines"),
        (["bo@example.com"], "Both"), (["cy@example.com"], "With a file"),
        (["di@example.com"], "Only html")]
    assert mails[0].message_id == "<plain@example.com>"
    bodies = [m.body.replace("\r\n", "\n") for m in mails]
    assert bodies == ["Hi Ana,\nwhat is your budget? 🙂\n", "the plain words\n",
                      "See the file.\n", "<p>only html</p>\n"]
    assert all(m.message_id.startswith("<") for m in mails)  # one made up where there was none


async def test_mails_arriving_at_once_are_each_stored_once_in_order(
        outbox: tuple[Outbox, Store]) -> None:
    running, store = outbox
    # Eight clients at once, as each() with concurrency 8 sends; two send the same Message-ID
    # (a send redone after a crash): it is accepted both times and stored once.
    messages = [_mail(f"p{i}@example.com", f"Mail {i}", f"<m{min(i, 6)}@example.com>")
                for i in range(8)]
    await asyncio.gather(*(asyncio.to_thread(_send, running.port, m) for m in messages))
    mails = await store.list_outbox()
    assert sorted(m.message_id for m in mails) == [f"<m{i}@example.com>" for i in range(7)]
    assert (running.handler.received, running.handler.duplicates) == (8, 1)
    assert len({m.subject for m in mails}) == 7

    # One client after another: each stored before the next is sent, in that order.
    await asyncio.to_thread(_send, running.port,
                            *(_mail("q@example.com", f"Next {i}") for i in range(5)))
    assert [m.subject for m in await store.list_outbox()][-5:] == [f"Next {i}" for i in range(5)]


async def test_a_mail_the_outbox_cannot_store_is_refused_not_acknowledged(
        outbox: tuple[Outbox, Store]) -> None:
    running, store = outbox
    async with store.engine.begin() as conn:
        await conn.execute(text("ALTER TABLE outbox RENAME TO outbox_away"))
    with pytest.raises(smtplib.SMTPDataError) as refused:
        await asyncio.to_thread(_send, running.port, _mail("ana@example.com", "Lost?"))
    # A temporary failure, in one line of SMTP: the sender knows it was not taken.
    assert refused.value.smtp_code == 451
    assert refused.value.smtp_error == (b"4.3.0 The outbox could not store the mail; it was not "
                                        b"kept, send it again")
    async with store.engine.begin() as conn:
        await conn.execute(text("ALTER TABLE outbox_away RENAME TO outbox"))
    await asyncio.to_thread(_send, running.port, _mail("ana@example.com", "Again"))
    assert [m.subject for m in await store.list_outbox()] == ["Again"]


async def test_a_reply_keeps_its_lines_that_begin_with_from(
        outbox: tuple[Outbox, Store], tmp_path: Path) -> None:
    # smtplib's send_message writes such a line as ">From ", an mbox habit.
    running, store = outbox
    settings = Settings(home=tmp_path, smtp_port=running.port)
    await send(settings, Outgoing(to="ana@example.com", subject="Re: Signups",
                                  text="Plan:\nFrom the signups sheet, 4 rows.\n",
                                  message_id="<reply.1@localhost>", sender="sluice@localhost"))
    [mail] = await store.list_outbox()
    assert mail.body.replace("\r\n", "\n").startswith("Plan:\nFrom the signups sheet, 4 rows.")
