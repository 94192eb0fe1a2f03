"""The integrations a job can use, seen by each side of the sandbox boundary.

See ARCHITECTURE.md, "AI-friendly integrations" and "The sandbox holds no secrets". One `Catalog`
built from integration objects gives:

- the model: typed Python stubs with the actions' docstrings (`stubs()`, rendered by
  `integrations.stubs`), and the user-defined schema (`describe()`);
- the sandbox: which names exist and whether each action reads or writes (`manifest()`);
- the worker: `dispatch()` of a call that arrived over RPC, plus `effect_of()` and
  `describe_action()` for previews, journals and budgets.
"""

from __future__ import annotations

import asyncio
import difflib
import functools
import inspect
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from core.errors import IntegrationError
from core.protocols import Completion, ModelClient
from integrations.ai import AI
from integrations.base import (
    ActionSpec,
    Effect,
    EffectCall,
    Found,
    Integration,
    Preview,
    Resource,
    Row,
    actions_of,
)
from integrations.mail import LocalMail
from integrations.sheets import LocalSheets
from integrations.stubs import render_stubs, signature_text, stub_classes
from integrations.wire import decode, encode

if TYPE_CHECKING:
    from core.settings import Settings

logger = logging.getLogger(__name__)

# What looks like a credential in error text, and what to leave of it.
_SECRETS = [
    (re.compile(r"(://[^/\s:@]*:)[^@\s]+@"), r"\1***@"),  # user:password@ in URLs
    (re.compile(r"(?i)([?&](?:key|api[_-]?key|token|access_token|sig|signature)=)[^&\s]+"),
     r"\1***"),
    (re.compile(r"(?i)\b(bearer|basic|token)(\s+)[A-Za-z0-9._~+/=-]{6,}"), r"\1\2***"),
    (re.compile(r"(?i)\b(password|passwd|pwd|secret|token|api[_-]?key|authorization)"
                r"(\s*[=:]\s*)\S+"), r"\1\2***"),
]


# Describing calls.


