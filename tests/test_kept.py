"""A worker's kept connections (`integrations.kept`), with a connection made for the test: when
one is opened, shared, handed back, replaced and closed."""

from __future__ import annotations

import asyncio

from integrations.kept import KeptConnections


class Line:
    """A connection whose health the test sets."""

    def __init__(self, name: str) -> None:
        self.name, self.answers, self.closed = name, True, False

    async def usable(self) -> bool:
        return self.answers and not self.closed

    async def close(self) -> None:
        self.closed = True


async def test_a_connection_replaced_while_in_use_is_closed_only_when_its_user_is_done() -> None:
    kept = KeptConnections(idle_s=60)
    opened: list[Line] = []

    async def open_line() -> Line:
        opened.append(Line(f"line {len(opened) + 1}"))
        return opened[-1]

    first, release_first = await kept.acquire("server", open_line)
    again, release_again = await kept.acquire("server", open_line)
    assert first is again and len(opened) == 1  # shared while it answers

    # It stops answering in time (busy with a long call of another run, say): the next user
    # gets a new connection, and the old one stays open for the runs still using it.
    opened[0].answers = False
    second, release_second = await kept.acquire("server", open_line)
    await _settled()
    assert second is opened[1] and not opened[0].closed
    release_first()
    release_first()  # a second release changes nothing
    await _settled()
    assert not opened[0].closed
    release_again()
    await _settled()
    assert opened[0].closed and not opened[1].closed

    release_second()
    await kept.aclose()
    assert opened[1].closed


async def test_an_idle_connection_closes_after_its_time_unless_taken_again() -> None:
    kept = KeptConnections(idle_s=0.05)
    line = Line("line")

    async def open_line() -> Line:
        return line

    _, release = await kept.acquire("server", open_line)
    release()
    taken, release = await kept.acquire("server", open_line)  # within idle_s: kept
    await asyncio.sleep(0.1)
    assert taken is line and not line.closed  # in use: its idle time does not run
    release()
    for _ in range(50):
        if line.closed:
            break
        await asyncio.sleep(0.02)
    assert line.closed and kept.opened == 1


async def _settled() -> None:
    """Let closes scheduled as tasks run."""
    for _ in range(3):
        await asyncio.sleep(0)
