"""Escape attempts against the sandbox (ARCHITECTURE.md, "The sandbox holds no secrets").

Every attempt is a small program run through `run_sandboxed`: a real child process under the
strongest isolation this machine has, served by a handler that dispatches to a real local catalog
(sheets in a temporary folder, mail, and `ai` on a canned model). Meanwhile a canary secret sits in
this process's environment and in a `.env` file in the Sluice home, which `SandboxLimits` hides from
the child. The home lives under /var/tmp, not /tmp, so that only `hidden_paths` hides it.

Each attempt must be stopped, and the test says by what:

- "policy": `codegen.policy` refuses the program before anything runs;
- "guard": a runtime guard in the child or the worker refuses it (restricted builtins, pandas
  expression guard, the catalog's checks of calls arriving over RPC);
- "limit": a resource limit stops it (memory, CPU, wall clock, output, file size, threads);
- "error": it fails by itself with a clear error (recursion depth);
- "inert": it runs and learns nothing (what it can see holds no secrets);
- "isolation": it gets past the policy and the guards, and the process isolation contains it.

For every attempt the canary appears nowhere in the outcome, and afterwards a normal program still
runs. Ways past the static policy, each refused in the process by a run-time guard, are in
test_escapes_past_policy.py; the world both run in is tests/_escape_world.py. A known hole is
written as a test too, marked `xfail(strict=True)` with the reason, so that fixing it turns its
test into an unexpected pass that asks for the marker to be removed.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest

from core.errors import SandboxError
from tests._escape_world import (
    CANARY,
    CANARY_VARIABLE,
    CONFINED,
    ISOLATION,
    LEAKY_PROMPT,
    PAST,
    World,
    assert_no_canary,
    assert_survives,
    crafted_attribute_program,
    run,
)
from workers import _isolation
from workers.sandbox import SandboxOutcome, detect_isolation

Stop = Literal["policy", "guard", "limit", "error", "inert"]

def test_the_canary_is_where_secrets_live(world: World) -> None:
    """The premise of every test below: the secret is there to be found, and hidden."""
    assert os.environ[CANARY_VARIABLE] == CANARY
    assert CANARY in (world.home / ".env").read_text()
    assert str(world.home.resolve()) in world.limits().hidden_paths
    assert world.nobody_connected()
    with socket.create_connection(("127.0.0.1", world.port), timeout=2):
        pass
    assert not world.nobody_connected()  # the server does notice a connection


# --- attempts written as a model might write them: stopped before they reach the OS ----------


@dataclass(frozen=True)
class Attempt:
    """A program and what stops it: `expect` is the policy rule, "Type: message fragment" of the
    error, the killed_reason (or "output truncated"), or a fragment of an inert program's output."""

    program: str
    stop: Stop
    expect: str
    limits: dict[str, Any] = field(default_factory=dict)


def attempt(program: str, stop: Stop, expect: str, *, id: str, **limits: Any) -> Any:
    return pytest.param(Attempt(program, stop, expect, limits), id=id)


PANDAS = {"memory_mb": 1024}
TRY_EXCEPT = "try:\n    1 / 0\nexcept Exception as exc:\n"

