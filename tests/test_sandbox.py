"""The sandbox (workers/sandbox.py and workers/sandbox_child.py), driving the real child process.

The handler below answers a small "sheets"/"mail" manifest (and the runtime's clock): it is test
data standing in for the integrations, not a mock of our code. Effect paths, the clock, the seed
and saved variables are in test_sandbox_state.py.
"""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.errors import IntegrationError, SandboxError, SluiceError
from integrations.base import EffectCall
from workers import _isolation
from workers._channel import MAX_FRAME, FdChannel
from workers._sandbox_namespace import Runtime, guarded_import
from workers.sandbox import (
    ProgressTick,
    SandboxLimits,
    SandboxOutcome,
    detect_isolation,
    run_sandboxed,
)

CANARY = "canary-7f3e9b1c-do-not-leak"
ISOLATION = detect_isolation()
MANIFEST: dict[str, Any] = {
    "integrations": {
        "sheets": {"actions": {"open": "read"}},
        "mail": {"actions": {"send": "write"}},
    },
    "resources": {"Sheet": {"actions": {"rows": "read", "update": "write"}}},
}
FAST = SandboxLimits(cpu_s=10, wall_s=20, memory_mb=512, output_kb=64)
NOW = {"__datetime__": "2024-05-06T07:08:09+02:00"}


class RunStopped(SluiceError):
    """What the worker raises to stop a run (the sandbox knows it by its name)."""

    code = "run_stopped"


