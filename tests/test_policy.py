"""The sandbox policy (codegen/policy.py): what it refuses, what it lets through, how it says so."""

from __future__ import annotations

import pytest

from codegen.policy import (
    ALLOWED_MODULES,
    PolicyViolation,
    check_program,
    is_forbidden_module,
    render_violations,
)


def rules(source: str) -> list[str]:
    return [v.rule for v in check_program(source)]


ACCEPTED = {
    "integration calls": 'sheet = sheets.open("signups")\nfor row in sheet.rows():\n'
                         '    sheet.update(row, {"Budget": 5000})\n',
    "allowed imports": "import json, math, re\nimport collections.abc\nfrom datetime import date\n"
                       "import pandas as pd\nimport numpy as np\nfrom typing import Any\n",
    "future import": "from __future__ import annotations\nx: list[int] = []\n",
    "main guard": 'def main():\n    pass\n\nif __name__ == "__main__":\n    main()\n',
    "dunder methods and super init": "class Oops(Exception):\n    def __init__(self, m):\n"
                                     "        super().__init__(m)\n    def __repr__(self):\n"
                                     "        return 'Oops'\n",
    "namedtuple api": "from collections import namedtuple\nP = namedtuple('P', 'x y')\n"
                      "d = P(1, 2)._asdict()\nq = P(1, 2)._replace(x=3)\n",
    "nonlocal": "def f():\n    n = 0\n    def g():\n        nonlocal n\n        n += 1\n"
                "    g()\n    return n\n",
    "shadowed builtin name": "input = sheets.open('x')\nprint(input)\n",
    "to_csv without path": "import pandas as pd\ntext = pd.DataFrame().to_csv(index=False)\n",
    "plain format": "'{} {name}'.format(1, name='x')\n",
    "format spec and index": "'{0[a]:>{1}} {0.real}'.format({'a': 1}, 5)\n",
    "style in a mapping": "row = {'style': 'bold'}\nprint(row['style'])\n",
    "literal annotation": "from typing import Literal\ndef f(mode: Literal['a', 'b']) -> None:"
                          "\n    pass\n",
    "dataclass": "from dataclasses import dataclass\n@dataclass\nclass Row:\n    a: int\n",
}


