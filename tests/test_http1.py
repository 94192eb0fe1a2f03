"""The direct transport's HTTP/1.1 client (`codegen._http1`) against real servers on loopback.

Each test runs a small server of its own on asyncio streams that answers with exactly the bytes a
real server might send (keep-alive, chunked, closing, compressed, broken, slow, TLS), so every
framing the client claims to read is read off a socket.
"""

from __future__ import annotations

import asyncio
import gzip
import ssl
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from codegen._http1 import Endpoint, HttpClient, HttpError
from tests._tls import certificate

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
HEADERS = {"Content-Type": "application/json"}


class Served:
    """A loopback server: its URL, and how many connections it accepted."""

    def __init__(self) -> None:
        self.url = ""
        self.connections = 0
        self.requests: list[tuple[str, bytes]] = []


@asynccontextmanager
async def serve(handler: Handler, *, tls: ssl.SSLContext | None = None) -> AsyncIterator[Served]:
    served = Served()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served.connections += 1
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client went away, or the test ended with the connection open
        finally:
            writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    served.url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/v1/chat/completions"
    try:
        yield served
    finally:
        server.close()
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> tuple[str, bytes]:
    """The head and body of one request (framed by Content-Length)."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    length = next(int(line.split(":", 1)[1]) for line in head.split("\r\n")
                  if line.lower().startswith("content-length:"))
    return head, await reader.readexactly(length)


def answering(*answers: bytes, then_close: bool = False, record: Served | None = None) -> Handler:
    """A handler that answers the requests of a connection with `answers`, in turn."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for answer in answers:
            request = await read_request(reader)
            if record is not None:
                record.requests.append(request)
            writer.write(answer)
            await writer.drain()
        if not then_close:
            await reader.read()  # keep the connection until the client closes it

    return handle


def ok(body: bytes, *extra: str) -> bytes:
    head = "".join(f"{line}\r\n" for line in extra)
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), head.encode(), body)


async def post(served: Served, body: bytes = b"{}", client: HttpClient | None = None,
               timeout: float = 5.0) -> bytes:
    client = client or HttpClient()
    answer = await client.post(Endpoint.parse(served.url, HEADERS), body, timeout=timeout)
    assert answer.status == 200
    return answer.body


async def test_answers_come_back_over_one_kept_alive_connection() -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head, body = await read_request(reader)
            served.requests.append((head, body))
            writer.write(ok(body.upper(), "Content-Type: application/json"))

    async with serve(echo) as served:
        client = HttpClient()
        answers = [await post(served, f'{{"n": "item {i}"}}'.encode(), client) for i in range(20)]
        client.close()
    assert answers == [f'{{"N": "ITEM {i}"}}'.encode() for i in range(20)]
    assert served.connections == 1 and client.opened == 1
    head = served.requests[0][0]
    assert head.startswith("POST /v1/chat/completions HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{served.url.split(':')[2].split('/')[0]}\r\n" in head
    assert "Content-Type: application/json\r\n" in head and "Content-Length: 15\r\n" in head


async def test_a_chunked_answer_with_extensions_and_trailers_is_joined() -> None:
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5;name=value\r\nhello\r\n1\r\n \r\n6\r\nworld!\r\n0\r\nX-Trailer: yes\r\n\r\n")
    async with serve(answering(chunked, ok(b"again"))) as served:
        client = HttpClient()
        assert await post(served, client=client) == b"hello world!"
        assert await post(served, client=client) == b"again"
        client.close()
    assert served.connections == 1


async def test_an_answer_saying_connection_close_is_not_reused() -> None:
    async with serve(answering(ok(b"first", "Connection: close"), then_close=True)) as served:
        client = HttpClient()
        assert await post(served, client=client) == b"first"
        assert await post(served, client=client) == b"first"
        client.close()
    assert served.connections == 2


async def test_an_answer_without_a_length_ends_when_the_server_closes() -> None:
    async with serve(answering(b"HTTP/1.1 200 OK\r\n\r\nuntil the end", then_close=True)) as served:
        assert await post(served) == b"until the end"


async def test_an_idle_connection_the_server_dropped_is_replaced_without_an_error() -> None:
    # The server answers keep-alive, then drops the idle connection (its keep-alive timeout).
    async with serve(answering(ok(b"one"), then_close=True)) as served:
        client = HttpClient()
        assert await post(served, client=client) == b"one"
        await asyncio.sleep(0.1)
        assert await post(served, client=client) == b"one"
        client.close()
    assert served.connections == 2


async def test_a_request_on_a_kept_connection_the_server_closes_unanswered_is_sent_again() -> None:
    # The race every keep-alive client meets: the server closes an idle connection just as the
    # next request goes out on it, so nothing of an answer ever comes back.
    async def answer_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        if served.connections == 1:
            writer.write(ok(b"first"))
            await read_request(reader)  # the second request: dropped unanswered
        else:
            writer.write(ok(b"second"))
            await reader.read()

    async with serve(answer_once) as served:
        client = HttpClient()
        assert await post(served, client=client) == b"first"
        assert await post(served, client=client) == b"second"
        client.close()
    assert served.connections == 2


async def test_a_connection_closed_after_the_request_is_sent_is_not_sent_again() -> None:
    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)  # and close without answering

    async with serve(swallow) as served:
        with pytest.raises(HttpError, match="closed before a complete answer"):
            await post(served)
    assert served.connections == 1  # a fresh connection is not retried: the server had it


