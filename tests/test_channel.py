"""The child's end of the sandbox RPC channel: many threads calling at once over real pipes.

The "parent" here is a thread on the other end of two pipes that answers the requests it reads,
in an order of its choosing; every calling thread must get its own reply, whichever thread is
reading at the time.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from workers._channel import CallRouter, ChannelClosed, FdChannel, FrameError


@contextmanager
def parent(answer: Callable[[list[dict[str, Any]], FdChannel], bool]) -> Iterator[CallRouter]:
    """A router whose requests reach `answer(received, channel)` after each frame; the parent
    stops (and closes its end) when `answer` returns False."""
    to_parent_r, to_parent_w = os.pipe()
    to_child_r, to_child_w = os.pipe()
    child = FdChannel(to_child_r, to_parent_w)
    other_end = FdChannel(to_parent_r, to_child_w)
    received: list[dict[str, Any]] = []

    def serve() -> None:
        try:
            while True:
                received.append(other_end.recv())
                if not answer(received, other_end):
                    break
        except ChannelClosed:
            pass
        os.close(to_child_w)

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        yield CallRouter(recv=child.recv, send=child.send, readable=child.readable)
    finally:
        os.close(to_parent_w)
        server.join(timeout=10)
        for fd in (to_parent_r, to_child_r):
            os.close(fd)


def call_from_threads(router: CallRouter, count: int) -> dict[int, Any]:
    results: dict[int, Any] = {}

    def call(n: int) -> None:
        try:
            results[n] = router.request({"op": "call", "n": n})["ok"]
        except BaseException as exc:  # the test looks at what each thread got
            results[n] = exc

    threads = [threading.Thread(target=call, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert not any(thread.is_alive() for thread in threads), "a caller never got its reply"
    return results


def test_every_thread_gets_its_own_reply_when_replies_come_back_in_reverse_order() -> None:
    count = 16

    def answer_in_reverse(received: list[dict[str, Any]], channel: FdChannel) -> bool:
        if len(received) == count:
            for frame in reversed(received):
                channel.send({"id": frame["id"], "ok": frame["n"] * 10})
        return True

    with parent(answer_in_reverse) as router:
        results = call_from_threads(router, count)
    assert results == {n: n * 10 for n in range(count)}


def test_one_thread_calling_in_a_row_reads_its_own_replies() -> None:
    def echo(received: list[dict[str, Any]], channel: FdChannel) -> bool:
        channel.send({"id": received[-1]["id"], "ok": received[-1]["n"]})
        return True

    with parent(echo) as router:
        assert [router.request({"n": n})["ok"] for n in range(500)] == list(range(500))


def test_a_closed_channel_fails_every_waiting_call_and_every_later_one() -> None:
    count = 8

    def answer_two_then_hang_up(received: list[dict[str, Any]], channel: FdChannel) -> bool:
        if len(received) < count:
            return True
        for frame in received[:2]:
            channel.send({"id": frame["id"], "ok": "answered"})
        return False  # the parent goes away with six calls unanswered

    with parent(answer_two_then_hang_up) as router:
        results = call_from_threads(router, count)
        assert sorted(r for r in results.values() if r == "answered") == ["answered"] * 2
        failed = [r for r in results.values() if r != "answered"]
        assert len(failed) == 6 and all(isinstance(r, ChannelClosed) for r in failed)
        with pytest.raises(ChannelClosed):
            router.request({"n": 99})


def test_a_reply_to_a_call_nobody_made_breaks_the_channel_with_a_clear_error() -> None:
    def answer_the_wrong_id(received: list[dict[str, Any]], channel: FdChannel) -> bool:
        channel.send({"id": 12345, "ok": "?"})
        return True

    with parent(answer_the_wrong_id) as router, pytest.raises(ChannelClosed) as failure:
        router.request({"n": 1})
    assert "not waiting: 12345" in str(failure.value)
    assert FrameError.code == "sandbox_frame_error"


def test_abort_wakes_the_threads_that_wait_for_a_reply() -> None:
    count = 6

    def never_answer(received: list[dict[str, Any]], channel: FdChannel) -> bool:
        return True

    with parent(never_answer) as router:
        results: dict[int, Any] = {}
        caller = threading.Thread(target=lambda: results.update(call_from_threads(router, count)))
        caller.start()
        while len(router._pending) < count:  # every call sent and waiting
            threading.Event().wait(0.01)
        router.abort(lambda: RuntimeError("the run was stopped"))
        caller.join(timeout=20)
    assert not caller.is_alive()
    assert all(isinstance(r, RuntimeError) for r in results.values()) and len(results) == count
