"""The parent side of the sandbox (ARCHITECTURE.md, "The sandbox holds no secrets").

`run_sandboxed` starts `workers.sandbox_child` in a separate, confined process (see
`workers._isolation`) with an empty environment and resource limits, sends it the program, and
serves its RPC channel: each integration call becomes an `EffectCall` for the `handler`, which
holds the credentials and performs it. Calls arrive with their deterministic paths ("Durable
execution by journal and replay"), and several may be in flight at once: each is served by its own
task and answered by id. Program output, progress, the final result and the variables to keep for
the thread ("State outlives the process") come back as frames. A program that fails, hangs or
breaks a limit gives an unsuccessful `SandboxOutcome`; only a sandbox that cannot start raises.

Frames (see `workers._channel`): the child sends "ready", "call" (id, path, integration, action,
args, kwargs, handle), "replayed" (calls it answered from the journal's results, without an id,
for the journal to check and count), "print", "progress", then "done" (table, failures,
variables and their summaries, unsaved) or "error" (type, message, line, traceback, failures).
The parent sends "replay" frames (a resumed run's journaled results), "start" (program,
manifest, preview, limit_items, only_items, output_bytes, cpu_s, seed, state: the saved
variables as JSON text) and one reply per call: `{"id", "ok"}` or
`{"id", "error": {"type", "message"}}`; an error of type "RunStopped" stops the program.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field, ValidationError

from core.errors import SandboxError, SluiceError
from integrations.base import EffectCall
from workers import _isolation
from workers._channel import FrameError, pack, replay_frames
from workers._child_pipes import ChildPipes
from workers._isolation import detect_isolation
from workers._sandbox_frames import (
    FRAMES,
    Call,
    Done,
    End,
    Error,
    Print,
    Progress,
    Ready,
    Replayed,
    effect_call,
)

if TYPE_CHECKING:
    from core.settings import Settings

__all__ = [
    "ProgressTick",
    "SandboxLimits",
    "SandboxOutcome",
    "detect_isolation",
    "run_sandboxed",
]

logger = logging.getLogger(__name__)

Handler = Callable[[EffectCall], Awaitable[Any]]
# Checks calls the child answered from `replay`; returns those it cannot check (see run_sandboxed).
ReplayCheck = Callable[[list[EffectCall]], list[EffectCall]]
_STDERR_CAP = 64 * 1024
_EXIT_GRACE_S = 2.0
_STOP_GRACE_S = 5.0  # how long a stopped program has to end by itself before it is killed
_STOPPED = "RunStopped"
_MEMORY_SIGNS = ("MemoryError", "Cannot allocate memory", "bad_alloc", "out of memory")


class SandboxLimits(BaseModel):
    """What one sandboxed run may use."""

    cpu_s: int = Field(default=300, ge=1, description="CPU seconds.")
    wall_s: float = Field(default=3600.0, gt=0, description="Wall-clock seconds, calls included.")
    memory_mb: int = Field(default=2048, ge=64, description="Address space, in MiB.")
    output_kb: int = Field(default=256, ge=1, description="Program output kept, in KiB.")
    open_files: int = Field(default=64, ge=16)
    file_size_mb: int = Field(default=16, ge=1, description="Largest file the child may write.")
    extra_processes: int = Field(default=64, ge=1, description="Best effort (RLIMIT_NPROC).")
    hidden_paths: list[str] = Field(
        default_factory=list, description="More places that may hold secrets, hidden under bwrap."
    )

    @classmethod
    def from_settings(cls, settings: Settings) -> SandboxLimits:
        """The limits configured by `SLUICE_SANDBOX_*`; the Sluice home is hidden from the child."""
        return cls(
            cpu_s=settings.sandbox_cpu_s,
            wall_s=settings.sandbox_wall_s,
            memory_mb=settings.sandbox_memory_mb,
            output_kb=settings.sandbox_output_kb,
            hidden_paths=[str(Path(settings.home).resolve())],
        )


class ProgressTick(BaseModel):
    """A loop's progress as the program reports it (throttled to about five a second).

    `done` items finished without error, `failed` raised; together they are the items visited.
    `loop` is the loop's path: "each#N" for the Nth each() call at the top level, "for@L" for
    the top-level `for` loop on line L, "for@L/iter#i/each#N" for an each() in its body. Loops
    inside each() items report no progress of their own. `available` is how many items the loop
    has before a "first N" limit (`total` counts those it will visit).
    """

    loop: str
    done: int
    failed: int = 0
    total: int | None = None
    available: int | None = None
    elapsed_s: float = 0.0


class SandboxOutcome(BaseModel):
    """How a sandboxed run ended. `error` has `type`, `message` and the program `line`; its type
    is "RunStopped" when the handler stopped the run.

    `variables` are the program's top-level variables to keep for the thread, as JSON text of
    their encoded form (see `workers._state`; pass them back as `state`), `summaries` a line about
    each, `unsaved` those that could not be kept, each with a `reason`. All are empty unless the
    run succeeded.
    """

    ok: bool
    output: str = ""
    output_truncated: bool = False
    error: dict[str, Any] | None = None
    table_csv: str | None = None
    table_rows: int | None = None
    failures: list[dict[str, Any]] = Field(default_factory=list)
    calls: int = 0
    replayed: int = 0  # of the calls, those the child answered from `replay` itself
    seconds: float = 0.0
    isolation: str
    exit_code: int | None = None
    killed_reason: str | None = None
    variables: dict[str, str] = Field(default_factory=dict)
    summaries: dict[str, str] = Field(default_factory=dict)
    unsaved: list[dict[str, str]] = Field(default_factory=list)


async def run_sandboxed(
    program: str,
    *,
    manifest: dict[str, Any],
    handler: Handler,
    limits: SandboxLimits,
    preview: bool = False,
    limit_items: int | None = None,
    on_progress: Callable[[ProgressTick], Awaitable[None]] | None = None,
    isolation: str = "auto",
    python: str = sys.executable,
    state: Mapping[str, str] | None = None,
    seed: int = 0,
    only_items: dict[str, list[int]] | None = None,
    replay: Mapping[str, str] | None = None,
    check_replayed: ReplayCheck | None = None,
) -> SandboxOutcome:
    """Run `program` in a confined child process and serve its integration calls with `handler`.

    Args:
        program: The generated Python source.
        manifest: `{"integrations": {name: {"actions": {action: "read"|"write"}}},
            "resources": {type: {"actions": {...}}}}`; each integration name is a variable.
        handler: Performs one call and returns its result, already wire-encoded (JSON-able). An
            `IntegrationError` it raises reaches the program with its message; a `SluiceError`
            named `RunStopped` stops the program (later calls get it without the handler). Calls
            on different items of an each() loop may be in flight at once; `EffectCall.path`
            says where in the program each was asked for. The clock is the call
            `runtime.now()`, answered with an ISO datetime (or its wire form).
        limits: CPU, wall clock, memory, output and file limits.
        preview: Passed to the program's runtime (writes are the handler's business).
        limit_items: `each()` visits only the first N items.
        on_progress: Awaited with each progress tick.
        isolation: "auto", "bwrap", "unshare" or "rlimits".
        python: The interpreter of the child.
        state: The thread's saved variables: a previous outcome's `variables` (JSON by name).
        seed: Seeds the program's `random` module.
        only_items: `{loop path: [item index, ...]}`: each() visits only those items, and
            loops not named visit none ("retry the failed ones").
        replay: A resumed run's calls journaled as done: their results by path, as JSON text.
            The child answers a call at one of these paths itself, with no round trip, and
            sends it to `handler` afterwards in a batch, without waiting: the handler checks it
            against the journal (a different call stops the run before any later call is
            performed) and counts it.
        check_replayed: Does `handler`'s part for those calls in one go, as each batch arrives
            and before anything after it is taken: checks and counts them, raises a SluiceError
            named RunStopped to stop the run, and returns the calls it cannot check, which go
            to `handler` as before. Without it, every replayed call goes to `handler`.

    Returns:
        The outcome; program errors and broken limits are reported in it, never raised.

    Raises:
        SandboxError: the isolation is unavailable or the child could not start.
        Exception: whatever `on_progress` raises (the child is killed first); a caller can stop
            a run that way, or by cancelling the task.
    """
    level = await asyncio.to_thread(detect_isolation, isolation)
    start = {"op": "start", "program": program, "manifest": manifest, "preview": preview,
             "output_bytes": limits.output_kb * 1024, "cpu_s": limits.cpu_s, "seed": seed,
             "state": dict(state or {})}
    # Absent rather than null: a smaller frame.
    start.update({k: v for k, v in (("limit_items", limit_items), ("only_items", only_items))
                  if v is not None})
    workdir = tempfile.mkdtemp(prefix="sluice-sandbox-")
    try:
        session = _Session(handler, on_progress, limits, check_replayed)
        await session.spawn(level, workdir, python)
        outcome = await session.run([*replay_frames(replay or {}), pack(start)], level)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return outcome


class _Session:
    """One conversation with a child, from the start frame to its exit.

    Frames are taken as they arrive (`_frame`, called by the pipes' protocol): calls start
    their task at once, output is kept; progress and the final frame are queued, in order, for
    `_converse`, which awaits the progress callback.
    """

    def __init__(
        self,
        handler: Handler,
        on_progress: Callable[[ProgressTick], Awaitable[None]] | None,
        limits: SandboxLimits,
        check_replayed: ReplayCheck | None = None,
    ) -> None:
        self.handler = handler
        self.check_replayed = check_replayed
        self.on_progress = on_progress
        self.limits = limits
        self.output = _Output(limits.output_kb * 1024)
        self.calls = 0
        self.replayed = 0
        self.started = time.monotonic()
        self.ready = False
        self.ended = False
        self.final: Done | Error | None = None
        self.final_seen = False  # the final frame arrived (and is queued)
        self.killed_reason: str | None = None
        self.protocol_error: str | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.events: asyncio.Queue[Progress | Done | Error | End] = asyncio.Queue()
        self.transport: asyncio.SubprocessTransport | None = None
        self.pipes: ChildPipes | None = None
        self.stopped: dict[str, str] | None = None  # the RunStopped error later calls get
        self.stop_kill: asyncio.TimerHandle | None = None

    async def spawn(self, level: str, workdir: str, python: str) -> None:
        """Start the child, confined at `level`, in `workdir`."""
        # Not -I: it implies -E, which would ignore PYTHONHASHSEED. The environment is ours
        # entirely, so -s (no user site) and -P (no script directory on sys.path) isolate alike.
        argv = [python, "-s", "-P", "-m", "workers.sandbox_child"]
        limits = self.limits
        command = _isolation.wrap_command(level, argv, workdir=workdir, hide=limits.hidden_paths,
                                          python=python)
        rlimits = _isolation.rlimits_for(
            cpu_s=limits.cpu_s, memory_mb=limits.memory_mb, open_files=limits.open_files,
            file_size_mb=limits.file_size_mb, extra_processes=limits.extra_processes)
        pipe = asyncio.subprocess.PIPE
        try:
            self.transport, self.pipes = await asyncio.get_running_loop().subprocess_exec(
                lambda: ChildPipes(self._frame, self._end, stderr_cap=_STDERR_CAP),
                *command, stdin=pipe, stdout=pipe, stderr=pipe, env=_isolation.child_env(),
                cwd=workdir, start_new_session=True, preexec_fn=_isolation.preexec(rlimits))
        except (OSError, ValueError) as exc:
            raise SandboxError(f"the sandbox could not start ({level}): {exc}") from exc

    @property
    def stderr(self) -> bytearray:
        return self.pipes.stderr if self.pipes is not None else bytearray()

    async def run(self, start: list[bytes], level: str) -> SandboxOutcome:
        """Converse until the child is done, fails, breaks a limit or dies; then reap it."""
        try:
            async with asyncio.timeout(self.limits.wall_s):
                await self._converse(start)
                await self._settle_calls()
            self.ended = True
        except TimeoutError:
            self.killed_reason = "wall clock limit"
        except FrameError as exc:
            self.protocol_error = exc.message
        finally:
            await self._cancel_calls()
            exit_code = await self._reap()
        if not self.ready and self.killed_reason is None and self.protocol_error is None:
            tail = bytes(self.stderr[-2000:]).decode(errors="replace")
            raise SandboxError(f"the sandbox could not start ({level}, exit {exit_code}): {tail}")
        return self._outcome(level, exit_code)

    async def _converse(self, start: list[bytes]) -> None:
        """Send the start frames, then report progress until the final frame or the end."""
        for data in start:
            await self._write(data)
        while True:
            event = await self.events.get()
            if isinstance(event, End):
                if event.error is not None:
                    raise event.error
                return
            if isinstance(event, Progress):
                await self._progress(event)
            else:
                self.final = event
                return

    def _frame(self, raw: dict[str, Any]) -> None:
        """Take one frame from the child (in the pipes' callback: nothing here may wait)."""
        if self.final_seen:
            return  # nothing counts after the final frame
        try:
            frame = FRAMES.validate_python(raw)
        except ValidationError as exc:
            raise FrameError(f"the sandbox sent an invalid frame: {exc.errors()[:1]}") from None
        if isinstance(frame, Ready):
            self.ready = True
        elif isinstance(frame, Call):
            self.calls += 1
            self.tasks.add(asyncio.create_task(self._call(frame)))
        elif isinstance(frame, Replayed):
            self.calls += len(frame.calls)
            self.replayed += len(frame.calls)
            self._replayed([effect_call(body) for body in frame.calls])
        elif isinstance(frame, Print):
            self.output.add(frame.text)
        else:
            self.final_seen = not isinstance(frame, Progress)
            self.events.put_nowait(frame)

    def _end(self, error: FrameError | None) -> None:
        """The child's output ended (cleanly, or with broken framing)."""
        self.events.put_nowait(End(error))

    async def _call(self, frame: Call) -> None:
        """Serve one call in its own task and answer it by id."""
        try:
            await self._answer(frame)
        finally:  # not a done callback: that would cost every call another turn of the loop
            self.tasks.discard(asyncio.current_task())

    def _replayed(self, calls: list[EffectCall]) -> None:
        """Calls the child answered from the journal: `check_replayed` checks and counts them
        here, before any later frame is taken; the rest go to the handler in a task."""
        if self.stopped is not None:
            return  # the child's next call gets the reason
        if self.check_replayed is not None:
            try:
                calls = self.check_replayed(calls)
            except SluiceError as exc:
                if type(exc).__name__ == _STOPPED:
                    self._stop({"type": _STOPPED, "message": exc.message})
                    return
                logger.warning("sandbox: checking replayed calls failed: %s", exc.message)
            except Exception:  # the handler checks them instead: nothing goes unchecked
                logger.warning("sandbox: checking replayed calls failed", exc_info=True)
        if calls:
            self.tasks.add(asyncio.create_task(self._check_replayed(calls)))

    async def _check_replayed(self, calls: list[EffectCall]) -> None:
        """Hand the calls the child answered from the journal to the handler, which checks each
        against its record (a different call stops the run) and counts it; the answers are the
        child's already, so they are dropped. Later calls wait behind this task (tasks start in
        order), so a stop it causes comes before any of them is performed."""
        try:
            for call in calls:
                await self._perform(call, 0)
                if self.stopped is not None:
                    return  # the child's next call gets the reason
        finally:
            self.tasks.discard(asyncio.current_task())

    async def _answer(self, frame: Call) -> None:
        call = EffectCall(integration=frame.integration, action=frame.action, args=frame.args,
                          kwargs=frame.kwargs, handle=frame.handle, path=frame.path)
        reply = await self._perform(call, frame.id)
        try:
            data = pack(reply)
        except FrameError:
            message = (f"the result of {frame.action}() is too large to pass to the program; "
                       "ask for less at a time")
            data = pack({"id": frame.id, "error": {"type": "IntegrationError", "message": message}})
        except (TypeError, ValueError):
            logger.warning("sandbox: %s.%s returned a value that is not JSON",
                           frame.integration, frame.action, exc_info=True)
            message = f"the result of {frame.action}() could not be passed to the program"
            data = pack({"id": frame.id, "error": {"type": "IntegrationError", "message": message}})
        await self._write(data)

    async def _perform(self, call: EffectCall, call_id: int) -> dict[str, Any]:
        if self.stopped is not None:
            return {"id": call_id, "error": self.stopped}
        try:
            return {"id": call_id, "ok": await self.handler(call)}  # already wire-encoded
        except SluiceError as exc:
            error = {"type": type(exc).__name__, "message": exc.message}
            if error["type"] == _STOPPED:
                self._stop(error)
            return {"id": call_id, "error": error}
        except Exception as exc:
            logger.warning("sandbox: %s.%s failed", call.integration, call.action, exc_info=True)
            message = f"integration failed: {type(exc).__name__}"  # its text may hold secrets
            return {"id": call_id, "error": {"type": "IntegrationError", "message": message}}

    def _stop(self, error: dict[str, str]) -> None:
        """Answer every later call with `error`; kill a program that does not end by itself."""
        if self.stopped is None:
            self.stopped = error
            assert self.transport is not None
            self.stop_kill = asyncio.get_running_loop().call_later(
                _STOP_GRACE_S, _kill_group, self.transport.get_pid())

    async def _settle_calls(self) -> None:
        """Give calls still in flight when the child ended (abandoned by a stopped program)
        a moment to finish, so that their effects are complete rather than cut off."""
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=_EXIT_GRACE_S)

    async def _cancel_calls(self) -> None:
        if self.stop_kill is not None:
            self.stop_kill.cancel()  # before the reap: the pid must not be reused
        tasks = set(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _progress(self, frame: Progress) -> None:
        if self.on_progress is None:
            return
        await self.on_progress(ProgressTick(
            loop=frame.loop, done=frame.done, failed=frame.failed, total=frame.total,
            available=frame.available, elapsed_s=round(time.monotonic() - self.started, 3)))

    async def _write(self, data: bytes) -> None:
        """Send one frame (a whole write each, so call tasks answering at once never
        interleave); nothing once the child is gone, whose exit code then tells why."""
        if self.pipes is not None:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                await self.pipes.write(data)

    async def _reap(self) -> int | None:
        """Let a child that finished exit by itself briefly, then kill its whole process group
        (at once after a timeout, a protocol error, an exception or a cancellation); keep what
        it wrote to stderr last."""
        assert self.transport is not None and self.pipes is not None
        self.pipes.close_stdin()
        if self.ended:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.pipes.exited), _EXIT_GRACE_S)
        _kill_group(self.transport.get_pid())
        await asyncio.shield(self.pipes.exited)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.pipes.closed), _EXIT_GRACE_S)
        exit_code = self.transport.get_returncode()
        self.transport.close()
        return exit_code

    def _outcome(self, level: str, exit_code: int | None) -> SandboxOutcome:
        error = self._error(exit_code)
        done = self.final if isinstance(self.final, Done) else None
        kept = done if done and error is None else Done(op="done")  # nothing kept from a failure
        failures = self.final.failures if self.final is not None else []
        return SandboxOutcome(
            ok=error is None, output=self.output.text(), output_truncated=self.output.truncated,
            error=error, table_csv=done.table_csv if done else None,
            table_rows=done.table_rows if done else None, failures=failures, calls=self.calls,
            replayed=self.replayed, seconds=round(time.monotonic() - self.started, 3),
            isolation=level, exit_code=exit_code, killed_reason=self._killed_reason(exit_code),
            variables=kept.variables, summaries=kept.summaries, unsaved=kept.unsaved)

    def _error(self, exit_code: int | None) -> dict[str, Any] | None:
        if isinstance(self.final, Error):
            message = self.final.message
            if self.final.type == "MemoryError":
                message = f"the program needed more than its {self.limits.memory_mb} MiB of memory"
            return {"type": self.final.type, "message": message, "line": self.final.line,
                    "traceback": self.final.traceback}
        if self.stopped is not None:  # the program went on after it was stopped, or was killed
            return {"type": _STOPPED, "message": self.stopped["message"], "line": None}
        if self.killed_reason is not None:
            return {"type": "LimitExceeded", "line": None,
                    "message": f"the program ran longer than the {self.limits.wall_s:g} s "
                               "wall-clock limit and was stopped"}
        if self.protocol_error is not None:
            return {"type": "SandboxError", "message": self.protocol_error, "line": None}
        if isinstance(self.final, Done):
            return None
        return {"type": "SandboxCrash", "line": None, "stderr": self._stderr_tail(),
                "message": f"the program's process ended unexpectedly (exit code {exit_code})"}

    def _killed_reason(self, exit_code: int | None) -> str | None:
        if self.killed_reason is not None:
            return self.killed_reason
        if isinstance(self.final, Error):
            return _LIMIT_ERRORS.get(self.final.type)
        if isinstance(self.final, Done) or self.stopped is not None:
            return None
        return _reason_from_exit(exit_code, self._stderr_tail())

    def _stderr_tail(self) -> str:
        return bytes(self.stderr[-2000:]).decode(errors="replace")


