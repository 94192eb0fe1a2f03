"""The contract every connector follows (ARCHITECTURE.md, "AI-friendly integrations").

An integration is a class whose public async methods marked with `@action` are what generated
programs may call. Their signatures and docstrings become the typed stubs the model reads, so write
docstrings for the model. Each action declares whether it reads or writes: in preview mode writes
are recorded instead of performed, and budgets count them.

Actions may return `Resource` handles (for example `sheets.open("signups")` returns a `Sheet`);
calls on a handle are dispatched back to its integration with the handle's key. Values that cross
the sandbox boundary go through `integrations.wire`.
"""

from __future__ import annotations

import functools
import inspect
import types
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, ParamSpec, TypeVar

if TYPE_CHECKING:  # the sandbox imports this module: it must not load asyncio
    from integrations.kept import KeptConnections

Effect = Literal["read", "write"]
P = ParamSpec("P")
R = TypeVar("R")

_ACTION_ATTR = "__sluice_action__"


@dataclass(frozen=True)
class ActionSpec:
    """What the runtime needs to know about one action."""

    name: str
    effect: Effect
    preview: str = ""  # how a previewed write is described, e.g. "send {n} emails"
    idempotent: bool = False  # doing it twice has the effect of doing it once


def action(
    effect: Effect, *, preview: str = "", idempotent: bool = False
) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Mark an async method as an action that generated programs may call.

    A write a crash left unconfirmed is first looked up with the connector's `confirm_<action>`
    (see `Found`). When that cannot tell, `idempotent` writes are redone, others only when
    `Integration.redo_is_safe` says so; the rest are raised to a person.
    """

    def mark(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"action {fn.__qualname__} must be async")
        setattr(fn, _ACTION_ATTR, ActionSpec(fn.__name__, effect, preview, idempotent))
        return fn

    return mark


@functools.cache
def actions_of(cls: type) -> Mapping[str, ActionSpec]:
    """The actions a class declares, in definition order (worked out once per class: every
    call a program makes asks)."""
    found: dict[str, ActionSpec] = {}
    for klass in reversed(cls.__mro__):
        for name, member in vars(klass).items():
            spec = getattr(member, _ACTION_ATTR, None)
            if isinstance(spec, ActionSpec):
                found[name] = spec
    return types.MappingProxyType(found)


@dataclass(frozen=True)
class Preview:
    """What a write would do, for a sample run: shown to people, and `result` to the program.

    A connector describes a write `act` with a method `preview_act` taking the same arguments
    and returning a Preview, computed without changing anything (read what it needs to show
    before → after). Writes without one are described by their call.
    """

    text: str  # one line: "email to ana@example.com: “Your budget”"
    details: dict[str, Any]  # the whole of it: recipients, subject, body; or before → after
    result: Any = None  # what the action would have returned


@dataclass(frozen=True)
class Found:
    """Whether a write a crash left unconfirmed was done, as the service shows it.

    A connector checks a write `act` with a method `confirm_act` taking the same arguments (the
    idempotency key included) and returning a Found, or None when it cannot tell: the row holds
    the values, the outbox has the Message-ID. It only looks; it never changes anything.
    """

    done: bool  # False: it was not done (or was undone since), so doing it now is no repeat
    result: Any = None  # what the action returned, when done


@dataclass(slots=True)
class EffectCall:
    """One call from the sandboxed program, as it arrives at the worker.

    `args`/`kwargs` are still in wire form (see `integrations.wire`); `handle` is
    `(integration, resource_type, key)` when the call is on a resource handle, else None and
    `integration` names the integration object the program called. Treat it as read-only (make
    a new one to change it). It is not frozen: one is built per call, a resumed run's replayed
    calls included, and a frozen dataclass sets each field through `object.__setattr__` (2.4 µs
    a call against 0.8 µs here).
    """

    integration: str
    action: str
    args: list[Any]
    kwargs: dict[str, Any]
    handle: tuple[str, str, str] | None = None
    path: str = ""  # deterministic place in the program, e.g. "each#1/item#4711/call#1"


class Row(dict[str, Any]):
    """One row of a table, addressed by identity (`row.id`), with values by column header."""

    def __init__(self, row_id: str, values: dict[str, Any] | None = None) -> None:
        super().__init__(values or {})
        self.id = row_id

    def __repr__(self) -> str:
        return f"Row({self.id!r}, {dict(self)!r})"


class Resource:
    """A handle to something inside an integration (a sheet, a mailbox folder, a table).

    Subclasses declare `@action` methods like integrations do. On the worker side a resource is
    bound to its integration and key; in the sandbox it is a proxy that only holds `key`.
    """

    def __init__(self, key: str, owner: Integration | None = None) -> None:
        self.key = key
        self.owner = owner

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.key!r})"


class Integration:
    """Base class of connectors. `name` is the variable the program sees (`sheets`, `mail`)."""

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    resources: ClassVar[tuple[type[Resource], ...]] = ()

    async def describe(self) -> dict[str, Any]:
        """The user-defined schema the model needs (sheet columns, options, row counts)."""
        return {}

    def redo_is_safe(self, spec: ActionSpec) -> bool:
        """Whether an unconfirmed write of `spec` may be done again (after a crash)."""
        return spec.idempotent

    def bind(self, resource_type: str, key: str) -> Resource:
        """The resource handle `resource_type(key)` bound to this integration, for dispatch."""
        for cls in self.resources:
            if cls.__name__ == resource_type:
                return cls(key, self)
        raise KeyError(f"{self.name} has no resource type {resource_type!r}")

    async def ready(self, *, kept: KeptConnections | None = None) -> Integration:
        """Called once by the catalog builder before the catalog is made; returns the integration
        to use. Connectors whose actions come from the service (MCP tools) connect here, or take
        the connection `kept` holds for them, and return an instance of a class made for what
        they found."""
        return self

    async def aclose(self) -> None:
        """Release connections; called once when the worker stops."""