ATTEMPTS = [
    # The environment, through every import trick.
    attempt("import os\nprint(os.environ, os.getenv('SLUICE_CANARY_SECRET'))\n", "policy",
            "import", id="environ-os-environ-and-getenv"),
    attempt("print(__import__('os').environ)\n", "policy", "dunder", id="environ-dunder-import"),
    attempt("import importlib\nprint(importlib.import_module('os').environ)\n", "policy",
            "import", id="environ-importlib"),
    attempt("import sys\nprint(sys.modules['os'].environ)\n", "policy", "import",
            id="environ-sys-modules"),
    attempt("import random\nprint(random._os.environ)\n", "policy", "private",
            id="environ-random-private-os"),
    attempt("import dataclasses\nprint(dataclasses.sys.modules['os'].environ)\n", "policy",
            "forbidden-attribute", id="environ-dataclasses-sys"),
    attempt("import typing\nprint(typing.sys.modules['os'].environ)\n", "policy",
            "forbidden-attribute", id="environ-typing-sys"),
    attempt("import collections.abc\nprint(collections.abc.sys.modules['os'].environ)\n",
            "policy", "forbidden-attribute", id="environ-collections-abc-sys"),
    attempt("if False:\n    getattr = None\nimport random\nprint(getattr(random, '_os').environ)\n",
            "guard", "NameError: getattr", id="environ-getattr-bound-name-trick"),
    # Files.
    attempt("print(open('/etc/passwd').read())\n", "policy", "forbidden-name",
            id="file-open-etc-passwd"),
    attempt("import io\nprint(io.open('/proc/self/environ').read())\n", "policy", "import",
            id="file-io-open-self-environ"),
    attempt("import pathlib\nprint(pathlib.Path('/proc/1/environ').read_bytes())\n", "policy",
            "import", id="file-pathlib-init-environ"),
    attempt("print(open('/proc/@WORKER_PID@/environ').read())\n", "policy", "forbidden-name",
            id="file-open-worker-environ"),
    attempt("print(open('@HOME@/.env').read())\n", "policy", "forbidden-name",
            id="file-open-home-env"),
    attempt("if False:\n    open = None\nprint(open('@HOME@/.env').read())\n", "guard",
            "NameError: open", id="file-open-bound-name-trick"),
    attempt("print(sheets.open('../.env').rows())\n", "guard",
            "IntegrationError: There is no sheet '../.env'", id="file-sheet-path-traversal"),
    # Network and processes.
    attempt("import socket\nsocket.create_connection(('127.0.0.1', @PORT@))\n", "policy",
            "import", id="socket-loopback"),
    attempt("import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=2)\n", "policy",
            "import", id="socket-public-ip"),
    attempt("import subprocess\nprint(subprocess.run(['env'], capture_output=True).stdout)\n",
            "policy", "import", id="process-subprocess"),
    attempt("import os\nos.system('cat @HOME@/.env')\n", "policy", "import",
            id="process-os-system"),
    attempt("import pty\npty.spawn('/bin/sh')\n", "policy", "import", id="process-pty"),
    attempt("import ctypes\nprint(ctypes.CDLL(None).getenv(b'SLUICE_CANARY_SECRET'))\n",
            "policy", "import", id="ctypes-getenv"),
    # Introspection.
    attempt("print(().__class__.__bases__[0].__subclasses__())\n", "policy", "dunder",
            id="intro-subclasses-walk"),
    attempt("import json\nprint(json.dumps.__globals__['__builtins__'])\n", "policy", "dunder",
            id="intro-function-globals"),
    attempt("def gen():\n    yield 1\ng = gen()\nprint(g.gi_frame.f_back.f_globals)\n",
            "policy", "introspection", id="intro-generator-gi-frame"),
    attempt(TRY_EXCEPT + "    print(exc.__traceback__.tb_frame.f_globals)\n", "policy",
            "dunder", id="intro-exception-traceback-frame"),
    attempt("async def job():\n    pass\nco = job()\nprint(co.cr_frame.f_globals)\n", "policy",
            "introspection", id="intro-coroutine-cr-frame"),
    attempt("g = (i for i in range(3))\nprint(g.gi_code.co_consts, g.gi_yieldfrom)\n",
            "policy", "introspection", id="intro-generator-attributes"),
    attempt("print(__builtins__['open'])\n", "policy", "dunder", id="intro-builtins-lookup"),
    attempt("print(type.__subclasses__(object))\n", "policy", "dunder",
            id="intro-type-subclasses"),
    attempt("print(object().__reduce_ex__(2))\n", "policy", "dunder", id="intro-reduce-ex"),
    attempt("print(getattr((), '__cl' + 'ass__'))\n", "policy", "forbidden-name",
            id="intro-getattr-computed-name"),
    attempt("print(vars())\n", "policy", "forbidden-name", id="intro-vars"),
    attempt("names = dir()\nfor name in dir(sheets):\n    print(name, hasattr(sheets, name))\n"
            "print(names)\n", "inert", "'each'", id="intro-dir-walk"),
    attempt("print(f'{sheets!r} {each!r} {now!r}')\n", "inert", "<integration sheets>",
            id="intro-fstring-repr"),
    # Format strings.
    attempt("print('{0.__class__}'.format(1))\n", "policy", "dunder", id="format-attribute"),
    attempt("def f():\n    pass\nprint('{x.__init__.__globals__}'.format(x=f))\n", "policy",
            "dunder", id="format-globals"),
    attempt("print('{x.__class__.__mro__}'.format_map({'x': 1}))\n", "policy", "dunder",
            id="format-map"),
    attempt("print(f'{sheets.__class__}')\n", "policy", "dunder", id="format-fstring-dunder"),
    # pandas and numpy.
    attempt("import pandas as pd\ndf = pd.DataFrame({'a': [1]})\n"
            "print(df.query('@df.__class__'))\n", "guard",
            "ValueError: not allowed in the sandbox", id="pandas-query-dunder", **PANDAS),
    attempt("import pandas as pd\nname = '__getattribute__'\n"
            "print(pd.Series([1]).agg(name, 0, '__class__'))\n", "guard",
            "ValueError: cannot be used as a function name", id="pandas-agg-by-name", **PANDAS),
    attempt("import pandas as pd\nprint(pd.read_csv('/etc/passwd'))\n", "policy",
            "forbidden-attribute", id="pandas-read-csv"),
    attempt("import pandas as pd\npd.DataFrame({'a': [1]}).to_pickle('x.pkl')\n", "policy",
            "forbidden-attribute", id="pandas-to-pickle"),
    attempt("import pandas as pd\nprint(pd.read_pickle('x.pkl'))\n", "policy",
            "forbidden-attribute", id="pandas-read-pickle"),
    attempt("import pandas as pd\ndf = pd.DataFrame({'a': [1]})\nprint(df.eval('a + 1'))\n",
            "policy", "forbidden-attribute", id="pandas-eval"),
    attempt("import pandas as pd\npd.DataFrame({'a': [1]}).to_csv('@HOME@/x.csv')\n", "policy",
            "file", id="pandas-to-csv-path"),
    attempt("import numpy as np\nprint(np.load('x.npy', allow_pickle=True))\n", "policy",
            "file", id="numpy-load-allow-pickle"),
    attempt("import numpy as np\nprint(np.fromfile('/proc/self/environ', dtype=np.uint8))\n",
            "policy", "forbidden-attribute", id="numpy-fromfile"),
    # Resources.
    attempt("import os\nwhile True:\n    os.fork()\n", "policy", "import", id="fork-bomb"),
    attempt("x = 'x' * 10**10\n", "limit", "memory limit", id="memory-bomb-string"),
    attempt("hoard = []\nwhile True:\n    hoard.append('x' * 10**6)\n", "limit", "memory limit",
            id="memory-bomb-growing-list"),
    attempt("while True:\n    pass\n", "limit", "wall clock limit", id="infinite-loop",
            wall_s=2.0, cpu_s=30),
    attempt("n = 0\nwhile True:\n    n += 1\n", "limit", "cpu limit", id="cpu-burn", cpu_s=1,
            wall_s=8.0),
    attempt("chunk = 'x' * 2**20\nfor _ in range(100):\n    print(chunk)\n", "limit",
            "output truncated", id="huge-output-100mb"),
    attempt("def down(n):\n    return down(n + 1)\ndown(0)\n", "error",
            "RecursionError: maximum recursion depth exceeded", id="deep-recursion"),
    attempt("with open('big.bin', 'w') as f:\n    f.write('x' * 10**9)\n", "policy",
            "forbidden-name", id="huge-file-open"),
    attempt("import threading\nwhile True:\n    threading.Thread(target=print).start()\n",
            "policy", "import", id="threads-in-a-loop"),
    attempt("import sys\nsys.setrecursionlimit(10**6)\n", "policy", "import",
            id="setrecursionlimit"),
]


