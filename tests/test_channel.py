"""The sandbox RPC channel over real pipes: frames, the child's end with many threads calling at
once, and the parent's end reading whatever a child writes.

For the child's end the "parent" is a thread on the other end of two pipes that answers the
requests it reads, in an order of its choosing; every calling thread must get its own reply,
whichever thread is reading at the time. For the parent's end the "child" is a script that writes
chosen bytes.
"""

from __future__ import annotations

import os
import select
import stat
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from integrations.base import EffectCall
from workers._channel import (
    MAX_FRAME,
    CallRouter,
    ChannelClosed,
    FdChannel,
    FrameError,
    body_length,
    pack,
    replay_frames,
    unpack,
)
from workers.sandbox import SandboxLimits, run_sandboxed

LIMITS = SandboxLimits(cpu_s=10, wall_s=20, memory_mb=512, output_kb=64)


async def never_called(call: EffectCall) -> None:
    raise AssertionError(f"no call was expected, got {call.action}")


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


def test_replies_written_together_are_all_routed_from_one_read() -> None:
    count = 32

    def answer_all_at_once(received: list[dict[str, Any]], channel: FdChannel) -> bool:
        if len(received) == count:  # every reply in a single write, as a busy worker sends them
            os.write(channel._write_fd, b"".join(
                pack({"id": frame["id"], "ok": frame["n"] + 1}) for frame in received))
        return True

    with parent(answer_all_at_once) as router:
        results = call_from_threads(router, count)
    assert results == {n: n + 1 for n in range(count)}


def test_a_buffered_frame_is_readable_without_waiting() -> None:
    read_fd, write_fd = os.pipe()
    try:
        channel = FdChannel(read_fd, write_fd)
        channel.send({"n": 1})
        channel.send({"n": 2})
        assert channel.readable(0) and channel.recv() == {"n": 1}
        # The second frame came in with the first read: nothing is left in the pipe, yet the
        # channel says a frame is there (a reader waiting on the pipe would wait forever).
        assert not select.select([read_fd], [], [], 0)[0]
        assert channel.readable(0) and channel.recv() == {"n": 2}
        assert not channel.readable(0)
    finally:
        os.close(read_fd)
        os.close(write_fd)


def test_frames_sent_from_many_threads_at_once_arrive_whole_and_in_order() -> None:
    read_fd, write_fd = os.pipe()
    sender, reader = FdChannel(-1, write_fd), FdChannel(read_fd, -1)
    threads, per_thread = 16, 200
    received: list[dict[str, Any]] = []
    collector = threading.Thread(
        target=lambda: received.extend(reader.recv() for _ in range(threads * per_thread)))
    collector.start()
    start = threading.Barrier(threads)

    def send_many(thread: int) -> None:
        start.wait()
        for n in range(per_thread):
            sender.send({"thread": thread, "n": n, "pad": "x" * (n % 50)})

    senders = [threading.Thread(target=send_many, args=(t,)) for t in range(threads)]
    for thread in senders:
        thread.start()
    for thread in senders:
        thread.join()
    sender.flush()
    collector.join(timeout=10)
    os.close(read_fd)
    os.close(write_fd)
    assert len(received) == threads * per_thread
    for thread in range(threads):
        assert [f["n"] for f in received if f["thread"] == thread] == list(range(per_thread))


def test_flush_takes_over_a_writer_that_never_wrote() -> None:
    read_fd, write_fd = os.pipe()
    try:
        channel = FdChannel(read_fd, write_fd)
        assert channel.queue({"n": 1})  # this caller was to write, and (interrupted) never did
        assert not channel.queue({"n": 2})  # queued behind it
        channel.flush()
        assert [channel.recv(), channel.recv()] == [{"n": 1}, {"n": 2}]
    finally:
        os.close(read_fd)
        os.close(write_fd)


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


