"""LocalMail against a real aiosmtpd server on loopback, and real .eml files."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
from collections.abc import AsyncIterator
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from core.errors import IntegrationError
from integrations.mail import LocalMail, html_to_text, message_id_for


class Outbox:
    """An aiosmtpd handler that keeps what it receives and refuses `refused` addresses."""

    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []
        self.refused = {"nobody@example.com"}

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if address in self.refused:
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.envelopes.append(envelope)
        return "250 Message accepted"

    def message(self, index: int = -1) -> EmailMessage:
        content = self.envelopes[index].content
        assert isinstance(content, bytes)
        parsed = message_from_bytes(content, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


@pytest.fixture
async def outbox() -> AsyncIterator[tuple[Outbox, int]]:
    handler = Outbox()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(handler), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield handler, port
    server.close()
    await server.wait_closed()


def _mail(port: int, mailbox: Path) -> LocalMail:
    return LocalMail(smtp_host="127.0.0.1", smtp_port=port, sender="Sluice <sluice@localhost>",
                     mailbox=mailbox, timeout_s=5)


async def test_send_delivers_a_real_message(outbox: tuple[Outbox, int], tmp_path: Path) -> None:
    handler, port = outbox
    mail = _mail(port, tmp_path)
    message_id = await mail.send(["Ana Lima <ana@example.com>", "bo@example.com"], "Budget?",
                                 "Hi Ana,\nwhat is your budget?", cc="cy@example.com",
                                 reply_to="sales@example.com")
    envelope = handler.envelopes[0]
    assert envelope.mail_from == "sluice@localhost"
    assert envelope.rcpt_tos == ["ana@example.com", "bo@example.com", "cy@example.com"]
    sent = handler.message()
    assert sent["Message-ID"] == message_id
    assert sent["To"] == "Ana Lima <ana@example.com>, bo@example.com"
    assert sent["Reply-To"] == "sales@example.com"
    assert sent["Subject"] == "Budget?"
    body = sent.get_body()
    assert body is not None
    assert body.get_content().replace("\r\n", "\n") == "Hi Ana,\nwhat is your budget?\n"


async def test_idempotency_key_fixes_the_message_id(
    outbox: tuple[Outbox, int], tmp_path: Path
) -> None:
    handler, port = outbox
    mail = _mail(port, tmp_path)
    first = await mail.send("ana@example.com", "Hi", "x", idempotency_key="run_1/each#0/call#1")
    second = await mail.send("ana@example.com", "Hi", "x", idempotency_key="run_1/each#0/call#1")
    other = await mail.send("ana@example.com", "Hi", "x")
    assert first == second == message_id_for("run_1/each#0/call#1")
    assert first.startswith("<") and first.endswith("@sluice>") and len(first) == 41
    assert other != first
    assert [handler.message(i)["Message-ID"] for i in range(2)] == [first, first]


async def test_subject_newlines_cannot_inject_headers(
    outbox: tuple[Outbox, int], tmp_path: Path
) -> None:
    handler, port = outbox
    await _mail(port, tmp_path).send("ana@example.com", "Hi\r\nBcc: eve@example.com", "x")
    assert handler.message()["Subject"] == "Hi Bcc: eve@example.com"
    assert handler.message()["Bcc"] is None


async def test_what_is_sent_reads_back_as_it_was_written(
    outbox: tuple[Outbox, int], tmp_path: Path
) -> None:
    handler, port = outbox
    mail = LocalMail(smtp_host="127.0.0.1", smtp_port=port, mailbox=tmp_path, timeout_s=5,
                     sender="Équipe Sluice <team@example.com>")
    subject = "Grüße — your budget for Café Ünïcode ✓ 🙂, a subject long enough to fold twice"
    body = "Hi José,\r\nFrom now on: your budget? 🙂\r\n" + "x" * 1500 + "\n.\nThanks"
    await mail.send(["José Núñez <jose@example.com>", '"Lima, Ana" <ana@example.com>'],
                    subject, body, cc="Zoë <zoe@example.com>",
                    reply_to='"Ventas, Équipe" <sales@example.com>')
    sent = handler.message()
    assert str(sent["From"]) == "Équipe Sluice <team@example.com>"
    assert str(sent["To"]) == 'José Núñez <jose@example.com>, "Lima, Ana" <ana@example.com>'
    assert str(sent["Cc"]) == "Zoë <zoe@example.com>"
    assert [(a.display_name, a.addr_spec) for a in sent["Reply-To"].addresses] == [
        ("Ventas, Équipe", "sales@example.com")]  # one address, its comma inside the name
    assert str(sent["Subject"]) == subject  # every space kept across the folded lines
    assert handler.envelopes[-1].rcpt_tos == ["jose@example.com", "ana@example.com",
                                              "zoe@example.com"]
    content = sent.get_body()
    assert content is not None
    assert content.get_content().replace("\r\n", "\n") == (
        "Hi José,\nFrom now on: your budget? 🙂\n" + "x" * 1500 + "\n.\nThanks\n")
    raw = handler.envelopes[-1].original_content
    assert isinstance(raw, bytes)
    assert max(len(line) for line in raw.split(b"\r\n")) <= 78  # any server takes its lines


async def test_an_address_beyond_ascii_is_refused_with_what_to_do(
    outbox: tuple[Outbox, int], tmp_path: Path
) -> None:
    handler, port = outbox
    with pytest.raises(IntegrationError, match=r"letters beyond ASCII .* ask for the person's "
                                               r"plain address"):
        await _mail(port, tmp_path).send("josé@example.com", "Hi", "x")
    assert handler.envelopes == []


@pytest.mark.parametrize("bad", ["ana@", "ana", "ana@exa mple.com", "a@b.com\nBcc: e@x.com"])
async def test_bad_address_is_refused_before_sending(
    outbox: tuple[Outbox, int], tmp_path: Path, bad: str
) -> None:
    handler, port = outbox
    with pytest.raises(IntegrationError, match="is not an email address"):
        await _mail(port, tmp_path).send(["ok@example.com", bad], "Hi", "x")
    assert handler.envelopes == []


async def test_server_refusal_and_unreachable_server(
    outbox: tuple[Outbox, int], tmp_path: Path
) -> None:
    _, port = outbox
    with pytest.raises(IntegrationError, match=r"refused the recipients: nobody@example\.com"):
        await _mail(port, tmp_path).send("nobody@example.com", "Hi", "x")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    with pytest.raises(IntegrationError, match=f"127.0.0.1:{closed_port} cannot be reached"):
        await _mail(closed_port, tmp_path).send("ana@example.com", "Hi", "x")


PLAIN = b"""\
From: Ana Lima <ana@example.com>
To: Sales <sales@example.com>
Subject: Budget for Q3
Date: Tue, 04 Jun 2024 09:30:00 +0200
Message-ID: <plain-1@example.com>
Status: RO

