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
runs. Known holes are written as tests too, marked `xfail(strict=True)` with the reason, so that
fixing one turns its test into an unexpected pass that asks for the marker to be removed.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest

from core.errors import SandboxError
from core.protocols import ChatMessage, Completion, TaskKind
from core.settings import Settings, load_settings
from integrations.catalog import Catalog, build_local_catalog
from workers import _isolation
from workers.sandbox import SandboxLimits, SandboxOutcome, detect_isolation, run_sandboxed

CANARY = "canary-" + secrets.token_hex(16)
CANARY_VARIABLE = "SLUICE_CANARY_SECRET"
ISOLATION = detect_isolation()
CONFINED = ISOLATION in ("bwrap", "unshare")
# Under bwrap /tmp is always a fresh tmpfs; elsewhere only hidden_paths hides the home.
VISIBLE_TMP = "/var/tmp" if Path("/var/tmp").is_dir() else None
# The canned model fails like an HTTP client does, with the request URL (and its key) in the text.
LEAKY_PROMPT = "status of the provider"
LEAKY_ERROR = ("Client error '401 Unauthorized' for url "
               "'https://generativelanguage.googleapis.com/v1beta/models?key={key}'")
SURVIVOR = ("rows = sheets.open('signups').rows()\n"
            "print('alive', len(rows), sum(range(10)))\n")
Stop = Literal["policy", "guard", "limit", "error", "inert"]


class CannedModels:
    """A `ModelClient` answering every prompt with canned text (one prompt fails, leakily)."""

    async def complete(
        self, messages: list[ChatMessage], *, kind: TaskKind = "plan",
        json_schema: dict[str, object] | None = None,
    ) -> Completion:
        if messages[-1].content == LEAKY_PROMPT:
            raise RuntimeError(LEAKY_ERROR.format(key=os.environ[CANARY_VARIABLE]))
        return Completion(text="Thanks, we will be in touch.", model="canned")


@dataclass
class World:
    """What the attempts run against: settings with a secret-holding home, a loopback server."""

    home: Path
    settings: Settings
    listener: socket.socket

    @property
    def port(self) -> int:
        return int(self.listener.getsockname()[1])

    def catalog(self) -> Catalog:
        return build_local_catalog(self.settings, CannedModels())

    def limits(self, **changes: Any) -> SandboxLimits:
        base = SandboxLimits.from_settings(self.settings)
        fast = {"cpu_s": 5, "wall_s": 10.0, "memory_mb": 256, "output_kb": 64}
        return base.model_copy(update={**fast, **changes})

    def render(self, program: str) -> str:
        return (program.replace("@HOME@", str(self.home)).replace("@PORT@", str(self.port))
                .replace("@WORKER_PID@", str(os.getpid())))

    def nobody_connected(self) -> bool:
        try:
            connection, _ = self.listener.accept()
        except BlockingIOError:
            return True
        connection.close()
        return False


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    home = Path(tempfile.mkdtemp(prefix="sluice-escapes-", dir=VISIBLE_TMP))
    (home / ".env").write_text(f"SLUICE_MODEL_API_KEY={CANARY}\n")
    (home / "sheets").mkdir()
    (home / "sheets" / "signups.csv").write_text(
        "Name,Email,Budget\nAna,ana@example.com,\nBo,bo@example.com,5000\n")
    with socket.socket() as probe:  # a port nobody listens on: mail fails fast and says so
        probe.bind(("127.0.0.1", 0))
        smtp_port = probe.getsockname()[1]
    settings = load_settings({"SLUICE_HOME": str(home), "SLUICE_SMTP_PORT": str(smtp_port)},
                             env_file=False)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CANARY_VARIABLE, CANARY)
        yield World(home=home, settings=settings, listener=listener)
    listener.close()
    shutil.rmtree(home, ignore_errors=True)


async def run(world: World, program: str, *, isolation: str = ISOLATION,
              **limits: Any) -> SandboxOutcome:
    catalog = world.catalog()
    return await run_sandboxed(world.render(program), manifest=catalog.manifest(),
                               handler=catalog.dispatch, limits=world.limits(**limits),
                               isolation=isolation)


def assert_no_canary(outcome: SandboxOutcome) -> None:
    dumped = outcome.model_dump_json() + repr(outcome)
    assert CANARY not in dumped
    assert CANARY.removeprefix("canary-") not in dumped


async def assert_survives(world: World) -> None:
    outcome = await run(world, SURVIVOR)
    assert outcome.ok, outcome.error
    assert outcome.output == "alive 2 45\n"


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

PAST = "past the policy"
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