@pytest.fixture(autouse=True)
def canary_secret(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("SLUICE_CANARY_SECRET", CANARY)
    yield


class Sheets:
    """A tiny in-memory stand-in for the sheets and mail integrations."""

    def __init__(self, rows: int = 5) -> None:
        self.rows = {str(i): {"Name": f"person{i}", "Amount": i * 10} for i in range(rows)}
        self.calls: list[EffectCall] = []

    async def __call__(self, call: EffectCall) -> Any:
        self.calls.append(call)
        if call.integration == "runtime":
            return NOW
        if call.action == "open":
            return {"__handle__": ["sheets", "Sheet", call.args[0]]}
        if call.action == "rows":
            return [{"__row__": [key, values]} for key, values in self.rows.items()]
        if call.action == "update":
            row_id = call.args[0]["__row__"][0]
            self.rows[row_id].update(call.args[1])
            return None
        if call.action == "send":
            if "@" not in call.kwargs.get("to", ""):
                raise IntegrationError(f"'{call.kwargs.get('to')}' is not an email address")
            return {"sent": True}
        raise RuntimeError(f"unknown action; the secret is {CANARY}")


async def run(program: str, handler: Any = None, **options: Any) -> SandboxOutcome:
    options.setdefault("limits", FAST)
    return await run_sandboxed(program, manifest=MANIFEST, handler=handler or Sheets(),
                               isolation=ISOLATION, **options)


async def test_program_calls_integrations_and_returns_a_table() -> None:
    sheets = Sheets()
    program = (
        'sheet = sheets.open("signups")\n'
        "rows = sheet.rows()\n"
        'print("rows:", len(rows), "first id:", rows[0].id)\n'
        "result = []\n"
        "for row in rows:\n"
        '    sheet.update(row, {"Budget": row["Amount"] * 2})\n'
        '    result.append({"name": row["Name"], "budget": row["Amount"] * 2})\n'
        'mail.send(to="team@example.com", subject="done")\n'
    )
    outcome = await run(program, sheets)
    assert outcome.ok, outcome.error
    assert outcome.output == "rows: 5 first id: 0\n"
    assert outcome.table_rows == 5
    assert outcome.table_csv is not None
    assert outcome.table_csv.splitlines()[:2] == ["name,budget", "person0,0"]
    assert outcome.calls == 2 + 5 + 1
    assert outcome.isolation == ISOLATION
    assert outcome.exit_code == 0
    assert sheets.rows["3"]["Budget"] == 60
    update = sheets.calls[2]
    assert update.integration == "sheets" and update.action == "update"
    assert update.handle == ("sheets", "Sheet", "signups")
    assert sheets.calls[-1].kwargs == {"to": "team@example.com", "subject": "done"}


async def test_a_dataframe_result_becomes_csv() -> None:
    program = ("import pandas as pd\n"
               "rows = sheets.open('s').rows()\n"
               "result = pd.DataFrame([dict(r) for r in rows])\n")
    outcome = await run(program, limits=SandboxLimits(memory_mb=1024, wall_s=20))
    assert outcome.ok, outcome.error
    assert outcome.table_rows == 5
    assert outcome.table_csv is not None and outcome.table_csv.startswith("Name,Amount\n")


async def test_pandas_cannot_read_attributes_by_name_past_the_policy() -> None:
    program = (
        "import pandas as pd\n"
        "df = pd.DataFrame({'a': [1, 5]})\n"
        "limit = 2\n"
        "print(df.query('a > @limit')['a'].tolist(), df['a'].agg('sum'))\n"
        "sneaky = ['@df.__class__', '@pd.api.types.is_list_like([1])']\n"
        "for expression in sneaky:\n"
        "    try:\n"
        "        df.query(expression)\n"
        "    except ValueError:\n"
        "        print('refused')\n"
        "name = '__getattribute__'\n"
        "try:\n"
        "    df['a'].agg(name, '__class__')\n"
        "except ValueError:\n"
        "    print('refused')\n"
    )
    outcome = await run(program, limits=SandboxLimits(memory_mb=1024, wall_s=20))
    assert outcome.ok, outcome.error
    assert outcome.output == "[5] 6\nrefused\nrefused\nrefused\n"


async def test_each_records_a_failing_item_and_goes_on() -> None:
    program = (
        "rows = sheets.open('s').rows()\n"
        "def budget(row):\n"
        "    if row['Amount'] == 20:\n"
        "        raise ValueError('no budget for ' + row['Name'])\n"
        "    return row['Amount'] + 1\n"
        "out = each(rows, budget)\n"
        "print(out)\n"
    )
    outcome = await run(program)
    assert outcome.ok, outcome.error
    assert outcome.output == "[1, 11, None, 31, 41]\n"
    (failure,) = outcome.failures
    assert failure["index"] == 2 and failure["line"] == 4
    assert failure["error"] == "ValueError: no budget for person2"
    assert "person2" in failure["item"]


async def test_limit_items_visits_only_the_first_n() -> None:
    sheets = Sheets(rows=10)
    program = ("sheet = sheets.open('s')\n"
               "done = each(sheet.rows(), lambda row: sheet.update(row, {'Seen': True}),\n"
               "            concurrency=5)\n"
               "print(len(done))\n")
    outcome = await run(program, sheets, limit_items=3, preview=True)
    assert outcome.ok, outcome.error
    assert outcome.output == "3\n"
    updated = [c.args[0]["__row__"][0] for c in sheets.calls if c.action == "update"]
    assert sorted(updated) == ["0", "1", "2"]


class Slow:
    """Doubles a number after 0.1 s, counting the calls in flight; 7 is refused."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.most_in_flight = 0

    async def __call__(self, call: EffectCall) -> Any:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.1)
        finally:
            self.in_flight -= 1
        if call.args[0] == 7:
            raise IntegrationError("7 cannot be doubled")
        return call.args[0] * 2


async def test_each_runs_items_concurrently_and_keeps_their_order() -> None:
    ticks: list[ProgressTick] = []

    async def on_progress(tick: ProgressTick) -> None:
        ticks.append(tick)

    slow = Slow()
    manifest = {"integrations": {"math": {"actions": {"double": "read"}}}}
    program = "print(each(range(20), lambda n: math.double(n), concurrency=10))\n"
    outcome = await run_sandboxed(program, manifest=manifest, handler=slow, limits=FAST,
                                  isolation=ISOLATION, on_progress=on_progress)
    assert outcome.ok, outcome.error
    expected = [None if n == 7 else n * 2 for n in range(20)]
    assert outcome.output == f"{expected}\n"
    assert slow.most_in_flight >= 5
    (failure,) = outcome.failures
    assert failure["loop"] == "each#1" and failure["index"] == 7
    assert failure["error"] == "IntegrationError: 7 cannot be doubled"
    assert (ticks[-1].done, ticks[-1].failed, ticks[-1].total) == (19, 1, 20)


def _stopper(after: int) -> tuple[list[EffectCall], Any]:
    """A handler that stops the run at its `after`-th call and counts the calls it served."""
    served: list[EffectCall] = []

    async def handler(call: EffectCall) -> Any:
        served.append(call)
        if len(served) == after:
            raise RunStopped("the run was cancelled in the thread")
        await asyncio.sleep(0.02)
        return {"sent": True}

    return served, handler


STOPS = {  # program, the call that stops it, its output
    "except Exception": ("try:\n    mail.send(to='a@b.c')\nexcept Exception:\n"
                         "    print('swallowed')\nprint('after')\n", 1, ""),
    "except BaseException": ("try:\n    mail.send(to='a@b.c')\nexcept BaseException:\n"
                             "    print('caught')\nmail.send(to='d@e.f')\nprint('after')\n",
                             1, "caught\n"),
    "each": ("def send(n):\n    try:\n        mail.send(to=f'{n}@b.c')\n"
             "    except Exception:\n        print('swallowed')\n"
             "each(range(40), send, concurrency=4)\nprint('after')\n", 6, ""),
}


@pytest.mark.parametrize(("program", "stop_at", "output"), STOPS.values(), ids=STOPS.keys())
async def test_a_stopped_run_stops_whatever_the_program_catches(
    program: str, stop_at: int, output: str
) -> None:
    served, handler = _stopper(after=stop_at)
    outcome = await run_sandboxed(program, manifest=MANIFEST, handler=handler, limits=FAST,
                                  isolation=ISOLATION)
    assert not outcome.ok
    assert outcome.error is not None and outcome.error["type"] == "RunStopped"
    assert outcome.error["message"] == "the run was cancelled in the thread"
    assert outcome.output == output and outcome.failures == []
    assert len(served) < stop_at + 4  # later calls never reach the handler
    assert outcome.exit_code == 0 and outcome.variables == {}


async def test_progress_ticks_arrive_for_each_and_plain_loops() -> None:
    ticks: list[ProgressTick] = []

    async def on_progress(tick: ProgressTick) -> None:
        ticks.append(tick)

    program = ("rows = sheets.open('s').rows()\n"
               "each(rows, lambda row: 1 / (row['Amount'] - 10))\n"
               "for i in range(1000):\n"
               "    pass\n"
               "each(list(range(300)), lambda i: 1 / (i % 7), concurrency=8)\n")
    outcome = await run(program, on_progress=on_progress)
    assert outcome.ok, outcome.error
    finals = {t.loop: t for t in ticks}
    assert (finals["each#1"].done, finals["each#1"].failed, finals["each#1"].total) == (4, 1, 5)
    assert finals["for@3"].done == 1000 and finals["for@3"].total == 1000
    # Eight threads counting at once: the final counts are exact (every 7th item fails).
    assert (finals["each#2"].done, finals["each#2"].failed) == (257, 43)
    assert len(ticks) < 10  # throttled, not one per item


async def test_program_exception_reports_type_message_and_line() -> None:
    program = "x = 1\n\ndef share(total, people):\n    return total / people\n\nshare(10, 0)\n"
    outcome = await run(program)
    assert not outcome.ok
    assert outcome.error is not None
    assert outcome.error["type"] == "ZeroDivisionError"
    assert outcome.error["message"] == "division by zero"
    assert outcome.error["line"] == 4
    assert "line 6, in <module>: share(10, 0)" in outcome.error["traceback"]


async def test_integration_errors_reach_the_program_and_other_errors_stay_vague() -> None:
    program = ("try:\n"
               "    mail.send(to='nobody')\n"
               "except IntegrationError as exc:\n"
               "    print('caught:', exc)\n"
               "sheets.open('s').bogus_call_on_purpose()\n")
    outcome = await run(program)
    assert outcome.output == "caught: 'nobody' is not an email address\n"
    assert outcome.error is not None and outcome.error["line"] == 5
    assert "has no action 'bogus_call_on_purpose'; its actions: rows, update" in (
        outcome.error["message"])


async def test_handler_failure_is_generic_and_keeps_secrets() -> None:
    manifest = {"integrations": {"crm": {"actions": {"find": "read"}}}}
    outcome = await run_sandboxed("crm.find('x')\n", manifest=manifest, handler=Sheets(),
                                  limits=FAST, isolation=ISOLATION)
    assert outcome.error is not None
    assert outcome.error["type"] == "IntegrationError"
    assert outcome.error["message"] == "integration failed: RuntimeError"
    assert CANARY not in outcome.model_dump_json()


async def test_a_result_too_large_for_the_channel_reaches_the_program_as_an_error() -> None:
    async def handler(call: EffectCall) -> Any:
        return "x" * (MAX_FRAME + 1)

    manifest = {"integrations": {"archive": {"actions": {"dump": "read"}}}}
    program = ("try:\n    archive.dump()\nexcept IntegrationError as exc:\n    print(exc)\n")
    outcome = await run_sandboxed(program, manifest=manifest, handler=handler, limits=FAST,
                                  isolation=ISOLATION)
    assert outcome.ok, outcome.error
    assert outcome.output.startswith("the result of dump() is too large")


async def test_policy_violation_is_rendered_with_a_caret_and_nothing_runs() -> None:
    sheets = Sheets()
    outcome = await run("sheets.open('s')\nx = sheets.__class__\n", sheets)
    assert outcome.error is not None and outcome.error["type"] == "PolicyViolation"
    assert outcome.error["line"] == 2
    code, caret, rule = outcome.error["message"].splitlines()[:3]
    assert code == "line 2: x = sheets.__class__"
    assert caret.index("^") == code.index("__class__")
    assert rule.startswith("dunder:")
    assert sheets.calls == []


async def test_infinite_loop_is_killed_by_the_wall_clock() -> None:
    outcome = await run("while True:\n    pass\n", limits=SandboxLimits(wall_s=2, cpu_s=30))
    assert not outcome.ok
    assert outcome.killed_reason == "wall clock limit"
    assert 2 <= outcome.seconds < 5


async def test_cancelling_a_run_kills_the_child_at_once() -> None:
    called = asyncio.Event()

    async def handler(call: EffectCall) -> Any:
        called.set()
        return None

    manifest = {"integrations": {"ping": {"actions": {"now": "read"}}}}
    task = asyncio.create_task(run_sandboxed(
        "ping.now()\nwhile True:\n    pass\n", manifest=manifest, handler=handler,
        limits=FAST, isolation=ISOLATION))
    await called.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 1.5)
    assert _sandbox_child_environs() == []


async def test_cpu_limit_stops_a_busy_program() -> None:
    busy = "n = 0\nwhile True:\n    n += 1\n"
    outcome = await run(busy, limits=SandboxLimits(cpu_s=1, wall_s=10))
    assert outcome.killed_reason == "cpu limit"
    assert outcome.error is not None and outcome.error["line"] in (2, 3)


async def test_memory_bomb_is_contained() -> None:
    program = "hoard = []\nwhile True:\n    hoard.append(bytearray(10**7))\n"
    outcome = await run(program, limits=SandboxLimits(memory_mb=256, wall_s=10))
    assert not outcome.ok
    assert outcome.killed_reason == "memory limit"
    assert outcome.error is not None and outcome.error["line"] == 3
    assert "256 MiB" in outcome.error["message"]


ESCAPES = {
    "fork bomb": "import os\nwhile True:\n    os.fork()\n",
    "subprocess": "import subprocess\nsubprocess.run(['id'])\n",
    "socket": "import socket\nsocket.create_connection(('127.0.0.1', 80))\n",
    "open passwd": "print(open('/etc/passwd').read())\n",
    "environ": "import os\nprint(os.environ)\n",
    "dunder import": "__import__('os').system('id')\n",
    "subclasses walk": "print(().__class__.__base__.__subclasses__())\n",
    "module gadget": "import dataclasses\nprint(dataclasses.sys.modules['os'].environ)\n",
    "random private os": "import random\nprint(random._os.environ)\n",
}


@pytest.mark.parametrize("program", ESCAPES.values(), ids=ESCAPES.keys())
async def test_escape_attempts_are_refused(program: str) -> None:
    outcome = await run(program)
    assert not outcome.ok
    assert outcome.error is not None and outcome.error["type"] == "PolicyViolation"
    assert CANARY not in outcome.model_dump_json()


def test_runtime_guards_hold_without_the_static_check() -> None:
    with pytest.raises(ImportError):
        guarded_import("os")
    with pytest.raises(ImportError):
        guarded_import("dataclasses", fromlist=("sys",))
    with pytest.raises(ImportError):
        guarded_import("json", level=1)
    assert guarded_import("json").__name__ == "json"


def test_restricted_builtins_leave_out_the_dangerous_ones() -> None:
    table = Runtime(FdChannel(-1, -1), {}).builtins()
    for name in ("open", "eval", "exec", "compile", "getattr", "setattr", "globals", "locals",
                 "vars", "input", "breakpoint", "memoryview", "help", "exit", "quit"):
        assert name not in table, name
    assert {"len", "sorted", "print", "ValueError", "__build_class__"} <= set(table)
    assert table["__import__"] is guarded_import


async def test_no_secret_reaches_the_child_or_the_outcome() -> None:
    environs: list[bytes] = []

    async def handler(call: EffectCall) -> Any:
        environs.extend(_sandbox_child_environs())
        return NOW if call.integration == "runtime" else "pong"

    program = ("print(ping.now())\n"
               "print(sorted(dir()))\n"
               "print(now(), today())\n")
    manifest = {"integrations": {"ping": {"actions": {"now": "read"}}}}
    outcome = await run_sandboxed(program, manifest=manifest, handler=handler, limits=FAST,
                                  isolation=ISOLATION)
    assert outcome.ok, outcome.error
    assert outcome.output.startswith("pong\n")
    assert CANARY not in outcome.model_dump_json()
    assert environs, "the child process was not found while it waited for its call"
    for environ in environs:
        assert CANARY.encode() not in environ
        keys = {entry.split(b"=", 1)[0] for entry in environ.split(b"\0") if entry}
        # bwrap adds PWD, the sandbox's own working directory.
        assert keys - {b"PWD"} == {b"PYTHONHASHSEED", b"PATH", b"LANG"}


def _sandbox_child_environs() -> list[bytes]:
    """The environments of this process's sandbox children (others may run sandboxes too)."""
    found = []
    parents = _parents()
    for pid in parents:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"workers.sandbox_child" in cmdline and _descends(pid, parents):
                found.append(Path(f"/proc/{pid}/environ").read_bytes())
        except OSError:
            continue
    return found


def _parents() -> dict[int, int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit():
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return parents


def _descends(pid: int, parents: dict[int, int]) -> bool:
    me = os.getpid()
    while pid > 1:
        pid = parents.get(pid, 0)
        if pid == me:
            return True
    return False


async def test_huge_output_is_truncated() -> None:
    program = "for i in range(200000):\n    print('x' * 100)\n"
    outcome = await run(program, limits=SandboxLimits(output_kb=4, wall_s=20))
    assert outcome.ok, outcome.error
    assert outcome.output_truncated
    assert len(outcome.output.encode()) < 4 * 1024 + 100
    assert outcome.output.endswith("[output truncated after 4 KiB]")


async def test_common_idioms_run() -> None:
    program = (
        "from __future__ import annotations\n"
        "from dataclasses import dataclass\n"
        "import datetime, json, random\n"
        "@dataclass\n"
        "class Line:\n"
        "    item: str\n"
        "    amount: float = 0.0\n"
        "class Missing(Exception):\n"
        "    def __init__(self, what):\n"
        "        super().__init__(f'missing {what}')\n"
        "def main():\n"
        "    lines = [Line('a', 1.5), Line('b')]\n"
        "    print(json.dumps([l.item for l in lines]), isinstance(today(), datetime.date))\n"
        "    print({'b', 'a', 'c'} == set('abc'), str(Missing('x')))\n"
        "if __name__ == '__main__':\n"
        "    main()\n"
    )
    outcome = await run(program)
    assert outcome.ok, outcome.error
    assert outcome.output == '["a", "b"] True\nTrue missing x\n'


async def test_hash_order_is_fixed_across_runs() -> None:
    program = "print(list({'alpha', 'beta', 'gamma', 'delta', 'epsilon'}))\n"
    first, second = await asyncio.gather(run(program), run(program))
    assert first.output == second.output


async def test_a_sandbox_that_cannot_start_raises(tmp_path: Path) -> None:
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'no interpreter here' >&2\nexit 3\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    with pytest.raises(SandboxError, match="no interpreter here"):
        await run_sandboxed("x = 1\n", manifest={}, handler=Sheets(), limits=FAST,
                            isolation="rlimits", python=str(fake))
    with pytest.raises(SandboxError, match="unknown sandbox isolation"):
        await run_sandboxed("x = 1\n", manifest={}, handler=Sheets(), limits=FAST,
                            isolation="chroot")


def test_detect_isolation_picks_a_working_level() -> None:
    assert ISOLATION in ("bwrap", "unshare", "rlimits")
    assert detect_isolation("rlimits") == "rlimits"
    assert detect_isolation() == ISOLATION  # cached, same answer


# --- the isolation layer itself, with a plain interpreter inside it --------------------------

CONFINED = [level for level in ("bwrap", "unshare") if _isolation._works(level)]


def _confined(
    level: str, code: str, hide: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory() as workdir:
        argv = _isolation.wrap_command(level, [sys.executable, "-s", "-P", "-c", code],
                                       workdir=workdir, hide=hide, python=sys.executable)
        return subprocess.run(argv, cwd=workdir, env=_isolation.child_env(), capture_output=True,
                              text=True, timeout=20, check=False)


@pytest.fixture
def listener() -> Iterator[int]:
    server = socket.create_server(("127.0.0.1", 0))
    yield server.getsockname()[1]
    server.close()


CONNECT = ("import socket, sys\n"
           "try:\n"
           "    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
           "    print('connected')\n"
           "except OSError as exc:\n"
           "    print('refused', exc)\n")


@pytest.mark.skipif(not CONFINED, reason="neither bwrap nor unshare works on this machine")
@pytest.mark.parametrize("level", CONFINED)
def test_network_is_unreachable_when_confined(level: str, listener: int) -> None:
    assert _confined("rlimits", CONNECT.format(port=listener)).stdout.startswith("connected")
    assert _confined(level, CONNECT.format(port=listener)).stdout.startswith("refused")


@pytest.mark.skipif(not CONFINED, reason="neither bwrap nor unshare works on this machine")
@pytest.mark.parametrize("level", CONFINED)
def test_worker_process_is_invisible_when_confined(level: str) -> None:
    code = f"import os\nprint(os.path.exists('/proc/{os.getpid()}'))\n"
    assert _confined(level, code).stdout.strip() == "False"


@pytest.mark.skipif("bwrap" not in CONFINED, reason="bwrap does not work on this machine")
def test_bwrap_hides_secret_places_but_not_our_packages() -> None:
    with tempfile.TemporaryDirectory(dir="/var/tmp") as home:
        (Path(home) / "secret.txt").write_text(CANARY)
        # The sandbox's /tmp holds its working folder, and the mount points of our packages
        # and venv when the project itself lives under /tmp (a clone in a temporary folder).
        ours = {p.parts[2] for p in (Path(_isolation.__file__).resolve(), Path(sys.prefix))
                if p.parts[:2] == ("/", "tmp")}
        code = ("import os, workers.sandbox_child, pandas\n"
                f"print(os.path.exists({home!r} + '/secret.txt'),"
                f" set(os.listdir('/tmp')) == {ours!r} | {{os.path.basename(os.getcwd())}})\n")
        shown = _confined("bwrap", code)
        hidden = _confined("bwrap", code, hide=(home,))
    assert shown.stdout.split() == ["True", "True"], shown.stderr
    assert hidden.stdout.split() == ["False", "True"], hidden.stderr
