"""A small HTTP/1.1 client for the direct transport: POST a body to one endpoint, read the answer.

The direct transport (`codegen.direct`) sends one kind of request, a JSON POST to an
OpenAI-compatible endpoint, thousands of times per job, and its CPU per call bounds how fast
`each()` can go. aiohttp's general client (sessions, cookies, tracing, redirects, multipart,
proxies) spent 380-415 µs of CPU per request where this one spends 230-240 (side by side on a
2-CPU VM, 4,000 requests at concurrency 64; the each() bench's `direct_cpu_ms_per_call` is this
client's). This client does just the part a model API uses, on asyncio protocols:

- keep-alive connections, pooled per endpoint and reused last-in first-out, at most
  `max_connections` requests in flight per endpoint;
- `http` and `https` (the default TLS context: certificate and host name checked);
- answers framed by Content-Length, by chunked transfer coding, or by the connection's close;
  1xx interim answers skipped; gzip and deflate bodies decoded, with a size cap;
- one total timeout per request; a request whose reused connection turns out to have been closed
  by the server before answering anything is sent once more on a new connection (what every
  client does for idle keep-alive connections the server dropped).

Not done, since a model API needs none of it: redirects (a 3xx comes back as its status),
proxies, cookies, HTTP/2, streaming bodies.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, cast
from urllib.parse import urlsplit

__all__ = ["Endpoint", "HttpAnswer", "HttpClient", "HttpError"]

MAX_HEAD: Final = 64 * 1024
MAX_BODY: Final = 64 * 1024 * 1024
_MAX_LINE: Final = 4096
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_HEAD, _FIXED, _CHUNK_SIZE, _CHUNK_DATA, _TRAILERS, _TO_CLOSE = range(6)


class HttpError(Exception):
    """No complete answer: the connection failed or broke, the answer was not HTTP, or (with
    `timeout`) none came in time. The message says which, for a person to read."""

    def __init__(self, message: str, *, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    """A complete answer: status, headers (lower-case names) and the decoded body."""

    status: int
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where requests go, parsed once: scheme, host, port, request target, and the fixed part of
    every request's head (request line, Host, the given headers)."""

    scheme: str
    host: str
    port: int
    head: bytes

    @classmethod
    def parse(cls, url: str, headers: Mapping[str, str]) -> Endpoint:
        """The endpoint of `url` with `headers` sent on every request.

        Raises:
            ValueError: the URL is not http(s) with a host, or a header holds a line break.
        """
        parts = urlsplit(url)
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise ValueError(f"{url!r} is not an http:// or https:// URL with a host")
        port = parts.port or _DEFAULT_PORTS[parts.scheme]
        host = parts.hostname
        shown = f"[{host}]" if ":" in host else host
        authority = shown if port == _DEFAULT_PORTS[parts.scheme] else f"{shown}:{port}"
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        lines = [f"POST {target} HTTP/1.1", f"Host: {authority}",
                 "Accept-Encoding: gzip, deflate"]
        for name, value in headers.items():
            if any(c in f"{name}{value}" for c in "\r\n\0"):
                raise ValueError(f"the {name!r} header holds a line break")
            lines.append(f"{name}: {value}")
        return cls(parts.scheme, host, port, ("\r\n".join(lines) + "\r\n").encode("latin-1"))

    @property
    def where(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def request(self, body: bytes) -> bytes:
        return b"%sContent-Length: %d\r\n\r\n%s" % (self.head, len(body), body)


class _Lost(Exception):
    """The connection closed before the answer was complete."""

    def __init__(self, answered: bool) -> None:
        super().__init__("the connection closed")
        self.answered = answered  # some of the answer had arrived


class _Connection(asyncio.Protocol):
    """One connection: sends a request, parses its answer, and says whether it can be reused."""

    def __init__(self, max_body: int) -> None:
        self.max_body = max_body
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reusable = False
        self._buffer = bytearray()
        self._waiter: asyncio.Future[HttpAnswer] | None = None
        self._state = _HEAD
        self._answered = False
        self._status = 0
        self._headers: dict[str, str] = {}
        self._keep = False
        self._remaining = 0
        self._chunks: list[bytes] = []
        self._size = 0

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport; other event loops' (uvloop's) do not subclass asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._state == _TO_CLOSE:
            self._finish(bytes(self._buffer))
        else:
            waiter.set_exception(_Lost(self._answered))

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost follows

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            self.close()  # bytes nobody asked for: this connection cannot be trusted again
            return
        self._answered = True
        self._buffer += data
        try:
            self._parse()
        except HttpError as exc:
            self.close()
            if not waiter.done():
                waiter.set_exception(exc)

    # -- use -------------------------------------------------------------------------------
    def send(self, request: bytes) -> asyncio.Future[HttpAnswer]:
        """Write `request`; the future holds its answer."""
        assert self.transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self._state, self._answered, self.reusable = _HEAD, False, False
        self.transport.write(request)
        return self._waiter

    def close(self) -> None:
        self.closed = True
        self.reusable = False
        if self.transport is not None:
            # When its event loop is closed already, the socket goes with the transport.
            with contextlib.suppress(RuntimeError):
                self.transport.close()

    # -- parsing ---------------------------------------------------------------------------
    def _parse(self) -> None:
        """Read as far as the buffer allows: each step returns whether to go on."""
        steps = (self._head, self._fixed, self._chunk_size, self._chunk_data, self._trailer,
                 self._to_close)
        while steps[self._state]():
            pass

    def _head(self) -> bool:
        head = self._cut(b"\r\n\r\n", MAX_HEAD, "the answer's head")
        return head is not None and not self._start(head)

    def _fixed(self) -> bool:
        buffer = self._buffer
        if len(buffer) < self._remaining:
            return False
        body = bytes(buffer[: self._remaining])
        del buffer[: self._remaining]
        self._finish(body)
        return False

    def _chunk_size(self) -> bool:
        line = self._line()
        if line is None:
            return False
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise HttpError(f"a bad chunk size in the answer: {line[:40]!r}") from None
        self._state, self._remaining = (_CHUNK_DATA, size) if size else (_TRAILERS, 0)
        self._grow(size)
        return True

    def _chunk_data(self) -> bool:
        buffer = self._buffer
        need = self._remaining + 2
        if len(buffer) < need:
            return False
        if buffer[self._remaining : need] != b"\r\n":
            raise HttpError("a chunk of the answer does not end where its size says")
        self._chunks.append(bytes(buffer[: self._remaining]))
        del buffer[:need]
        self._state = _CHUNK_SIZE
        return True

    def _trailer(self) -> bool:
        line = self._line()
        if line is None:
            return False
        if not line:  # the empty line after the trailers ends the answer
            self._finish(b"".join(self._chunks))
            return False
        return True

    def _to_close(self) -> bool:
        """The body is whatever comes until the server closes (`connection_lost` finishes)."""
        self._size = len(self._buffer)
        self._grow(0)
        return False

    def _start(self, head: bytes) -> bool:
        """Read an answer's head and choose how its body is framed; True when it is complete."""
        lines = head.decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        code = rest[:3]
        if not version.startswith("HTTP/1.") or not code.isdigit():
            raise HttpError(f"the server did not answer in HTTP/1.x: {lines[0][:60]!r}")
        status = int(code)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon or not name or name[0] in " \t":
                raise HttpError(f"a malformed header line in the answer: {line[:60]!r}")
            key = name.strip().lower()
            value = value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        if 100 <= status < 200:
            return False  # an interim answer (100 Continue): the real one follows
        self._status, self._headers, self._chunks, self._size = status, headers, [], 0
        tokens = headers.get("connection", "").lower()
        self._keep = version == "HTTP/1.1" and "close" not in tokens
        coding = headers.get("transfer-encoding", "").lower()
        if status in (204, 304):
            self._finish(b"")
            return True
        if coding:
            if coding.rsplit(",", 1)[-1].strip() != "chunked":
                raise HttpError(f"the answer's transfer coding {coding!r} is not supported")
            self._state = _CHUNK_SIZE
        elif "content-length" in headers:
            length = headers["content-length"]
            if not length.isdigit():
                raise HttpError(f"the answer's Content-Length is not a number: {length[:40]!r}")
            self._remaining = int(length)
            self._grow(self._remaining)
            self._state = _FIXED
        else:
            self._state, self._keep = _TO_CLOSE, False
        return False

    def _line(self) -> bytes | None:
        return self._cut(b"\r\n", _MAX_LINE, "a line of the answer")

    def _cut(self, end_mark: bytes, limit: int, what: str) -> bytes | None:
        """The buffer up to `end_mark`, taken out with the mark; None until the mark arrives.
        Raises HttpError when more than `limit` bytes came without it."""
        buffer = self._buffer
        end = buffer.find(end_mark)
        if end < 0:
            if len(buffer) > limit:
                raise HttpError(f"{what} is longer than {limit} bytes")
            return None
        taken = bytes(buffer[:end])
        del buffer[: end + len(end_mark)]
        return taken

    def _grow(self, size: int) -> None:
        self._size += size
        if self._size > self.max_body:
            raise HttpError(f"the answer is larger than {self.max_body} bytes")

    def _finish(self, body: bytes) -> None:
        waiter = self._waiter
        try:
            decoded = _decoded(body, self._headers.get("content-encoding", ""), self.max_body)
        except HttpError as exc:
            self.close()
            if waiter is not None and not waiter.done():
                waiter.set_exception(exc)
            return
        self._state = _HEAD
        self.reusable = self._keep and not self._buffer and not self.closed
        if waiter is not None and not waiter.done():
            waiter.set_result(HttpAnswer(self._status, self._headers, decoded))


