"""Mail over IMAP against a real Dovecot on loopback, and sending through our SMTP outbox."""

from __future__ import annotations

import asyncio
import datetime as dt
import imaplib
from collections.abc import AsyncIterator, Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from core.db import create_engine, migrate
from core.errors import IntegrationError
from core.store import Store
from infra.outbox import start_outbox
from integrations.base import EffectCall, Found
from integrations.catalog import Catalog
from integrations.imap import IMAPMail, files_sent_itself
from integrations.kept import KeptConnections
from integrations.mail import message_id_for
from tests._dovecot import DOVECOT, MISSING, Dovecot, dovecot
from tests.test_files import pdf

pytestmark = pytest.mark.skipif(DOVECOT is None, reason=MISSING)


def _message(sender: str, subject: str, body: str, when: str,
             attachments: list[tuple[str, str, bytes]] = (),  # type: ignore[assignment]
             message_id: str | None = None) -> bytes:
    message = EmailMessage()
    message["From"], message["To"] = sender, "ana@example.com"
    message["Subject"], message["Date"] = subject, when
    message["Message-ID"] = message_id or f"<{subject.replace(' ', '-')}@example.com>"
    message.set_content(body)
    for name, ctype, data in attachments:
        main, sub = ctype.split("/")
        message.add_attachment(data, maintype=main, subtype=sub, filename=name)
    return message.as_bytes()


@pytest.fixture
def server() -> Iterator[Dovecot]:
    with dovecot() as running:
        imap = imaplib.IMAP4(running.host, running.port)
        imap.login(running.user, running.password)
        seeds = [
            (_message("Acme Billing <billing@acme.example>", "Invoice INV-7", "Please pay.",
                      "Mon, 02 Nov 2026 09:00:00 +0000",
                      [("inv-7.pdf", "application/pdf", pdf(["Invoice INV-7", "Total 120.50"])),
                       ("lines.csv", "text/csv", b"Item,Amount\nMugs,100.50\nTea,20\n")]),
             "(\\Seen)"),
            (_message("Bo <bo@example.com>", "Lunch?", "Lunch on Friday?",
                      "Tue, 03 Nov 2026 12:00:00 +0000"), ""),
            (_message("Globex <ap@globex.example>", "Invoice G-2", "Attached.",
                      "Wed, 04 Nov 2026 08:00:00 +0000"), ""),
        ]
        for raw, flags in seeds:
            imap.append("INBOX", flags or None, None, raw)
        imap.logout()
        yield running


@pytest.fixture
async def mailbox(server: Dovecot, tmp_path: Path) -> AsyncIterator[tuple[IMAPMail, Store]]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'sluice.db'}")
    await migrate(engine)
    store = Store(engine)
    outbox = await start_outbox(store)
    mail = IMAPMail(host=server.host, port=server.port, username=server.user,
                    password=server.password, security="none", smtp_host="127.0.0.1",
                    smtp_port=outbox.port, smtp_security="none", sender="ana@example.com")
    yield mail, store
    await mail.aclose()
    await outbox.stop()
    await engine.dispose()


async def test_search_reads_without_marking_and_lists_attachments(
    mailbox: tuple[IMAPMail, Store],
) -> None:
    mail, _store = mailbox
    assert await mail.folders() == ["Archive", "INBOX", "Invoices", "Sent"]
    found = await mail.search(subject="invoice")
    assert [e["subject"] for e in found] == ["Invoice G-2", "Invoice INV-7"]  # newest first
    inv = found[1]
    assert inv["id"] == "INBOX:1" and inv["sender"] == "billing@acme.example"
    assert inv["date"] == dt.datetime(2026, 11, 2, 9, 0, tzinfo=dt.UTC)
    assert [a["name"] for a in inv["attachments"]] == ["inv-7.pdf", "lines.csv"]
    assert inv["unread"] is False and found[0]["unread"] is True
    assert [e["subject"] for e in await mail.search(unread_only=True)] == [
        "Invoice G-2", "Lunch?"]
    assert [e["subject"] for e in await mail.search(sender="bo@example.com")] == ["Lunch?"]
    assert [e["subject"] for e in await mail.search(text="Friday")] == ["Lunch?"]
    assert len(await mail.search(limit=1)) == 1
    assert (await mail.search(unread_only=True))[0]["unread"] is True  # still unread
    assert (await mail.describe())["inbox"] == {"emails": 3, "unread": 2}