_LIMIT_ERRORS = {"MemoryError": "memory limit", "CpuLimitExceeded": "cpu limit"}


def _reason_from_exit(exit_code: int | None, stderr: str) -> str | None:
    """Why a child died without a final frame, from its exit status and last words."""
    if exit_code is None:
        return None
    if any(sign in stderr for sign in _MEMORY_SIGNS):
        return "memory limit"
    # A signal shows as -N from a direct child, as 128+N through bwrap.
    sig = -exit_code if exit_code < 0 else exit_code - 128 if exit_code > 128 else 0
    reasons = {signal.SIGXCPU: "cpu limit", signal.SIGKILL: "killed (cpu or memory limit)",
               signal.SIGXFSZ: "file size limit"}
    if sig in reasons:
        return reasons[signal.Signals(sig)]
    return f"signal {sig}" if sig > 0 else None


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


class _Output:
    """Program output, kept up to `limit` bytes of UTF-8."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self.parts: list[str] = []
        self.truncated = False

    def add(self, text: str) -> None:
        """Keep `text`, or the part of it that still fits."""
        if self.truncated:
            return
        data = text.encode("utf-8", "replace")
        room = self.limit - self.size
        if len(data) > room:
            self.truncated = True
            data = data[:room]
        self.parts.append(data.decode("utf-8", "ignore"))
        self.size += len(data)

    def text(self) -> str:
        """The kept output, with a note when some was dropped."""
        kept = "".join(self.parts)
        if self.truncated:
            kept += f"\n[output truncated after {self.limit // 1024} KiB]"
        return kept
