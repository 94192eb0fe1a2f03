"""The sandbox child's run-time guards (workers/_sandbox_guards.py) as a program meets them:
library code keeps working under the program's restricted import, format templates still format,
pandas' writers still return text, and what gets refused says why. Real child processes, as in
test_sandbox.py; the ways past the policy they close are in test_escapes.py.
"""

from __future__ import annotations

import builtins
import importlib
import json
import pickle
import subprocess
import sys
import types
import warnings
from typing import Any

import numpy as np
import pandas as pd
import pytest

from codegen.policy import ALLOWED_MODULES, attribute_problem
from integrations.base import EffectCall
from workers import _sandbox_guards
from workers._sandbox_guards import PROGRAM_TYPES, check_template, read_attribute
from workers._sandbox_namespace import module_allowed
from workers._state import encode_state
from workers.sandbox import SandboxLimits, SandboxOutcome, detect_isolation, run_sandboxed

ISOLATION = detect_isolation()
LIMITS = SandboxLimits(cpu_s=20, wall_s=30, memory_mb=1024, output_kb=64)
MANIFEST: dict[str, Any] = {"integrations": {"crm": {"actions": {"lookup": "read"}}}}


async def lookup(call: EffectCall) -> Any:
    return {"name": call.args[0], "tier": "gold"}


async def run(program: str, **options: Any) -> SandboxOutcome:
    return await run_sandboxed(program, manifest=MANIFEST, handler=lookup, limits=LIMITS,
                               isolation=ISOLATION, **options)


async def output_of(program: str, **options: Any) -> str:
    """What `program` prints; it must succeed."""
    outcome = await run(program, **options)
    assert outcome.ok, outcome.error
    return outcome.output


async def test_library_code_imports_its_own_internals_under_the_program() -> None:
    # datetime.strptime imports _strptime, ndarray.mean numpy._core._methods, from C code that
    # runs under the program's frame and so through its restricted __import__.
    program = ("import datetime\n"
               "print(datetime.datetime.strptime('2026-11-27 09:30', '%Y-%m-%d %H:%M'))\n"
               "import numpy as np\n"
               "print(np.array([1, 2, 3, 4]).mean(), np.std([1, 3]))\n"
               "import decimal\n"
               "print(decimal.Decimal('1.10') + decimal.Decimal('2.205'))\n")
    assert await output_of(program) == "2026-11-27 09:30:00\n2.5 1.0\n3.305\n"


async def test_format_templates_held_in_variables_still_format() -> None:
    program = ("template = 'Dear {name}, your {plan} plan renews on {when:%d %b}.'\n"
               "import datetime\n"
               "when = datetime.date(2026, 12, 1)\n"
               "print(template.format(name='Ana', plan='gold', when=when))\n"
               "print('{name} owes {amount:>{width}.2f}'.format_map({'name': 'Bo', "
               "'amount': 3.5, 'width': 7}))\n"
               "print(list(map(str.format, ['{}!', '{0[tier]}'], ['hey', crm.lookup('c')])))\n"
               "say = '{0} and {1}'.format\n"
               "print(say('this', 'that'))\n")
    assert await output_of(program) == (
        "Dear Ana, your gold plan renews on 01 Dec.\n"
        "Bo owes    3.50\n['hey!', 'gold']\nthis and that\n")


async def test_pandas_writers_return_text_without_a_path() -> None:
    program = ("import pandas as pd\n"
               "frame = pd.DataFrame({'name': ['Ana', 'Bo'], 'amount': [1.5, 2]})\n"
               "print(frame.to_csv(index=False), end='')\n"
               "print(frame.to_json(orient='records'))\n"
               "print(frame['amount'].to_string(index=False))\n"
               "print(frame.to_html(index=False).count('<td>'))\n"
               "result = frame\n")
    outcome = await run(program)
    assert outcome.ok, outcome.error
    assert outcome.output == ('name,amount\nAna,1.5\nBo,2.0\n'
                              '[{"name":"Ana","amount":1.5},{"name":"Bo","amount":2.0}]\n'
                              '1.5\n2.0\n4\n')
    assert outcome.table_csv == "name,amount\nAna,1.5\nBo,2.0\n"