async def test_attachments_as_text_and_rows(mailbox: tuple[IMAPMail, Store]) -> None:
    mail, _store = mailbox
    assert await mail.attachment_text("INBOX:1", "inv-7.pdf") == "Invoice INV-7\nTotal 120.50"
    rows = await mail.attachment_rows("INBOX:1", "LINES.csv")
    assert [dict(r) for r in rows] == [{"Item": "Mugs", "Amount": "100.50"},
                                       {"Item": "Tea", "Amount": "20"}]
    with pytest.raises(IntegrationError) as info:
        await mail.attachment_text("INBOX:1", "invoice.pdf")
    assert info.value.message == ("The email INBOX:1 has no attachment 'invoice.pdf'. "
                                  "Attachments: inv-7.pdf, lines.csv.")


async def test_label_mark_read_and_move(mailbox: tuple[IMAPMail, Store]) -> None:
    mail, _store = mailbox
    await mail.label("INBOX:3", "invoice-done")
    await mail.label("INBOX:3", "invoice-done")  # idempotent
    await mail.mark_read("INBOX:3")
    assert (await mail.read("INBOX:3"))["unread"] is False
    new_id = await mail.move("INBOX:3", "Invoices")
    assert new_id == "Invoices:1"
    moved = await mail.search("Invoices")
    assert [e["subject"] for e in moved] == ["Invoice G-2"] and moved[0]["id"] == new_id
    assert [e["subject"] for e in await mail.search()] == ["Lunch?", "Invoice INV-7"]
    with pytest.raises(IntegrationError, match=r"There is no email 'INBOX:3' \(it may have been "
                                               r"moved\)"):
        await mail.read("INBOX:3")
    with pytest.raises(IntegrationError, match=r"There is no folder 'Paid'\. Folders: Archive, "
                                               r"INBOX, Invoices, Sent\."):
        await mail.move("INBOX:1", "Paid")
    with pytest.raises(IntegrationError, match="cannot be a label"):
        await mail.label("INBOX:1", "two words")


async def test_send_goes_through_smtp_once_per_key(mailbox: tuple[IMAPMail, Store]) -> None:
    mail, store = mailbox
    first = await mail.send("Bo <bo@example.com>", "Re: Lunch?", "Friday works.",
                            idempotency_key="run-1/item#2/call#1")
    again = await mail.send("bo@example.com", "Re: Lunch?", "Friday works.",
                            idempotency_key="run-1/item#2/call#1")
    assert first == again
    sent = await store.list_outbox()
    assert len(sent) == 1 and sent[0].recipients == ["bo@example.com"]
    assert sent[0].sender == "ana@example.com" and sent[0].subject == "Re: Lunch?"


def _sent_copies(server: Dovecot, message_id: str) -> list[bytes]:
    """The flags and headers of the Sent folder's copies of `message_id`."""
    imap = imaplib.IMAP4(server.host, server.port)
    imap.login(server.user, server.password)
    imap.select("Sent", readonly=True)
    _status, data = imap.uid("SEARCH", "HEADER", "Message-ID", f'"{message_id}"')
    uids = (data[0] or b"").split()
    copies = []
    for uid in uids:
        _status, fetched = imap.uid("FETCH", uid.decode(), "(FLAGS BODY.PEEK[HEADER])")
        copies.append(b"".join(part[0] + part[1] if isinstance(part, tuple) else part
                               for part in fetched))
    imap.logout()
    return copies


async def test_send_files_one_copy_in_sent(server: Dovecot,
                                           mailbox: tuple[IMAPMail, Store]) -> None:
    mail, store = mailbox
    key = "run-3/item#1/call#1"
    message_id = await mail.send("bo@example.com", "Re: Lunch?", "Friday works.",
                                 idempotency_key=key)
    await mail.send("bo@example.com", "Re: Lunch?", "Friday works.", idempotency_key=key)
    copies = _sent_copies(server, message_id)
    assert len(copies) == 1  # the retry of the same send is not filed twice
    assert b"\\Seen" in copies[0] and b"Subject: Re: Lunch?" in copies[0]
    assert b"To: bo@example.com" in copies[0]
    # So a crash after the send is settled by looking, without asking anyone.
    found = await mail.confirm_send("bo@example.com", "Re: Lunch?", "Friday works.",
                                    idempotency_key=key)
    assert found == Found(done=True, result=message_id)
    assert len(await store.list_outbox()) == 1


