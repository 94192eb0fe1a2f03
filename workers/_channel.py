"""Framing of the sandbox RPC channel, shared by both sides (ARCHITECTURE.md, "The sandbox holds
no secrets": the program reaches the world only through this channel).

A frame is a 4-byte big-endian length followed by that many bytes of UTF-8 JSON holding one object.
The parent reads with an asyncio protocol (`workers._child_pipes`). The child, whose program runs
in plain threads, reads and writes file descriptors directly: frames are queued and written whole
by one thread at a time, and the waiting threads take turns reading (`CallRouter`), each reply
left for the thread waiting for it, by id, so that many calls can be in flight at once. Kept to
the standard library and orjson (written where its JSON is exact) so the child starts fast.
"""

from __future__ import annotations

import itertools
import json
import os
import select
import struct
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from core.errors import SandboxError
from workers._journal_json import exact_json

MAX_FRAME = 16 * 1024 * 1024
REPLAY_BYTES = 64 * 1024 * 1024  # the most recorded results a resumed child is given up front
_HEADER = struct.Struct(">I")
HEADER_SIZE = _HEADER.size
_READ_BYTES = 1 << 16  # the most one read of the child takes beyond what a frame needs
_FLUSH_WAIT_S = 2.0


class FrameError(SandboxError):
    """The other side broke the framing protocol (oversized frame, bad JSON, not an object)."""

    code = "sandbox_frame_error"


def pack(frame: dict[str, Any]) -> bytes:
    """One frame: header and JSON body. Raises FrameError when the body exceeds MAX_FRAME."""
    # Most frames: orjson, in a tenth of the standard library's time, marked by a newline.
    data = exact_json(frame, marked=True)
    if data is not None:
        return _sized(data)
    text = json.dumps(frame, separators=(",", ":"), ensure_ascii=False)
    return _sized(text.encode("utf-8", "replace"))  # lone surrogates become '?'


def _sized(body: bytes) -> bytes:
    """Header and body. Raises FrameError when the body exceeds MAX_FRAME."""
    if len(body) > MAX_FRAME:
        raise FrameError(f"a frame of {len(body)} bytes exceeds the {MAX_FRAME}-byte limit")
    return _HEADER.pack(len(body)) + body


def replay_frames(results: Mapping[str, str], *, limit: int = MAX_FRAME // 2,
                  total: int = REPLAY_BYTES) -> list[bytes]:
    """"replay" frames holding `results` (JSON text by path, as the journal keeps them),
    written as JSON without decoding them, each at most about `limit` characters and `total` in
    all (the child holds them until asked). A result larger than `limit`, and those beyond
    `total`, are left out: their calls go to the parent, which answers them as before."""
    frames: list[bytes] = []
    batch: dict[str, str] = {}
    size, exact = 0, True
    for path, result in results.items():
        part = len(path) + len(result) + 4  # quotes, colon, comma (paths are plain ASCII)
        if part > limit:
            continue
        total -= part
        if total < 0:
            break
        if batch and size + part > limit:
            frames += _replay_frames(batch, exact)
            batch, size, exact = {}, 0, True
        batch[path] = result
        size += part
        # A result orjson wrote ends with a newline (`_journal_json.dump_result`); None is
        # `null` to both writers.
        exact = exact and (result.endswith("\n") or result == "null")
    if batch:
        frames += _replay_frames(batch, exact)
    return frames


def _replay_frames(batch: dict[str, str], exact: bool) -> list[bytes]:
    """A "replay" frame of `batch`, marked for orjson (a final newline) when orjson wrote all
    of it; two or more when its UTF-8 exceeds MAX_FRAME (`limit` counts characters), and none
    for a single result that does (its call goes to the parent, as a large one's does)."""
    try:
        # Each result goes in as the JSON text it is (a Fragment): one C call for the frame,
        # a quarter of quoting each path in Python.
        body = orjson.dumps({"op": "replay", "results": {p: orjson.Fragment(r)
                                                         for p, r in batch.items()}},
                            option=orjson.OPT_APPEND_NEWLINE if exact else 0)
    except TypeError:  # orjson.JSONEncodeError: a path it refuses (a lone surrogate)
        members = (f"{json.dumps(p, ensure_ascii=False)}:{r}" for p, r in batch.items())
        text = '{"op":"replay","results":{' + ",".join(members) + ("}}\n" if exact else "}}")
        body = text.encode("utf-8", "replace")  # a lone surrogate becomes '?'
    if len(body) <= MAX_FRAME:
        return [_sized(body)]
    if len(batch) == 1:
        return []
    paths = list(batch)
    half = len(paths) // 2
    return [*_replay_frames({p: batch[p] for p in paths[:half]}, exact),
            *_replay_frames({p: batch[p] for p in paths[half:]}, exact)]


