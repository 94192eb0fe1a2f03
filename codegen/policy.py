"""The sandbox policy: what a generated program may contain.

ARCHITECTURE.md, "Checks before running" and "The sandbox holds no secrets".

A static check over the program's AST. It runs before the program is accepted and again inside the
sandbox child (defence in depth). It is not the security boundary: "The sandbox holds no secrets",
and the process isolation in `workers.sandbox` is what contains a program that gets past it. The
policy's job is to refuse the obvious escapes (imports, dunder access, introspection gadgets, file
and eval helpers) with a message short enough for the model to fix in one turn.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = [
    "ALLOWED_MODULES",
    "DENIED_SUBMODULES",
    "FILE_HELPERS",
    "FORBIDDEN_NAMES",
    "PROTOCOL_HOOKS",
    "TEXT_WRITERS",
    "PolicyViolation",
    "attribute_problem",
    "check_program",
    "is_forbidden_module",
    "render_violations",
]

ALLOWED_MODULES: frozenset[str] = frozenset({
    "collections", "dataclasses", "datetime", "decimal", "fractions", "functools", "itertools",
    "json", "math", "numpy", "pandas", "random", "re", "statistics", "string", "textwrap", "typing",
})

# Submodules of allowed packages that reach the machine (C calls, compilers, files), and the
# internals behind the public API (pandas.core builds expressions past the guarded pd.eval,
# pandas.compat unpickles, numpy.lib.npyio opens .npz files with pickles inside).
DENIED_SUBMODULES = ("numpy.ctypeslib", "numpy.f2py", "numpy.distutils", "numpy.testing",
                     "numpy.lib.format", "numpy.lib.npyio", "numpy.core", "pandas.testing",
                     "pandas.io", "pandas.core", "pandas.compat")

_NAME_HINTS: dict[str, str] = {
    "exec": "write the code directly",
    "eval": "write the expression directly",
    "compile": "write the code directly",
    "open": "read and write data through the integrations",
    "__import__": "use an import statement",
    "globals": "use your variables directly",
    "locals": "use your variables directly",
    "vars": "use a dict",
    "breakpoint": "remove it",
    "input": "there is nobody to type; ask through an integration",
    "getattr": "write obj.name, or keep the values in a dict",
    "setattr": "write obj.name = value, or keep the values in a dict",
    "delattr": "write del obj.name, or keep the values in a dict",
    "memoryview": "use bytes",
    "help": "the integration stubs document every action",
    "exit": "let the program end, or raise an exception",
    "quit": "let the program end, or raise an exception",
}
FORBIDDEN_NAMES: frozenset[str] = frozenset(_NAME_HINTS)

# Attributes that reach frames, code objects and globals (the classic escapes).
_INTROSPECTION = frozenset({
    "ag_code", "ag_frame", "co_code", "co_consts", "cr_await", "cr_code", "cr_frame", "f_back",
    "f_builtins", "f_code", "f_globals", "f_locals", "f_trace", "func_code", "func_globals",
    "gi_code", "gi_frame", "gi_yieldfrom", "im_class", "im_func", "im_self", "mro", "tb_frame",
    "tb_next", "get_type_hints", "Formatter", "get_field", "as_strided",
})
# File, pickle and eval helpers of pandas and numpy. Reading and writing go through the
# integrations instead; the sandbox child also refuses them at run time (`workers._sandbox_guards`).
FILE_HELPERS: frozenset[str] = frozenset({
    "read_pickle", "to_pickle", "read_csv", "read_table", "read_fwf", "read_excel", "read_json",
    "read_html", "read_xml", "read_parquet", "read_feather", "read_orc", "read_hdf", "read_sas",
    "read_spss", "read_stata", "read_sql", "read_sql_query", "read_sql_table", "read_clipboard",
    "read_iceberg", "to_excel", "to_parquet", "to_feather", "to_hdf", "to_stata", "to_orc",
    "to_sql", "to_clipboard", "to_iceberg", "ExcelWriter", "HDFStore", "DataSource", "fromfile",
    "tofile", "memmap", "open_memmap", "loadtxt", "genfromtxt", "fromregex", "savetxt",
    "savez", "savez_compressed", "ExcelFile", "JsonReader", "StataReader", "SASReader",
})
# Functions that build classes from strings: a name like `__array_interface__` that the policy
# would refuse in a class statement (numpy reads memory at any address an object names there).
_CLASS_BUILDERS = frozenset({
    "make_dataclass", "register_dataframe_accessor", "register_series_accessor",
    "register_index_accessor",
})
# Special methods a program may not define: they hand the interpreter or a library raw memory
# (numpy's array interface), a way to rebuild objects (pickling), or a say in how classes and
# attributes are made. The rest (__init__, __repr__, __eq__, __len__, operators...) are fine.
PROTOCOL_HOOKS: frozenset[str] = frozenset({
    "__array_interface__", "__array_struct__", "__buffer__", "__release_buffer__", "__dlpack__",
    "__dlpack_device__", "__reduce__", "__reduce_ex__", "__getstate__", "__setstate__",
    "__getnewargs__", "__getnewargs_ex__", "__prepare__", "__init_subclass__", "__set_name__",
    "__class_getitem__", "__mro_entries__", "__instancecheck__", "__subclasscheck__",
    "__subclasshook__", "__getattribute__", "__get__", "__set__", "__delete__", "__del__",
    "__fspath__", "__dataframe__", "__cuda_array_interface__", "__arrow_c_stream__",
    "__arrow_c_array__", "__arrow_c_schema__",
})
# Modules and helpers reachable as attributes of allowed modules, and the file helpers.
_GADGETS = frozenset({
    "builtins", "codecs", "ctypes", "ctypeslib", "gc", "importlib", "inspect", "io", "marshal",
    "os", "pathlib", "pickle", "posix", "shutil", "signal", "socket", "subprocess", "sys",
    "threading", "popen", "system", "eval", "exec",
}) | FILE_HELPERS | _CLASS_BUILDERS
# to_csv() and friends return text when called without a path; with a path they write a file.
TEXT_WRITERS: frozenset[str] = frozenset({
    "to_csv", "to_json", "to_html", "to_string", "to_markdown", "to_latex", "to_xml",
})
_PATH_KEYWORDS = frozenset({"path_or_buf", "path_or_buffer", "buf", "path", "fname", "file"})
# The public API of namedtuples starts with one underscore.
_PUBLIC_UNDERSCORE = frozenset({"_asdict", "_replace", "_fields", "_field_defaults", "_make"})
_ALLOWED_DUNDER_NAMES = frozenset({"__name__"})
_PRIVATE_IN_FORMAT = re.compile(r"\{[^{}]*(__|\._)")
_MAX_LINE = 100


@dataclass(frozen=True)
class PolicyViolation:
    """One broken rule, located in the program (`line` is 1-based, `col` 0-based)."""

    line: int
    col: int
    rule: str
    message: str

    def render(self, source: str) -> str:
        """The offending line, a caret under the spot, then `rule: message`."""
        lines = source.splitlines()
        code = lines[self.line - 1] if 0 < self.line <= len(lines) else ""
        stripped = code.lstrip()
        col = max(0, self.col - (len(code) - len(stripped)))
        if len(stripped) > _MAX_LINE:
            start = max(0, min(col - _MAX_LINE // 2, len(stripped) - _MAX_LINE))
            stripped = stripped[start:start + _MAX_LINE]
            col -= start
        prefix = f"line {self.line}: "
        caret = " " * (len(prefix) + min(col, len(stripped))) + "^"
        return f"{prefix}{stripped}\n{caret}\n{self.rule}: {self.message}"


def render_violations(source: str, violations: list[PolicyViolation], *, limit: int = 5) -> str:
    """Render the first `limit` violations for the model, saying how many more there are."""
    parts = [v.render(source) for v in violations[:limit]]
    if len(violations) > limit:
        parts.append(f"... and {len(violations) - limit} more like these.")
    return "\n\n".join(parts)


def check_program(source: str) -> list[PolicyViolation]:
    """Every policy violation in `source`, in source order; an empty list means it may run.

    A program that does not parse or compile gives one violation with rule "syntax".
    """
    try:
        tree = ast.parse(source, filename="<program>")
        compile(tree, "<program>", "exec", dont_inherit=True)
    except SyntaxError as exc:
        return [_syntax_violation(exc)]
    except (ValueError, RecursionError, MemoryError) as exc:
        return [PolicyViolation(1, 0, "syntax", f"the program cannot be compiled: {exc}")]
    checker = _Checker(_bound_names(tree))
    checker.visit(tree)
    return sorted(set(checker.violations), key=lambda v: (v.line, v.col, v.rule))


def is_forbidden_module(name: str) -> bool:
    """Whether `import name` is refused (not allow-listed, a dotted part is a gadget, or it is in
    a denied submodule)."""
    parts = name.split(".")
    if parts[0] not in ALLOWED_MODULES:
        return True
    if any(name == d or name.startswith(d + ".") for d in DENIED_SUBMODULES):
        return True
    return any(attribute_problem(part) is not None for part in parts[1:])


def _syntax_violation(exc: SyntaxError) -> PolicyViolation:
    line = exc.lineno or 1
    col = max(0, (exc.offset or 1) - 1)
    return PolicyViolation(line, col, "syntax", exc.msg or "invalid syntax")


def _bound_names(tree: ast.AST) -> frozenset[str]:
    """Names the program binds itself; using them is fine even if a builtin has that name."""
    return frozenset(_iter_bound(tree))


def _iter_bound(tree: ast.AST) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            yield node.id
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            yield node.name
        elif isinstance(node, ast.arg):
            yield node.arg
        elif isinstance(node, ast.alias):
            yield (node.asname or node.name).split(".")[0]
        elif isinstance(node, ast.ExceptHandler) and node.name:
            yield node.name


def _is_dunder(name: str) -> bool:
    return len(name) > 4 and name.startswith("__") and name.endswith("__")


def attribute_problem(attr: str) -> tuple[str, str] | None:
    """(rule, message) when reading or writing `.attr` is refused (also asked at run time, of
    names that reach attributes as strings)."""
    if attr.startswith("__"):
        return "dunder", f"'.{attr}' is not allowed: attributes starting with '__' are internals"
    if attr in _INTROSPECTION:
        return "introspection", f"'.{attr}' is not allowed: it reaches interpreter internals"
    if attr in ("eval", "exec"):
        return ("forbidden-attribute", f"'.{attr}' is not allowed: write the expression in "
                "Python, e.g. df[df['amount'] > limit] or df['a'] * 2")
    if attr == "style":
        return ("forbidden-attribute", "'.style' is not allowed: it renders through templates, "
                "which the sandbox does not run; format the values with f-strings")
    if attr in _CLASS_BUILDERS:
        return ("forbidden-attribute", f"'.{attr}' is not allowed: it builds classes from "
                "strings; write a class statement")
    if attr in _GADGETS:
        return ("forbidden-attribute", f"'.{attr}' is not allowed: reach files, the network and "
                "other systems only through the integrations")
    if attr.startswith("_") and attr not in _PUBLIC_UNDERSCORE:
        return "private", f"'.{attr}' is private; use the public API"
    return None


def _module_message(name: str) -> str:
    if name.split(".")[0] == "time":
        return "module 'time' is not available: use now() or today() instead"
    allowed = ", ".join(sorted(ALLOWED_MODULES))
    return (f"module '{name}' cannot be imported; allowed: {allowed}. Reach files, the web and "
            "other systems through the integrations")


class _Checker(ast.NodeVisitor):
    def __init__(self, bound: frozenset[str]) -> None:
        self.bound = bound
        self.violations: list[PolicyViolation] = []
        self.called: set[int] = set()  # attributes that are the function of a call

    def _add(self, node: ast.AST, rule: str, message: str, col: int | None = None) -> None:
        line = getattr(node, "lineno", 1)
        at = getattr(node, "col_offset", 0) if col is None else col
        self.violations.append(PolicyViolation(line, at, rule, message))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if is_forbidden_module(alias.name):
                self._add(node, "import", _module_message(alias.name))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        if node.level:
            self._add(node, "import", "relative imports are not allowed")
            return
        if module == "__future__":
            return
        if is_forbidden_module(module):
            self._add(node, "import", _module_message(module))
            return
        for alias in node.names:
            self._check_imported_name(node, alias.name)

    def _check_imported_name(self, node: ast.ImportFrom, name: str) -> None:
        if name == "*":
            self._add(node, "star-import", "'import *' is not allowed; import the names you use")
            return
        problem = attribute_problem(name)
        if problem is not None:
            self._add(node, problem[0], problem[1].replace(f"'.{name}'", f"'{name}'"))

    def visit_Name(self, node: ast.Name) -> None:
        name = node.id
        if _is_dunder(name) and name not in _ALLOWED_DUNDER_NAMES:
            self._add(node, "dunder", f"'{name}' is not allowed: dunder names are internals")
        elif name in FORBIDDEN_NAMES and name not in self.bound:
            self._add(node, "forbidden-name", f"{name}() is not available: {_NAME_HINTS[name]}")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        problem = None if _is_super_init(node) else attribute_problem(node.attr)
        if problem is None and node.attr in TEXT_WRITERS and id(node) not in self.called:
            problem = ("file", f"'.{node.attr}' must be called where it is named, without a "
                       "path, to get the text: a writer held as a value could be given one")
        if problem is not None:
            col = node.end_col_offset - len(node.attr) if node.end_col_offset else None
            if node.end_lineno != node.lineno:
                col = None
            self._add(node, problem[0], problem[1], col)
        self.generic_visit(node)

    def visit_MatchClass(self, node: ast.MatchClass) -> None:
        for attr in node.kwd_attrs:
            problem = attribute_problem(attr)
            if problem is not None:
                self._add(node, problem[0], problem[1])
        self.generic_visit(node)

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        if node.name in PROTOCOL_HOOKS:
            self._add(node, "dunder", f"defining '{node.name}' is not allowed: it hands the "
                      "interpreter memory, code or class machinery; use a plain method")
        self._check_annotation(node.returns)
        self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_arg(self, node: ast.arg) -> None:
        self._check_annotation(node.annotation)
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self._check_annotation(node.annotation)
        self.generic_visit(node)

    def _check_annotation(self, annotation: ast.expr | None) -> None:
        """A string in an annotation is code this check never reads, and libraries evaluate it
        (functools.singledispatch's register, through typing.get_type_hints)."""
        for part in _strings_outside_literal(annotation):
            self._add(part, "annotation", "write the type itself, not a string: a string "
                      "annotation is code that runs later, unchecked")

    def visit_Global(self, node: ast.Global) -> None:
        self._add(node, "global", "'global' is not allowed: return values from functions instead "
                  "('nonlocal' is fine)")

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Attribute):
            self.called.add(id(func))
            self._check_format(node, func)
            self._check_writer(node, func)
        if any(k.arg == "allow_pickle" for k in node.keywords):
            self._add(node, "file", "allow_pickle is not allowed: unpickling runs code")
        self.generic_visit(node)

    def _check_format(self, node: ast.Call, func: ast.Attribute) -> None:
        template = func.value
        if func.attr not in ("format", "format_map") or not isinstance(template, ast.Constant):
            return
        if isinstance(template.value, str) and _PRIVATE_IN_FORMAT.search(template.value):
            self._add(node, "dunder", "format fields must not name attributes starting with "
                      "'_'")

    def _check_writer(self, node: ast.Call, func: ast.Attribute) -> None:
        if func.attr not in TEXT_WRITERS:
            return
        has_path = bool(node.args) or any(k.arg in _PATH_KEYWORDS or k.arg is None
                                          for k in node.keywords)
        if has_path:
            self._add(node, "file", f".{func.attr}() with a path writes a file; call it without "
                      "one to get the text, or write through an integration")


def _strings_outside_literal(node: ast.AST | None) -> Iterator[ast.Constant]:
    """String constants of an annotation, but for the values of `Literal[...]`."""
    if node is None:
        return
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        yield node
        return
    if isinstance(node, ast.Subscript) and _name_of(node.value) == "Literal":
        return
    for child in ast.iter_child_nodes(node):
        yield from _strings_outside_literal(child)


def _name_of(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    return node.attr if isinstance(node, ast.Attribute) else None


def _is_super_init(node: ast.Attribute) -> bool:
    """`super().__init__(...)` is the one dunder access programs need (subclassing)."""
    value = node.value
    return (node.attr == "__init__" and isinstance(value, ast.Call)
            and isinstance(value.func, ast.Name) and value.func.id == "super")
