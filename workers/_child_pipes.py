"""The parent's end of a sandbox child's pipes (ARCHITECTURE.md, "The sandbox holds no secrets").

`ChildPipes` is the asyncio protocol of the child process: frames on its stdout are parsed as the
bytes arrive and handed to `on_frame` in the same callback, so a call frame becomes a task at
once rather than after a stream reader wakes a waiting coroutine; stderr is kept up to a cap;
the process's exit and the closing of its pipes are futures. Replies go through `write`, which
waits only while the child is not reading (the pipe is full).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

from workers._channel import HEADER_SIZE, FrameError, frame_end, unpack


class ChildPipes(asyncio.SubprocessProtocol):
    """Frames in from stdout, replies out to stdin, stderr kept, exit awaited.

    `on_frame(frame)` gets each frame's object; `on_end(error)` is called once, when stdout
    closes (`error` None) or the framing broke (a FrameError; nothing is read after it).
    """

    def __init__(self, on_frame: Callable[[dict[str, Any]], None],
                 on_end: Callable[[FrameError | None], None], *, stderr_cap: int) -> None:
        self._on_frame = on_frame
        self._on_end = on_end
        self._buffer = bytearray()
        self._ended = False
        self.stderr = bytearray()
        self._stderr_cap = stderr_cap
        self._transport: asyncio.SubprocessTransport | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        loop = asyncio.get_running_loop()
        self.exited: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()

    # -- the process ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Other event loops' (uvloop's) transports do not subclass asyncio's.
        self._transport = cast(asyncio.SubprocessTransport, transport)

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        """The process exited and all its pipes are closed."""
        self.process_exited()
        if not self.closed.done():
            self.closed.set_result(None)
        self._writable.set()

    # -- reading ----------------------------------------------------------------------------
    def pipe_data_received(self, fd: int, data: bytes | bytearray) -> None:
        if fd == 2:
            room = self._stderr_cap - len(self.stderr)
            if room > 0:
                self.stderr += data[:room]
        elif not self._ended:
            self._buffer += data
            self._parse()

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd != 1 or self._ended:
            return
        if not self._buffer:
            self._end(None)
        elif len(self._buffer) < HEADER_SIZE:
            self._end(FrameError("the stream ended inside a frame header"))
        else:
            self._end(FrameError("the stream ended inside a frame"))

    def _parse(self) -> None:
        """Hand on every complete frame in the buffer, then keep the incomplete rest."""
        buffer, start = self._buffer, 0
        try:
            while (end := frame_end(buffer, start)) is not None:
                frame = unpack(bytes(buffer[start + HEADER_SIZE:end]))
                start = end
                self._on_frame(frame)
                if self._ended:
                    return
        except FrameError as exc:
            self._end(exc)
            return
        finally:
            del buffer[:start]

    def _end(self, error: FrameError | None) -> None:
        if not self._ended:
            self._ended = True
            self._buffer.clear()
            self._on_end(error)

    # -- writing ----------------------------------------------------------------------------
    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    async def write(self, data: bytes) -> None:
        """Send `data` to the child's stdin whole (frames never interleave: one write each);
        wait while the child is not reading. Does nothing once stdin is closed."""
        stdin = self._stdin()
        if stdin is None or stdin.is_closing():
            return
        stdin.write(data)
        if not self._writable.is_set():
            await self._writable.wait()

    def close_stdin(self) -> None:
        stdin = self._stdin()
        if stdin is not None:
            stdin.close()

    def _stdin(self) -> asyncio.WriteTransport | None:
        if self._transport is None:
            return None
        pipe = self._transport.get_pipe_transport(0)
        return pipe if isinstance(pipe, asyncio.WriteTransport) else None