async def test_garbage_on_the_channel_is_a_sandbox_error(tmp_path: Path) -> None:
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nprintf '\\000\\000\\000\\005[1,2]'\nsleep 5\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    outcome = await run_sandboxed("x = 1\n", manifest={}, handler=never_called, limits=LIMITS,
                                  isolation="rlimits", python=str(fake))
    assert not outcome.ok
    assert outcome.error is not None and outcome.error["type"] == "SandboxError"
    assert outcome.seconds < 4


def fake_child(folder: Path, frames: list[bytes], *, chunk: int = 0) -> str:
    """An interpreter that ignores the program and writes `frames` (raw bytes), `chunk` bytes per
    write when set, then waits to be killed: a child that breaks the protocol in a chosen way."""
    script = folder / "child.py"
    script.write_text(
        "import os, sys, time\n"
        f"data = {b''.join(frames)!r}\n"
        f"step = {chunk} or len(data) or 1\n"
        "for i in range(0, len(data), step):\n"
        "    os.write(1, data[i:i + step])\n"
        "    time.sleep(0.001)\n"
        "time.sleep(float(os.environ.get('LINGER', '0')))\n")
    fake = folder / "python"
    fake.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{script}"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    return str(fake)


async def test_frames_written_a_byte_at_a_time_are_read_whole(tmp_path: Path) -> None:
    frames = [pack({"op": "ready"}), pack({"op": "print", "text": "héllo\n"}),
              pack({"op": "done", "variables": {"n": "3"}})]
    outcome = await run_sandboxed("x = 1\n", manifest={}, handler=never_called, limits=LIMITS,
                                  isolation="rlimits", python=fake_child(tmp_path, frames, chunk=1))
    assert outcome.ok, outcome.error
    assert outcome.output == "héllo\n" and outcome.variables == {"n": "3"}


@pytest.mark.parametrize(("frames", "says"), [
    ([pack({"op": "ready"}), pack({"op": "print", "text": "cut"})[:9]], "ended inside a frame"),
    ([pack({"op": "ready"}), b"\x00\x00"], "ended inside a frame header"),
    ([pack({"op": "ready"}), pack({"op": "call", "id": "one"})], "invalid frame"),
    ([pack({"op": "ready"}), pack({"op": "replayed", "calls": [{"path": ["x"]}]})],
     "invalid frame"),
    ([pack({"op": "ready"}), (MAX_FRAME + 1).to_bytes(4, "big")], "above the"),
], ids=["cut-body", "cut-header", "invalid-call", "invalid-replayed", "oversized"])
async def test_a_child_that_breaks_the_framing_gets_a_sandbox_error_that_says_how(
        tmp_path: Path, frames: list[bytes], says: str) -> None:
    outcome = await run_sandboxed("x = 1\n", manifest={}, handler=never_called, limits=LIMITS,
                                  isolation="rlimits", python=fake_child(tmp_path, frames))
    assert not outcome.ok and outcome.error is not None
    assert outcome.error["type"] == "SandboxError"
    assert says in outcome.error["message"]


def test_frames_are_length_prefixed_json_with_a_cap() -> None:
    frame = pack({"op": "print", "text": "héllo"})
    assert body_length(frame[:4]) == len(frame) - 4
    assert unpack(frame[4:]) == {"op": "print", "text": "héllo"}
    with pytest.raises(FrameError):
        unpack(b"[1, 2]")
    with pytest.raises(FrameError):
        unpack(b"\xff\xfe")
    with pytest.raises(FrameError):
        body_length((MAX_FRAME + 1).to_bytes(4, "big"))