def crafted_attribute_program(attribute: str) -> str:
    """A program that reads `random.<attribute>` through a function built from bytecode with
    `types.FunctionType` and `types.CodeType` (reachable as `dataclasses.types`): the static
    policy never sees the attribute name."""
    source = compile(f"lambda o: o.{attribute}", "<x>", "eval")
    code = next(c for c in source.co_consts if isinstance(c, types.CodeType))
    fields = [code.co_argcount, code.co_posonlyargcount, code.co_kwonlyargcount,
              code.co_nlocals, code.co_stacksize, code.co_flags, code.co_code, code.co_consts,
              code.co_names, code.co_varnames, "x", "x", "x", 1, code.co_linetable,
              code.co_exceptiontable]
    return ("import dataclasses, random\n"
            "T = dataclasses.types\n"
            f"peek = T.FunctionType(T.CodeType({', '.join(repr(f) for f in fields)}), {{}})\n"
            "found = peek(random)\n"
            f"print({PAST!r})\n")


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


# --- ways past the policy's reading of the text: each is refused in the process, by the policy or
# a run-time guard (workers/_sandbox_guards.py). A new one found is written here first. ---------

REFUSALS = ("PolicyViolation",)


def _refused(outcome: SandboxOutcome) -> bool:
    error = outcome.error or {}
    message = str(error.get("message", ""))
    in_process = error.get("type") in REFUSALS or "sandbox" in message or "not allowed" in message
    return not outcome.ok and in_process and "ESCAPED" not in outcome.output


ARRAY_INTERFACE = ("import dataclasses, numpy as np\n"
                   "view = {{'data': (id(1), True), 'shape': (64,), 'typestr': '|u1', "
                   "'version': 3}}\n"
                   "print('ESCAPED', bytes(np.asarray({make})))\n")
