"""Ways past the static policy's reading of a program's text (ARCHITECTURE.md, "The sandbox holds
no secrets"): each must be refused inside the sandbox's process, by the policy or by a run-time
guard of the child (workers/_sandbox_guards.py), with the canary secret nowhere in the outcome.
The world they run in, and the attempts that assume such a way and test the isolation, are in
tests/test_escapes.py.
"""

from __future__ import annotations

import pytest

from tests._escape_world import (
    PAST,
    World,
    assert_no_canary,
    assert_survives,
    crafted_attribute_program,
    run,
)
from workers.sandbox import SandboxOutcome

# --- ways past the policy's reading of the text: each is refused in the process, by the policy or
# a run-time guard (workers/_sandbox_guards.py). A new one found is written here first. ---------

REFUSALS = ("PolicyViolation",)


def _refused(outcome: SandboxOutcome) -> bool:
    error = outcome.error or {}
    message = str(error.get("message", ""))
    in_process = error.get("type") in REFUSALS or "sandbox" in message or "not allowed" in message
    return not outcome.ok and in_process and "ESCAPED" not in outcome.output


SHELL_ANNOTATION = ("[c for c in ().__class__.__base__.__subclasses__() if c.__name__ == "
                    "'_wrap_close'][0].__init__.__globals__['system']('echo ESCAPED') and int")
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
    # typing.get_type_hints evaluates annotations held in strings: singledispatch calls it.
    pytest.param("import functools\n@functools.singledispatch\ndef f(x):\n    pass\n"
                 f"@f.register\ndef _(x: {SHELL_ANNOTATION!r}):\n    pass\nprint('ESCAPED')\n",
                 id="string-annotation-evaluated-by-singledispatch"),
    pytest.param(f"import functools\ncode = [{SHELL_ANNOTATION!r}]\n"
                 "@functools.singledispatch\ndef f(x):\n    pass\n"
                 "@f.register\ndef _(x: code[0]):\n    pass\nprint('ESCAPED')\n",
                 id="string-annotation-from-a-list"),
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
    pytest.param("import numpy as np\nprint('ESCAPED', np.ndarray((1,), object, bytearray(8)))\n",
                 id="numpy-object-array-over-a-buffer"),
    pytest.param("import numpy as np\nmake = type(np.zeros(1))\n"
                 "print('ESCAPED', make((1,), dtype=object, buffer=bytearray(8)))\n",
                 id="numpy-array-class-from-type"),
    pytest.param("import numpy as np\nclass Mine(np.recarray):\n    pass\n"
                 "print('ESCAPED', Mine((1,), [('a', 'O')], bytearray(8)))\n",
                 id="numpy-recarray-subclass-over-a-buffer"),
    pytest.param("import numpy as np\nbase = np.zeros(4)\nview = base[:]\n"
                 "grow = base.resize\ngrow(10**6, **{'refcheck': False})\n"
                 "print('ESCAPED', view)\n", id="numpy-resize-frees-memory-under-a-view"),
    pytest.param("import numpy as np, pandas as pd\n"
                 "class Far(pd.api.indexers.BaseIndexer):\n"
                 "    def get_window_bounds(self, num_values=0, min_periods=None, center=None,\n"
                 "                          closed=None, step=None):\n"
                 "        return np.array([0, 10**5]), np.array([1, 10**5 + 4])\n"
                 "print('ESCAPED', pd.Series([1.0, 2.0]).rolling(Far(window_size=1)).sum())\n",
                 id="pandas-window-bounds-read-past-the-data"),
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
    await assert_survives(world)


# Checks pandas lets a caller skip, of codes its compiled code then uses as indexes unchecked:
# skipped, the first use read object pointers past the data and crashed the child.
SKIPPED_CHECKS = [
    pytest.param("import pandas as pd\n"
                 "codes = pd.Categorical.from_codes([0, 120], ['a', 'b'], validate=False)\n"
                 "print('ESCAPED', list(codes.astype(object)))\n", id="categorical-codes"),
    pytest.param("import pandas as pd\n"
                 "index = pd.MultiIndex([['a', 'b']], [[0, 120]], verify_integrity=False)\n"
                 "print('ESCAPED', index.to_list())\n", id="multiindex-codes"),
    pytest.param("import pandas as pd\nindex = pd.MultiIndex.from_tuples([('a',), ('b',)])\n"
                 "index = index.set_codes([[0, 120]], verify_integrity=False)\n"
                 "print('ESCAPED', index.to_list())\n", id="multiindex-set-codes"),
]


@pytest.mark.parametrize("program", SKIPPED_CHECKS)
async def test_pandas_checks_cannot_be_skipped(world: World, program: str) -> None:
    outcome = await run(world, program, memory_mb=1024)
    assert outcome.error is not None and outcome.error["type"] == "ValueError", outcome.error
    assert "ESCAPED" not in outcome.output
    assert_no_canary(outcome)
    await assert_survives(world)