async def test_send_files_no_copy_when_told_not_to(server: Dovecot, tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'sluice.db'}")
    await migrate(engine)
    outbox = await start_outbox(Store(engine))
    mail = IMAPMail(host=server.host, port=server.port, username=server.user,
                    password=server.password, security="none", smtp_host="127.0.0.1",
                    smtp_port=outbox.port, smtp_security="none", file_sent="no")
    try:
        message_id = await mail.send("bo@example.com", "Hi", "Hello.",
                                     idempotency_key="run-4/call#1")
        assert _sent_copies(server, message_id) == []
        assert await Store(engine).outbox_has(message_id)
    finally:
        await mail.aclose()
        await outbox.stop()
        await engine.dispose()


def test_gmail_files_sent_mail_itself() -> None:
    assert files_sent_itself(("IMAP4REV1", "X-GM-EXT-1", "UIDPLUS"))
    assert not files_sent_itself(("IMAP4REV1", "SPECIAL-USE", "UIDPLUS"))


async def test_confirm_send_finds_a_send_filed_in_sent(server: Dovecot,
                                                       mailbox: tuple[IMAPMail, Store]) -> None:
    mail, store = mailbox
    key = "run-2/item#5/call#1"
    # Not in Sent tells nothing: the crash may have come before the copy was filed.
    assert await mail.confirm_send("bo@example.com", "Re: Lunch?", "Friday.",
                                   idempotency_key=key) is None
    message_id = message_id_for(key)
    imap = imaplib.IMAP4(server.host, server.port)
    imap.login(server.user, server.password)
    # What a server like Gmail's does with a message its SMTP sent.
    imap.append("Sent", "(\\Seen)", None, _message(
        "ana@example.com", "Re: Lunch?", "Friday.", "Thu, 05 Nov 2026 10:00:00 +0000",
        message_id=message_id))
    imap.logout()
    found = await mail.confirm_send("bo@example.com", "Re: Lunch?", "Friday.",
                                    idempotency_key=key)
    assert found == Found(done=True, result=message_id)
    assert await mail.confirm_send("bo@example.com", "Re: Lunch?", "Friday.",
                                   idempotency_key="run-2/item#6/call#1") is None
    assert await store.list_outbox() == []  # looking sends nothing


async def test_wrong_password_is_a_clear_error_without_the_password(server: Dovecot) -> None:
    mail = IMAPMail(host=server.host, port=server.port, username=server.user,
                    password="wrong-pw-123", security="none")
    catalog = Catalog([mail], secrets=["wrong-pw-123"])
    with pytest.raises(IntegrationError) as info:
        await catalog.dispatch(EffectCall("email", "folders", [], {}))
    assert info.value.message == ("The mail server 127.0.0.1 refused the login for ana; check "
                                  "the connection's password (`sluice connect imap`).")
    await mail.aclose()


class _Relay:
    """A TCP relay to the IMAP server that counts the connections made through it, can cut
    them, and knows how many are open."""

    def __init__(self, target: int) -> None:
        self.target, self.made = target, 0
        self.open: set[asyncio.StreamWriter] = set()

    async def serve(self) -> tuple[asyncio.Server, int]:
        server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return server, int(server.sockets[0].getsockname()[1])

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.made += 1
        self.open.add(writer)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        self.open.discard(writer)

    def cut(self) -> None:
        for writer in list(self.open):
            writer.transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def test_a_worker_keeps_one_login_for_the_catalogs_of_a_request(server: Dovecot) -> None:
    relay = _Relay(server.port)
    listening, port = await relay.serve()
    kept = KeptConnections(idle_s=30)

    async def catalog_reads() -> list[str]:  # a plan, a sample run or a run
        mail = await IMAPMail(host="127.0.0.1", port=port, username=server.user,
                              password=server.password, security="none").ready(kept=kept)
        assert isinstance(mail, IMAPMail)
        try:
            return [e["subject"] for e in await mail.search(subject="invoice")]
        finally:
            await mail.aclose()

    try:
        for _ in range(3):
            assert await catalog_reads() == ["Invoice G-2", "Invoice INV-7"]
        assert relay.made == 1 and len(relay.open) == 1  # one login, still open for the next

        relay.cut()  # the server drops the idle connection: the next reader logs in again
        assert await catalog_reads() == ["Invoice G-2", "Invoice INV-7"]
        assert relay.made == 2
    finally:
        await kept.aclose()  # the worker stops: the kept session logs out
    for _ in range(100):
        if not relay.open:
            break
        await asyncio.sleep(0.02)
    assert not relay.open
    listening.close()
    await listening.wait_closed()