async def test_pandas_queries_still_call_column_methods() -> None:
    program = ("import pandas as pd\n"
               "frame = pd.DataFrame({'name': ['Ana', 'Bo', 'Cy'], 'amount': [1.5, 20, 300],\n"
               "                      'when': pd.to_datetime(['2026-01-05', '2025-12-31',\n"
               "                                              '2026-03-01'])})\n"
               "limit = 10\n"
               "print(frame.query(\"name.str.contains('y') or amount < 2\")['name'].tolist())\n"
               "print(frame.query('when.dt.year == 2026 and amount > @limit')['name'].tolist())\n"
               "print(frame.query('amount.between(1.0, 1e2)')['name'].tolist())\n")
    assert await output_of(program) == "['Ana', 'Cy']\n['Cy']\n['Ana', 'Bo']\n"


async def test_aggregations_by_name_still_work() -> None:
    program = ("import pandas as pd\n"
               "frame = pd.DataFrame({'team': ['a', 'a', 'b'], 'amount': [1, 3, 5]})\n"
               "groups = frame.groupby('team')\n"
               "print(groups['amount'].agg(['sum', 'max']).to_dict('list'))\n"
               "print(groups.agg(total=('amount', 'sum'), top=('amount', 'max')).to_dict())\n"
               "print(groups.agg({'amount': 'mean'})['amount'].tolist(),\n"
               "      groups['amount'].transform('sum').tolist())\n"
               "print(frame['amount'].rolling(2).agg('sum').tolist()[1:],\n"
               "      frame.agg('sum')['amount'])\n")
    assert await output_of(program) == (
        "{'sum': [4, 5], 'max': [3, 5]}\n"
        "{'total': {'a': 4, 'b': 5}, 'top': {'a': 3, 'b': 5}}\n"
        "[2.0, 5.0] [4, 4, 5]\n[4.0, 8.0] 9\n")


EVERYDAY = """\
import decimal, functools
import pandas as pd
frame = pd.DataFrame([{"name": "Ana", "team": "x", "amount": 10, "when": "2026-01-05"},
                      {"name": "Bo", "team": "y", "amount": None, "when": "2026-02-10"},
                      {"name": "Cy", "team": "x", "amount": 30, "when": "2026-02-11"}])
frame["when"] = pd.to_datetime(frame["when"])
frame["amount"] = frame["amount"].fillna(0)
print(frame.pivot_table(index="team", values="amount", aggfunc="mean").to_dict())
print(frame.set_index("when").resample("MS")["amount"].sum().tolist())
print(pd.cut(frame["amount"], bins=[-1, 5, 50], labels=["low", "high"]).astype(str).tolist())
leads = pd.DataFrame({"team": ["x"], "lead": ["Zed"]})
print(frame.merge(leads, on="team", how="left")["lead"].fillna("-").tolist())
print([r.name for r in frame.itertuples()], frame["when"].dt.strftime("%b").tolist())
print(frame["amount"].astype(int).map("{:03d}".format).tolist())
ahead = pd.api.indexers.FixedForwardWindowIndexer(window_size=2)
print(frame["amount"].rolling(ahead, min_periods=1).sum().tolist())
with decimal.localcontext() as context:
    context.prec = 5
    print(decimal.Decimal(1) / decimal.Decimal(7))
@functools.lru_cache(maxsize=None)
def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)
match {"kind": "invoice", "total": fib(20)}:
    case {"kind": "invoice", "total": total} if total > 1:
        print(f"invoice {total:,}")
result = frame
"""