async def test_an_interim_100_continue_is_skipped() -> None:
    async with serve(answering(b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"final"))) as served:
        assert await post(served) == b"final"


@pytest.mark.parametrize(("coding", "encode"), [
    ("gzip", gzip.compress),
    ("deflate", zlib.compress),
    ("deflate", lambda data: zlib.compress(data, wbits=-zlib.MAX_WBITS)),
])
async def test_compressed_answers_are_decoded(coding: str, encode: Callable[[bytes], bytes]
                                              ) -> None:
    text = b'{"choices": [{"message": {"content": "' + b"word " * 200 + b'"}}]}'
    async with serve(answering(ok(encode(text), f"Content-Encoding: {coding}"))) as served:
        assert await post(served) == text


@pytest.mark.parametrize(("answer", "error"), [
    (b"SSH-2.0-OpenSSH\r\n\r\n", "did not answer in HTTP/1.x"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n", "Content-Length is not a number"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk size"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n", "does not end where"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "transfer coding 'gzip'"),
    (b"HTTP/1.1 200 OK\r\n folded: no\r\n\r\n", "malformed header line"),
    (b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70_000, "head is longer than 65536 bytes"),
    (ok(b"x" * 2_000), "larger than 1000 bytes"),
    (ok(gzip.compress(b"x" * 5_000), "Content-Encoding: gzip"), "larger than 1000 bytes once"),
    (ok(b"not gzip", "Content-Encoding: gzip"), "gzip body cannot be decompressed"),
    (ok(b"x", "Content-Encoding: br"), "content coding 'br' is not supported"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this", "closed before a complete"),
])
async def test_a_broken_answer_is_a_clear_error(answer: bytes, error: str) -> None:
    async with serve(answering(answer, then_close=True)) as served:
        with pytest.raises(HttpError, match=error) as raised:
            await post(served, client=HttpClient(max_body=1_000))
    assert not raised.value.timeout


async def test_no_answer_in_time_is_a_timeout_and_the_connection_is_dropped() -> None:
    ended = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await reader.read()  # returns when the client closes the connection
        ended.set()

    async with serve(silent) as served:
        with pytest.raises(HttpError, match=r"no answer within 0.2 s") as raised:
            await post(served, timeout=0.2)
        assert raised.value.timeout
        await asyncio.wait_for(ended.wait(), 5)


async def test_requests_in_flight_are_capped_per_endpoint() -> None:
    in_flight = peak = 0

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal in_flight, peak
        while True:
            _, body = await read_request(reader)
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(0.02)
            in_flight -= 1
            writer.write(ok(body))

    async with serve(slow) as served:
        client = HttpClient(max_connections=4)
        bodies = await asyncio.gather(*(post(served, b"%d" % i, client) for i in range(40)))
        client.close()
    assert bodies == [b"%d" % i for i in range(40)]
    assert peak == 4 and served.connections == 4


async def test_nothing_listening_is_a_clear_error() -> None:
    async with serve(answering()) as served:
        url = served.url
    with pytest.raises(HttpError, match=r"cannot connect to http://127\.0\.0\.1:\d+"):
        await HttpClient().post(Endpoint.parse(url, HEADERS), b"{}", timeout=5)


async def test_https_checks_the_certificate(tmp_path: Path) -> None:
    cert, key = certificate(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    async with serve(answering(ok(b"secure"), ok(b"again")), tls=server_tls) as served:
        trusting = HttpClient(ssl_context=ssl.create_default_context(cafile=str(cert)))
        assert await post(served, client=trusting) == b"secure"
        assert await post(served, client=trusting) == b"again"
        trusting.close()
        with pytest.raises(HttpError, match=r"TLS handshake with https://127\.0\.0\.1:\d+ failed"):
            await post(served)  # the default trust store does not know this certificate


def test_endpoints_are_checked_when_parsed() -> None:
    endpoint = Endpoint.parse("https://api.example.com/v1/chat/completions?x=1", HEADERS)
    assert (endpoint.scheme, endpoint.host, endpoint.port) == ("https", "api.example.com", 443)
    assert endpoint.head.startswith(b"POST /v1/chat/completions?x=1 HTTP/1.1\r\n"
                                    b"Host: api.example.com\r\n")
    assert b"Host: [::1]:8080\r\n" in Endpoint.parse("http://[::1]:8080/", {}).head
    with pytest.raises(ValueError, match="not an http:// or https:// URL"):
        Endpoint.parse("ftp://example.com/", {})
    with pytest.raises(ValueError, match="line break"):
        Endpoint.parse("http://example.com/", {"Authorization": "Bearer x\r\nEvil: 1"})