Our budget is 5000 EUR.
"""

OUTLOOK_HTML = b"""\
From: "Bo Chen" <bo@example.com>
To: sales@example.com, "Cy" <cy@example.com>
Cc: dee@example.com
Subject: =?utf-8?q?Invoice_=E2=82=AC120?=
Date: Wed, 05 Jun 2024 10:00:00 +0000
Message-ID: <html-2@example.com>
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="outer"

--outer
Content-Type: multipart/alternative; boundary="alt"

--alt
Content-Type: text/html; charset="utf-8"
Content-Transfer-Encoding: quoted-printable

<html><head><style>p {color: red}</style></head><body><p>Hello&nbsp;team,</p>=
<div>Total: <b>=E2=82=AC120</b></div><script>alert(1)</script></body></html>
--alt--
--outer
Content-Type: application/pdf; name="invoice.pdf"
Content-Disposition: attachment; filename="invoice.pdf"
Content-Transfer-Encoding: base64

JVBERi0xLjQK
--outer--
"""

GMAIL_FORWARD = b"""\
From: Dee <dee@example.com>
To: sluice@localhost
Subject: Fwd: Order
Message-ID: <fwd-3@example.com>
Date: Thu, 06 Jun 2024 08:00:00 +0000
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="b1"

--b1
Content-Type: text/plain; charset="UTF-8"

---------- Forwarded message ---------
From: Eve <eve@example.com>
Please ship 3 units.
--b1
Content-Type: message/rfc822

From: Eve <eve@example.com>
Subject: Order

Please ship 3 units.
--b1--
"""


@pytest.fixture
def mailbox(tmp_path: Path) -> Path:
    (tmp_path / "a.eml").write_bytes(PLAIN)
    (tmp_path / "b.eml").write_bytes(OUTLOOK_HTML)
    (tmp_path / "c.eml").write_bytes(GMAIL_FORWARD)
    (tmp_path / "d.eml").write_bytes(b"Subject: no date\n\nbody\n")
    (tmp_path / "ignored.txt").write_bytes(PLAIN)
    return tmp_path


async def test_inbox_parses_messages_newest_first(mailbox: Path) -> None:
    emails = await _mail(1, mailbox).inbox()
    assert [e["id"] for e in emails] == [
        "<fwd-3@example.com>", "<html-2@example.com>", "<plain-1@example.com>", "d",
    ]
    html_mail = emails[1]
    assert html_mail["sender"] == "bo@example.com" and html_mail["sender_name"] == "Bo Chen"
    assert html_mail["to"] == ["sales@example.com", "cy@example.com"]
    assert html_mail["cc"] == ["dee@example.com"]
    assert html_mail["subject"] == "Invoice €120"
    assert html_mail["date"] == dt.datetime(2024, 6, 5, 10, tzinfo=dt.UTC)
    assert html_mail["text"] == "Hello team,\n\nTotal: €120"
    assert html_mail["attachments"] == [
        {"name": "invoice.pdf", "content_type": "application/pdf", "size": 9}
    ]
    forward = emails[0]
    assert "Please ship 3 units." in forward["text"]
    assert forward["attachments"][0]["content_type"] == "message/rfc822"
    assert forward["attachments"][0]["name"] == "forwarded.eml"
    assert emails[3]["date"] is None and emails[3]["text"] == "body"


async def test_unread_only_and_limit(mailbox: Path) -> None:
    mail = _mail(1, mailbox)
    unread = await mail.inbox(unread_only=True)
    assert "<plain-1@example.com>" not in [e["id"] for e in unread]  # Status: RO means read
    assert len(unread) == 3
    assert [e["id"] for e in await mail.inbox(limit=1)] == ["<fwd-3@example.com>"]
    with pytest.raises(IntegrationError, match="limit must be 0 or more"):
        await mail.inbox(limit=-1)
    assert await mail.describe() == {"sender": "Sluice <sluice@localhost>",
                                     "inbox": {"emails": 4, "unread": 3}}


async def test_missing_mailbox_is_empty(tmp_path: Path) -> None:
    assert await _mail(1, tmp_path / "none").inbox() == []


def test_html_to_text() -> None:
    assert html_to_text("<ul><li>one</li><li>two &amp; three</li></ul>") == "one\n\ntwo & three"