def unpack(body: bytes) -> dict[str, Any]:
    """The object in a frame body. Raises FrameError for anything but a JSON object."""
    try:
        # A body orjson wrote exactly ends with a newline (`pack`), and orjson reads it back in a
        # fifth of the time; any other body is read the standard way (orjson would read an
        # integer beyond 64 bits as a float).
        value = (orjson.loads(body) if body.endswith(b"\n")
                 else json.loads(body.decode("utf-8")))
    except (UnicodeDecodeError, ValueError) as exc:
        raise FrameError(f"a frame is not UTF-8 JSON: {exc}") from None
    if not isinstance(value, dict):
        raise FrameError(f"a frame holds a {type(value).__name__}, not an object")
    return value


def body_length(header: bytes) -> int:
    """The body length announced by a header. Raises FrameError above MAX_FRAME."""
    (length,) = _HEADER.unpack(header)
    if length > MAX_FRAME:
        raise FrameError(f"a frame announces {length} bytes, above the {MAX_FRAME}-byte limit")
    return int(length)


def frame_end(buffer: bytes | bytearray, start: int = 0) -> int | None:
    """Where the frame beginning at `start` of `buffer` ends, or None while it is incomplete (the
    one rule both ends read frames by). Raises FrameError for a length above MAX_FRAME."""
    if len(buffer) - start < HEADER_SIZE:
        return None
    end = start + HEADER_SIZE + body_length(bytes(buffer[start:start + HEADER_SIZE]))
    return end if len(buffer) >= end else None


class ChannelClosed(BaseException):
    """The parent closed the channel. A BaseException so `except Exception` cannot swallow it."""


class FdChannel:
    """The child's blocking end: frames in on one descriptor, out on another.

    `send` may be called from any thread; `recv` from one thread at a time (the start frame is
    read before the `CallRouter` takes over reading). A frame sent while another thread is
    writing is queued and written by that thread with the others that queued meanwhile, so the
    64 threads of an `each()` woken by one burst of replies make a few writes, not one each
    in turn; `flush` waits until every queued frame is written.
    """

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self._read_fd = read_fd
        self._write_fd = write_fd
        self._queue_lock = threading.Lock()
        self._queue: list[bytes] = []
        self._writing = False  # a thread is writing the queue
        self._writes = 0  # writes made so far, for `flush` to see the writer going on
        # Bytes read but not yet returned as frames: one read takes every reply that has
        # arrived (under load the parent answers many calls per loop turn), not one per call.
        self._buffer = bytearray()

    def send(self, frame: dict[str, Any]) -> None:
        """Write one frame whole, in the order frames were sent, never interleaved with another;
        or leave it to the thread writing now."""
        if self.queue(frame):
            self.write_queued()

    def queue(self, frame: dict[str, Any]) -> bool:
        """Queue one frame; True when the caller is to write the queue now (`write_queued`),
        False when another thread is writing it. Callers that must order frames queue them
        under their own lock and write after releasing it."""
        data = pack(frame)
        with self._queue_lock:
            self._queue.append(data)
            if self._writing:
                return False
            self._writing = True
            return True

    def flush(self) -> None:
        """Return once every frame sent so far is written (the process may then exit). A writer
        that has written nothing for `_FLUSH_WAIT_S` (a signal interrupted its thread between
        queueing and writing) is taken over."""
        seen, deadline = -1, 0.0
        while True:
            with self._queue_lock:
                if not self._queue and not self._writing:
                    return
                if self._writes != seen:
                    seen, deadline = self._writes, time.monotonic() + _FLUSH_WAIT_S
                if not self._writing or time.monotonic() > deadline:
                    self._writing = True
                    break
            time.sleep(0.001)  # another thread is writing the queue
        self.write_queued()

    def write_queued(self) -> None:
        """Write queued frames until the queue is empty (after `queue` returned True)."""
        try:
            while True:
                with self._queue_lock:
                    if not self._queue:
                        self._writing = False
                        return
                    data = b"".join(self._queue)
                    self._queue.clear()
                view = memoryview(data)
                while view:
                    view = view[os.write(self._write_fd, view):]
                    self._writes += 1
        except BaseException:
            with self._queue_lock:
                self._queue.clear()  # the channel is broken: the reader finds out and aborts
                self._writing = False
            raise

    def readable(self, timeout: float) -> bool:
        """Whether a frame (or the end of the stream) can be read now, waiting up to `timeout`."""
        if self._has_frame():
            return True
        return bool(select.select([self._read_fd], [], [], timeout)[0])

    def recv(self) -> dict[str, Any]:
        """Read one frame. Raises ChannelClosed at end of stream."""
        length = body_length(self._take(HEADER_SIZE))
        return unpack(self._take(length))

    def _has_frame(self) -> bool:
        return frame_end(self._buffer) is not None

    def _take(self, size: int) -> bytes:
        """The next `size` bytes of the stream, reading what is there (at least what is missing)."""
        buffer = self._buffer
        while len(buffer) < size:
            chunk = os.read(self._read_fd, max(size - len(buffer), _READ_BYTES))
            if not chunk:
                raise ChannelClosed("the parent closed the channel")
            buffer += chunk
        data = bytes(buffer[:size])
        del buffer[:size]
        return data