class _Shown:
    """A value that prints as the given text (resource handles in descriptions)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _show(value: Any, width: int = 40) -> str:
    if isinstance(value, Row):
        return f"Row({value.id!r})"
    if isinstance(value, str):
        return repr(value if len(value) <= width else value[: width - 1] + "…")
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {_show(v, 24)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        shown = [_show(v, 24) for v in value[:3]]
        more = [f"… +{len(value) - 3}"] if len(value) > 3 else []
        return "[" + ", ".join(shown + more) + "]"
    text = repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def _safe_message(exc: BaseException) -> str:
    return _safe_message_text(f"{type(exc).__name__}: {exc}")


def _safe_message_text(text: str) -> str:
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text if len(text) <= 300 else text[:299] + "…"


def scrub(text: str, secrets: Sequence[str] = ()) -> str:
    """`text` with every secret value, and anything that looks like a credential, as ***."""
    for secret in sorted((s for s in secrets if s and len(s) >= 4), key=len, reverse=True):
        text = text.replace(secret, "***")
    return _safe_message_text(text)


class Catalog:
    """The integrations of one worker, by the names programs use for them."""

    def __init__(self, integrations: Sequence[Integration], *,
                 secrets: Sequence[str] = ()) -> None:
        """`secrets`: values (API keys, passwords) scrubbed from any message the program sees."""
        self.secrets = tuple(s for s in secrets if s and len(s) >= 4)
        self.integrations: dict[str, Integration] = {}
        for integration in integrations:
            if integration.name in self.integrations:
                raise ValueError(f"two integrations are named {integration.name!r}")
            self.integrations[integration.name] = integration
        self._typeddicts, self.resource_types = stub_classes(
            [type(i) for i in self.integrations.values()]
        )
        for integration in self.integrations.values():
            extra = [r for r in integration.resources if r not in self.resource_types]
            self.resource_types += extra
        self._stubs: str | None = None

    def stubs(self) -> str:
        """Python stub source of everything the program can call (byte-stable)."""
        if self._stubs is None:
            self._stubs = render_stubs({n: type(i) for n, i in self.integrations.items()},
                                       typeddicts=self._typeddicts,
                                       resource_types=self.resource_types)
        return self._stubs

    def manifest(self) -> dict[str, Any]:
        """Names and effects for the sandbox: which calls exist and which of them write."""
        def effects(cls: type) -> dict[str, Any]:
            return {"actions": {name: spec.effect for name, spec in actions_of(cls).items()}}

        return {
            "integrations": {name: effects(type(i)) for name, i in self.integrations.items()},
            "resources": {cls.__name__: effects(cls) for cls in self.resource_types},
        }

    def previews(self) -> dict[str, str]:
        """`integration.action` / `Resource.action` -> how n writes read ("send {n} emails")."""
        owners: list[tuple[str, type]] = [(n, type(i)) for n, i in self.integrations.items()]
        owners += [(cls.__name__, cls) for cls in self.resource_types]
        return {f"{owner}.{name}": spec.preview for owner, cls in owners
                for name, spec in actions_of(cls).items() if spec.preview}

    def action_spec(self, call: EffectCall) -> ActionSpec:
        """The declared action `call` names. Raises IntegrationError when there is none."""
        owner, cls = self._callee(call)
        actions = actions_of(cls)
        if call.action not in actions:
            close = difflib.get_close_matches(call.action, list(actions), n=1, cutoff=0.6)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise IntegrationError(
                f"{owner} has no action '{call.action}'. Actions: {', '.join(actions)}.{hint}",
                integration=owner, action=call.action, actions=list(actions),
            )
        return actions[call.action]

    def safe_to_redo(self, call: EffectCall) -> bool:
        """Whether an unconfirmed write may be done again after a crash."""
        owner = call.handle[0] if call.handle else call.integration
        return self._integration(owner).redo_is_safe(self.action_spec(call))

    def accepts_idempotency_key(self, call: EffectCall) -> bool:
        _owner, cls = self._callee(call)
        method = getattr(cls, call.action, None)
        try:
            return "idempotency_key" in signature_of(method).parameters
        except (TypeError, ValueError):
            return False

    def effect_of(self, call: EffectCall) -> Effect:
        """Whether `call` reads or writes."""
        return self.action_spec(call).effect

    def describe_action(self, call: EffectCall) -> str:
        """One line for people, e.g. "mail.send(to='ana@example.com', subject='Budget?')"."""
        target = call.integration if call.handle is None else (
            f"{call.handle[1]}({call.handle[2]!r})"
        )
        args = decode(call.args, lambda i, t, k: _Shown(f"{t}({k!r})"))
        kwargs = decode(call.kwargs, lambda i, t, k: _Shown(f"{t}({k!r})"))
        kwargs.pop("idempotency_key", None)
        shown = self._named_arguments(call, args, kwargs)
        line = f"{target}.{call.action}({', '.join(shown)})"
        return line if len(line) <= 200 else line[:199] + "…"

    async def dispatch(self, call: EffectCall) -> Any:
        """Perform `call` on its integration and return the result in wire form.

        Raises:
            IntegrationError: for an unknown integration, resource or action, bad arguments,
                or any failure of the action (other errors are wrapped with a safe message).
        """

        async def perform(target: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
            return encode(await getattr(type(target), call.action)(target, *args, **kwargs))

        return await self._guarded(call, perform)

    async def preview(self, call: EffectCall) -> Preview:
        """What the write `call` would do, computed without doing it (for a sample run).

        The connector's `preview_<action>` method describes it when there is one (before →
        after, recipients); otherwise the call itself is the description. `Preview.result` is
        in wire form, for the program.

        Raises:
            IntegrationError: as `dispatch` would for the same call (bad arguments, an unknown
                row, a malformed address), so the sample shows the failure the run would have.
        """

        async def describe(target: Any, args: list[Any], kwargs: dict[str, Any]) -> Preview:
            method = getattr(type(target), f"preview_{call.action}", None)
            if method is None:
                return Preview(text=self.describe_action(call), details={})
            shown: Preview = await method(target, *args, **kwargs)
            return Preview(text=self._scrub(shown.text), details=shown.details,
                           result=encode(shown.result))

        preview: Preview = await self._guarded(call, describe)
        return preview

    async def confirm(self, call: EffectCall) -> Found | None:
        """Whether the write `call`, left unconfirmed by a crash, was done, as its connector's
        `confirm_<action>` finds it (`Found.result` in wire form). None when the connector has
        no such check or cannot tell, including when looking fails (logged): the caller then
        decides between a redo and a person, as without a check."""

        async def look(target: Any, args: list[Any], kwargs: dict[str, Any]) -> Found | None:
            method = getattr(type(target), f"confirm_{call.action}", None)
            if method is None:
                return None
            found: Found | None = await method(target, *args, **kwargs)
            return None if found is None else Found(found.done, encode(found.result))

        try:
            found: Found | None = await self._guarded(call, look)
        except IntegrationError as exc:
            logger.warning("could not check whether %s was done: %s", _label(call), exc.message)
            return None
        return found

    async def _guarded(
        self, call: EffectCall,
        act: Callable[[Any, list[Any], dict[str, Any]], Awaitable[Any]],
    ) -> Any:
        """Check `call` against its action, decode its arguments, and `act` on its target;
        errors become IntegrationErrors with secrets taken out."""
        label = _label(call)
        try:
            self.action_spec(call)
            target = self._target(call)
            args = decode(call.args, self._bind)
            kwargs = decode(call.kwargs, self._bind)
            _check_arguments(label, getattr(type(target), call.action), [target, *args], kwargs)
            return await act(target, args, kwargs)
        except IntegrationError as exc:
            exc.message = self._scrub(exc.message)
            exc.args = (exc.message,)
            raise
        except Exception as exc:
            # The text of an unexpected error may quote a URL, header or token: the program
            # gets the type only; the worker's log gets the (redacted) rest.
            logger.warning("%s failed: %s", label, self._scrub(_safe_message(exc)))
            raise IntegrationError(f"{label} failed ({type(exc).__name__}); the details are in "
                                   "the worker's log.", action=label) from exc

    def _scrub(self, text: str) -> str:
        return scrub(text, self.secrets)

    async def describe(self) -> dict[str, Any]:
        """Every integration's user-defined schema, by integration name, for the prompt."""
        names = list(self.integrations)
        results = await asyncio.gather(
            *(i.describe() for i in self.integrations.values()), return_exceptions=True
        )
        return {
            name: {"error": _safe_message(r)} if isinstance(r, BaseException) else r
            for name, r in zip(names, results, strict=True)
        }

    async def aclose(self) -> None:
        """Close every integration."""
        for integration in self.integrations.values():
            await integration.aclose()

    # Helpers.

    def _integration(self, name: str) -> Integration:
        integration = self.integrations.get(name)
        if integration is None:
            raise IntegrationError(
                f"There is no integration '{name}'. Integrations: "
                f"{', '.join(self.integrations)}.", integration=name,
            )
        return integration

    def _callee(self, call: EffectCall) -> tuple[str, type]:
        """(name for messages, class declaring the actions) of the call's target."""
        if call.handle is None:
            return call.integration, type(self._integration(call.integration))
        self._integration(call.handle[0])
        for cls in self.resource_types:
            if cls.__name__ == call.handle[1]:
                return cls.__name__, cls
        raise IntegrationError(f"There is no resource type '{call.handle[1]}'.",
                               resource=call.handle[1])

    def _bind(self, integration: str, resource_type: str, key: str) -> Resource:
        try:
            return self._integration(integration).bind(resource_type, key)
        except KeyError:
            raise IntegrationError(f"{integration} has no resource type '{resource_type}'.",
                                   resource=resource_type) from None

    def _target(self, call: EffectCall) -> Integration | Resource:
        if call.handle is None:
            return self._integration(call.integration)
        return self._bind(*call.handle)

    def _named_arguments(
        self, call: EffectCall, args: list[Any], kwargs: dict[str, Any]
    ) -> list[str]:
        try:
            _, cls = self._callee(call)
            bound = signature_of(getattr(cls, call.action)).bind(None, *args, **kwargs)
        except (IntegrationError, AttributeError, TypeError):
            return [_show(a) for a in args] + [f"{k}={_show(v)}" for k, v in kwargs.items()]
        shown = []
        for name, value in list(bound.arguments.items())[1:]:
            kind = bound.signature.parameters[name].kind
            if kind is inspect.Parameter.VAR_KEYWORD:
                shown += [f"{k}={_show(v)}" for k, v in value.items()]
            elif kind is inspect.Parameter.VAR_POSITIONAL:
                shown += [_show(v) for v in value]
            else:
                shown.append(f"{name}={_show(value)}")
        return shown