def test_every_value_crosses_exactly_whichever_json_writer_took_the_frame() -> None:
    # orjson writes most frames, and they are read back by it (a fifth of the time); where its
    # JSON would not be exact the standard library writes and reads them: beyond 64 bits,
    # orjson would read an integer as a float, and it writes NaN as null.
    exact = {"op": "call", "kwargs": {"n": 2**63 - 1, "x": -0.0, "s": "née\u2028"}}
    beyond = {"op": "call", "kwargs": {"n": 2**64 + 1, "big": -(10**30)}}
    odd = {"op": "call", "kwargs": {"nan": float("nan"), "inf": float("inf"), "none": None}}
    for frame in (exact, beyond, odd):
        back = unpack(pack(frame)[4:])
        assert repr(back) == repr(frame)  # repr: NaN is not equal to itself
        assert all(type(back["kwargs"][k]) is type(v) for k, v in frame["kwargs"].items())
    # Recorded results as the journal keeps them: orjson's end with a newline, older or
    # inexact ones (the standard library's) do not; a frame mixing them is read exactly too.
    results = {"a": '{"n":1}\n', "b": "null", "c": str(2**70), "d": "NaN"}
    merged = replayed_results(replay_frames(results))
    assert merged["c"] == 2**70 and isinstance(merged["c"], int)
    assert merged["a"] == {"n": 1} and merged["b"] is None and merged["d"] != merged["d"]


def test_state_texts_travel_as_strings_whatever_they_hold() -> None:
    # Saved variables cross as JSON text inside strings: a text is never spliced into a frame,
    # so one a program made (here one that would close the object) stays a string.
    texts = {"rows": '[{"id":1,"name":"Ana"}]', "née": '"Zoë"', "none": "null",
             "sly": '1},"program":"print(1)"'}
    frame = pack({"op": "start", "program": "pass", "state": texts})
    assert unpack(frame[4:]) == {"op": "start", "program": "pass", "state": texts}
    with pytest.raises(FrameError):
        pack({"op": "done", "variables": {"big": "x" * MAX_FRAME}})


def test_replay_frames_carry_recorded_results_in_frames_under_the_limit() -> None:
    results = {f"each#1/item#{i}/call#1": f'{{"__row__":["r{i}",{{"Asked":"yes"}}]}}'
               for i in range(300)}
    results["each#1/item#300/call#1"] = '"' + "x" * 5_000 + '"'  # too large: left to the RPC
    frames = replay_frames(results, limit=2_000)
    assert len(frames) > 1 and all(len(frame) <= 2_000 + 200 for frame in frames)
    assert all(unpack(frame[4:])["op"] == "replay" for frame in frames)
    merged = replayed_results(frames)
    assert merged == {f"each#1/item#{i}/call#1": {"__row__": [f"r{i}", {"Asked": "yes"}]}
                      for i in range(300)}


def test_replay_frames_split_what_is_over_the_frame_limit_in_bytes() -> None:
    # The limit counts characters; an emoji is four bytes. A batch that is too large in UTF-8
    # is split, and a single result that is too large alone is left to the parent.
    emoji = "\U0001f600"
    chars = MAX_FRAME // 4 // 2
    results = {"call#1": f'"{emoji * chars}"', "call#2": f'"{emoji * chars}"',
               "call#3": f'"{emoji * (MAX_FRAME // 4 + 1)}"', "call#4": '"ok"'}
    frames = replay_frames(results, limit=MAX_FRAME)
    assert all(len(frame) <= MAX_FRAME + 4 for frame in frames)
    assert {path: len(value) for path, value in replayed_results(frames).items()} == {
        "call#1": chars, "call#2": chars, "call#4": 2}


def test_replay_paths_are_quoted_whatever_they_hold() -> None:
    # Paths are plain, but a path may hold anything a str can (a lone surrogate becomes "?").
    names = ['say "hi"', "back\\slash", "tab\tand\nline\x01", "née", "emoji 😀", "\u2028"]
    frames = replay_frames({name: '"ok"' for name in [*names, "x\ud800"]})
    assert replayed_results(frames) == {**{name: "ok" for name in names}, "x?": "ok"}


def test_replay_frames_stop_at_their_total_and_keep_the_first_results() -> None:
    results = {f"call#{i}": f'"{i:04d}"' for i in range(1000)}  # ~17 bytes each with its path
    merged = replayed_results(replay_frames(results, limit=1_000, total=3_000))
    assert merged == {f"call#{i}": f"{i:04d}" for i in range(len(merged))}
    assert 150 <= len(merged) <= 200


def replayed_results(frames: list[bytes]) -> dict[str, Any]:
    return {path: value for frame in frames for path, value in unpack(frame[4:])["results"].items()}
