"""The sandbox child: `python -m workers.sandbox_child` (ARCHITECTURE.md, "The sandbox holds no
secrets").

Started by `workers.sandbox.run_sandboxed` with an empty environment, resource limits and, where
the kernel allows, no network and a filesystem without secrets. It says "ready", reads the start
frame, checks the program again with `codegen.policy` (defence in depth), instruments top-level
`for` loops to report progress, restores the thread's saved variables, seeds `random`, runs the
program with restricted builtins, and answers with a "done" frame (the `result` table, failures,
the variables to keep: ARCHITECTURE.md, "State outlives the process") or an "error" frame (type,
message, program line). A run the worker stopped ends with an error frame of type "RunStopped".
"""

from __future__ import annotations

import ast
import csv
import io
import linecache
import os
import random
import signal
import sys
import threading
import traceback
import types
from typing import Any

from codegen.policy import check_program, render_violations
from workers import _sandbox_guards
from workers._channel import ChannelClosed, FdChannel, FrameError
from workers._sandbox_guards import GUARDED_READS
from workers._sandbox_namespace import (
    ATTRIBUTE_HOOK,
    LOOP_HOOK,
    PROGRAM_FILE,
    CpuLimitExceeded,
    RunStopped,
    Runtime,
    program_line,
)
from workers._state import decode_state, encode_state, summarize

MAX_TABLE_BYTES = 8 * 1024 * 1024
_RESERVE_BYTES = 2 * 1024 * 1024
# Numerical libraries start a thread per core at import; one is plenty here and keeps the
# address-space limit meaningful.
_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_MAX_THREADS")
# each() item threads count against the address-space limit: their stacks (8 MiB by default) and
# glibc's per-thread malloc arenas (64 MiB of address space each, up to 8 per core).
_THREAD_STACK_BYTES = 4 * 1024 * 1024
_MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # mallopt() parameter, from glibc's malloc.h


def main() -> int:
    """Serve one program over stdin/stdout; the exit code is 0 unless the channel broke."""
    channel = _open_channel()
    for name in _THREAD_VARS:
        os.environ[name] = "1"
    _limit_thread_memory()
    try:
        channel.send({"op": "ready"})
        start, replay = _receive_start(channel)
        runtime = Runtime(channel, start, replay)
        _watch_cpu(int(start.get("cpu_s") or 0))
        frame = run_program(str(start.get("program") or ""), runtime,
                            state=start.get("state") or {}, seed=int(start.get("seed") or 0))
        _send_final(runtime, frame)
        channel.flush()
    except (ChannelClosed, BrokenPipeError):
        return 1
    return 0


def _receive_start(channel: FdChannel) -> tuple[dict[str, Any], dict[str, Any]]:
    """The start frame, and the results of a resumed run's done calls sent before it."""
    replay: dict[str, Any] = {}
    while (frame := channel.recv()).get("op") == "replay":
        results = frame.get("results")
        if isinstance(results, dict):
            replay.update(results)
    return frame, replay


def _send_final(runtime: Runtime, frame: dict[str, Any]) -> None:
    """Send the final frame; when it is too large, without the table, then without variables."""
    try:
        runtime.send(frame)
        return
    except FrameError:
        pass
    if frame.pop("table_csv", None) is not None:
        runtime.write("\n[the result table was too large to return]\n")
        try:
            runtime.send(frame)
            return
        except FrameError:
            pass
    dropped = [{"name": name, "reason": "the saved variables were too large to return"}
               for name in frame.pop("variables", None) or {}]
    frame["unsaved"] = [*frame.get("unsaved", []), *dropped]
    runtime.send(frame)


def _limit_thread_memory() -> None:
    """Smaller thread stacks and at most two malloc arenas, so that the threads of each() fit in
    the memory limit. MALLOC_ARENA_MAX would do the same from the environment, but the child's
    environment is kept to the bare minimum; mallopt is best effort (glibc only)."""
    threading.stack_size(_THREAD_STACK_BYTES)
    try:
        import ctypes  # numpy loads it anyway

        ctypes.CDLL(None).mallopt(_M_ARENA_MAX, _MALLOC_ARENAS)
    except (ImportError, OSError, AttributeError):
        pass


def _open_channel() -> FdChannel:
    """Move the channel off fds 0 and 1, so that stray writes to stdout cannot corrupt it."""
    read_fd, write_fd = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    os.close(devnull)
    return FdChannel(read_fd, write_fd)


def _watch_cpu(cpu_s: int) -> None:
    def stop(signum: int, frame: types.FrameType | None) -> None:
        raise CpuLimitExceeded(f"the program used more than its {cpu_s} s of CPU time")

    signal.signal(signal.SIGXCPU, stop)


def run_program(source: str, runtime: Runtime, *, state: dict[str, Any] | None = None,
                seed: int = 0) -> dict[str, Any]:
    """Check, instrument and run `source` with the saved variables `state` (JSON text by name)
    and `random` seeded with `seed`; the "done" or "error" frame that says how it went."""
    violations = check_program(source)
    if violations:
        return {"op": "error", "type": "PolicyViolation", "line": violations[0].line,
                "message": render_violations(source, violations), "traceback": ""}
    linecache.cache[PROGRAM_FILE] = (len(source), None, source.splitlines(True), PROGRAM_FILE)
    code = compile(instrument(ast.parse(source, PROGRAM_FILE)), PROGRAM_FILE, "exec",
                   dont_inherit=True)
    _sandbox_guards.install()
    module = types.ModuleType("__main__")
    sys.modules["__main__"] = module
    namespace = runtime.namespace(module)
    runtime.restore(namespace, decode_state(state or {}))
    random.seed(seed)
    return _execute(code, namespace, runtime)