async def test_everyday_data_work_runs_under_the_guards() -> None:
    outcome = await run(EVERYDAY)
    assert outcome.ok, outcome.error
    assert outcome.output.splitlines() == [
        "{'amount': {'x': 20.0, 'y': 0.0}}", "[10.0, 30.0]", "['high', 'low', 'high']",
        "['Zed', '-', 'Zed']", "['Ana', 'Bo', 'Cy'] ['Jan', 'Feb', 'Feb']",
        "['010', '000', '030']", "[10.0, 30.0, 30.0]", "0.14286", "invoice 6,765"]
    assert outcome.table_rows == 3


async def test_a_dataframe_restored_from_the_thread_is_guarded_too() -> None:
    # The program never imports pandas: its DataFrame comes from the thread's saved variables.
    state, _ = encode_state({"frame": pd.DataFrame({"a": [1, 5]})})
    program = ("print(frame.query('a > 2')['a'].tolist())\n"
               "for attempt in (lambda: frame.query('@frame.__class__'),\n"
               "                lambda: frame.agg('to_csv', 0, 'written.csv'),\n"
               "                lambda: frame.agg('__getattribute__', '__class__')):\n"
               "    try:\n"
               "        attempt()\n"
               "        print('not refused')\n"
               "    except ValueError as exc:\n"
               "        print('refused:', exc)\n")
    outcome = await run(program, state=state)
    assert outcome.ok, outcome.error
    lines = outcome.output.splitlines()
    assert lines[0] == "[5]"
    assert len(lines) == 4 and all(line.startswith("refused:") for line in lines[1:]), lines
    assert "with a path is not available in the sandbox" in lines[2]


async def test_type_still_tells_types_and_builds_classes() -> None:
    program = ("print(type(1) is int, isinstance(int, type))\n"
               "Point = type('Point', (), {'x': 2, 'double': lambda self: self.x * 2})\n"
               "print(Point().double(), isinstance(Point, type), issubclass(Point, object))\n"
               "class Registry(type):\n"
               "    def __call__(cls, *args):\n"
               "        return 'made by ' + cls.label\n"
               "class Widget(metaclass=Registry):\n"
               "    label = 'Registry'\n"
               "print(Widget())\n"
               "try:\n"
               "    type('Peek', (), {'__reduce__': print})\n"
               "except TypeError as exc:\n"
               "    print(exc)\n")
    assert await output_of(program) == (
        "True True\n4 True True\nmade by Registry\n"
        "type(): defining '__reduce__' is not allowed in the sandbox\n")


async def test_a_program_metaclass_answers_isinstance_as_in_python() -> None:
    # The program's `type` is a stand-in that answers as `type`; a metaclass made from it must
    # answer as itself, not as `type` (any class was an instance of it).
    program = ("class Meta(type):\n    pass\nclass Made(metaclass=Meta):\n    pass\n"
               "print(isinstance(int, Meta), isinstance(Made, Meta), issubclass(type, Meta),\n"
               "      isinstance(Made, type))\n")
    assert await output_of(program) == "False True False True\n"


async def test_singledispatch_reads_annotations_it_can_trust() -> None:
    # With postponed annotations every annotation is a string that typing evaluates: the
    # policy read them as code, so they pass its check again.
    program = ("from __future__ import annotations\n"
               "import functools, datetime\n"
               "@functools.singledispatch\n"
               "def describe(value):\n"
               "    return 'something'\n"
               "@describe.register\n"
               "def _(value: datetime.date) -> str:\n"
               "    return 'a date'\n"
               "@describe.register\n"
               "def _(value: list) -> str:\n"
               "    return 'a list'\n"
               "print(describe(datetime.date(2026, 1, 1)), describe([1]), describe(2))\n")
    assert await output_of(program) == "a date a list something\n"


