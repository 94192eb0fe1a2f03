"""What a sandboxed program sees (ARCHITECTURE.md, "The sandbox holds no secrets" and "Durable
execution by journal and replay").

Runs inside the sandbox child only. Integrations are proxies whose actions send "call" frames over
the channel and block for the answer; resource handles that come back become proxies too. Every
call carries its deterministic path (see `workers._sandbox_loops`), and the clock is a call too, so
the worker can journal it. `each()` maps a function over items, several at once, recording failures
instead of stopping, and reports throttled progress. Builtins are restricted; `__import__` only
imports allow-listed modules.
"""

from __future__ import annotations

import builtins
import collections
import contextlib
import datetime as dt
import itertools
import sys
import threading
import time
import traceback
import types
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NoReturn

from codegen.policy import attribute_problem, is_forbidden_module
from core.errors import IntegrationError
from integrations import wire
from integrations.base import Resource
from workers._channel import CallRouter, FdChannel, FrameError
from workers._sandbox_guards import PROGRAM_TYPES, GuardedType, explained, read_attribute
from workers._sandbox_loops import Batch, Progress, Scopes, ThreadBudget, length, track

PROGRAM_FILE = "<program>"
LOOP_HOOK = "__sluice_loop__"  # the name instrumented `for` loops call; programs cannot spell it
ATTRIBUTE_HOOK = "__sluice_attr__"  # what instrumented reads of GUARDED_READS call
MAX_FAILURES = 1000
_TICK_S = 0.2
_REPLAYED_BATCH = 512  # replayed calls sent to the parent in one frame
_FLUSH_BYTES = 8192
_SAFE_BUILTINS = (
    "abs", "all", "any", "ascii", "bin", "bool", "bytearray", "bytes", "callable", "chr",
    "classmethod", "complex", "dict", "dir", "divmod", "enumerate", "filter", "float", "format",
    "frozenset", "hasattr", "hash", "hex", "id", "int", "isinstance", "issubclass", "iter", "len",
    "list", "map", "max", "min", "next", "object", "oct", "ord", "pow", "property", "range",
    "repr", "reversed", "round", "set", "slice", "sorted", "staticmethod", "str", "sum", "super",
    "tuple", "type", "zip", "Ellipsis", "NotImplemented", "__build_class__",
)
_RESERVED = frozenset({"key", "owner", "integration"})


class CpuLimitExceeded(BaseException):
    """Raised in the program at the CPU soft limit; a BaseException so `except Exception` in the
    program cannot swallow it."""


class RunStopped(BaseException):
    """The worker stopped the run (cancelled, over budget, not deterministic). A BaseException so
    that neither `except Exception` in the program nor each() catches it."""


