"""Mail on a real server: IMAP to search, read (with attachments), move and label; SMTP to send.

See ARCHITECTURE.md, "AI-friendly integrations". Works with any IMAP4rev1 server (Gmail with an
app password, Fastmail, Dovecot). One IMAP connection per integration, used from a thread and
re-opened when the server dropped it; reads use EXAMINE and BODY.PEEK so reading never marks a
message as read. An email's `id` is "FOLDER:UID", which move(), label() and the attachment
actions take back. Sending composes like the local mail integration (the Message-ID derives from
the idempotency key) and goes through the configured SMTP server, with STARTTLS or TLS and login
when configured; then a copy is filed in the Sent folder, as a mail client does (not on Gmail,
whose SMTP files sent mail itself, nor when the folder holds that Message-ID already). After a
crash, a send left unconfirmed is looked up by its Message-ID in the Sent folder: found, it is not
sent again; otherwise a person is asked (the crash may have come between the SMTP server taking
the email and the copy being filed).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import datetime as dt
import imaplib
import logging
import re
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

from core.errors import IntegrationError
from core.settings import Settings
from core.text import html_to_text
from integrations._smtp import Security, SmtpSender, verified_tls
from integrations.base import ActionSpec, Found, Integration, Row, action
from integrations.files import pdf_pages, rows_of
from integrations.kept import KeptConnections
from integrations.mail import Email, compose, message_id_for, parse_email, parse_message
from integrations.registry import CredentialField, Service, named
from integrations.vault import Credentials

logger = logging.getLogger(__name__)
T = TypeVar("T")
FileSent = Literal["auto", "yes", "no"]
_FETCHED = re.compile(rb"UID (\d+)")
_FLAGS = re.compile(rb"FLAGS \(([^)]*)\)")
_ATOM = re.compile(r"^[A-Za-z0-9_.\-$]+$")
_SENT_NAMES = {"sent", "sent items", "sent messages", "sent mail", "[gmail]/sent mail"}


def _quoted(text: str) -> str:
    if not text.isascii():
        raise IntegrationError(f"Search text must be plain ASCII for IMAP; {text!r} is not. "
                               "Search for an ASCII part of it.")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _split_id(email_id: str) -> tuple[str, str]:
    folder, _, uid = str(email_id).rpartition(":")
    if not folder or not uid.isdigit():
        raise IntegrationError(f"{email_id!r} is not an email id; use the `id` of an email from "
                               "search(), like 'INBOX:42'.", email=email_id)
    return folder, uid


class IMAPMail(Integration):
    """Email on the team's mail server: search and read with attachments, move, label, send."""

    name = "email"
    summary = "Email over IMAP/SMTP: search, read attachments, move, label, send."

    def __init__(self, *, host: str, port: int, username: str, password: str,
                 security: Security = "ssl", smtp_host: str = "", smtp_port: int = 0,
                 smtp_security: Security = "starttls", sender: str = "",
                 file_sent: FileSent = "auto", timeout_s: float = 30.0) -> None:
        self.host, self.port, self.username, self._password = host, port, username, password
        self.security, self.timeout_s = security, timeout_s
        self.smtp_host, self.smtp_port, self.smtp_security = smtp_host, smtp_port, smtp_security
        self.sender = sender or username
        self.file_sent = file_sent  # auto: file a copy in Sent unless the server is Gmail
        self._session = self._new_session()
        self._release: Callable[[], None] | None = None  # when a worker keeps the session

    async def ready(self, *, kept: KeptConnections | None = None) -> Integration:
        """With `kept` (a worker's), use the session it keeps for this account: one login
        serves a request's plan, sample run and run, and the SMTP connections stay open."""
        if kept is not None:
            session, self._release = await kept.acquire(self._key(), self._open_session)
            assert isinstance(session, _Session)
            self._session = session
        return self

    def _key(self) -> tuple[Any, ...]:
        return (self.host, self.port, self.security, self.username, self._password,
                self.smtp_host, self.smtp_port, self.smtp_security)

    async def _open_session(self) -> _Session:
        return self._new_session()

    def _new_session(self) -> _Session:
        login = None if self.smtp_security == "none" else (self.username, self._password)
        return _Session(SmtpSender(self.smtp_host, self.smtp_port, timeout_s=self.timeout_s,
                                   security=self.smtp_security, login=login))

    def redo_is_safe(self, spec: ActionSpec) -> bool:
        return spec.idempotent

    @action("read")
    async def folders(self) -> list[str]:
        """The mailbox's folders, e.g. ["Archive", "INBOX", "Sent"]."""
        return await self._run(self._folders)

    @action("read")
    async def search(
        self,
        folder: str = "INBOX",
        *,
        sender: str | None = None,
        subject: str | None = None,
        text: str | None = None,
        since: dt.date | None = None,
        unread_only: bool = False,
        limit: int | None = 50,
    ) -> builtins.list[Email]:
        """Emails in `folder` matching every given filter, newest first (at most `limit`).

        `sender`, `subject` and `text` match parts of the From header, the subject and the
        whole message, ignoring case; `since` keeps emails received on or after that date.
        Each Email has id ("INBOX:42", for move/label/attachments), sender, subject, date,
        text and attachments (name, content_type, size). Searching never marks emails read.
        """
        criteria = ["UNSEEN"] if unread_only else []
        for key, value in (("FROM", sender), ("SUBJECT", subject), ("TEXT", text)):
            if value:
                criteria += [key, _quoted(value)]
        if since is not None:
            criteria += ["SINCE", since.strftime("%d-%b-%Y")]
        return await self._run(lambda c: self._search(c, folder, criteria or ["ALL"], limit))

    @action("read")
    async def read(self, email_id: str) -> Email:
        """One email by its id ("INBOX:42"), with its full text and attachment list."""
        folder, uid = _split_id(email_id)
        return await self._run(lambda c: self._fetch(c, folder, [uid])[0])

    @action("read")
    async def attachment_text(self, email_id: str, name: str) -> str:
        """The text of an attachment: a PDF's text, a text, CSV or HTML file's text."""
        filename, content_type, data = await self._attachment(email_id, name)
        if content_type == "application/pdf" or filename.lower().endswith(".pdf"):
            return "\n\n".join(p for p in pdf_pages(filename, data) if p)
        if content_type.startswith("image/"):
            raise IntegrationError(f"'{filename}' is an image, not text.", file=filename)
        text = data.decode("utf-8", errors="replace")
        return html_to_text(text) if content_type == "text/html" else text

    @action("read")
    async def attachment_rows(self, email_id: str, name: str) -> builtins.list[Row]:
        """The rows of a CSV or XLSX attachment (first row is the header), like sheet rows."""
        filename, _type, data = await self._attachment(email_id, name)
        suffix = Path(filename).suffix.lower()
        if suffix not in (".csv", ".xlsx"):
            raise IntegrationError(f"'{filename}' is not a CSV or XLSX file; use "
                                   "attachment_text.", file=filename)
        return await asyncio.to_thread(rows_of, data, suffix)

    @action("write", preview="move {n} emails")
    async def move(self, email_id: str, folder: str) -> str:
        """Move an email to `folder` (which must exist, see folders()); returns its new id."""
        source, uid = _split_id(email_id)
        return await self._run(lambda c: self._move(c, source, uid, folder))

    @action("write", preview="label {n} emails", idempotent=True)
    async def label(self, email_id: str, label: str) -> None:
        """Put a label (an IMAP keyword, e.g. "invoice-done") on an email; repeating is a no-op.

        Labels are single words: letters, digits, "-", "_" and ".".
        """
        if not _ATOM.match(label):
            raise IntegrationError(f"{label!r} cannot be a label: use one word of letters, "
                                   "digits, '-', '_' or '.', e.g. 'invoice-done'.", label=label)
        folder, uid = _split_id(email_id)
        await self._run(lambda c: self._store(c, folder, uid, "+FLAGS", f"({label})"))

    @action("write", preview="mark {n} emails read", idempotent=True)
    async def mark_read(self, email_id: str, read: bool = True) -> None:
        """Mark an email read (or unread with read=False)."""
        folder, uid = _split_id(email_id)
        await self._run(lambda c: self._store(c, folder, uid, "+FLAGS" if read else "-FLAGS",
                                              "(\\Seen)"))

    @action("write", preview="send {n} emails")
    async def send(self, to: str | builtins.list[str], subject: str, body: str, *,
                   cc: str | builtins.list[str] | None = None, reply_to: str | None = None,
                   idempotency_key: str | None = None) -> str:
        """Send a plain-text email from this mailbox and return its Message-ID; a copy goes
        to the Sent folder.

        `to` and `cc` take one address or a list. Leave `idempotency_key` out: the runtime
        sets it so a retried job never sends the same email twice.
        """
        if not self.smtp_host:
            raise IntegrationError("This mailbox has no SMTP server configured, so it cannot "
                                   "send; use mail.send instead.")
        message = compose(self.sender, to, subject, body, cc=cc, reply_to=reply_to,
                          idempotency_key=idempotency_key)
        await asyncio.to_thread(self._session.smtp.send, message)
        if self.file_sent != "no":
            await self._file_copy(message.as_bytes(), str(message["Message-ID"]))
        return str(message["Message-ID"])

    async def _file_copy(self, raw: bytes, message_id: str) -> None:
        """File the sent email in the Sent folder. The email is sent already: a failure here is
        logged, never raised (raising would have the send retried)."""
        try:
            folder = await self._run(lambda c: self._file_sent(c, raw, message_id))
        except Exception as exc:  # whatever it is, the email went out and must count as sent
            logger.warning("email %s was sent but not filed in Sent: %s", message_id, exc)
            return
        if folder is None:
            logger.info("email %s was sent; no copy filed (no Sent folder, or the server "
                        "files sent mail itself)", message_id)

    async def confirm_send(self, *_message: Any, idempotency_key: str | None = None,
                           **_options: Any) -> Found | None:
        """After a crash: done when a Sent folder holds the Message-ID this send gets (from
        `idempotency_key` alone): `send` files its copy there once the SMTP server took the
        email, Gmail's SMTP files it itself. Not finding it tells nothing: the crash may have
        come between the two, or the copy was not filed (`file_sent` no, no Sent folder)."""
        if not idempotency_key:
            return None
        message_id = message_id_for(idempotency_key)
        if await self._run(lambda c: self._in_sent(c, message_id)):
            return Found(done=True, result=message_id)
        return None

    async def describe(self) -> dict[str, Any]:
        """{"address": who it is, "folders": [...], "inbox": {"emails", "unread"}}."""
        return await self._run(self._describe)

    async def aclose(self) -> None:
        """Done with the account: a kept session is handed back, any other one closed."""
        release, self._release = self._release, None
        if release is not None:
            release()
        else:
            await self._session.close()

    # IMAP, in a thread, one command at a time.

    async def _run(self, work: Callable[[imaplib.IMAP4], T]) -> T:
        return await asyncio.to_thread(self._locked, work)

    def _locked(self, work: Callable[[imaplib.IMAP4], T]) -> T:
        session = self._session
        with session.lock:
            for attempt in (1, 2):
                try:
                    return work(self._connection())
                except ssl.SSLCertVerificationError as exc:
                    raise IntegrationError(
                        f"The mail server {self.host}:{self.port} could not prove who it is: its "
                        f"TLS certificate failed verification ({exc.verify_message}), so the "
                        "password was not sent. If it uses a private certificate authority, "
                        "point SSL_CERT_FILE at it.") from None
                except (imaplib.IMAP4.abort, ConnectionError, OSError) as exc:
                    session.conn = None
                    if attempt == 2:
                        raise IntegrationError(f"The mail server {self.host}:{self.port} "
                                               f"dropped the connection ({type(exc).__name__})."
                                               ) from None
                except imaplib.IMAP4.error as exc:
                    raise IntegrationError(f"The mail server refused: {exc}") from None
        raise AssertionError("unreachable")

    def _connection(self) -> imaplib.IMAP4:
        if self._session.conn is not None:
            return self._session.conn
        if self.security == "ssl":
            conn: imaplib.IMAP4 = imaplib.IMAP4_SSL(self.host, self.port, timeout=self.timeout_s,
                                                    ssl_context=verified_tls())
        else:
            conn = imaplib.IMAP4(self.host, self.port, timeout=self.timeout_s)
            if self.security == "starttls":
                conn.starttls(verified_tls())
        try:
            conn.login(self.username, self._password)
        except imaplib.IMAP4.error:
            conn.shutdown()
            raise IntegrationError(f"The mail server {self.host} refused the login for "
                                   f"{self.username}; check the connection's password "
                                   "(`sluice connect imap`).") from None
        self._session.conn = conn
        return conn

    def _select(self, conn: imaplib.IMAP4, folder: str, *, readonly: bool) -> None:
        status, _data = conn.select(_quoted(folder), readonly=readonly)
        if status != "OK":
            names = ", ".join(self._folders(conn))
            raise IntegrationError(f"There is no folder '{folder}'. Folders: {names}.",
                                   folder=folder)

    def _folders(self, conn: imaplib.IMAP4) -> builtins.list[str]:
        return sorted(name for _flags, name in self._listed(conn))

    def _listed(self, conn: imaplib.IMAP4) -> builtins.list[tuple[str, str]]:
        """(flags, name) of every folder, e.g. ("\\HasNoChildren \\Sent", "Sent")."""
        _status, data = conn.list()
        listed = []
        for line in data:
            if isinstance(line, bytes):
                match = re.match(rb'\((?P<flags>[^)]*)\) (?P<sep>"[^"]*"|NIL) (?P<name>.+)', line)
                if match:
                    listed.append((match.group("flags").decode(),
                                   match.group("name").decode().strip('"')))
        return listed

    def _sent_folders(self, conn: imaplib.IMAP4) -> builtins.list[str]:
        """The folders flagged \\Sent (RFC 6154), else those named like a Sent folder."""
        listed = self._listed(conn)
        flagged = [name for flags, name in listed if "\\sent" in flags.casefold().split()]
        return flagged or [name for _flags, name in listed if name.casefold() in _SENT_NAMES]

    def _in_sent(self, conn: imaplib.IMAP4, message_id: str) -> bool:
        """Whether a Sent folder holds `message_id`."""
        return any(self._holds(conn, folder, message_id) for folder in self._sent_folders(conn))

    def _holds(self, conn: imaplib.IMAP4, folder: str, message_id: str) -> bool:
        self._select(conn, folder, readonly=True)
        _status, data = conn.uid("SEARCH", "HEADER", "Message-ID", _quoted(message_id))
        return bool(data and data[0])

    def _file_sent(self, conn: imaplib.IMAP4, raw: bytes, message_id: str) -> str | None:
        """APPEND `raw` (seen) to the Sent folder; the folder, or None when nothing was filed:
        on "auto" Gmail (X-GM-EXT-1) files what its SMTP sends itself, and a copy already there
        (filed by the server, or by an earlier try of the same send) is not filed twice."""
        if self.file_sent == "auto" and files_sent_itself(conn.capabilities):
            return None
        folders = self._sent_folders(conn)
        if not folders or self._holds(conn, folders[0], message_id):
            return None
        status, data = conn.append(_quoted(folders[0]), "(\\Seen)",
                                   imaplib.Time2Internaldate(time.time()), raw)
        if status != "OK":
            raise IntegrationError(f"The mail server refused to file the copy in "
                                   f"{folders[0]}: {data!r}.")
        return folders[0]

    def _search(self, conn: imaplib.IMAP4, folder: str, criteria: builtins.list[str],
                limit: int | None) -> builtins.list[Email]:
        self._select(conn, folder, readonly=True)
        _status, data = conn.uid("SEARCH", *criteria)
        uids = (data[0] or b"").split() if data else []
        newest = [uid.decode() for uid in reversed(uids)]
        return self._fetch(conn, folder, newest[:limit] if limit is not None else newest,
                           selected=True)

    def _fetch(self, conn: imaplib.IMAP4, folder: str, uids: builtins.list[str], *,
               selected: bool = False) -> builtins.list[Email]:
        if not uids:
            return []
        if not selected:
            self._select(conn, folder, readonly=True)
        _status, data = conn.uid("FETCH", ",".join(uids), "(UID FLAGS BODY.PEEK[])")
        found: dict[str, Email] = {}
        for item in data:
            if not isinstance(item, tuple):
                continue
            head, raw = item
            uid_match = _FETCHED.search(head)
            if uid_match is None:
                continue
            uid = uid_match.group(1).decode()
            email = parse_email(raw, fallback_id="")
            flags = _FLAGS.search(head)
            email["id"] = f"{folder}:{uid}"
            email["unread"] = b"\\Seen" not in (flags.group(1) if flags else b"")
            found[uid] = email
        missing = [uid for uid in uids if uid not in found]
        if missing and len(uids) == 1:
            raise IntegrationError(f"There is no email '{folder}:{uids[0]}' (it may have been "
                                   "moved); search again for its new id.", email=uids[0])
        return [found[uid] for uid in uids if uid in found]

    def _raw(self, conn: imaplib.IMAP4, folder: str, uid: str) -> bytes:
        self._select(conn, folder, readonly=True)
        _status, data = conn.uid("FETCH", uid, "(BODY.PEEK[])")
        for item in data:
            if isinstance(item, tuple):
                return bytes(item[1])
        raise IntegrationError(f"There is no email '{folder}:{uid}' (it may have been moved); "
                               "search again for its new id.", email=f"{folder}:{uid}")

    async def _attachment(self, email_id: str, name: str) -> tuple[str, str, bytes]:
        folder, uid = _split_id(email_id)
        message = parse_message(await self._run(lambda c: self._raw(c, folder, uid)))
        parts = [(part.get_filename() or "attachment", part.get_content_type(), part)
                 for part in message.iter_attachments()]
        for filename, content_type, part in parts:
            if filename == name or filename.casefold() == str(name).casefold():
                payload = part.get_payload(decode=True)
                return filename, content_type, payload if isinstance(payload, bytes) else b""
        names = ", ".join(f for f, _t, _p in parts) or "none"
        raise IntegrationError(f"The email {email_id} has no attachment '{name}'. "
                               f"Attachments: {names}.", email=email_id, attachment=name)

    def _move(self, conn: imaplib.IMAP4, source: str, uid: str, folder: str) -> str:
        if folder not in self._folders(conn):
            names = ", ".join(self._folders(conn))
            raise IntegrationError(f"There is no folder '{folder}'. Folders: {names}.",
                                   folder=folder)
        self._select(conn, source, readonly=False)
        status, data = conn.uid("MOVE", uid, _quoted(folder))
        if status != "OK":
            raise IntegrationError(f"The server did not move {source}:{uid}: {data!r}")
        copied = conn.untagged_responses.pop("OK", [])
        for line in [*copied, *data]:
            match = re.search(rb"COPYUID \d+ \S+ (\d+)", line or b"")
            if match:
                return f"{folder}:{match.group(1).decode()}"
        return ""

    def _store(self, conn: imaplib.IMAP4, folder: str, uid: str, how: str, flags: str) -> None:
        self._select(conn, folder, readonly=False)
        _status, found = conn.uid("SEARCH", "UID", uid)
        if not found or uid.encode() not in (found[0] or b"").split():
            raise IntegrationError(f"There is no email '{folder}:{uid}' (it may have been "
                                   "moved); search again for its new id.")
        status, data = conn.uid("STORE", uid, how, flags)
        if status != "OK":
            raise IntegrationError(f"The server did not change {folder}:{uid}: {data!r}")

    def _describe(self, conn: imaplib.IMAP4) -> dict[str, Any]:
        folders = self._folders(conn)
        _status, data = conn.status("INBOX", "(MESSAGES UNSEEN)")
        counts = dict(re.findall(rb"(MESSAGES|UNSEEN) (\d+)", data[0] or b""))
        return {"address": self.sender, "folders": folders,
                "inbox": {"emails": int(counts.get(b"MESSAGES", 0)),
                          "unread": int(counts.get(b"UNSEEN", 0))}}


