"""Sending email over SMTP on connections kept open between sends, with verified TLS.

A job that emails every row used to open a connection per email: a TCP connect and EHLO (and,
with a real account, TLS and AUTH: a handshake and several round trips) and QUIT around each
message. A `SmtpSender` keeps the connections it opened and hands an idle one to the next send;
`close()` (the integration's `aclose`, when the run ends) quits them.

A kept connection may have been closed by the server meanwhile (its idle timeout, a restart).
That is noticed before anything is sent: the socket is readable (the server's 421 or its end of
the stream), or the server answers MAIL FROM with 421 or not at all. The email then goes out on a
new connection. Once DATA was sent, a lost connection is an error, as on a new connection: the
email may have been delivered, so it is not sent again here (after a crash the runtime asks the
integration, see `confirm_send`).

TLS (implicit or STARTTLS) verifies the server's certificate and name against the system's
authorities, or the file `SSL_CERT_FILE` names: the standard library's `SMTP_SSL` does not by
default, which let anyone on the path read the account's password.
"""

from __future__ import annotations

import contextlib
import select
import smtplib
import ssl
import threading
import time
from dataclasses import dataclass
from email.message import Message
from email.policy import compat32
from email.utils import getaddresses, parseaddr
from typing import Any, Literal

from core.errors import IntegrationError

Security = Literal["ssl", "starttls", "none"]
IDLE_S = 60.0  # RFC 5321 servers wait 5 minutes for a command; a kept connection idles less
KEEP = 8  # idle connections kept (each() sends up to its concurrency at once)


class _LostAfterData(Exception):
    """The connection broke after the email was handed over: it may have been delivered."""


class _Connection(smtplib.SMTP):
    """An SMTP connection that notes whether DATA was sent: before it, nothing was."""

    data_sent = False

    def data(self, msg: Any) -> tuple[int, bytes]:
        self.data_sent = True
        return super().data(msg)


class _TlsConnection(_Connection, smtplib.SMTP_SSL):
    """The same over implicit TLS (port 465)."""


def verified_tls() -> ssl.SSLContext:
    """A TLS context that checks the server's certificate and host name."""
    return ssl.create_default_context()