class Runtime:
    """The child's side of the conversation: calls, clock, output, loops and failures."""

    def __init__(self, channel: FdChannel, start: dict[str, Any],
                 replay: dict[str, Any] | None = None) -> None:
        self.channel = channel
        # Results of the calls a resumed run had done before, by path (see `call`).
        self._replay: dict[str, Any] = replay or {}
        # Answered here, not yet sent to be checked.
        self._replayed: collections.deque[dict[str, Any]] = collections.deque()
        manifest = start.get("manifest") or {}
        self.integrations: dict[str, Any] = manifest.get("integrations") or {}
        self.resources: dict[str, Any] = manifest.get("resources") or {}
        self.limit_items: int | None = start.get("limit_items")
        only = start.get("only_items")
        self.only_items: dict[str, set[int]] | None = (
            {str(k): {int(i) for i in v} for k, v in only.items()} if isinstance(only, dict)
            else None)
        self.preview = bool(start.get("preview"))
        # Send a little more than the parent keeps, so that it notices the overflow.
        self._output_left = int(start.get("output_bytes") or 256 * 1024) + 1024
        self._output = threading.RLock()  # buffered output, then the frame it must precede
        self._buffer: list[str] = []
        self._buffered = 0
        self._last_flush = time.monotonic()
        self._classes: dict[str, type[ResourceProxy]] = {}
        self._injected: dict[str, Any] = {}
        self.router = CallRouter(recv=channel.recv, send=self.send,
                                 readable=channel.readable)
        self.scopes = Scopes()
        self.threads = ThreadBudget()
        self.stopped: str | None = None  # why the worker stopped the run
        self.failures: list[dict[str, Any]] = []
        self._failures_lock = threading.Lock()
        self.progress = Progress(self.send)

    # -- channel ----------------------------------------------------------------------------
    def send(self, frame: dict[str, Any]) -> None:
        """Send a frame after any buffered output and replayed calls, so the parent sees things
        in order (the order frames are queued in; the writing happens outside the lock)."""
        with self._output:
            writer = self._queue_output()
            writer = self._queue_replayed() or writer
            writer = self.channel.queue(frame) or writer
        if writer:
            self.channel.write_queued()

    def call(self, integration: str, action: str, args: tuple[Any, ...], kwargs: dict[str, Any],
             handle: tuple[str, str, str] | None = None) -> Any:
        """Perform one call through the parent and return its decoded result.

        Raises:
            IntegrationError: the call failed; its message is for the program.
            RunStopped: the worker stopped the run; every later call raises it too.
        """
        frame = {"op": "call", "integration": integration, "action": action,
                 "args": wire.encode(args), "kwargs": wire.encode(kwargs)}
        if handle:  # absent is None: a smaller frame
            frame["handle"] = list(handle)
        frame["path"] = path = self.scopes.current().next_call()
        if self._replay:
            recorded = self._replay.pop(path, _MISSING)
            if recorded is not _MISSING:
                self._note_replayed(frame)
                return wire.decode(recorded, self.handle)
        reply = self.router.request(frame)
        if "error" in reply:
            self._raise(reply["error"] if isinstance(reply["error"], dict) else {})
        return wire.decode(reply.get("ok"), self.handle)

    def _note_replayed(self, frame: dict[str, Any]) -> None:
        """A call answered from the journal: the parent still checks it (the same call as
        recorded, else the run stops) and counts it, from batches sent without waiting. The
        queue is a deque, appended to without the lock (threads of each() add at once); a full
        batch is sent by one of them while the others go on, rather than queue on the lock."""
        replayed = self._replayed
        replayed.append(frame)
        if len(replayed) < _REPLAYED_BATCH or not self._output.acquire(blocking=False):
            return
        try:
            writer = self._queue_replayed()
        finally:
            self._output.release()
        if writer:
            self.channel.write_queued()

    def _queue_replayed(self) -> bool:
        """Queue the replayed calls not sent yet (the caller holds `_output`); True when the
        caller is to write the channel's queue."""
        replayed = self._replayed
        calls = [replayed.popleft() for _ in range(len(replayed))]  # later appends stay
        return bool(calls) and self._queue_calls(calls)

    def _queue_calls(self, calls: list[dict[str, Any]]) -> bool:
        try:
            return self.channel.queue({"op": "replayed", "calls": calls})
        except FrameError:
            if len(calls) == 1:
                raise
            half = len(calls) // 2  # too large for one frame: in two
            first = self._queue_calls(calls[:half])
            return self._queue_calls(calls[half:]) or first

    def _raise(self, error: dict[str, Any]) -> NoReturn:
        message = str(error.get("message") or "the integration call failed")
        if error.get("type") == "RunStopped":
            self.stopped = self.stopped or message
            self.router.abort(lambda: RunStopped(message))  # calls in flight stop too
            raise RunStopped(message)
        raise IntegrationError(message)

    def handle(self, integration: str, resource_type: str, key: str) -> ResourceProxy:
        """A proxy for the resource handle `(integration, resource_type, key)`."""
        cls = self._classes.get(resource_type)
        if cls is None:
            # Named after the type, so that `wire.encode` sends the handle back as that type.
            cls = self._classes[resource_type] = _proxy_class(resource_type)
        spec = self.resources.get(resource_type) or {}
        return cls(key, integration=integration, actions=spec.get("actions") or {}, runtime=self)

    # -- clock ------------------------------------------------------------------------------
    def now(self) -> dt.datetime:
        """The current date and time, as the worker's clock (and journal) says."""
        value = self.call("runtime", "now", (), {})
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = dt.datetime.fromisoformat(value)
        if not isinstance(value, dt.datetime):
            raise IntegrationError(f"the runtime answered now() with {value!r}, not a datetime")
        return value

    def today(self) -> dt.date:
        """Today's date, from now()."""
        return self.now().date()

    # -- output -----------------------------------------------------------------------------
    def print(self, *values: object, sep: str | None = " ", end: str | None = "\n",
              file: object = None, flush: bool = False) -> None:
        """The program's print(): its text goes to the parent."""
        text = (" " if sep is None else str(sep)).join(str(v) for v in values)
        self.write(text + ("\n" if end is None else str(end)))

    def write(self, text: str) -> None:
        """Buffer program output; drop what is beyond the limit."""
        with self._output:
            if self._output_left <= 0:
                return
            text = text[: self._output_left]
            self._output_left -= len(text)
            self._buffer.append(text)
            self._buffered += len(text)
            if self._buffered >= _FLUSH_BYTES or time.monotonic() - self._last_flush >= _TICK_S:
                self.flush_output()

    def flush_output(self) -> None:
        """Send buffered output as one "print" frame."""
        with self._output:
            writer = self._queue_output()
        if writer:
            self.channel.write_queued()

    def _queue_output(self) -> bool:
        """Queue buffered output as a "print" frame (the caller holds `_output`); True when
        the caller is to write the channel's queue."""
        self._last_flush = time.monotonic()
        if not self._buffer:
            return False
        text, self._buffer, self._buffered = "".join(self._buffer), [], 0
        return self.channel.queue({"op": "print", "text": text})

    # -- loops ------------------------------------------------------------------------------
    def each(self, items: Iterable[Any], fn: Callable[[Any], Any], *,
             concurrency: int = 1) -> list[Any]:
        """Call `fn` on every item and return the results in item order (None where it failed).

        A failing item is recorded (loop, index, item, error) and the loop goes on. Up to
        `concurrency` items run at once, in threads. With a run limit only the first N items are
        visited. A DataFrame is visited row by row, as dicts.
        """
        if not callable(fn):
            raise TypeError("each(items, fn): fn must be a function that takes one item")
        if not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError("each(..., concurrency=N): N must be a positive integer")
        rows = _rows_of(items)
        available = length(items)
        if self.limit_items is not None:
            rows = itertools.islice(rows, self.limit_items)
        scope = self.scopes.current()
        loop = scope.next_loop()
        visit = None if self.only_items is None else sorted(self.only_items.get(loop, ()))
        batch = Batch(loop, fn, list(rows), scopes=self.scopes,
                      progress=None if scope.in_item else self.progress,
                      record=self._record_failure, visit=visit, available=available)
        helpers = self.threads.take(max(1, min(concurrency, len(batch.order))) - 1)
        return batch.run(helpers, self.threads)

    def _record_failure(self, loop: str, index: int, item: Any, exc: Exception) -> None:
        shown = explained(exc)
        failure = {"loop": loop, "index": index, "item": _short_repr(item),
                   "error": f"{type(shown).__name__}: {shown}"[:500], "line": program_line(exc)}
        with self._failures_lock:
            if len(self.failures) < MAX_FAILURES:
                self.failures.append(failure)

    def track(self, iterable: Iterable[Any], loop: str) -> Iterator[Any]:
        """What an instrumented top-level `for` loop iterates: the items, with progress."""
        return track(iterable, loop, scopes=self.scopes, progress=self.progress)

    # -- namespace --------------------------------------------------------------------------
    def namespace(self, module: types.ModuleType) -> dict[str, Any]:
        """Fill `module` (the program's `__main__`) with what the program may use."""
        ns = module.__dict__
        ns.update({
            "__builtins__": self.builtins(), "__name__": "__main__", LOOP_HOOK: self.track,
            ATTRIBUTE_HOOK: read_attribute,
            "each": self.each, "now": self.now, "today": self.today,
            "IntegrationError": IntegrationError,
        })
        for name, spec in self.integrations.items():
            ns[name] = IntegrationProxy(name, (spec or {}).get("actions") or {}, self)
        self._injected = dict(ns)
        return ns

    def restore(self, ns: dict[str, Any], variables: dict[str, Any]) -> None:
        """Put a thread's saved variables into the namespace; what the runtime provides wins."""
        for name, value in variables.items():
            if name.isidentifier() and not name.startswith("_") and name not in self._injected:
                ns[name] = value

    def program_variables(self, ns: dict[str, Any]) -> dict[str, Any]:
        """The names the program bound: not what the runtime provided, nor integration actions."""
        return {name: value for name, value in ns.items()
                if self._injected.get(name, _MISSING) is not value
                and not isinstance(value, IntegrationProxy | Action)}

    def builtins(self) -> dict[str, Any]:
        """Restricted builtins: no open, exec, eval, compile, getattr, globals, input, ..."""
        table = {name: getattr(builtins, name) for name in _SAFE_BUILTINS}
        table.update({name: value for name, value in vars(builtins).items()
                      if isinstance(value, type) and issubclass(value, BaseException)})
        table["print"] = self.print
        table["type"] = GuardedType
        table["__import__"] = guarded_import
        return table