class _Session:
    """An account's IMAP connection (made when a command first needs it, and again when it
    drops), the lock its commands take turns on, and the SMTP connections for sending: what
    catalogs share when a worker keeps them (`integrations.kept`)."""

    def __init__(self, smtp: SmtpSender) -> None:
        self.conn: imaplib.IMAP4 | None = None
        self.lock = threading.Lock()
        self.smtp = smtp

    async def usable(self) -> bool:
        return True  # a dropped connection is made again by the next command

    async def close(self) -> None:
        await asyncio.to_thread(self._logout)
        await asyncio.to_thread(self.smtp.close)

    def _logout(self) -> None:
        with self.lock:
            if self.conn is not None:
                with contextlib.suppress(imaplib.IMAP4.error, OSError):
                    self.conn.logout()
                self.conn = None


def files_sent_itself(capabilities: tuple[str, ...]) -> bool:
    """Whether the server files what its SMTP sends in Sent by itself: Gmail does (its IMAP
    announces X-GM-EXT-1), so a client's copy would show twice."""
    return any(c.upper() == "X-GM-EXT-1" for c in capabilities)


def _file_sent_choice(value: str) -> FileSent:
    if value not in ("auto", "yes", "no"):
        raise IntegrationError(f"file_sent must be auto, yes or no, not {value!r}.")
    return value  # type: ignore[return-value]


