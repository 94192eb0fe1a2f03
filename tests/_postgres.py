"""A real PostgreSQL server for tests and benchmarks: Debian's postgresql, a throwaway cluster
made by `initdb` in a temporary folder and listening on a unix socket only (no TCP port), removed
afterwards (`make db-tools` installs the server when run as root).

PostgreSQL refuses to run as root; as root the cluster is made and run as the `postgres` user
the Debian package creates.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _bin_dir() -> Path | None:
    """The folder of `initdb` and `pg_ctl`: on PATH, else the newest Debian version's."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
                      key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                      else 0)
    return versions[-1].parent if versions else None


def _run_as() -> tuple[list[str], int | None]:
    """The command prefix that runs PostgreSQL's programs, and the uid owning the cluster."""
    if os.geteuid() != 0:
        return [], None
    try:
        uid = pwd.getpwnam("postgres").pw_uid
    except KeyError:
        return [], None
    return ["runuser", "-u", "postgres", "--"], uid


BIN_DIR = _bin_dir()
MISSING = ("PostgreSQL is not installed: run `make db-tools` as root (it installs Debian's "
           "postgresql with apt), install it yourself, or set SLUICE_TEST_POSTGRES_URL")


def available() -> str | None:
    """None when a throwaway cluster can be started here, else why not."""
    if BIN_DIR is None:
        return MISSING
    if os.geteuid() == 0 and _run_as()[1] is None:
        return "PostgreSQL refuses to run as root and there is no `postgres` user to run it as"
    return None


@contextmanager
def postgres_server(*, durable: bool = False) -> Iterator[str]:
    """A running throwaway cluster; yields the admin URL (asyncpg, user `postgres`, database
    `postgres`, over the unix socket). `durable` keeps fsync on (benchmarks measure committed
    work); tests run without it, as nothing survives them."""
    why = available()
    if why is not None or BIN_DIR is None:
        raise RuntimeError(why)
    prefix, uid = _run_as()
    # In /tmp when run as `postgres`: TMPDIR may be a folder only root can enter.
    root = Path(tempfile.mkdtemp(prefix="sluice-pg-", dir="/tmp" if uid is not None else None))
    data, socket_dir = root / "data", root / "run"
    socket_dir.mkdir()
    if uid is not None:
        for path in (root, socket_dir):
            os.chown(path, uid, -1)
    options = (f"-k {socket_dir} -c listen_addresses='' -c max_connections=200 "
               f"-c fsync={'on' if durable else 'off'} "
               f"-c synchronous_commit={'on' if durable else 'off'} "
               f"-c full_page_writes={'on' if durable else 'off'}")
    try:
        _check([*prefix, str(BIN_DIR / "initdb"), "-D", str(data), "-U", "postgres", "-A",
                "trust", "-E", "UTF8", "--no-locale", "--no-sync"], "initdb")
        _check([*prefix, str(BIN_DIR / "pg_ctl"), "-D", str(data), "-l", str(root / "log"),
                "-o", options, "-w", "-t", "60", "start"], "pg_ctl start")
        try:
            yield f"postgresql+asyncpg://postgres@/postgres?host={socket_dir}"
        finally:
            subprocess.run([*prefix, str(BIN_DIR / "pg_ctl"), "-D", str(data), "-m",
                            "immediate", "-w", "stop"], capture_output=True, check=False)
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(root)


def _check(command: list[str], what: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"PostgreSQL's {what} failed (exit {done.returncode}): "
                           f"{(done.stderr or done.stdout).strip()[-800:]}")