_MISSING = object()


def guarded_import(name: str, globals: Any = None, locals: Any = None,
                   fromlist: Iterable[str] | None = (), level: int = 0) -> types.ModuleType | None:
    """`__import__` for programs: allow-listed modules only, absolute, no private names.

    C code running under the program's frame imports through this too (`datetime.strptime`
    needs `_strptime`, `ndarray.mean` needs `numpy._core._methods`): CPython's
    `PyImport_Import` passes a list as `fromlist`, where an import statement passes None or a
    tuple. Such an import loads the module for the library (the import gate still applies) and
    returns nothing, since `PyImport_Import` takes the module from `sys.modules`.
    """
    if isinstance(fromlist, list):
        builtins.__import__(name, None, None, (), 0)
        return None
    refused = level != 0 or (name != "__future__" and is_forbidden_module(name))
    bad = [n for n in fromlist or () if attribute_problem(n) is not None]
    if refused or bad:
        raise ImportError(f"'{name}' cannot be imported in the sandbox")
    module: types.ModuleType = builtins.__import__(name, globals, locals, tuple(fromlist or ()), 0)
    target = sys.modules.get(name, module) if fromlist else module
    for item in fromlist or ():
        value = getattr(target, item, None)
        if isinstance(value, types.ModuleType) and not module_allowed(value):
            raise ImportError(f"'{name}.{item}' cannot be imported in the sandbox")
    return SafeModule(module)


