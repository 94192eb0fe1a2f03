"""Performing the program's effects through the journal (ARCHITECTURE.md, "Durable execution").

`EffectRunner.perform` is the sandbox's call handler. For each call it looks up the journal at the
call's path: a recorded effect returns its result without calling out; a different effect at the
same path stops the run as non-deterministic; a write recorded as started but never confirmed is
first looked up with its integration (the row holds the values, the outbox has the Message-ID);
when that cannot tell, it is redone only when the integration says a redo is safe (idempotency
key, identity), otherwise the run stops and a person is asked. Live effects are journaled; writes
carry an idempotency key derived from the run and the path.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import marshal
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from core.errors import IntegrationError, SluiceError
from core.protocols import ChatMessage, Completion, ModelClient, TaskKind
from integrations.base import EffectCall
from integrations.catalog import Catalog
from workers._journal_json import exact_json, parse_result
from workers._journal_sqlite import Row
from workers.journal import Journal, JournalEntry, Status

# The model answers given while one effect is performed (an `ai.*` call makes one or more).
_call_answers: contextvars.ContextVar[list[Completion] | None] = contextvars.ContextVar(
    "sluice_call_answers", default=None)


class StopReason(StrEnum):
    CANCELLED = "cancelled"
    BUDGET = "budget"
    NON_DETERMINISTIC = "non_deterministic"
    UNCERTAIN_WRITE = "uncertain_write"
    LEASE_LOST = "lease_lost"  # another attempt of the run holds it now: this one steps aside


class RunStopped(SluiceError):
    """Raised to the sandboxed program to stop it; its type name is what the child looks for."""

    code = "run_stopped"


@dataclass
class Stop:
    reason: StopReason
    message: str
    path: str | None = None


class CostedModels:
    """A ModelClient that adds each answer's cost to the calling effect and to the run total."""

    def __init__(self, inner: ModelClient) -> None:
        self.inner = inner
        self.calls = 0
        self.tokens = 0
        self.unknown_price = False

    async def complete(self, messages: list[ChatMessage], *, kind: TaskKind = "plan",
                       json_schema: dict[str, object] | None = None) -> Completion:
        completion = await self.inner.complete(messages, kind=kind, json_schema=json_schema)
        self.calls += 1
        self.tokens += completion.prompt_tokens + completion.completion_tokens
        if completion.cost_usd is None:
            self.unknown_price = True
        answers = _call_answers.get()
        if answers is not None:
            answers.append(completion)
        return completion


@contextlib.contextmanager
def model_answers() -> Iterator[list[Completion]]:
    """Collect the model answers given (through `CostedModels`) inside the block."""
    answers: list[Completion] = []
    token = _call_answers.set(answers)
    try:
        yield answers
    finally:
        _call_answers.reset(token)


def spent(answers: list[Completion]) -> float:
    """What `answers` cost, an unknown price counted as 0 (`CostedModels.unknown_price` says)."""
    return sum(a.cost_usd or 0.0 for a in answers)


@dataclass
class EffectCounts:
    reads: dict[str, int] = field(default_factory=dict)
    writes: dict[str, int] = field(default_factory=dict)
    replayed: int = 0
    live: int = 0
    writes_checked: int = 0  # unconfirmed writes (after a crash) looked up with the integration
    writes_confirmed: int = 0  # of those, found done: journaled done, not done again
    writes_redone: int = 0  # unconfirmed writes done again blind (idempotent, or the server dedups)
    spent_usd: float = 0.0

    def add(self, kind: str, key: str) -> None:
        counts = self.writes if kind == "write" else self.reads
        counts[key] = counts.get(key, 0) + 1


def runtime_now() -> dict[str, str]:
    """The answer to the program's clock call: local time with its offset, in wire form."""
    return {"__datetime__": datetime.now(UTC).astimezone().isoformat()}


def call_key(call: EffectCall) -> str:
    """`mail.send`, `Sheet.update`, `runtime.now`: what kind of effect this is."""
    owner = call.handle[1] if call.handle else call.integration
    return f"{owner}.{call.action}"


