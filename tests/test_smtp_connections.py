"""Sending email on kept SMTP connections, and TLS that checks who the server is, against real
aiosmtpd servers (plain and implicit TLS) on loopback."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from core.errors import IntegrationError
from integrations._smtp import SmtpSender
from integrations.imap import IMAPMail
from integrations.mail import LocalMail, compose
from tests._tls import certificate as self_signed


class Server:
    """What an SMTP server saw: connections opened and closed, emails taken, and faults to
    play once (a 421 to the next MAIL FROM, or the connection cut once DATA is in)."""

    def __init__(self) -> None:
        self.opened = self.closed = 0
        self.envelopes: list[Envelope] = []
        self.refuse_next_mail = self.cut_after_next_data = False
        self.hold = asyncio.Event()  # answers DATA once set (set unless a test clears it)
        self.hold.set()

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, options: list[str]) -> str:
        if self.refuse_next_mail:
            self.refuse_next_mail = False
            return "421 4.3.2 Service shutting down"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.envelopes.append(envelope)
        await self.hold.wait()
        if self.cut_after_next_data:
            self.cut_after_next_data = False
            assert isinstance(server.transport, asyncio.Transport)
            server.transport.abort()  # the email is in; its 250 never leaves
        return "250 Message accepted"

    def factory(self, **options: Any) -> Callable[[], SMTP]:
        seen = self

        class Counted(SMTP):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                seen.opened += 1
                super().connection_made(transport)

            def connection_lost(self, error: Exception | None) -> None:
                seen.closed += 1
                super().connection_lost(error)

        return lambda: Counted(self, **options)


async def _serve(server: Server, tls: ssl.SSLContext | None = None,
                 **options: Any) -> tuple[asyncio.Server, int]:
    loop = asyncio.get_running_loop()
    listening = await loop.create_server(server.factory(**options), "127.0.0.1", 0, ssl=tls)
    return listening, int(listening.sockets[0].getsockname()[1])


@pytest.fixture
async def smtp() -> AsyncIterator[tuple[Server, int]]:
    server = Server()
    listening, port = await _serve(server, timeout=0.5)  # closes a connection idle for 0.5 s
    yield server, port
    listening.close()
    await listening.wait_closed()


def _mail(port: int, tmp_path: Path) -> LocalMail:
    return LocalMail(smtp_host="127.0.0.1", smtp_port=port, sender="sluice@localhost",
                     mailbox=tmp_path, timeout_s=5)


async def _until(condition: Callable[[], bool]) -> None:
    for _ in range(100):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the server did not see it within 2 s")


async def test_a_run_of_emails_goes_out_on_one_connection_closed_at_the_end(
        smtp: tuple[Server, int], tmp_path: Path) -> None:
    server, port = smtp
    mail = _mail(port, tmp_path)
    for i in range(20):
        await mail.send(f"p{i}@example.com", f"Hello {i}", "Hi!")
    assert [e.rcpt_tos for e in server.envelopes] == [[f"p{i}@example.com"] for i in range(20)]
    assert server.opened == 1

    # Eight at once (each() with concurrency=8) open at most eight, kept for the next eight.
    for _ in range(2):
        await asyncio.gather(*(mail.send(f"q{i}@example.com", "Hi", "x") for i in range(8)))
    assert len(server.envelopes) == 36 and server.opened <= 8

    await mail.aclose()
    await _until(lambda: server.closed == server.opened)


async def test_a_send_still_under_way_when_the_run_ends_quits_its_connection_after(
        tmp_path: Path) -> None:
    server = Server()
    listening, port = await _serve(server)  # no idle timeout: only we close connections
    mail = _mail(port, tmp_path)
    server.hold.clear()
    sending = asyncio.create_task(mail.send("ana@example.com", "Slow", "x"))
    await _until(lambda: len(server.envelopes) == 1)  # the server has it, not answered yet
    await mail.aclose()  # the run ends meanwhile
    server.hold.set()
    await sending
    await _until(lambda: server.closed == server.opened == 1)  # not kept for nobody
    listening.close()
    await listening.wait_closed()


@pytest.mark.parametrize("closing", ["its idle timeout", "a 421 to MAIL FROM"])
async def test_a_kept_connection_the_server_closed_is_replaced_without_a_second_email(
        smtp: tuple[Server, int], tmp_path: Path, closing: str) -> None:
    server, port = smtp
    mail = _mail(port, tmp_path)
    await mail.send("ana@example.com", "First", "x")
    if closing == "its idle timeout":
        await _until(lambda: server.closed == 1)  # the server closed it after 0.5 s idle
    else:
        server.refuse_next_mail = True  # shutting down: the kept one answers MAIL with 421
    await mail.send("bo@example.com", "Second", "x")
    assert [e.rcpt_tos for e in server.envelopes] == [["ana@example.com"], ["bo@example.com"]]
    assert server.opened == 2
    await mail.aclose()


async def test_a_connection_lost_after_the_email_was_handed_over_is_not_sent_again(
        smtp: tuple[Server, int], tmp_path: Path) -> None:
    server, port = smtp
    mail = _mail(port, tmp_path)
    await mail.send("ana@example.com", "First", "x")
    server.cut_after_next_data = True
    with pytest.raises(IntegrationError, match="may have been delivered; it was not sent again"):
        await mail.send("bo@example.com", "Second", "x")
    assert len(server.envelopes) == 2  # the server has it once: no blind second try
    await mail.send("cy@example.com", "Third", "x")  # and the next email goes out as usual
    assert [e.rcpt_tos for e in server.envelopes][-1] == ["cy@example.com"]
    await mail.aclose()


# -- TLS ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture
async def tls_smtp(certificate: tuple[Path, Path]) -> AsyncIterator[tuple[Server, int]]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    server = Server()
    listening, port = await _serve(server, tls=context)
    yield server, port
    listening.close()
    await listening.wait_closed()


def _email() -> Any:
    return compose("sluice@localhost", "ana@example.com", "Hi", "x", cc=None, reply_to=None,
                   idempotency_key=None)


async def test_smtp_over_tls_checks_the_certificate_before_sending_anything(
        tls_smtp: tuple[Server, int], certificate: tuple[Path, Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    server, port = tls_smtp
    sender = SmtpSender("127.0.0.1", port, timeout_s=5, security="ssl")
    with pytest.raises(IntegrationError, match="could not prove who it is: its TLS certificate"
                                               r" failed verification \(self.signed"):
        await asyncio.to_thread(sender.send, _email())
    assert server.envelopes == []

    # Trusted through SSL_CERT_FILE (a private authority), the same server gets the email.
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
    await asyncio.to_thread(sender.send, _email())
    assert [e.rcpt_tos for e in server.envelopes] == [["ana@example.com"]]
    await asyncio.to_thread(sender.close)


async def test_imap_over_tls_refuses_a_server_it_cannot_verify_before_the_password(
        certificate: tuple[Path, Path], tmp_path: Path) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    heard: list[bytes] = []

    async def imap_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"* OK IMAP4rev1 ready\r\n")
        await writer.drain()
        heard.append(await reader.readline())  # what a client that went on would send
        writer.close()

    listening = await asyncio.start_server(imap_server, "127.0.0.1", 0, ssl=context)
    port = listening.sockets[0].getsockname()[1]
    mail = IMAPMail(host="127.0.0.1", port=port, username="ana", password="s3cret",
                    security="ssl", timeout_s=5)
    with pytest.raises(IntegrationError, match=r"could not prove who it is.*password was not"):
        await mail.folders()
    assert heard == []
    listening.close()
    await listening.wait_closed()