def assert_stopped(outcome: SandboxOutcome, attempt: Attempt) -> None:
    """`outcome` shows that `attempt` was stopped the way it says."""
    error = outcome.error or {}
    if attempt.stop == "inert":
        assert outcome.ok, error
        assert attempt.expect in outcome.output
        return
    if attempt.stop == "limit" and attempt.expect == "output truncated":
        assert outcome.output_truncated
        assert len(outcome.output.encode()) < 65 * 1024 + 100
        return
    assert not outcome.ok
    if attempt.stop == "policy":
        assert error.get("type") == "PolicyViolation", error
        assert f"\n{attempt.expect}: " in error["message"], error["message"]
        assert outcome.calls == 0 and outcome.output == ""
    elif attempt.stop == "limit":
        assert outcome.killed_reason == attempt.expect, error
    else:
        kind, fragment = attempt.expect.split(": ", 1)
        assert error.get("type") == kind, error
        assert fragment in error["message"], error["message"]


@pytest.mark.parametrize("attempt", ATTEMPTS)
async def test_attempt_is_stopped_and_leaks_nothing(world: World, attempt: Attempt) -> None:
    outcome = await run(world, attempt.program, **attempt.limits)
    assert_stopped(outcome, attempt)
    assert_no_canary(outcome)
    assert world.nobody_connected()
    await assert_survives(world)