def _label(call: EffectCall) -> str:
    owner = call.integration if call.handle is None else call.handle[1]
    return f"{owner}.{call.action}"


@functools.lru_cache(maxsize=4096)
def signature_of(fn: Callable[..., Any]) -> inspect.Signature:
    """`inspect.signature(fn)`, worked out once per action (every call checks its arguments)."""
    return inspect.signature(fn)


def _check_arguments(
    label: str, fn: Callable[..., Any], args: list[Any], kwargs: dict[str, Any]
) -> None:
    """Raise IntegrationError showing the right call when the arguments do not fit `fn`."""
    if _fits(fn, len(args), frozenset(kwargs)):
        return
    try:
        signature_of(fn).bind(*args, **kwargs)
    except TypeError as exc:
        usage = signature_text(fn, with_self=False)
        raise IntegrationError(f"{label}(): {exc}. Call it as {label}{usage}.",
                               action=label) from None


@functools.lru_cache(maxsize=4096)
def _fits(fn: Callable[..., Any], positional: int, names: frozenset[str]) -> bool:
    """Whether arguments of this shape bind to `fn`. Binding depends only on how many are
    positional and which names the others have, so each shape is bound once (every call of a
    program is checked)."""
    try:
        signature_of(fn).bind(*([None] * positional), **dict.fromkeys(names))
    except TypeError:
        return False
    return True


