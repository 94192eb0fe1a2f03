"""How the sandbox child is confined (ARCHITECTURE.md, "The sandbox holds no secrets").

Three levels, strongest first:

- `bwrap`: bubblewrap with new network, PID, IPC and UTS namespaces, no capabilities, a read-only
  view of the filesystem in which the places that may hold secrets (home directories, /work, /run,
  the Sluice home) are empty, with only the Python installation and our packages bound back in.
- `unshare`: new network, IPC, PID and mount namespaces (the child sees its own /proc, so not the
  worker's environment), the filesystem as the worker sees it.
- `rlimits`: resource limits only. The policy and the empty environment are then all there is.

Every level also gets resource limits, an empty environment, a fresh working directory and its own
session (so the wall-clock kill reaches the whole process group).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import resource
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from core.errors import SandboxError

logger = logging.getLogger(__name__)

LEVELS = ("bwrap", "unshare", "rlimits")
# What each level means to the person reading `sluice doctor` or `sluice jobs show`.
_MEANINGS = {
    "bwrap": "no network; its own processes; a read-only view of the files, with the places "
             "that may hold secrets emptied",
    "unshare": "no network; its own processes; the worker's files, with the places that may "
               "hold secrets emptied",
    "rlimits": "resource limits only: the program's process could reach the network and the "
               "worker's files; install bubblewrap for more",
}

# Packages the child imports; only these are bound into a bwrap sandbox (not the project root,
# which may hold a .env file).
CHILD_PACKAGES = ("core", "integrations", "codegen", "workers")
_HIDDEN = ("/root", "/home", "/work", "/run", "/var/run", "/srv", "/mnt", "/media")
_UNSHARE = ("unshare", "--net", "--ipc", "--pid", "--fork", "--mount-proc", "--kill-child")
_MIB = 1024 * 1024
Rlimit = tuple[int, int, int]  # (resource, soft, hard)


def describe(level: str) -> str:
    """`level` with what it confines, in a line."""
    meaning = _MEANINGS.get(level)
    return f"{level} ({meaning})" if meaning else level


def detect_isolation(preferred: str = "auto") -> str:
    """The isolation level to use: `preferred`, or with "auto" the strongest that works here.

    Each level is tried once per process (a real sandboxed start of the interpreter) and the
    answer cached.

    Raises:
        SandboxError: `preferred` names a level that does not work on this machine.
    """
    if preferred not in ("auto", *LEVELS):
        choices = ", ".join(("auto", *LEVELS))
        raise SandboxError(f"unknown sandbox isolation {preferred!r}; use one of {choices}")
    candidates = LEVELS if preferred == "auto" else (preferred,)
    for level in candidates:
        if _works(level):
            if level == "rlimits" and preferred == "auto":
                logger.warning("sandbox: neither bwrap nor unshare works here; using rlimits only")
            return level
    raise SandboxError(
        f"sandbox isolation {preferred!r} does not work on this machine. Install bubblewrap "
        "(apt-get install bubblewrap), allow user namespaces, or set SLUICE_SANDBOX_ISOLATION=auto."
    )


@functools.cache
def _works(level: str) -> bool:
    if level == "rlimits":
        return True
    with tempfile.TemporaryDirectory(prefix="sluice-probe-") as workdir:
        probe = [sys.executable, "-s", "-P", "-c", "import workers._channel"]
        argv = wrap_command(level, probe, workdir=workdir, hide=(), python=sys.executable)
        try:
            done = subprocess.run(argv, cwd=workdir, env=child_env(), capture_output=True,
                                  timeout=20, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            logger.info("sandbox: %s unavailable: %s", level, exc)
            return False
    if done.returncode != 0:
        reason = done.stderr[-500:].decode(errors="replace")
        logger.info("sandbox: %s unavailable: %s", level, reason)
    return done.returncode == 0


def child_env() -> dict[str, str]:
    """The child's whole environment: nothing inherited, so no secrets."""
    return {"PYTHONHASHSEED": "0", "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}


def wrap_command(
    level: str, argv: Sequence[str], *, workdir: str, hide: Iterable[str], python: str
) -> list[str]:
    """`argv` prefixed with what confines it at `level`."""
    if level == "bwrap":
        return [*_bwrap_args(workdir, list(hide), python), "--", *argv]
    if level == "unshare":
        as_user = ["--map-root-user"] if os.getuid() != 0 else []  # needs a user namespace
        return [*_UNSHARE, "--mount", *as_user, "--", *_unshare_hiding(list(hide), python),
                *argv]
    return list(argv)


def _unshare_hiding(hide: list[str], python: str) -> list[str]:
    """A shell prefix that, inside unshare's private mount namespace, lays an empty tmpfs over
    each hidden folder (except those holding what the child imports) and /dev/null over the
    worker's `.env`, then execs the child."""
    visible = _existing_dirs(_visible_dirs(python))
    mounts = [f"mount -t tmpfs -o size=1m,mode=700 sluice-hidden {shlex.quote(d)}"
              for d in _existing_dirs([*_HIDDEN, *hide])
              if not any(_is_under(v, d) for v in visible)]
    dotenv = Path.cwd() / ".env"
    if dotenv.is_file():
        mounts.append(f"mount --bind /dev/null {shlex.quote(str(dotenv))}")
    if not mounts:
        return []
    return ["/bin/sh", "-c", " && ".join([*mounts, 'exec "$@"']), "sluice-sandbox"]


def _bwrap_args(workdir: str, hide: list[str], python: str) -> list[str]:
    args = ["bwrap", "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
            "--die-with-parent", "--cap-drop", "ALL",
            "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
    hidden = _existing_dirs([*_HIDDEN, *hide])
    visible = _outermost(_existing_dirs(_visible_dirs(python)))
    for path in hidden:
        args += ["--tmpfs", path]
    for path in visible:
        args += ["--ro-bind", path, path]
    for path in hidden:  # hidden places inside a visible one stay hidden
        if any(_is_under(path, v) and path != v for v in visible):
            args += ["--tmpfs", path]
    return [*args, "--bind", workdir, workdir, "--chdir", workdir]


def _visible_dirs(python: str) -> list[str]:
    """The Python installation, the virtualenv and our packages: what the child must import."""
    dirs = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix]
    real = Path(os.path.realpath(python))
    dirs += [str(Path(python).parent.parent), str(real.parent.parent)]
    for name in CHILD_PACKAGES:
        spec = importlib.util.find_spec(name)
        dirs += list(spec.submodule_search_locations or []) if spec else []
    return dirs


def _existing_dirs(paths: Iterable[str]) -> list[str]:
    found: list[str] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir() and not path.is_symlink():
            resolved = str(path.resolve())
            if resolved not in found and resolved != "/":
                found.append(resolved)
    return found


def _outermost(paths: list[str]) -> list[str]:
    """Drop paths inside another path of the list; parents first."""
    ordered = sorted(paths, key=len)
    kept: list[str] = []
    for path in ordered:
        if not any(_is_under(path, k) for k in kept):
            kept.append(path)
    return kept


def _is_under(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def rlimits_for(
    *, cpu_s: int, memory_mb: int, open_files: int, file_size_mb: int, extra_processes: int
) -> list[Rlimit]:
    """The resource limits of a child. CPU: SIGXCPU at `cpu_s`, SIGKILL two seconds later."""
    limits: list[Rlimit] = [
        (resource.RLIMIT_CPU, cpu_s, cpu_s + 2),
        (resource.RLIMIT_AS, memory_mb * _MIB, memory_mb * _MIB),
        (resource.RLIMIT_NOFILE, open_files, open_files),
        (resource.RLIMIT_FSIZE, file_size_mb * _MIB, file_size_mb * _MIB),
        (resource.RLIMIT_CORE, 0, 0),
    ]
    nproc = _nproc_limit(extra_processes)
    if nproc is not None:
        limits.append((resource.RLIMIT_NPROC, nproc, nproc))
    return limits


def _nproc_limit(extra: int) -> int | None:
    """Best effort: RLIMIT_NPROC counts every task of the user, so allow the current ones plus
    `extra`. Root is exempt from the limit, so there is nothing to set."""
    uid = os.getuid()
    if uid == 0:
        return None
    count = 0
    for entry in os.scandir("/proc"):
        try:
            if entry.name.isdigit() and entry.stat().st_uid == uid:
                count += len(os.listdir(f"/proc/{entry.name}/task"))
        except OSError:
            continue
    return count + extra


def preexec(limits: list[Rlimit]) -> Callable[[], None]:
    """The function run in the forked child before exec: apply `limits`, never above the hard
    limits the worker itself has."""

    def apply() -> None:
        for which, soft, hard in limits:
            _, current_hard = resource.getrlimit(which)
            if current_hard != resource.RLIM_INFINITY:
                soft, hard = min(soft, current_hard), min(hard, current_hard)
            try:
                resource.setrlimit(which, (soft, hard))
            except (ValueError, OSError):
                if which != resource.RLIMIT_NPROC:  # NPROC is best effort
                    raise

    return apply