Failure = Callable[[], BaseException]  # makes a fresh exception for each thread that raises it
_WAIT_S = 0.5  # waits wake up this often, so that the main thread's signal handlers run
_READ_SLICE_S = 0.05  # how soon a reading thread notices that `abort` settled its call


class _Slot:
    """Where one call's reply (or the reason there will be none) is left for its thread.

    `waker` exists only while the thread waits as a follower: a lock it holds and blocks on,
    released once by whoever settles the slot or hands it the reading.
    """

    __slots__ = ("failure", "reply", "settled", "waker")

    def __init__(self) -> None:
        self.reply: dict[str, Any] | None = None
        self.failure: Failure | None = None
        self.settled = False
        self.waker: threading.Lock | None = None


class CallRouter:
    """Calls to the parent from many threads at once, each waiting for its own reply.

    `request` numbers a frame, sends it with `send` and blocks until the reply with that id
    arrives. Replies are read by the waiting threads themselves (leader/followers): the first
    thread to wait reads every reply with `recv` (once `readable` says one is there) and leaves
    each in its caller's slot until its own arrives, then hands the reading to another waiting
    thread. A program that calls from one thread thus reads its own replies, with no second
    thread to wake per call. `abort` fails all waiting and all later requests with an exception
    (the channel closed, the run was stopped).
    """

    def __init__(self, *, recv: Callable[[], dict[str, Any]],
                 send: Callable[[dict[str, Any]], None],
                 readable: Callable[[float], bool]) -> None:
        self._recv = recv
        self._send = send
        self._readable = readable
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._pending: dict[int, _Slot] = {}
        self._failure: Failure | None = None
        self._reading = False  # a thread is reading replies (the leader)

    def request(self, frame: dict[str, Any]) -> dict[str, Any]:
        """Send `frame` with a fresh id and return the parent's reply to it."""
        slot = _Slot()
        with self._lock:
            self._raise_if_failed()
            call_id = next(self._ids)
            self._pending[call_id] = slot
        try:
            self._send({**frame, "id": call_id})
            self._wait(slot)
        finally:
            with self._lock:
                self._pending.pop(call_id, None)
        if slot.failure is not None:
            raise slot.failure()
        assert slot.reply is not None
        return slot.reply

    def abort(self, failure: Failure) -> None:
        """Fail every waiting request and every later one with `failure()`; the first wins."""
        with self._lock:
            if self._failure is None:
                self._failure = failure
            for slot in self._pending.values():
                if not slot.settled:
                    slot.failure = self._failure
                    self._settle(slot)

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise self._failure()

    def _wait(self, slot: _Slot) -> None:
        """Return once `slot` is settled, reading replies whenever no other thread is."""
        while True:
            with self._lock:
                if slot.settled:
                    return
                lead = not self._reading
                if lead:
                    self._reading = True
                else:
                    waker = slot.waker = threading.Lock()
                    waker.acquire()
            if lead:
                self._lead(slot)
            else:
                while not waker.acquire(timeout=_WAIT_S):
                    pass

    def _lead(self, slot: _Slot) -> None:
        """Read and route replies until `slot`'s arrives, then hand the reading on."""
        try:
            while not slot.settled:
                # Wait in slices: `abort` may settle the slot while no reply comes.
                if self._readable(_READ_SLICE_S):
                    self._route(self._recv())
        except (ChannelClosed, FrameError, OSError) as exc:
            reason = str(exc) or "the parent closed the channel"
            self.abort(lambda: ChannelClosed(reason))
        except BaseException:
            # A signal handler raised (the CPU limit) in the middle of a read: the stream's
            # position is unknown, so no later reply can be trusted.
            self.abort(lambda: ChannelClosed("the reply stream was interrupted"))
            raise
        finally:
            with self._lock:
                self._reading = False
                for other in self._pending.values():  # the next waiting thread reads
                    if other.waker is not None and not other.settled:
                        other.waker.release()
                        other.waker = None
                        break

    def _settle(self, slot: _Slot) -> None:
        """Mark `slot` settled and wake its thread; the caller holds the lock."""
        slot.settled = True
        if slot.waker is not None:
            slot.waker.release()
            slot.waker = None

    def _route(self, reply: dict[str, Any]) -> None:
        call_id = reply.get("id")
        with self._lock:
            slot = self._pending.get(call_id) if isinstance(call_id, int) else None
            if slot is None:
                if self._failure is not None:
                    return  # the answer to a call abandoned when the run stopped
                raise FrameError(f"the parent answered a call that is not waiting: {call_id!r}")
            if not slot.settled:
                slot.reply = reply
                self._settle(slot)