async def test_numpy_array_classes_work_as_before() -> None:
    # The program's np.ndarray and np.recarray are stand-ins that refuse raw buffers.
    program = ("import numpy as np\n"
               "from numpy import ndarray\n"
               "a = np.zeros(3)\n"
               "print(isinstance(a, np.ndarray), type(a) is np.ndarray, ndarray is np.ndarray,\n"
               "      issubclass(np.ma.MaskedArray, np.ndarray))\n"
               "r = np.rec.fromrecords([(1, 'x')], names='n,s')\n"
               "print(isinstance(r, np.recarray), type(r) is np.recarray, r.n.tolist())\n"
               "print(np.ndarray((2,), dtype=np.int64).shape, np.recarray((1,), 'i8,i8').shape)\n"
               "class Tagged(np.ndarray):\n"
               "    pass\n"
               "t = np.arange(2).view(Tagged)\n"
               "print(type(t) is Tagged, isinstance(t, np.ndarray), isinstance(a, Tagged))\n")
    assert await output_of(program) == (
        "True True True True\nTrue True [1]\n(2,) (1,)\nTrue True False\n")


async def test_a_refused_import_says_so_not_what_the_library_says() -> None:
    # pandas wraps the refusal in "Use pip ... to install the Jinja2 package": the wrong fix.
    program = ("import pandas as pd\n"
               "frame = pd.DataFrame({'a': [1]})\n"
               "def render(n):\n"
               "    return frame.to_latex()\n"
               "each([1], render)\n"
               "frame.to_latex()\n")
    outcome = await run(program)
    assert not outcome.ok
    assert outcome.error is not None and outcome.error["type"] == "ImportRefused"
    assert outcome.error["message"].startswith("module 'jinja2' is not available in the sandbox")
    assert outcome.error["line"] == 6
    assert "pip" not in outcome.error["traceback"]
    assert [f["error"][:50] for f in outcome.failures] == [
        "ImportRefused: module 'jinja2' is not available in"]


@pytest.mark.parametrize("template", [
    "{0.__class__}", "{x._runtime}", "{0[a].__dict__}", "{0:{1.__class__}}", "{0._asdict}",
])
def test_templates_reading_private_attributes_are_refused(template: str) -> None:
    with pytest.raises(ValueError, match="not allowed in the sandbox"):
        check_template(template)
    with pytest.raises(ValueError, match="not allowed in the sandbox"):
        read_attribute(template, "format")
    with pytest.raises(ValueError, match="not allowed in the sandbox"):
        read_attribute(str, "format")(template, 1)


@pytest.mark.parametrize("template", [
    "plain", "{}", "{0} {1!r:>10}", "{name[first]}", "{0.real:{width}.{precision}f}", "{{0.__x}}",
])
def test_templates_of_ordinary_use_pass(template: str) -> None:
    check_template(template)
    assert read_attribute(template, "format_map") == template.format_map


# What reaches the machine or runs code when called. A program holds only what it can reach from
# the allowed modules by public names (workers._sandbox_namespace.SafeModule).
GADGET_MODULES = frozenset({
    "os", "posix", "subprocess", "_posixsubprocess", "pty", "socket", "_socket", "ctypes",
    "_ctypes", "importlib", "pickle", "_pickle", "marshal", "multiprocessing", "runpy", "code",
    "codeop", "pdb", "tempfile", "zipfile", "tarfile", "sqlite3", "mmap", "webbrowser", "shelve",
})
GADGET_BUILTINS = frozenset({"exec", "eval", "compile", "open", "__import__", "getattr",
                             "setattr", "globals", "vars", "breakpoint", "input"})
# Where pandas and numpy read and write files (pandas names its public functions "pandas", so
# their code's file tells), and the parts of it that touch no file.
FILE_CODE = ("/pandas/io/", "/numpy/lib/_npyio", "/numpy/lib/_datasource", "/numpy/lib/format",
             "/numpy/_core/memmap")
NO_FILES = ("/pandas/io/formats/", "/pandas/io/json/_normalize.py")