def module_allowed(module: types.ModuleType) -> bool:
    """Whether a program may hold `module`: its root is allow-listed and it is no gadget.

    A module reached as an attribute counts by its own name: `re.enum` is `enum` (refused), and
    `enum.bltns` is the real builtins.
    """
    return not is_forbidden_module(module.__name__)


class SafeModule(types.ModuleType):
    """What a program gets for an imported module: its public names, and another module only
    when the program could import that module itself."""

    def __init__(self, module: types.ModuleType) -> None:
        super().__init__(module.__name__)
        object.__setattr__(self, "_sluice_module", module)

    def __getattr__(self, name: str) -> Any:
        module: types.ModuleType = object.__getattribute__(self, "_sluice_module")
        problem = attribute_problem(name)
        if problem is not None:
            raise AttributeError(f"module {module.__name__!r} in the sandbox: {problem[1]}")
        value = getattr(module, name)
        if isinstance(value, type):
            return PROGRAM_TYPES.get(value, value)
        if isinstance(value, types.ModuleType):
            if not module_allowed(value):
                raise AttributeError(f"module {module.__name__!r}: {name!r} is a module the "
                                     "sandbox does not allow")
            return SafeModule(value)
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("modules cannot be changed in the sandbox")

    def __dir__(self) -> list[str]:
        module: types.ModuleType = object.__getattribute__(self, "_sluice_module")
        return [n for n in dir(module) if not n.startswith("_")]

    def __repr__(self) -> str:
        return f"<module {self.__name__!r}>"


class _ActionHolder:
    """Something with actions as attributes; a missing one gets a helpful AttributeError."""

    _label: str
    _actions: tuple[str, ...]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        listed = ", ".join(self._actions) or "none"
        raise AttributeError(f"{self._label} has no action '{name}'; its actions: {listed}")


class Action:
    """One callable action of an integration or resource handle."""

    def __init__(self, runtime: Runtime, integration: str, action: str,
                 handle: tuple[str, str, str] | None = None) -> None:
        self._runtime = runtime
        self._integration = integration
        self._action = action
        self._handle = handle

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._runtime.call(self._integration, self._action, args, kwargs, self._handle)

    def __repr__(self) -> str:
        return f"<action {self._integration}.{self._action}>"


class IntegrationProxy(_ActionHolder):
    """The program's view of one integration (`sheets`, `mail`)."""

    def __init__(self, name: str, actions: dict[str, Any], runtime: Runtime) -> None:
        self._label = name
        self._actions = tuple(actions)
        for action in actions:
            setattr(self, action, Action(runtime, name, action))

    def __repr__(self) -> str:
        return f"<integration {self._label}>"


class ResourceProxy(Resource, _ActionHolder):
    """The program's view of a resource handle; its class is named after the resource type."""

    def __init__(self, key: str, *, integration: str, actions: dict[str, Any],
                 runtime: Runtime) -> None:
        super().__init__(key)
        self.integration = integration
        self._label = f"{type(self).__name__}({key!r})"
        self._actions = tuple(a for a in actions if a not in _RESERVED)
        handle = (integration, type(self).__name__, key)
        for action in self._actions:
            setattr(self, action, Action(runtime, integration, action, handle))


def _proxy_class(resource_type: str) -> type[ResourceProxy]:
    return types.new_class(resource_type, (ResourceProxy,))


def program_line(exc: BaseException) -> int | None:
    """The line of the program where `exc` was raised (its innermost program frame)."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == PROGRAM_FILE]
    return frames[-1].lineno if frames else None


def _short_repr(item: Any) -> str:
    try:
        text = repr(item)
    except Exception:
        text = f"<{type(item).__name__}>"
    return text if len(text) <= 200 else text[:197] + "..."


def _rows_of(items: Any) -> Any:
    pandas = sys.modules.get("pandas")
    if pandas is not None and isinstance(items, pandas.DataFrame):
        return items.to_dict("records")
    return items