class SmtpSender:
    """Sends emails to one SMTP server (thread-safe), reusing idle connections."""

    def __init__(self, host: str, port: int, *, timeout_s: float, security: Security = "none",
                 login: tuple[str, str] | None = None, keep: int = KEEP,
                 idle_s: float = IDLE_S) -> None:
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self.security, self._login = security, login
        self.keep, self.idle_s = keep, idle_s
        self._idle: list[tuple[float, _Connection]] = []  # (when it went idle, connection)
        self._lock = threading.Lock()
        self._closed = False  # a send that ends after close() quits its connection
        self.opened = 0  # connections opened, for the record

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    def send(self, message: Message) -> None:
        """Send `message` from the calling thread, on an idle connection when there is one.

        Raises:
            IntegrationError: the server refused the email, the login or the recipients, its
                certificate could not be verified, or it cannot be reached.
        """
        try:
            self._send(message)
        except smtplib.SMTPRecipientsRefused as exc:
            refused = ", ".join(str(r) for r in exc.recipients)
            raise IntegrationError(f"The mail server refused the recipients: {refused}.",
                                   recipients=list(exc.recipients)) from None
        except smtplib.SMTPAuthenticationError:
            user = self._login[0] if self._login else ""
            raise IntegrationError(f"The mail server at {self.where} refused the login for "
                                   f"{user}; check the connection's user name and password."
                                   ) from None
        except _LostAfterData as exc:
            raise IntegrationError(f"The connection to the mail server at {self.where} was "
                                   f"lost while it took the email ({exc}): it may have been "
                                   "delivered; it was not sent again.") from None
        except smtplib.SMTPException as exc:
            raise IntegrationError(f"The mail server at {self.where} did not accept the email "
                                   f"({type(exc).__name__}: {exc}).") from None
        except ssl.SSLCertVerificationError as exc:
            raise IntegrationError(
                f"The mail server at {self.where} could not prove who it is: its TLS "
                f"certificate failed verification ({exc.verify_message}); nothing was sent. "
                "If it uses a private certificate authority, point SSL_CERT_FILE at it."
            ) from None
        except OSError as exc:
            raise IntegrationError(f"The mail server at {self.where} cannot be reached "
                                   f"({exc.strerror or type(exc).__name__}).") from None

    def _send(self, message: Message) -> None:
        envelope = _Envelope.of(message)
        while (kept := self._take()) is not None:
            try:
                self._transact(kept, envelope)
            except (smtplib.SMTPServerDisconnected, smtplib.SMTPResponseException,
                    OSError) as exc:
                closing = (not isinstance(exc, smtplib.SMTPResponseException)
                           or exc.smtp_code == 421)  # 421: the server is closing the connection
                if kept.data_sent or not closing:
                    raise
                # The server closed it while it was idle, before this email: nothing was sent.
                continue
            self._give_back(kept)
            return
        connection = self._connect()
        self._transact(connection, envelope)
        self._give_back(connection)

    @staticmethod
    def _transact(connection: _Connection, envelope: _Envelope) -> None:
        connection.data_sent = False
        try:
            connection.sendmail(envelope.sender, envelope.recipients, envelope.data)
        except BaseException as exc:
            _drop(connection)
            if connection.data_sent and isinstance(exc, smtplib.SMTPServerDisconnected | OSError):
                raise _LostAfterData(str(exc) or type(exc).__name__) from exc
            raise

    def _connect(self) -> _Connection:
        connection: _Connection
        if self.security == "ssl":
            connection = _TlsConnection(self.host, self.port, timeout=self.timeout_s,
                                        context=verified_tls())
        else:
            connection = _Connection(self.host, self.port, timeout=self.timeout_s)
        self.opened += 1
        try:
            if self.security == "starttls":
                connection.starttls(context=verified_tls())
            if self._login is not None:
                connection.login(*self._login)
        except BaseException:
            _drop(connection)
            raise
        return connection

    def _take(self) -> _Connection | None:
        """An idle connection the server has not closed, or None."""
        while True:
            with self._lock:
                if not self._idle:
                    return None
                since, connection = self._idle.pop()
            if time.monotonic() - since < self.idle_s and _quiet(connection):
                return connection
            _drop(connection)  # closed by the server, or soon to be: no QUIT to wait for

    def _give_back(self, connection: _Connection) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < self.keep:
                self._idle.append((time.monotonic(), connection))
                return
        _quit(connection)

    def close(self) -> None:
        """Quit every idle connection, and those of sends still under way as they end."""
        with self._lock:
            idle, self._idle, self._closed = self._idle, [], True
        for _since, connection in idle:
            _quit(connection)


@dataclass(frozen=True)
class _Envelope:
    """An email as it goes over SMTP: who it is from, to whom, and its bytes."""

    sender: str
    recipients: list[str]
    data: bytes

    @classmethod
    def of(cls, message: Message) -> _Envelope:
        """From the email's From, To and Cc, its bytes with CRLF line ends and lines that begin
        with "From " left as they are (`SMTP.send_message` writes ">From ", an mbox habit)."""
        copies = [str(v) for v in (*message.get_all("To", ()), *message.get_all("Cc", ()))]
        return cls(sender=parseaddr(str(message["From"]))[1],
                   recipients=[address for _name, address in getaddresses(copies)],
                   data=message.as_bytes(policy=_WIRE))


_WIRE = compat32.clone(linesep="\r\n")


def _quiet(connection: _Connection) -> bool:
    """Whether nothing waits to be read on an idle connection: a server that closed it has
    sent its end of the stream, often after a 421."""
    sock = connection.sock
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable


def _quit(connection: _Connection) -> None:
    with contextlib.suppress(smtplib.SMTPException, OSError):
        connection.quit()
    _drop(connection)


def _drop(connection: _Connection) -> None:
    with contextlib.suppress(OSError):
        connection.close()