# --- attempts that get past the policy and the guards: the isolation must hold -----------------
#
# Each starts from a way past the in-process checks and prints "past the policy" once there.
# Should the policy learn to refuse that way, the attempt counts as stopped by the policy.

# `enum` (reachable as `re.enum`) imports `builtins as bltns`: the real builtins module.
VIA_BUILTINS = (
    "import re\n"
    "b = re.enum.bltns\n"
    "imp = b.getattr(b, '__import__')\n"
    "os = imp('os')\n"
    "def attempt(label, fn):\n"
    "    try:\n"
    "        print(label, 'GOT', fn())\n"
    "    except Exception as exc:\n"
    "        print(label, 'DENIED', repr(exc))\n"
    f"print({PAST!r})\n"
)
# `typing` imports `operator`: attrgetter reads attributes named by strings, dunders included.
VIA_ATTRGETTER = (
    "import typing\n"
    "peek = typing.operator.attrgetter\n"
    "classes = peek('__class__.__base__.__subclasses__')(())()\n"
    "wrap_close = [c for c in classes if 'os._wrap_close' in str(c)][0]\n"
    "os_globals = peek('__init__.__globals__')(wrap_close)\n"
    f"print({PAST!r})\n"
)
FORK_MARKER = "sluice-escape-fork-" + secrets.token_hex(4)


def pickle_program(function: str, argument: str) -> str:
    """Write a protocol-0 pickle calling `function`(argument) ("module.name") with an aliased
    `to_csv` (the path check looks only at `x.to_csv(path)`), then load it with a positional
    `allow_pickle`: unpickling imports the module and makes the call."""
    module, name = function.split(".")
    lines = [f"c{module}", name, f"(V{argument}", "tR."]
    return ("import pandas as pd, numpy as np\n"
            f"frame = pd.DataFrame({{'c': {lines!r}}})\n"
            "write = frame.to_csv\n"
            "write('p.pkl', header=False, index=False)\n"
            f"print({PAST!r})\n"
            "print('loaded', np.load('p.pkl', None, True))\n")


@dataclass(frozen=True)
class Breakout:
    """A program past the in-process checks, and the output (or error) fragments that show the
    isolation or a limit stopped what it tried. `fails`: the run must end unsuccessfully."""

    program: str
    expect: tuple[str, ...] = ()
    fails: bool = False
    limits: dict[str, Any] = field(default_factory=dict)


def breakout(program: str, *expect: str, id: str, fails: bool = False, **limits: Any) -> Any:
    return pytest.param(Breakout(program, expect, fails, limits), id=id)