HOLES = [
    pytest.param("import re\nprint('ESCAPED', re.enum.bltns.open)\n",
                 id="builtins-module-as-re-enum-bltns"),
    pytest.param("import typing\nprint('ESCAPED', typing.operator.attrgetter('__class__')(()))\n",
                 id="operator-attrgetter-as-typing-operator"),
    pytest.param("import fractions\nprint('ESCAPED', fractions.operator.methodcaller('__dir__'))\n",
                 id="operator-as-fractions-operator"),
    pytest.param(crafted_attribute_program("_os").replace(PAST, "ESCAPED"),
                 id="types-codetype-as-dataclasses-types"),
    # Format templates the policy cannot read: every .format and .format_map checks its template.
    pytest.param("template = '{0.__class__.__mro__}'\nprint('ESCAPED', template.format(1))\n",
                 id="format-template-not-a-literal"),
    pytest.param("template = '{0._runtime}'\nprint('ESCAPED', template.format(sheets.open))\n",
                 id="format-private-attribute-in-a-variable"),
    pytest.param("print('ESCAPED', str.format('{0.__class__}', 1))\n",
                 id="format-through-str-format"),
    pytest.param("show = '{0.__class__}'.format\nprint('ESCAPED', show(1))\n",
                 id="format-method-held-as-a-value"),
    pytest.param("template = '{0:{1.__class__}}'\nprint('ESCAPED', template.format(1, 2))\n",
                 id="format-field-in-a-format-spec"),
    # pandas and numpy reaching files, and templates, past the policy.
    pytest.param("import pandas as pd\nwrite = pd.DataFrame({'a': [1]}).to_csv\n"
                 "write('written.csv')\nprint('ESCAPED')\n", id="to-csv-path-through-an-alias"),
    pytest.param("import pandas as pd\npd.DataFrame({'a': [1]}).agg('to_csv', 0, 'written.csv')\n"
                 "print('ESCAPED')\n", id="to-csv-named-by-a-string"),
    pytest.param("import pandas as pd\npaths = {'path_or_buf': 'written.csv'}\n"
                 "pd.DataFrame({'a': [1]}).to_csv(**paths)\nprint('ESCAPED')\n",
                 id="to-csv-path-in-keyword-arguments"),
    pytest.param("import pandas as pd\nunpickle = pd.compat.pickle_compat.loads\n"
                 "print('ESCAPED', unpickle(b'cposix\\nsystem\\n(Vid\\ntR.'))\n",
                 id="pandas-compat-unpickles-bytes"),
    pytest.param("from pandas.compat.pickle_compat import loads\n"
                 "print('ESCAPED', loads(b'cposix\\nsystem\\n(Vid\\ntR.'))\n",
                 id="pandas-compat-unpickler-imported-by-name"),
    pytest.param("import pandas as pd\nframe = pd.DataFrame({'a': [1]})\n"
                 "frame.query(\"a.values.tofile('written') == a\")\nprint('ESCAPED')\n",
                 id="pandas-query-calls-a-file-writer"),
    pytest.param("import pandas as pd\nframe = pd.DataFrame({'a': [1]})\n"
                 "print('ESCAPED', frame.query('a._values == a'))\n",
                 id="pandas-query-reads-a-private-attribute"),
    pytest.param("import pandas as pd\ngroups = pd.DataFrame({'a': [1], 'b': [2]}).groupby('a')\n"
                 "print('ESCAPED', groups['b'].agg('__getattribute__', '_selected_obj'))\n",
                 id="pandas-groupby-reads-attributes-by-name"),
    pytest.param("import pandas as pd\nframe = pd.DataFrame({'a': [1], 'b': [2]})\n"
                 "print('ESCAPED', frame.groupby('a').agg(x=('b', '_python_agg_general')))\n",
                 id="pandas-named-aggregation-by-a-private-name"),
    pytest.param("import pandas as pd\nreader = pd.api.typing.JsonReader\n"
                 "print('ESCAPED', reader('/etc/hostname', orient=None, typ='frame', dtype=None,\n"
                 "      convert_axes=None, convert_dates=True, keep_default_dates=True,\n"
                 "      precise_float=False, date_unit=None, encoding=None, lines=True,\n"
                 "      chunksize=None, compression=None, nrows=None))\n",
                 id="pandas-json-reader-reads-a-file"),
    pytest.param("import pandas as pd\nx = 1\n"
                 "print('ESCAPED', pd.core.computation.expr.Expr('@x.real'))\n",
                 id="pandas-core-expression-past-the-eval-guard"),
    # numpy reads memory at any address an object's __array_interface__ names.
    pytest.param(ARRAY_INTERFACE.format(make="type('Peek', (), {'__array_interface__': view})()"),
                 id="array-interface-through-type"),
    pytest.param(ARRAY_INTERFACE.format(
        make="dataclasses.make_dataclass('Peek', ['__array_interface__'])(view)"),
        id="array-interface-through-make-dataclass"),
    pytest.param("import numpy as np, pandas as pd\n"
                 "pd.api.extensions.register_dataframe_accessor('__array_interface__')(dict)\n"
                 "print('ESCAPED', np.asarray(pd.DataFrame()))\n",
                 id="array-interface-through-a-pandas-accessor"),
    pytest.param("import numpy as np\nclass Peek:\n    @property\n"
                 "    def __array_interface__(self):\n"
                 "        return {'data': (id(1), True), 'shape': (8,), 'typestr': '|u1'}\n"
                 "print('ESCAPED', np.asarray(Peek()))\n", id="array-interface-as-a-property"),
    pytest.param("import numpy as np\nprint('ESCAPED', np.load('missing.npy', None, True))\n",
                 id="numpy-load-positional-allow-pickle"),
    pytest.param("import numpy as np\nnp.save('written', np.arange(3))\nprint('ESCAPED')\n",
                 id="numpy-save-writes-a-file"),
    pytest.param("import numpy as np\nnp.array(['\\nimport os\\n']).dump('x.pth')\n"
                 "print('ESCAPED')\n", id="numpy-dump-writes-a-pickle-file"),
    pytest.param("import numpy as np\nwrite = np.float64.dump\nwrite(np.float64(1), 'x.pkl')\n"
                 "print('ESCAPED')\n", id="numpy-scalar-dump-held-as-a-value"),
    pytest.param("import pandas as pd\nframe = pd.DataFrame({'a': [1]})\n"
                 "template = frame.style.env.from_string('{{ cycler.__init__.__globals__ }}')\n"
                 "print('ESCAPED', template.render())\n",
                 id="jinja-template-through-dataframe-style"),
    pytest.param("import pandas as pd\nprint('ESCAPED', pd.DataFrame({'a': [1]}).agg('style'))\n",
                 id="dataframe-style-named-by-a-string"),
    pytest.param("import pandas as pd\nprint('ESCAPED', pd.DataFrame({'a': [1]}).to_latex())\n",
                 id="jinja-imported-by-pandas-to-latex"),
]


# Modules reached as attributes of allowed ones (`re.enum`, `typing.operator`,
# `dataclasses.types`) are refused at run time by the sandbox's module wrapper.
@pytest.mark.parametrize("program", HOLES)
async def test_policy_refuses_the_ways_past_it(world: World, program: str) -> None:
    outcome = await run(world, program, memory_mb=1024)
    assert_no_canary(outcome)
    assert _refused(outcome), outcome.output + str(outcome.error)


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