@pytest.mark.parametrize("source", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_ordinary_programs_pass(source: str) -> None:
    assert check_program(source) == []


REFUSED = {
    "import os": ("import os\n", "import"),
    "import subprocess": ("import subprocess\n", "import"),
    "import socket": ("import socket\n", "import"),
    "from os import": ("from os import system\n", "import"),
    "import time": ("import time\n", "import"),
    "relative import": ("from . import x\n", "import"),
    "private submodule": ("import pandas._libs\n", "import"),
    "gadget submodule": ("import numpy.ctypeslib\n", "import"),
    "pandas internals": ("from pandas.core.computation.expr import Expr\n", "import"),
    "pandas unpickler": ("from pandas.compat.pickle_compat import loads\n", "import"),
    "array interface": ("class P:\n    @property\n    def __array_interface__(self):\n"
                        "        return {}\n", "dunder"),
    "dataframe interchange": ("class P:\n    def __dataframe__(self):\n        return self\n",
                              "dunder"),
    "string annotation": ("def f(x: 'int') -> None:\n    pass\n", "annotation"),
    "string in a generic annotation": ("y: list['int'] = []\n", "annotation"),
    "reduce": ("class P:\n    def __reduce__(self):\n        return (print, ())\n", "dunder"),
    "class from strings": ("import dataclasses\ndataclasses.make_dataclass('P', ['a'])\n",
                           "forbidden-attribute"),
    "memory by strides": ("from numpy.lib.stride_tricks import as_strided\n", "introspection"),
    "star import": ("from math import *\n", "star-import"),
    "gadget from import": ("from typing import get_type_hints\n", "introspection"),
    "eval": ("eval('1')\n", "forbidden-name"),
    "exec": ("exec('x = 1')\n", "forbidden-name"),
    "open": ("open('/etc/passwd').read()\n", "forbidden-name"),
    "__import__": ("__import__('os')\n", "dunder"),
    "getattr": ("getattr(sheets, 'open')\n", "forbidden-name"),
    "globals": ("globals()\n", "forbidden-name"),
    "dunder attribute": ("().__class__\n", "dunder"),
    "mangled attribute": ("x.__secret\n", "dunder"),
    "dunder name": ("__builtins__\n", "dunder"),
    "frame gadget": ("g = (i for i in [1])\ng.gi_frame\n", "introspection"),
    "mro": ("int.mro()\n", "introspection"),
    "private attribute": ("import random\nrandom._os\n", "private"),
    "module gadget": ("import dataclasses\ndataclasses.sys\n", "forbidden-attribute"),
    "pickle reader": ("import pandas as pd\npd.read_pickle('x')\n", "forbidden-attribute"),
    "pandas eval": ("import pandas as pd\npd.eval('1')\n", "forbidden-attribute"),
    "to_csv with path": ("df.to_csv('/tmp/x.csv')\n", "file"),
    "to_json with keyword path": ("df.to_json(path_or_buf='/tmp/x')\n", "file"),
    "to_csv path in keyword arguments": ("df.to_csv(**options)\n", "file"),
    "to_csv held as a value": ("write = df.to_csv\nwrite('x.csv')\n", "file"),
    "to_csv passed as a function": ("list(map(df.to_csv, ['x.csv']))\n", "file"),
    "dataframe style": ("df.style.to_html()\n", "forbidden-attribute"),
    "format private attribute": ("'{0._runtime}'.format(sheets.open)\n", "dunder"),
    "allow_pickle": ("import numpy as np\nnp.load('x.npy', allow_pickle=True)\n", "file"),
    "global": ("x = 1\ndef f():\n    global x\n    x = 2\n", "global"),
    "format dunder": ("'{0.__class__}'.format(1)\n", "dunder"),
    "match class attribute": ("match x:\n    case int(__class__=c):\n        pass\n", "dunder"),
    "syntax": ("x = (1,\n", "syntax"),
    "compile-time error": ("return 1\n", "syntax"),
}


@pytest.mark.parametrize(("source", "rule"), REFUSED.values(), ids=REFUSED.keys())
def test_escapes_are_refused(source: str, rule: str) -> None:
    assert rule in rules(source)


def test_render_points_a_caret_at_the_attribute() -> None:
    source = "if True:\n    rows = sheets.open('x')\n    y = rows.__class__\n"
    (violation,) = check_program(source)
    rendered = violation.render(source)
    code, caret, rule = rendered.splitlines()
    assert code == "line 3: y = rows.__class__"
    assert caret.index("^") == code.index("__class__")
    assert rule.startswith("dunder: '.__class__' is not allowed")


def test_render_of_a_syntax_error_names_line_and_message() -> None:
    source = "x = 1\ny = (2,\n"
    (violation,) = check_program(source)
    assert violation.rule == "syntax" and violation.line == 2
    assert violation.render(source).startswith("line 2: y = (2,\n")


def test_render_keeps_long_lines_short() -> None:
    source = "x = [" + ", ".join(str(i) for i in range(200)) + "]; y = x.__len__()\n"
    (violation,) = check_program(source)
    code, caret, _ = violation.render(source).splitlines()
    assert len(code) <= 120
    assert code[caret.index("^"):].startswith("__len__")


def test_violations_come_in_source_order_and_render_with_a_limit() -> None:
    source = "import os\nimport sys\nimport socket\nopen('x')\neval('1')\nexec('2')\n"
    violations = check_program(source)
    assert [v.line for v in violations] == [1, 2, 3, 4, 5, 6]
    text = render_violations(source, violations, limit=2)
    assert text.count("^") == 2
    assert text.endswith("... and 4 more like these.")


def test_messages_tell_the_model_what_to_do_instead() -> None:
    (time_import,) = check_program("import time\n")
    assert "now()" in time_import.message
    (file_open,) = check_program("open('x')\n")
    assert "integrations" in file_open.message


def test_allowed_modules_and_module_check() -> None:
    assert {"json", "math", "pandas", "numpy", "datetime"} <= ALLOWED_MODULES
    assert not ALLOWED_MODULES & {"os", "sys", "time", "subprocess", "socket", "io", "builtins"}
    assert not is_forbidden_module("collections.abc")
    assert is_forbidden_module("os.path")
    assert is_forbidden_module("pandas.io")


def test_violation_is_a_frozen_value() -> None:
    violation = PolicyViolation(1, 0, "syntax", "bad")
    with pytest.raises(AttributeError):
        violation.line = 2  # type: ignore[misc]
