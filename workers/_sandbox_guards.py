"""Run-time guards of the sandbox child, behind the static policy (ARCHITECTURE.md, "The sandbox
holds no secrets"; `codegen.policy` is the first line, the process isolation the boundary).

The policy reads the program's text, so it misses what libraries do with names and strings at run
time: a format template held in a variable, a pandas writer taken as a value or named by a string,
`np.load` with a positional `allow_pickle`, `ndarray.dump`, and libraries that pandas imports on
demand (jinja2, for `DataFrame.style`, runs templates that reach any attribute and so any code).
Installed once, in the child, before the program or its saved variables are loaded:

- an import gate: modules load only from the standard library and the packages the allowed modules
  are built on; any other installed package is refused, whoever asks for it;
- pandas and numpy are hardened as they load: expression and string-function guards, writers that
  refuse a path, readers and file helpers that refuse outright;
- `check_template` vets a format template for private and dunder attributes; the child routes
  every read of `.format`, `.format_map` and `.dump` through `read_attribute`.
"""

from __future__ import annotations

import _string
import functools
import importlib.abc
import importlib.machinery
import inspect
import re
import sys
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any

from codegen.policy import (
    ALLOWED_MODULES,
    FILE_HELPERS,
    PROTOCOL_HOOKS,
    TEXT_WRITERS,
    attribute_problem,
    check_program,
)

# Packages the allowed modules import (pandas: numpy, dateutil, tzdata; dateutil: six) and this
# child's own code. Everything else installed in the environment stays out of the sandbox.
ALLOWED_ROOTS = ALLOWED_MODULES | frozenset({
    "numpy", "pandas", "dateutil", "pytz", "tzdata", "six", "orjson",
    "codegen", "core", "integrations", "workers",
})
_UNSAFE_EXPRESSION = re.compile(r"__|@\s*[A-Za-z_]\w*\s*[.\[(]")
_ATTRIBUTE_IN_EXPRESSION = re.compile(r"\.\s*([A-Za-z_]\w*)")
_FILES_HINT = "read and write data through the integrations"


class ImportRefused(ModuleNotFoundError):
    """The import gate refused a module a library asked for."""


def explained(exc: BaseException) -> BaseException:
    """`exc`, or the import refusal behind it: libraries wrap a failed import in their own
    ImportError ("use pip to install Jinja2"), which would send the model after the wrong fix."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            break
        if isinstance(seen, ImportRefused):
            return seen
        seen = seen.__cause__ or seen.__context__
    return exc


class ImportGate(importlib.abc.MetaPathFinder):
    """First on `sys.meta_path`: refuses modules outside the standard library and
    `ALLOWED_ROOTS`, and hardens pandas and numpy once they have loaded."""

    def find_spec(self, name: str, path: Sequence[str] | None,
                  target: types.ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        root = name.partition(".")[0]
        # sysconfig's data module is named after the platform, so not in stdlib_module_names.
        standard = root in sys.stdlib_module_names or root.startswith("_sysconfigdata_")
        if root not in ALLOWED_ROOTS and not standard:
            raise ImportRefused(f"module '{name}' is not available in the sandbox, so neither is "
                                "the library feature that needs it; use the allowed modules",
                                name=name)
        harden = _HARDENING.get(name)
        if harden is None:
            return None  # the usual finders load it
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _ThenHarden(spec.loader, harden)
        return spec


class _ThenHarden(importlib.abc.Loader):
    """A module's own loader, then its hardening."""

    def __init__(self, loader: Any, harden: Callable[[], None]) -> None:
        self._loader = loader
        self._harden = harden

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        module: types.ModuleType | None = self._loader.create_module(spec)
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        self._loader.exec_module(module)
        self._harden()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)  # resource readers and the like


def install() -> None:
    """Gate imports, check annotations held in strings before typing evaluates them, and harden
    what is loaded already. Idempotent."""
    if not any(isinstance(finder, ImportGate) for finder in sys.meta_path):
        sys.meta_path.insert(0, ImportGate())
    if not getattr(typing.get_type_hints, "_sluice_guarded", False):
        typing.get_type_hints = _checking_annotations(typing.get_type_hints)
    for name, harden in _HARDENING.items():
        if name in sys.modules:
            harden()