BREAKOUTS = [
    breakout(VIA_BUILTINS + "print('getenv', os.getenv('SLUICE_CANARY_SECRET'))\n"
             "print('keys', sorted(os.environ))\n", "getenv None", id="environ"),
    breakout(VIA_BUILTINS + "for pid in ('self', '1', str(os.getppid()), '@WORKER_PID@'):\n"
             "    path = '/proc/' + pid + '/environ'\n"
             "    attempt('environ of ' + pid, lambda: b.open(path).read())\n"
             "attempt('pids', lambda: sorted(p for p in os.listdir('/proc') if p.isdigit()))\n",
             "environ of self GOT", "environ of @WORKER_PID@ DENIED FileNotFoundError",
             id="proc-environ"),
    breakout(VIA_BUILTINS + "attempt('home', lambda: b.open('@HOME@/.env').read())\n"
             "attempt('listing', lambda: os.listdir('@HOME@'))\n",
             "home DENIED FileNotFoundError", "listing GOT []", id="home-env-file"),
    breakout(VIA_BUILTINS + "attempt('passwd', lambda: b.open('/etc/passwd').read()[:5])\n"
             "attempt('write', lambda: b.open('/etc/sluice-escape', 'w'))\n",
             "passwd GOT root:", "write DENIED OSError(30", id="etc-read-only"),
    breakout(VIA_BUILTINS + "socket = imp('socket')\n"
             "attempt('loopback', lambda: socket.create_connection(('127.0.0.1', @PORT@), 2))\n",
             "loopback DENIED", id="socket-loopback"),
    breakout(VIA_BUILTINS + "socket = imp('socket')\n"
             "attempt('public', lambda: socket.create_connection(('1.1.1.1', 80), 2))\n",
             "public DENIED OSError(101, 'Network is unreachable')", id="socket-public-ip"),
    breakout(VIA_BUILTINS + "run = imp('subprocess').run\n"
             "shell = 'env; cat /proc/[0-9]*/environ; cat @HOME@/.env'\n"
             "done = run(['/bin/sh', '-c', shell], capture_output=True, text=True)\n"
             "print(done.stdout, done.stderr)\n", "No such file or directory",
             id="subprocess-shell"),
    breakout(VIA_BUILTINS + "print('status', os.system('cat @HOME@/.env'))\n", "status 256",
             id="os-system"),
    breakout(VIA_BUILTINS + "pid, fd = imp('pty').fork()\n"
             "if pid == 0:\n"
             "    try:\n"
             "        os.execv('/bin/sh', ['sh', '-c', 'cat @HOME@/.env; env'])\n"
             "    finally:\n"
             "        b.getattr(os, '_exit')(0)\n"
             "seen = b''\n"
             "while True:\n"
             "    try:\n"
             "        chunk = os.read(fd, 4096)\n"
             "    except OSError:\n"
             "        break\n"
             "    if not chunk:\n"
             "        break\n"
             "    seen += chunk\n"
             "print(seen)\n", "No such file or directory", id="pty-fork"),
    breakout(VIA_BUILTINS + "ctypes = imp('ctypes')\n"
             "libc = ctypes.CDLL(None)\n"
             "libc.getenv.restype = ctypes.c_char_p\n"
             "print('ctypes getenv', libc.getenv(b'SLUICE_CANARY_SECRET'))\n",
             "ctypes getenv None", id="ctypes-getenv"),
    breakout(VIA_ATTRGETTER + "print('keys', sorted(os_globals['environ']))\n"
             "print('getenv', os_globals['getenv']('SLUICE_CANARY_SECRET'))\n",
             "getenv None", id="attrgetter-subclasses-to-os"),
    breakout("import random\ntemplate = '{0.__func__.__globals__[_os].environ}'\n"
             f"found = template.format(random.shuffle)\nprint({PAST!r})\nprint(found)\n",
             "environ({", id="format-template-in-a-variable"),
    breakout("import pandas as pd\nenv = pd.DataFrame({'a': [1]}).style.env\n"
             f"print({PAST!r})\n"
             "shell = 'cat @HOME@/.env; cat /proc/@WORKER_PID@/environ'\n"
             "print(env.from_string('{{ cycler.__init__.__globals__.os.popen(shell).read() }}')"
             ".render(shell=shell))\n", id="jinja-template-runs-a-shell", memory_mb=1024),
    breakout(crafted_attribute_program("_os") + "print(sorted(found.environ))\n"
             "print('getenv', found.getenv('SLUICE_CANARY_SECRET'))\n", "getenv None",
             id="bytecode-crafted-function"),
    breakout(pickle_program("posix.listdir", "@HOME@"), "loaded []", id="pickle-lists-the-home",
             memory_mb=1024),
    breakout("import pandas as pd\nframe = pd.DataFrame({'c': ['x' * 1000] * 1000})\n"
             "write = frame.to_csv\n"
             f"print({PAST!r})\n"
             "for _ in range(100):\n"
             "    write('big.csv', mode='a', header=False, index=False)\n",
             "File too large", fails=True, id="huge-file", memory_mb=1024),
    breakout(VIA_BUILTINS + "threading = imp('threading')\n"
             "stop = threading.Event()\n"
             "while True:\n"
             "    threading.Thread(target=stop.wait).start()\n",
             "can't start new thread", fails=True, id="threads-in-a-loop"),
    breakout(VIA_BUILTINS + "imp('sys').setrecursionlimit(10**6)\n"
             "def down(n):\n"
             "    return down(n + 1)\n"
             "down(0)\n", fails=True, id="setrecursionlimit-deep-recursion", wall_s=2.0),
    breakout(VIA_BUILTINS + "forked = 0\n"
             "for _ in range(20):\n"
             "    if os.fork() == 0:\n"
             "        try:\n"
             f"            os.execv('/bin/sh', ['sh', '-c', 'sleep 60; : {FORK_MARKER}'])\n"
             "        finally:\n"
             "            b.getattr(os, '_exit')(0)\n"
             "    forked += 1\n"
             "print('forked', forked)\n"
             "imp('time').sleep(0.3)\n"
             "print('output before the wall clock is flushed on the next write')\n"
             "while True:\n"
             "    pass\n", "forked 20", fails=True, id="fork-and-linger", wall_s=3.0),
    breakout(VIA_ATTRGETTER + "runtime = peek('_runtime')(sheets.open)\n"
             "forged = [('sheets', 'rows', ('sheets', 'Sheet', '../.env')),\n"
             "          ('sheets', 'path_of', None), ('sheets', '__init__', None),\n"
             "          ('vault', 'read', None)]\n"
             "for integration, action, handle in forged:\n"
             "    try:\n"
             "        print('GOT', runtime.call(integration, action, (), {}, handle))\n"
             "    except IntegrationError as exc:\n"
             "        print('DENIED', exc)\n",
             "DENIED There is no sheet '../.env'", "DENIED sheets has no action 'path_of'",
             "DENIED sheets has no action '__init__'", "DENIED There is no integration 'vault'",
             id="forged-rpc-calls"),
]