def _security(value: str, field: str) -> Security:
    if value not in ("ssl", "starttls", "none"):
        raise IntegrationError(f"{field} must be ssl, starttls or none, not {value!r}.")
    return value  # type: ignore[return-value]


def _from_credentials(credentials: Credentials, settings: Settings) -> Integration:
    get = credentials.get
    return named(IMAPMail, credentials.name)(
        host=get("imap_host", ""), port=int(get("imap_port") or 993),
        username=get("username", ""), password=get("password", ""),
        security=_security(get("imap_security") or "ssl", "imap_security"),
        smtp_host=get("smtp_host", ""), smtp_port=int(get("smtp_port") or 587),
        smtp_security=_security(get("smtp_security") or "starttls", "smtp_security"),
        sender=get("sender", ""), file_sent=_file_sent_choice(get("file_sent") or "auto"),
    )


SERVICE = Service(
    name="imap",
    summary="A mailbox over IMAP and SMTP (Gmail with an app password, Fastmail, Dovecot...).",
    fields=(
        CredentialField("imap_host", "IMAP server, e.g. imap.gmail.com"),
        CredentialField("imap_port", "IMAP port", default="993"),
        CredentialField("imap_security", "IMAP security: ssl, starttls or none", default="ssl"),
        CredentialField("username", "User name (usually the address)"),
        CredentialField("password", "Password (an app password for Gmail)", secret=True),
        CredentialField("smtp_host", "SMTP server for sending, e.g. smtp.gmail.com (empty: "
                                     "none)", required=False),
        CredentialField("smtp_port", "SMTP port", default="587"),
        CredentialField("smtp_security", "SMTP security: ssl, starttls or none",
                        default="starttls"),
        CredentialField("sender", "From address (default: the user name)", required=False),
        CredentialField("file_sent", "File a copy of sent email in the Sent folder: auto (yes, "
                                     "but not on Gmail, which does it itself), yes or no",
                        default="auto"),
    ),
    factory=_from_credentials,
)