# -- annotations held in strings ---------------------------------------------------------------

def _checking_annotations(original: Callable[..., Any]) -> Callable[..., Any]:
    """typing.get_type_hints evaluates annotations held in strings, and libraries call it for
    the program (functools.singledispatch's register): each such string must pass the policy
    first, as the program's own text did."""
    @functools.wraps(original)
    def get_type_hints(obj: Any, *args: Any, **kwargs: Any) -> Any:
        for text in _annotation_texts(obj):
            if check_program(text):
                raise TypeError(f"the annotation {text[:60]!r} is not allowed in the sandbox: "
                                "write the type itself, not a string")
        return original(obj, *args, **kwargs)

    get_type_hints._sluice_guarded = True  # type: ignore[attr-defined]
    return get_type_hints


def _annotation_texts(obj: Any) -> list[str]:
    """The strings among `obj`'s annotations (a class's, through its bases), nested ones too."""
    holders = reversed(obj.__mro__) if isinstance(obj, type) else [obj]
    texts: list[str] = []
    for holder in holders:
        annotations = (vars(holder).get("__annotations__") if isinstance(holder, type)
                       else getattr(holder, "__annotations__", None))
        for value in (annotations or {}).values() if isinstance(annotations, dict) else ():
            texts += _texts_in(value)
    return texts


def _texts_in(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, typing.ForwardRef):
        return [value.__forward_arg__]
    if typing.get_origin(value) is typing.Literal:
        return []
    return [text for arg in typing.get_args(value) for text in _texts_in(arg)]


# -- classes built from strings ----------------------------------------------------------------

class _StandIn(type):
    """The metaclass of a stand-in for a class (`_stands_for` in its own namespace): the stand-in
    answers isinstance and issubclass as that class does, so that `isinstance(x, type)` and
    `isinstance(a, np.ndarray)` in a program mean what they say. Its subclasses (a program's
    metaclass, a program's array class) answer as usual."""

    def __instancecheck__(cls, instance: Any) -> bool:
        real = vars(cls).get("_stands_for")
        return isinstance(instance, real) if real else super().__instancecheck__(instance)

    def __subclasscheck__(cls, subclass: type) -> bool:
        real = vars(cls).get("_stands_for")
        return issubclass(subclass, real) if real else super().__subclasscheck__(subclass)


class GuardedType(type, metaclass=_StandIn):
    """The program's `type`: `type(x)` as usual; `type(name, bases, namespace)` refuses the
    special methods a class statement may not define (codegen.policy.PROTOCOL_HOOKS), which a
    namespace dict would otherwise set by string."""

    _stands_for = type

    def __new__(mcs, *args: Any, **kwargs: Any) -> Any:
        if len(args) == 1 and not kwargs:
            kind = type(args[0])
            return PROGRAM_TYPES.get(kind, kind)
        if len(args) == 3 and isinstance(args[2], dict):
            hooks = sorted(PROTOCOL_HOOKS & set(args[2]))
            if hooks:
                raise TypeError(f"type(): defining '{hooks[0]}' is not allowed in the sandbox")
        if mcs is GuardedType:
            return type(*args, **kwargs)
        return super().__new__(mcs, *args, **kwargs)


# -- format templates --------------------------------------------------------------------------

@functools.lru_cache(maxsize=512)
def check_template(template: str) -> None:
    """Refuse a format template whose fields read private or dunder attributes (`{0.__class__}`,
    `{x._runtime}`), nested specs included. A malformed template raises ValueError, as
    formatting it would."""
    for _, field, spec, _ in _string.formatter_parser(template):
        if field is None:
            continue
        _, rest = _string.formatter_field_name_split(field)
        if any(is_attribute and str(key).startswith("_") for is_attribute, key in rest):
            raise ValueError(f"the format field '{{{field}}}' is not allowed in the sandbox: "
                             "fields may not name attributes starting with '_'")
        if spec:
            check_template(spec)