def build_local_catalog(
    settings: Settings,
    models: ModelClient,
    *,
    on_completion: Callable[[Completion], None] | None = None,
) -> Catalog:
    """The embedded defaults: sheets from a folder, mail through the local SMTP outbox, ai.

    Workers use `integrations.registry.build_catalog`, which adds the workspace's connections.
    """
    secrets = [settings.model_api_key or ""]
    return Catalog(local_integrations(settings, models, on_completion=on_completion),
                   secrets=secrets)


def local_integrations(
    settings: Settings,
    models: ModelClient,
    *,
    on_completion: Callable[[Completion], None] | None = None,
    delivered: Callable[[str], Awaitable[bool]] | None = None,
) -> list[Integration]:
    """The integrations every workspace has: sheets, mail and ai. `delivered` tells whether the
    local outbox holds a Message-ID (`LocalMail.confirm_send`), when the SMTP server is it."""
    return [
        LocalSheets(settings.effective_sheets_dir),
        LocalMail(
            smtp_host=settings.smtp_host,
            smtp_port=settings.smtp_port,
            sender=settings.mail_from,
            mailbox=settings.effective_mailbox_dir,
            server_dedups=settings.smtp_dedups_message_id,
            delivered=delivered if settings.smtp_is_outbox else None,
        ),
        AI(models, on_completion=on_completion),
    ]