def _execute(code: types.CodeType, namespace: dict[str, Any], runtime: Runtime) -> dict[str, Any]:
    reserve = bytearray(_RESERVE_BYTES)  # freed on failure, so reporting a MemoryError can work
    try:
        exec(code, namespace)
    except ChannelClosed:
        raise
    except SystemExit as exc:
        if exc.code not in (None, 0):
            del reserve
            return _error_frame(exc, namespace, runtime)
    except BaseException as exc:
        del reserve
        return _error_frame(exc, namespace, runtime)
    if runtime.stopped is not None:  # the program caught RunStopped with `except BaseException`
        return _error_frame(RunStopped(runtime.stopped), namespace, runtime)
    return _done_frame(namespace, runtime)


def instrument(tree: ast.Module) -> ast.Module:
    """Make each top-level `for` loop iterate through the progress hook, and every read of an
    attribute in GUARDED_READS (`.format`, `.dump`) go through the attribute hook."""
    _GuardedReads().visit(tree)  # changes attributes in place; the module node stays
    for node in tree.body:
        if isinstance(node, ast.For):
            hook = ast.Name(id=LOOP_HOOK, ctx=ast.Load())
            label = ast.Constant(value=f"for@{node.lineno}")
            node.iter = ast.copy_location(ast.Call(func=hook, args=[node.iter, label],
                                                   keywords=[]), node.iter)
    return ast.fix_missing_locations(tree)


class _GuardedReads(ast.NodeTransformer):
    """`x.format` becomes `__sluice_attr__(x, "format")`, which checks before it reads."""

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        self.generic_visit(node)
        if node.attr not in GUARDED_READS or not isinstance(node.ctx, ast.Load):
            return node
        hook = ast.Name(id=ATTRIBUTE_HOOK, ctx=ast.Load())
        call = ast.Call(func=hook, args=[node.value, ast.Constant(value=node.attr)], keywords=[])
        return ast.copy_location(call, node)


def _error_frame(exc: BaseException, namespace: dict[str, Any], runtime: Runtime) -> dict[str, Any]:
    line = program_line(exc)
    trace = _program_traceback(exc)
    exc.__traceback__ = None
    namespace.clear()  # frees what a memory bomb held
    shown = _sandbox_guards.explained(exc)
    kind = type(shown).__name__
    message = str(shown) or kind
    if isinstance(exc, CpuLimitExceeded):
        kind = "CpuLimitExceeded"
    if runtime.stopped is not None:  # whatever the program did after it was stopped
        kind, message = "RunStopped", runtime.stopped
    return {"op": "error", "type": kind, "message": message[:2000], "line": line,
            "traceback": trace, "failures": runtime.failures}


def _program_traceback(exc: BaseException) -> str:
    """The program's own frames only, innermost last: `line N, in f: code`."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == PROGRAM_FILE]
    lines = [f"line {f.lineno}, in {f.name}: {(f.line or '').strip()}" for f in frames[-8:]]
    shown = _sandbox_guards.explained(exc)
    lines.append(f"{type(shown).__name__}: {shown}"[:500])
    return "\n".join(lines)


def _done_frame(namespace: dict[str, Any], runtime: Runtime) -> dict[str, Any]:
    kept = runtime.program_variables(namespace)
    variables, unsaved = encode_state(kept)
    frame: dict[str, Any] = {"op": "done", "failures": runtime.failures,
                             "variables": variables, "unsaved": unsaved,
                             "summaries": {name: summarize(kept[name]) for name in variables}}
    try:
        table = table_of(namespace.get("result"))
    except Exception as exc:
        runtime.write(f"\n[the result table could not be saved: {type(exc).__name__}: {exc}]\n")
        table = None
    if table is not None:
        text, rows = table
        if len(text) > MAX_TABLE_BYTES:
            text = text[: text.rfind("\n", 0, MAX_TABLE_BYTES) + 1]
            runtime.write(f"\n[the result table was cut to {MAX_TABLE_BYTES // 1024 // 1024} MiB "
                          f"of CSV; it has {rows} rows]\n")
        frame.update(table_csv=text, table_rows=rows)
    return frame


def table_of(result: Any) -> tuple[str, int] | None:
    """CSV text and row count of `result` when it is a DataFrame or a list of dicts."""
    pandas = sys.modules.get("pandas")
    if pandas is not None and isinstance(result, pandas.DataFrame):
        return str(result.to_csv(index=False)), len(result)
    if isinstance(result, list) and all(isinstance(row, dict) for row in result):
        return _dicts_to_csv(result), len(result)
    return None


def _dicts_to_csv(rows: list[dict[str, Any]]) -> str:
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(str(k) for k in row))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(columns), restval="", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({str(k): v for k, v in row.items()})
    return out.getvalue()


if __name__ == "__main__":
    sys.exit(main())