GUARDED_READS = frozenset({"format", "format_map", "dump", "resize"})


def read_attribute(value: Any, name: str) -> Any:
    """`value.<name>` for a name in GUARDED_READS, as the instrumented program reads it.

    `.format` and `.format_map`: a string's template is checked first, and `str.format` itself
    checks the template it is given. `.dump` and `.resize` of numpy's arrays and scalars are
    checked here because numpy's types cannot be changed (`_numpy_method`).
    """
    method = getattr(value, name)
    if name in ("dump", "resize"):
        return _numpy_method(value, name, method)
    if isinstance(value, str):
        check_template(str(value))
        return method
    if isinstance(value, type) and issubclass(value, str):
        def checked(template: Any, *args: Any, **kwargs: Any) -> Any:
            if isinstance(template, str):
                check_template(str(template))
            return method(template, *args, **kwargs)
        return checked
    return method


def _numpy_method(value: Any, name: str, method: Any) -> Any:
    """`.dump` pickles an array or scalar to a file: refused. `.resize(..., refcheck=False)`
    moves an array's memory from under its views, which then read and write freed memory: the
    check is forced on."""
    numpy = sys.modules.get("numpy")
    kinds = () if numpy is None else (numpy.ndarray, numpy.generic)
    if not (isinstance(value, kinds) or (isinstance(value, type) and issubclass(value, kinds))):
        return method
    if name == "dump":
        raise ValueError(f"numpy's .dump() writes a file, which is not available in the sandbox: "
                         f"{_FILES_HINT}")

    @functools.wraps(method)
    def resize(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("refcheck", True) is not True:
            raise ValueError("resize(refcheck=False) is not available in the sandbox: use "
                             "np.resize(array, shape), which makes a new array")
        return method(*args, **kwargs)

    return resize


# -- pandas and numpy --------------------------------------------------------------------------

def harden_pandas() -> None:
    """Close the ways pandas reads attributes by name or reaches files at run time. Idempotent;
    skips what a pandas version lacks."""
    pandas = sys.modules["pandas"]
    if getattr(pandas, "_sluice_hardened", False):
        return
    computation = sys.modules.get("pandas.core.computation.eval")
    original_eval = getattr(computation, "eval", None)
    if original_eval is not None:
        guarded = _guard_expressions(original_eval)
        vars(computation)["eval"] = guarded
        vars(pandas)["eval"] = guarded
    apply_class = getattr(sys.modules.get("pandas.core.apply"), "Apply", None)
    if apply_class is not None and callable(getattr(apply_class, "_apply_str", None)):
        apply_class._apply_str = _guard_string_functions(apply_class._apply_str)
    for owner in (pandas.DataFrame, pandas.Series):
        _guard_files(owner, f"{owner.__name__}.")
    _guard_files(pandas, "pandas.")
    for owner, name, check in _SKIPPABLE_CHECKS:
        _force_check(getattr(pandas, owner), name, check)
    windows = getattr(sys.modules.get("pandas.core.window.rolling"), "BaseWindow", None)
    if windows is not None:
        windows._check_window_bounds = _bounds_in_range(windows._check_window_bounds)
    typing = importlib.import_module("pandas.api.typing")
    _guard_files(typing, "pandas.api.typing.")
    for owner in (pandas.DataFrame, pandas.Series, *vars(typing).values()):
        if isinstance(owner, type):
            _guard_named_functions(owner)
    vars(pandas)["_sluice_hardened"] = True


def _guard_files(owner: Any, label: str) -> None:
    """Text writers of `owner` (a class or module) that refuse a path; file helpers refused."""
    for name in TEXT_WRITERS & set(dir(owner)):
        setattr(owner, name, _without_path(getattr(owner, name), name))
    for name in FILE_HELPERS & set(dir(owner)):
        setattr(owner, name, _refused(label + name))


def harden_numpy() -> None:
    """np.load unpickles with `allow_pickle` (the third positional argument), np.save writes a
    file: both refused, with the rest of numpy's file helpers; the array classes refuse raw
    buffers. Idempotent."""
    numpy = sys.modules["numpy"]
    for name in ({"load", "save"} | FILE_HELPERS) & set(vars(numpy)):
        vars(numpy)[name] = _refused(f"numpy.{name}")
    _guard_array_classes(numpy)


_HARDENING: dict[str, Callable[[], None]] = {"pandas": harden_pandas, "numpy": harden_numpy}
# What a program gets for numpy's array classes, from a module or from `type(x)`: stand-ins.
PROGRAM_TYPES: dict[type, type] = {}


def _guard_array_classes(numpy: types.ModuleType) -> None:
    """`np.ndarray(shape, object, buffer)` and `np.recarray(..., buf=)` read object pointers from
    a buffer the program filled: any address becomes an object. The program sees stand-ins that
    refuse a buffer and are otherwise the real classes (subclassing, isinstance and type()
    comparisons work as before): modules hand them out (`SafeModule`), and so does `type()`.
    numpy's own modules keep the real classes, which compiled libraries check at import."""
    for real, buffer in ((numpy.ndarray, "buffer"), (numpy.recarray, "buf")):
        PROGRAM_TYPES.setdefault(real, _stand_in(real, buffer))


def _stand_in(real: type, buffer: str) -> type:
    def __new__(cls: type, *args: Any, **kwargs: Any) -> Any:
        if (len(args) > 2 and args[2] is not None) or kwargs.get(buffer) is not None:
            raise ValueError(f"{real.__name__}(..., {buffer}=...) is not available in the "
                             "sandbox: make arrays with np.array or np.frombuffer")
        return real.__new__(real if cls is guarded else cls, *args, **kwargs)

    guarded = _StandIn(real.__name__, (real,), {
        "__new__": __new__, "__module__": real.__module__, "__doc__": real.__doc__,
        "_stands_for": real})
    return guarded


def _refused(label: str) -> Callable[..., Any]:
    def refused(*args: Any, **kwargs: Any) -> Any:
        raise ValueError(f"{label}() is not available in the sandbox: {_FILES_HINT}")

    refused._sluice_guarded = True  # type: ignore[attr-defined]
    return refused


def _without_path(original: Callable[..., Any], name: str) -> Callable[..., Any]:
    """`original` (to_csv and the other text writers), refusing its first argument, the path or
    buffer: called without one it returns the text."""
    target = list(inspect.signature(original).parameters)[1]

    @functools.wraps(original)
    def guarded(self: Any, *args: Any, **kwargs: Any) -> Any:
        if (args and args[0] is not None) or kwargs.get(target) is not None:
            raise ValueError(f".{name}() with a path is not available in the sandbox: call it "
                             f"without one to get the text, or {_FILES_HINT}")
        return original(self, *args, **kwargs)

    return guarded


# Checks a caller may skip, of codes that pandas' compiled code then uses as indexes unchecked:
# `Categorical.from_codes([0, 120], ["a", "b"], validate=False)` crashed the child on first use.
_SKIPPABLE_CHECKS = (("Categorical", "from_codes", "validate"),
                     ("MultiIndex", "__new__", "verify_integrity"),
                     ("MultiIndex", "set_codes", "verify_integrity"),
                     ("MultiIndex", "set_levels", "verify_integrity"))


def _force_check(owner: type, name: str, check: str) -> None:
    """`owner.name` with its argument `check` always True, however it is passed."""
    raw = inspect.getattr_static(owner, name)
    function = raw.__func__ if isinstance(raw, classmethod | staticmethod) else raw
    position = list(inspect.signature(function).parameters).index(check)

    @functools.wraps(function)  # pandas makes MultiIndexes often: no binding per call
    def checked(*args: Any, **kwargs: Any) -> Any:
        if len(args) > position:
            args = (*args[:position], True, *args[position + 1:])
        else:
            kwargs[check] = True
        return function(*args, **kwargs)

    wrapped: Any = checked
    if isinstance(raw, classmethod):
        wrapped = classmethod(checked)
    elif isinstance(raw, staticmethod):
        wrapped = staticmethod(checked)
    setattr(owner, name, wrapped)


def _bounds_in_range(original: Callable[..., Any]) -> Callable[..., Any]:
    """Window bounds come from the program's own indexer (`pd.api.indexers.BaseIndexer`), and
    pandas' compiled aggregations read `values[start:end]` without bounds checks: a bound past
    the data read other memory. pandas checks only their lengths; this checks their values."""
    @functools.wraps(original)
    def check(self: Any, start: Any, end: Any, num_vals: int) -> None:
        original(self, start, end, num_vals)
        if len(start) and not (start.min() >= 0 and end.max() <= num_vals
                               and (start <= end).all()):
            raise ValueError("window bounds must lie within the data (0 <= start <= end <= "
                             f"{num_vals}) in the sandbox")

    return check


def _guard_expressions(original: Callable[..., Any]) -> Callable[..., Any]:
    """pandas' eval, behind DataFrame.query and pd.eval: its expressions read attributes and
    call methods of columns (`a.values.tofile('x')`), which the policy never sees."""
    def guarded_eval(expr: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(expr, str) and _unsafe_expression(expr):
            raise ValueError("this expression is not allowed in the sandbox: no '__' names, "
                             "no attributes of @variables and none the policy refuses (private "
                             "ones, files); compute the value first")
        # pandas finds @variables `level` frames up from its caller; this wrapper is one more.
        kwargs["level"] = int(kwargs.get("level", 0)) + 1
        return original(expr, *args, **kwargs)

    return guarded_eval


_TAKES_FUNCTION_NAMES = ("agg", "aggregate", "apply", "transform")


def _guard_named_functions(owner: type) -> None:
    """agg/apply/transform of `owner` (frames, group-bys, windows, resamplers) take functions by
    name and read them with getattr: `gb['b'].agg('__getattribute__', '_obj')` read any
    attribute. Names the policy refuses are refused here, in lists and dicts of names too."""
    for name in _TAKES_FUNCTION_NAMES:
        original = getattr(owner, name, None)
        if callable(original) and not getattr(original, "_sluice_guarded", False):
            setattr(owner, name, _refusing_names(original))


def _refusing_names(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def guarded(self: Any, *args: Any, **kwargs: Any) -> Any:
        names = _function_names(args[0] if args else kwargs.get("func"))
        for value in kwargs.values():  # named aggregation: total=("column", "sum")
            if isinstance(value, tuple) and len(value) == 2:
                names += _function_names(value[1])
        for name in names:
            _check_function_name(name)
        return original(self, *args, **kwargs)

    guarded._sluice_guarded = True  # type: ignore[attr-defined]
    return guarded


def _function_names(func: Any) -> list[str]:
    """The names in a function argument: a name, a list of them, or a dict of either."""
    if isinstance(func, str):
        return [func]
    if isinstance(func, list | tuple):
        return [f for f in func if isinstance(f, str)]
    if isinstance(func, dict):
        return [name for value in func.values() for name in _function_names(value)]
    return []


def _refused_name(name: str) -> bool:
    """Whether a program may not reach the attribute `name` by a string: the policy refuses it
    in code, or only the attribute hook makes it safe there."""
    return name in GUARDED_READS or attribute_problem(name) is not None


def _check_function_name(name: str) -> None:
    if _refused_name(name):
        raise ValueError(f"'{name}' cannot be used as a function name in the sandbox")


def _unsafe_expression(expr: str) -> bool:
    if _UNSAFE_EXPRESSION.search(expr):
        return True
    return any(_refused_name(name) for name in _ATTRIBUTE_IN_EXPRESSION.findall(expr))


def _guard_string_functions(original: Callable[..., Any]) -> Callable[..., Any]:
    def guarded_apply_str(self: Any, obj: Any, func: str, *args: Any, **kwargs: Any) -> Any:
        _check_function_name(func)
        return original(self, obj, func, *args, **kwargs)

    return guarded_apply_str