def request_hash(call: EffectCall) -> str:
    """A fingerprint of what was asked, to tell a replayed call from a different one.

    BLAKE2b of the call's wire-form values as compact JSON (orjson), where that JSON is exact
    (`_journal_json.exact_json`: it tells apart every two values marshal does; a handle is a tuple
    or None, written as an array or `[]`). Key order is the program's own (a deterministic
    program passes the same dicts the same way), so no sorting is needed. Any other call gets
    `marshal_request_hash`, the fingerprint journals written before this one hold; the two hash
    inputs cannot be equal (a JSON array starts with `[`, marshal's tuple with `(`).
    """
    # A list, not a tuple: the same JSON, and it reads back equal where it holds a null.
    data = exact_json([call.integration, call.action, list(call.handle or ()), call.args,
                       call.kwargs])
    if data is None:
        return marshal_request_hash(call)
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def marshal_request_hash(call: EffectCall) -> str:
    """The fingerprint of a call JSON cannot tell exactly, and of every call in journals written
    before `request_hash` used JSON.

    The bytes hashed are marshal's format 0 of the call's values: type-tagged and
    length-prefixed (so different values give different bytes), the same in every process and
    Python version (format 0 has neither the object references nor the interned-string marks of
    later formats, which follow reference counts). A value marshal cannot write falls back to its
    `repr`.
    """
    body = (call.integration, call.action, call.handle, call.args, call.kwargs)
    try:
        data = marshal.dumps(body, 0)
    except ValueError:
        data = b"repr:" + repr(body).encode()
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def legacy_request_hash(call: EffectCall) -> str:
    """The fingerprint journals written before `request_hash` used marshal hold (a `repr`)."""
    body = repr((call.integration, call.action, call.handle, call.args, call.kwargs))
    return hashlib.blake2b(body.encode(), digest_size=16).hexdigest()


def is_older_fingerprint(fingerprint: str, call: EffectCall) -> bool:
    """Whether `fingerprint` is `call`'s as journals written before `request_hash` hold it."""
    return fingerprint in (marshal_request_hash(call), legacy_request_hash(call))


