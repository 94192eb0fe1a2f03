"""Framing of the sandbox RPC channel, shared by both sides (ARCHITECTURE.md, "The sandbox holds
no secrets": the program reaches the world only through this channel).

A frame is a 4-byte big-endian length followed by that many bytes of UTF-8 JSON holding one object.
The parent reads with asyncio; the child, which runs the program synchronously, reads and writes
file descriptors directly. Kept to the standard library so the child starts fast.
"""

from __future__ import annotations

import json
import os
import struct
from typing import TYPE_CHECKING, Any

from core.errors import SandboxError

if TYPE_CHECKING:  # the child never imports asyncio: it would add ~40 ms to every start
    import asyncio

MAX_FRAME = 16 * 1024 * 1024
_HEADER = struct.Struct(">I")


class FrameError(SandboxError):
    """The other side broke the framing protocol (oversized frame, bad JSON, not an object)."""

    code = "sandbox_frame_error"


def pack(frame: dict[str, Any]) -> bytes:
    """One frame: header and JSON body. Raises FrameError when the body exceeds MAX_FRAME."""
    text = json.dumps(frame, separators=(",", ":"), ensure_ascii=False)
    body = text.encode("utf-8", "replace")  # lone surrogates become '?'
    if len(body) > MAX_FRAME:
        raise FrameError(f"a frame of {len(body)} bytes exceeds the {MAX_FRAME}-byte limit")
    return _HEADER.pack(len(body)) + body


def unpack(body: bytes) -> dict[str, Any]:
    """The object in a frame body. Raises FrameError for anything but a JSON object."""
    try:
        value = json.loads(body.decode("utf-8"))
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


async def read_frame(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """The next frame, or None when the stream ended cleanly between frames."""
    import asyncio

    try:
        header = await reader.readexactly(_HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise FrameError("the stream ended inside a frame header") from None
        return None
    try:
        body = await reader.readexactly(body_length(header))
    except asyncio.IncompleteReadError:
        raise FrameError("the stream ended inside a frame") from None
    return unpack(body)


class ChannelClosed(BaseException):
    """The parent closed the channel. A BaseException so `except Exception` cannot swallow it."""


class FdChannel:
    """The child's blocking end: frames in on one descriptor, out on another."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self._read_fd = read_fd
        self._write_fd = write_fd

    def send(self, frame: dict[str, Any]) -> None:
        """Write one frame completely."""
        view = memoryview(pack(frame))
        while view:
            written = os.write(self._write_fd, view)
            view = view[written:]

    def recv(self) -> dict[str, Any]:
        """Read one frame. Raises ChannelClosed at end of stream."""
        return unpack(self._read_exactly(body_length(self._read_exactly(_HEADER.size))))

    def _read_exactly(self, size: int) -> bytes:
        chunks: list[bytes] = []
        remaining = size
        while remaining:
            chunk = os.read(self._read_fd, min(remaining, 1 << 20))
            if not chunk:
                raise ChannelClosed("the parent closed the channel")
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)
