"""1. Sandbox overhead: a glue program in the sandbox vs the same code under plain `exec`.

The program builds 100,000 dicts, does string work per row and makes one integration call per
row. In the sandbox the call crosses the RPC channel to a trivial in-process handler; under plain
CPython it is a plain function. Also measured: the sandbox's start-up (an empty program), the
same program without the calls (what the restricted, instrumented program costs by itself) and
the RPC round trip (a loop of bare calls), the CPU time each side spends per call, the
machine's floor (one byte to another process over pipes and back), and the program with every
call answered inside the sandbox's process, as a resumed run's journaled calls are (the
instrumentation without the round trips), and the floor of any instrumentation that journals
every call, without a sandbox (`_in_process_floor`). When the ratio misses the goal, both sides
of smaller runs are profiled with cProfile (the child under rlimits isolation, so that it can
write its profile).
"""

from __future__ import annotations

import asyncio
import cProfile
import io
import os
import resource
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from integrations.base import EffectCall
from tests.bench import _in_process_floor, _profile
from tests.bench._report import Goal, Outcome
from workers.sandbox import SandboxLimits, SandboxOutcome, run_sandboxed

ROWS = 100_000
RTT_CALLS = 10_000
PROFILE_ROWS = 5_000
PLAIN_REPEATS = 3
GOAL_RATIO = 1.3
MANIFEST: dict[str, Any] = {"integrations": {"crm": {"actions": {"lookup": "read"}}}}
LIMITS = SandboxLimits(cpu_s=900, wall_s=900, memory_mb=2048)
GLUE = """\
rows = [{"id": i, "name": f"person {i}", "email": f"person{i}@example.com", "amount": i % 997}
        for i in range(ROWS)]
total = 0
for row in rows:
    name = row["name"].title().replace(" ", "_")
    domain = row["email"].split("@")[1].upper()
    label = f"{name}-{domain}-{row['id']:06d}"
    status = CALL
    total += len(status) + row["amount"]
print(total)
"""
Handler = Callable[[EffectCall], Awaitable[Any]]


def glue_program(rows: int, *, calls: bool = True) -> str:
    """The glue program over `rows` rows; without `calls` the integration call is a constant."""
    return GLUE.replace("ROWS", str(rows)).replace(
        "CALL", 'crm.lookup(label)' if calls else '"active"')


async def answer(call: EffectCall) -> str:
    """The trivial integration: every lookup is "active"."""
    return "active"


def all_match(calls: list[EffectCall]) -> list[EffectCall]:
    """The trivial check of replayed calls: every one is the call journaled at its path."""
    return []


def lookup(label: str) -> str:
    return "active"


def run_plain(program: str) -> tuple[float, str]:
    """Seconds to compile and exec `program` with `crm.lookup` a plain function; its output."""
    out = io.StringIO()
    namespace: dict[str, Any] = {
        "crm": types.SimpleNamespace(lookup=lookup),
        "print": lambda *values: print(*values, file=out),
    }
    start = time.perf_counter()
    exec(compile(program, "<program>", "exec"), namespace)
    return time.perf_counter() - start, out.getvalue()


ECHO = "import os\nwhile os.read(0, 1):\n    os.write(1, b'.')\n"