def _decoded(body: bytes, coding: str, limit: int) -> bytes:
    """`body` without its content coding (gzip, deflate; at most `limit` bytes once decoded)."""
    coding = coding.strip().lower()
    if coding in ("", "identity"):
        return body
    if coding not in ("gzip", "x-gzip", "deflate"):
        raise HttpError(f"the answer's content coding {coding!r} is not supported")
    # gzip, or deflate as zlib data (what the standard means) or raw (what some servers send)
    tries = (zlib.MAX_WBITS | 16,) if coding != "deflate" else (zlib.MAX_WBITS, -zlib.MAX_WBITS)
    for wbits in tries:
        inflater = zlib.decompressobj(wbits)
        try:
            data = inflater.decompress(body, limit)
        except zlib.error:
            continue
        if inflater.unconsumed_tail:
            raise HttpError(f"the answer is larger than {limit} bytes once decompressed")
        return data
    raise HttpError(f"the answer's {coding} body cannot be decompressed")


class HttpClient:
    """Pooled keep-alive connections for POSTs to a few endpoints, in one event loop."""

    def __init__(self, *, max_connections: int = 512, ssl_context: ssl.SSLContext | None = None,
                 max_body: int = MAX_BODY) -> None:
        self.max_connections = max_connections
        self.max_body = max_body
        self._ssl = ssl_context
        self._idle: dict[Endpoint, list[_Connection]] = {}
        self._busy: set[_Connection] = set()
        self._slots: dict[Endpoint, asyncio.Semaphore] = {}
        self.opened = 0  # connections opened so far

    async def post(self, endpoint: Endpoint, body: bytes, *, timeout: float) -> HttpAnswer:
        """POST `body` to `endpoint` and return the answer, whatever its status.

        Raises:
            HttpError: no complete answer within `timeout` seconds (`timeout` set), or the
                connection failed, or what came back was not HTTP.
        """
        slots = self._slots.get(endpoint)
        if slots is None:
            slots = self._slots[endpoint] = asyncio.Semaphore(self.max_connections)
        try:
            async with asyncio.timeout(timeout), slots:
                return await self._exchange(endpoint, endpoint.request(body))
        except TimeoutError:
            raise HttpError(f"no answer within {timeout:g} s", timeout=True) from None

    async def _exchange(self, endpoint: Endpoint, request: bytes) -> HttpAnswer:
        retried = False
        while True:
            connection, reused = await self._connection(endpoint)
            self._busy.add(connection)
            try:
                answer = await connection.send(request)
            except _Lost as lost:
                if reused and not lost.answered and not retried:
                    retried = True  # the server had dropped the idle connection
                    continue
                raise HttpError(f"the connection to {endpoint.where} closed before a complete "
                                "answer") from None
            finally:
                self._busy.discard(connection)
                if connection.reusable:
                    self._idle.setdefault(endpoint, []).append(connection)
                else:
                    connection.close()
            return answer

    async def _connection(self, endpoint: Endpoint) -> tuple[_Connection, bool]:
        idle = self._idle.get(endpoint)
        while idle:
            connection = idle.pop()
            if not connection.closed:
                return connection, True
        loop = asyncio.get_running_loop()
        tls: ssl.SSLContext | None = None
        if endpoint.scheme == "https":
            tls = self._ssl or _default_tls()
        try:
            _, connection = await loop.create_connection(
                lambda: _Connection(self.max_body), endpoint.host, endpoint.port, ssl=tls,
                server_hostname=endpoint.host if tls else None)
        except ssl.SSLError as exc:
            raise HttpError(f"the TLS handshake with {endpoint.where} failed "
                            f"({exc.reason or exc})") from None
        except OSError as exc:
            raise HttpError(f"cannot connect to {endpoint.where} "
                            f"({exc.strerror or type(exc).__name__})") from None
        self.opened += 1
        return connection, False

    def close(self) -> None:
        """Close every connection (those in use fail their request)."""
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()
        for connection in list(self._busy):
            connection.close()


_TLS: list[ssl.SSLContext] = []


def _default_tls() -> ssl.SSLContext:
    """The default TLS context, made once (loading the CA store costs milliseconds)."""
    if not _TLS:
        _TLS.append(ssl.create_default_context())
    return _TLS[0]