def _gadget(value: Any) -> str | None:
    """What makes `value` a gadget, if it is one."""
    if isinstance(value, type) and issubclass(value, pickle.Unpickler | pickle._Unpickler):
        return "an unpickler"
    if value is np.ndarray or value is np.recarray:
        return "numpy's own array class: it makes object arrays of raw buffers"
    if not callable(value) or getattr(value, "_sluice_guarded", False):
        return None
    if getattr(value, "__self__", None) is builtins and value.__name__ in GADGET_BUILTINS:
        return f"builtins.{value.__name__}"
    module = getattr(value, "__module__", None)
    if isinstance(module, str) and module.split(".")[0] in GADGET_MODULES:
        return f"{module}.{getattr(value, '__qualname__', '?')}"
    code = getattr(value.__init__ if isinstance(value, type) else value, "__code__", None)
    filename = code.co_filename if isinstance(code, types.CodeType) else ""
    if any(part in filename for part in FILE_CODE) and not any(p in filename for p in NO_FILES):
        return f"file access in {filename.rsplit('site-packages/', 1)[-1]}"
    return None


def reachable_gadgets() -> dict[str, str]:
    """Every gadget a program can reach from the allowed modules, with the child's guards on:
    a walk of public names, into modules the sandbox allows and one level into classes."""
    _sandbox_guards.install()
    modules: list[tuple[str, types.ModuleType]] = [
        (name, importlib.import_module(name)) for name in sorted(ALLOWED_MODULES)]
    seen: set[int] = set()
    found: dict[str, str] = {}
    while modules:
        path, module = modules.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        for name, read in _public(module):
            value = PROGRAM_TYPES.get(read, read) if isinstance(read, type) else read  # SafeModule
            if isinstance(value, types.ModuleType):
                if module_allowed(value):
                    modules.append((f"{path}.{name}", value))
                continue
            members = _public(value) if isinstance(value, type) else []
            for where, held in [(name, value), *((f"{name}.{m}", v) for m, v in members)]:
                if (why := _gadget(held)) is not None:
                    found[f"{path}.{where}"] = why
    found["(modules walked)"] = str(len(seen))
    return found


def test_no_gadget_is_reachable_from_the_allowed_modules() -> None:
    # Found so far: pandas.compat.pickle_compat.loads unpickled any bytes a program wrote (and so
    # ran any code), pandas.api.typing.JsonReader read any file, np.ndarray made objects of any
    # address in a buffer. The guards change pandas and
    # numpy for good, so the walk runs in a process of its own, as the child does.
    walk = ("import json, tests.test_sandbox_guards as t\n"
            "print(json.dumps(t.reachable_gadgets()))\n")
    done = subprocess.run([sys.executable, "-c", walk], capture_output=True, text=True,
                          timeout=120, check=True)
    found = json.loads(done.stdout.splitlines()[-1])
    assert int(found.pop("(modules walked)")) > 50  # pandas and numpy were walked
    assert found == {}


def _public(holder: Any) -> list[tuple[str, Any]]:
    """The names a program may read of `holder`, and their values."""
    pairs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in dir(holder):
            if attribute_problem(name) is None:
                try:
                    pairs.append((name, getattr(holder, name)))
                except Exception:
                    continue
    return pairs


def test_the_child_starts_without_the_workers_libraries() -> None:
    """Every run and every sample run waits for the child to start: it imports no event loop,
    sockets or heavy libraries until a program asks for one (asyncio alone took ~40 ms of a
    ~90 ms import), and a program's reach through module attributes stays small."""
    heavy = ("asyncio", "ssl", "socket", "pandas", "numpy", "pydantic", "sqlalchemy", "litellm",
             "aiohttp")
    probe = (f"import sys, workers.sandbox_child\n"
             f"print(sorted(m for m in {heavy!r} if m in sys.modules))\n")
    loaded = subprocess.run([sys.executable, "-s", "-P", "-c", probe], capture_output=True,
                            text=True, timeout=60, check=True)
    assert loaded.stdout.strip() == "[]"