class EffectRunner:
    """The sandbox's handler for one run: journal, idempotency, budget and stop checks."""

    def __init__(self, *, run_id: str, catalog: Catalog, journal: Journal,
                 budget_usd: float | None = None) -> None:
        self.run_id = run_id
        self.catalog = catalog
        self.journal = journal
        self.budget_usd = budget_usd
        self.counts = EffectCounts()
        self.stop: Stop | None = None
        self.cancel_requested = False

    def replayed_spend(self) -> float:
        return self.journal.cost_usd()

    def request_stop(self, reason: StopReason, message: str, path: str | None = None) -> None:
        if self.stop is None:
            self.stop = Stop(reason, message, path)

    async def perform(self, call: EffectCall) -> Any:
        fingerprint = request_hash(call)
        row = self.journal.loaded(call.path)
        if row is not None and row[4] == "done" and row[3] == fingerprint:
            return self._replay_done(row)
        entry = self.journal.recorded(call.path)
        if entry is not None and entry.status != "intent":
            return self._replay(call, entry, fingerprint)
        key = call_key(call)
        self._check_stop()
        kind = "clock" if call.integration == "runtime" else self.catalog.effect_of(call)
        if entry is not None:  # a write that started before a crash and was never confirmed
            self._check_same(call, entry, fingerprint)
            found = await self.catalog.confirm(self._with_idempotency_key(call))
            self.counts.writes_checked += found is not None
            if found is not None and found.done:
                return await self._confirmed(entry, key, found.result)
            if found is None:
                self._check_redo_safe(call, key)
                self.counts.writes_redone += 1
        if kind == "read" and call.integration == "ai":
            self._check_budget()
        return await self._live(call, kind, key, fingerprint)

    def check_replayed(self, calls: Sequence[EffectCall]) -> list[EffectCall]:
        """Calls the sandbox answered itself from `Journal.done_results` (`run_sandboxed`'s
        `check_replayed`): each must be the call recorded at its path, else the run stops
        (RunStopped); each is counted; their results are the program's already and are not
        read again. Returns the calls with no done record at their path, for `perform`."""
        unchecked: list[EffectCall] = []
        for call in calls:
            fingerprint = request_hash(call)
            row = self.journal.loaded(call.path)
            if row is not None and row[4] == "done" and row[3] == fingerprint:
                self._count_replayed(row[1], row[2])
            elif (entry := self.journal.recorded(call.path)) is not None \
                    and entry.status == "done":
                self._checked(call, entry, fingerprint)
            else:
                unchecked.append(call)
        return unchecked

    def _replay_done(self, row: Row) -> Any:
        """A loaded effect done with the same request: the hot path of a resume, on the row as
        loaded (path, kind, call, request_hash, status, result, ...). Any other case (failed,
        different, recorded since) goes through `_replay` and its checks."""
        self._count_replayed(row[1], row[2])
        return None if row[5] is None else parse_result(row[5])

    def _replay(self, call: EffectCall, entry: JournalEntry, fingerprint: str) -> Any:
        """The recorded outcome of `call`, once its checks pass."""
        self._checked(call, entry, fingerprint)
        if entry.status == "failed":
            raise IntegrationError(entry.error or "the integration call failed")
        return entry.value()

    def _checked(self, call: EffectCall, entry: JournalEntry, fingerprint: str) -> None:
        """`entry` is the record of `call` (else the run stops): counted as replayed."""
        self._check_same(call, entry, fingerprint)
        self._count_replayed(entry.kind, entry.call)

    def _count_replayed(self, kind: str, key: str) -> None:
        self.counts.replayed += 1
        self.counts.add(kind, key)

    async def _confirmed(self, entry: JournalEntry, key: str, result: Any) -> Any:
        """An unconfirmed write its integration shows done: journaled done, not done again."""
        await self._finish(entry, "done", result, None, 0.0)
        self.counts.writes_confirmed += 1
        self.counts.add("write", key)
        return result

    def _check_same(self, call: EffectCall, entry: JournalEntry, fingerprint: str) -> None:
        if entry.request_hash == fingerprint or is_older_fingerprint(entry.request_hash, call):
            return
        message = (f"The program is not deterministic: at {call.path} it asked for "
                   f"{call_key(call)} where the journal has {entry.call} with other arguments. "
                   "I stopped instead of guessing; start a new request to run it afresh.")
        self.request_stop(StopReason.NON_DETERMINISTIC, message, call.path)
        raise RunStopped(message)

    def _check_redo_safe(self, call: EffectCall, key: str) -> None:
        if self.catalog.safe_to_redo(call):
            return
        message = (f"I can't tell whether {self.catalog.describe_action(call)} was done before "
                   "the worker stopped, and doing it again could repeat it. Check, then choose.")
        self.request_stop(StopReason.UNCERTAIN_WRITE, message, call.path)
        raise RunStopped(message)

    def _check_stop(self) -> None:
        if self.cancel_requested:
            self.request_stop(StopReason.CANCELLED, "Cancelled from the thread.")
        if self.stop is not None:
            raise RunStopped(self.stop.message)

    def _check_budget(self) -> None:
        if self.budget_usd is None or self.counts.spent_usd < self.budget_usd:
            return
        message = (f"The run has spent ${self.counts.spent_usd:.4f} of its "
                   f"${self.budget_usd:.4f} budget.")
        self.request_stop(StopReason.BUDGET, message)
        raise RunStopped(message)

    async def _live(self, call: EffectCall, kind: str, key: str, fingerprint: str) -> Any:
        entry = JournalEntry(path=call.path, kind=kind, call=key, request_hash=fingerprint,
                             status="intent")
        if kind == "write":
            await self.journal.record(entry, durable=True)
            call = self._with_idempotency_key(call)
        with model_answers() as answers:
            try:
                result = await self._dispatch(call)
            except IntegrationError as exc:
                await self._finish(entry, "failed", None, exc.message, spent(answers))
                raise
        await self._finish(entry, "done", result, None, spent(answers))
        self.counts.live += 1
        self.counts.add(kind, key)
        return result

    async def _finish(self, entry: JournalEntry, status: Status, result: Any, error: str | None,
                      cost: float) -> None:
        entry.status, entry.result, entry.error, entry.cost_usd = status, result, error, cost
        self.counts.spent_usd += cost
        await self.journal.record(entry, durable=entry.kind == "write")

    async def _dispatch(self, call: EffectCall) -> Any:
        if call.integration == "runtime":
            if call.action != "now":
                raise IntegrationError(f"runtime has no action {call.action!r}")
            return runtime_now()
        return await self.catalog.dispatch(call)

    def _with_idempotency_key(self, call: EffectCall) -> EffectCall:
        if not self.catalog.accepts_idempotency_key(call):
            return call
        kwargs = {**call.kwargs, "idempotency_key": f"{self.run_id}/{call.path}"}
        return EffectCall(integration=call.integration, action=call.action, args=call.args,
                          kwargs=kwargs, handle=call.handle, path=call.path)