def pipe_round_trip_us(rounds: int = 5_000) -> float:
    """The machine's floor: one byte to another process over a pipe and back, in µs."""
    proc = subprocess.Popen([sys.executable, "-c", ECHO], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    send, receive = proc.stdin.fileno(), proc.stdout.fileno()
    os.write(send, b".")
    os.read(receive, 1)
    start = time.perf_counter()
    for _ in range(rounds):
        os.write(send, b".")
        os.read(receive, 1)
    elapsed = time.perf_counter() - start
    proc.stdin.close()
    proc.wait(timeout=10)
    return round(elapsed / rounds * 1e6, 1)


def _cpu_split() -> tuple[float, float]:
    """CPU seconds of this process and of its reaped children."""
    own, children = os.times(), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.user + own.system, children.ru_utime + children.ru_stime


async def cpu_per_call(bare: str) -> tuple[float, float]:
    """Worker and child CPU seconds of `bare` beyond an empty program's, run under rlimits
    isolation: then the child is our direct child, and its CPU time shows in RUSAGE_CHILDREN
    once reaped."""
    start = _cpu_split()
    await run_sandbox("pass\n", isolation="rlimits")
    middle = _cpu_split()
    await run_sandbox(bare, isolation="rlimits")
    end = _cpu_split()
    worker_cpu, child_cpu = ((e - m) - (m - s) for s, m, e in zip(start, middle, end, strict=True))
    return worker_cpu, child_cpu


def best_plain(program: str) -> tuple[float, str]:
    runs = [run_plain(program) for _ in range(PLAIN_REPEATS)]
    return min(runs)


async def run_sandbox(program: str, *, isolation: str = "auto", python: str = sys.executable,
                      replay: dict[str, str] | None = None) -> tuple[float, SandboxOutcome]:
    """Seconds from `run_sandboxed` called to returned, and its outcome (which must be ok).
    Calls answered from `replay` are checked as a resumed run's are, in batches, by a trivial
    check (every one matches), as `answer` is a trivial handler."""
    start = time.perf_counter()
    outcome = await run_sandboxed(program, manifest=MANIFEST, handler=answer, limits=LIMITS,
                                  isolation=isolation, python=python, replay=replay,
                                  check_replayed=all_match)
    elapsed = time.perf_counter() - start
    if not outcome.ok:
        raise RuntimeError(f"the sandboxed glue program failed: {outcome.error}")
    return elapsed, outcome


async def run() -> list[Outcome]:
    figures = await measure()
    outcome = Outcome(
        name="sandbox_overhead", title="Glue program in the sandbox vs plain exec",
        headline="ratio", figures=figures, goals=[Goal("ratio", "<=", GOAL_RATIO)],
        notes=[f"{ROWS:,} rows, one crm.lookup() per row; isolation {figures['isolation']}; "
               f"plain exec best of {PLAIN_REPEATS}, sandbox one run (start-up included)."])
    if outcome.status == "fail":
        outcome.analysis = explain(figures) + await profile_both()
    return [outcome]


async def measure() -> dict[str, Any]:
    plain_s, plain_out = best_plain(glue_program(ROWS))
    plain_no_calls_s, _ = best_plain(glue_program(ROWS, calls=False))
    startup_s, _ = await run_sandbox("pass\n")
    no_calls_s, _ = await run_sandbox(glue_program(ROWS, calls=False))
    bare = f"for i in range({RTT_CALLS}):\n    crm.lookup('x')\n"
    bare_s, _ = await run_sandbox(bare)
    worker_cpu, child_cpu = await cpu_per_call(bare)
    sandbox_s, outcome = await run_sandbox(glue_program(ROWS))
    if outcome.output != plain_out or outcome.calls != ROWS:
        raise RuntimeError("the sandbox and plain exec disagree about the glue program")
    in_child_s, replayed = await run_sandbox(glue_program(ROWS), replay=journaled(ROWS))
    if replayed.output != plain_out or replayed.replayed != ROWS:
        raise RuntimeError("the resumed glue program did not answer its calls in the child")
    return {
        "rows": ROWS, "isolation": outcome.isolation,
        "plain_exec_s": round(plain_s, 3), "sandbox_s": round(sandbox_s, 3),
        "ratio": round(sandbox_s / plain_s, 2),
        "sandbox_startup_s": round(startup_s, 3),
        "plain_no_calls_s": round(plain_no_calls_s, 3),
        "sandbox_no_calls_s": round(no_calls_s, 3),
        "rpc_round_trip_us": round((bare_s - startup_s) / RTT_CALLS * 1e6, 1),
        "rpc_worker_cpu_us_per_call": round(worker_cpu / RTT_CALLS * 1e6, 1),
        "rpc_child_cpu_us_per_call": round(child_cpu / RTT_CALLS * 1e6, 1),
        "overhead_per_row_us": round((sandbox_s - startup_s - plain_s) / ROWS * 1e6, 1),
        "plain_per_row_us": round(plain_s / ROWS * 1e6, 2),
        "os_pipe_round_trip_us": pipe_round_trip_us(),
        "answered_in_child_s": round(in_child_s, 3),
        "answered_in_child_ratio": round(in_child_s / plain_s, 2),
        "answered_in_child_us_per_call": round((in_child_s - startup_s - plain_s) / ROWS * 1e6,
                                               1),
        **_in_process_floor.measure(glue_program(ROWS), ROWS),
    }


def journaled(rows: int) -> dict[str, str]:
    """The glue program's calls as a resumed run's journal holds them (`run_sandboxed`'s
    `replay`): the child answers each itself, inside the program's process."""
    line = GLUE.splitlines().index("for row in rows:") + 1
    # Each result as `_journal_json.dump_result` writes it (orjson's, with a final newline).
    return {f"for@{line}/iter#{i}/call#1": '"active"\n' for i in range(rows)}


def explain(figures: dict[str, Any]) -> list[str]:
    """Why the ratio is what it is, in the measured numbers."""
    rtt, row = figures["rpc_round_trip_us"], figures["plain_per_row_us"]
    startup, no_calls = figures["sandbox_startup_s"], figures["sandbox_no_calls_s"]
    per_call = (figures["sandbox_s"] - no_calls) / ROWS * 1e6
    worker, child = figures["rpc_worker_cpu_us_per_call"], figures["rpc_child_cpu_us_per_call"]
    plain = figures["plain_exec_s"]
    floor = (plain + ROWS * figures["os_pipe_round_trip_us"] / 1e6) / plain
    return [
        f"Start-up (bwrap, interpreter, imports, policy check) takes {startup:.3f} s.",
        f"Without the calls the program takes {no_calls - startup:.3f} s in the sandbox after "
        f"start-up vs {figures['plain_no_calls_s']:.3f} s under plain exec: the instrumented "
        "top-level loop (a scope switch and a progress check per iteration) and, at the end, "
        f"encoding the program's variables (here the {ROWS:,} rows) as thread state and "
        "sending them back (see the child profile without calls).",
        f"The calls add {per_call:.0f} µs per row; a bare call's round trip is {rtt} µs, "
        f"against {row} µs of Python work per row, so with one call per row the 1.3x goal "
        f"leaves {(GOAL_RATIO - 1) * row:.1f} µs per call for everything.",
        f"The round trip is CPU, spent in turn on each side: {worker} µs in the worker "
        "(the pipe protocol parsing the frame, its validation, an EffectCall, a task, JSON, the "
        f"write) and {child} µs in the child (wire encoding, the path, JSON, the write, and the "
        "calling thread reading its own reply), measured as CPU time per call. A bare one-byte "
        f"round trip between two processes takes {figures['os_pipe_round_trip_us']} µs here "
        "(two writes, two reads, two wake-ups): with one call per row and a reply awaited "
        f"before the row goes on, no implementation can do better than {floor:.0f}x on this "
        "machine, whatever its Python costs. The goal assumes the calls are answered inside "
        "the program's process; here they cross to the worker, which holds the credentials "
        "(ARCHITECTURE.md, \"The sandbox holds no secrets\"). Meeting 1.3x needs fewer round "
        "trips: a bulk action that answers many rows per call, or replies not awaited.",
        f"Answered inside the sandbox's process (each call's journaled result handed to the "
        f"child, as on resume) the program takes {figures['answered_in_child_s']:.3f} s, "
        f"{figures['answered_in_child_ratio']}x plain exec: "
        f"{figures['answered_in_child_us_per_call']} µs per call for the call's path, its "
        "arguments in wire form, the lookup and the batched report the worker checks; the "
        f"goal would leave {(GOAL_RATIO - 1) * row:.1f} µs.",
        "The floor without any boundary (tests/bench/_in_process_floor.py: the same program in "
        "this process, its call answered from a dict through one object that counts its path, "
        "its loop ticked by a generator, nothing else) is "
        f"{figures['in_process_intercepted_ratio']}x plain exec (plain: "
        f"{figures['in_process_plain_s']:.3f} s); recording each call's path and arguments and "
        f"encoding the records once at the end, as a journal must, makes it "
        f"{figures['in_process_journaled_ratio']}x "
        f"({figures['in_process_journaled_us_per_call']} µs per call). No start-up, no thread "
        "state, no progress, no each() scopes, no check of replayed calls: an implementation "
        "that journals every call pays at least about this here.",
    ]


async def profile_both() -> list[str]:
    """cProfile summaries of the worker side and the child side of smaller runs."""
    program = glue_program(PROFILE_ROWS)
    profiler = cProfile.Profile()
    profiler.enable()
    await run_sandbox(program)
    profiler.disable()
    lines = [f"Worker (parent) side, {PROFILE_ROWS:,} rows (its epoll wait is the time it "
             "waits for the child):", *_profile.summary(profiler)]
    for label, source in (("with calls", program),
                          ("without calls", glue_program(PROFILE_ROWS, calls=False))):
        with tempfile.TemporaryDirectory(prefix="sluice-bench-") as folder:
            stats = await _profile_child(source, Path(folder))
        lines += [f"Sandbox child, main thread, {label} (rlimits isolation; its lock wait is "
                  "the time it waits for replies):", *_profile.summary(stats)]
    return lines


async def _profile_child(program: str, folder: Path) -> Any:
    out = folder / "child.prof"
    script = folder / "python-profiled"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -s -P -m cProfile -o "{out}" '
                      "-m workers.sandbox_child\n")
    script.chmod(0o755)
    await run_sandbox(program, isolation="rlimits", python=str(script))
    for _ in range(50):  # the profile is written as the child exits
        if out.exists():
            break
        await asyncio.sleep(0.1)
    return _profile.load(out)