def assert_contained(outcome: SandboxOutcome, breakout: Breakout, world: World) -> None:
    error = outcome.error or {}
    if error.get("type") == "PolicyViolation" or PAST not in outcome.output:
        assert not outcome.ok  # the way past the policy was closed: stopped before it began
        return
    seen = outcome.output + str(error.get("message", ""))
    for fragment in breakout.expect:
        assert world.render(fragment) in seen, seen[-2000:]
    if breakout.fails:
        assert not outcome.ok, seen[-2000:]
    else:
        assert outcome.ok, error


@pytest.mark.skipif(not CONFINED, reason="no process isolation here: a breakout would reach "
                    "the host (and the network)")
@pytest.mark.parametrize("breakout", BREAKOUTS)
async def test_breakout_is_contained_and_leaks_nothing(world: World, breakout: Breakout) -> None:
    outcome = await run(world, breakout.program, **breakout.limits)
    assert_contained(outcome, breakout, world)
    assert_no_canary(outcome)
    assert world.nobody_connected()
    assert await _gone(FORK_MARKER), "a forked process outlived its sandbox"
    await assert_survives(world)


async def _gone(marker: str, within_s: float = 3.0) -> bool:
    """Whether no process holding `marker` is left, waiting briefly for killed ones to exit."""
    deadline = asyncio.get_running_loop().time() + within_s
    while _processes_with(marker):
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def _processes_with(marker: str) -> list[str]:
    """Live processes whose command line holds `marker` (zombies have none)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker.encode() in (entry / "cmdline").read_bytes():
                found.append(entry.name)
        except OSError:
            continue
    return found


WEAKER = [level for level in ("unshare", "rlimits") if level != ISOLATION]


def _works(level: str) -> bool:
    try:
        return detect_isolation(level) == level
    except SandboxError:
        return False


def _level_param(level: str) -> Any:
    marks = [pytest.mark.skipif(not _works(level), reason=f"{level} does not work here")]
    if level == "rlimits":
        marks.append(pytest.mark.xfail(strict=True, reason="with rlimits only, the child shares "
                                       "the worker's /proc and filesystem: use bwrap or unshare"))
    return pytest.param(level, marks=marks)


@pytest.mark.parametrize("level", [_level_param(level) for level in WEAKER])
def test_weaker_isolation_still_hides_the_home_and_the_worker(world: World, level: str) -> None:
    """As if a program got past every in-process guard: plain Python under `level` alone."""
    code = world.render("import os\nfor path in ('@HOME@/.env', '/proc/@WORKER_PID@/environ'):\n"
                      "    try:\n        print(open(path).read())\n"
                      "    except OSError as exc:\n        print('denied', path, exc)\n")
    with tempfile.TemporaryDirectory() as workdir:
        argv = _isolation.wrap_command(level, [sys.executable, "-s", "-P", "-c", code],
                                       workdir=workdir, hide=[str(world.home)],
                                       python=sys.executable)
        done = subprocess.run(argv, cwd=workdir, env=_isolation.child_env(), text=True,
                              capture_output=True, timeout=30, check=False)
    assert done.stdout.count("denied") == 2, done.stdout + done.stderr
    assert CANARY not in done.stdout + done.stderr


async def test_a_failing_integration_does_not_hand_its_secret_to_the_program(
        world: World) -> None:
    program = (f"try:\n    ai.generate({LEAKY_PROMPT!r})\n"
               "except IntegrationError as exc:\n    print('caught:', exc)\n")
    outcome = await run(world, program)
    assert outcome.ok, outcome.error
    assert outcome.output.startswith("caught: ")
    assert_no_canary(outcome)
