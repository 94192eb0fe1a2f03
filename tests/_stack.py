"""The whole spine in one test process, on real local services (see conftest.py)."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from arq import ArqRedis

from bot.app import create_app
from core.db import create_engine, migrate
from core.events import GROUP, STREAM
from core.jobs import connect
from core.settings import Settings, load_settings
from core.store import Store
from infra.outbox import Outbox, start_outbox
from infra.scripted_model import ScriptedModelServer, start_scripted_model
from tests._database import database_url
from workers.deps import Deps
from workers.settings import build_worker

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
DEMO_REQUEST = (EXAMPLES / "signups" / "request.txt").read_text().strip()


def demo_scenario() -> str:
    return (EXAMPLES / "signups" / "scenario.yaml").read_text()


@dataclass
class Stack:
    settings: Settings
    store: Store
    redis: ArqRedis
    deps: Deps
    model: ScriptedModelServer
    outbox: Outbox
    http: aiohttp.ClientSession
    base_url: str
    sheets_dir: Path
    app: web.Application | None = None

    @classmethod
    @asynccontextmanager
    async def running(cls, *, redis_url: str, home: Path, scenario: Any = None,
                      env: dict[str, str] | None = None) -> AsyncIterator[Stack]:
        """The stack; `env` adds settings (for example SLUICE_AUTO_APPROVE_BELOW_USD)."""
        async with database_url(home) as url, cls._running(
                redis_url=redis_url, home=home, scenario=scenario, url=url,
                env=env or {}) as stack:
            yield stack

    @classmethod
    @asynccontextmanager
    async def _running(cls, *, redis_url: str, home: Path, scenario: Any,
                       url: str, env: dict[str, str]) -> AsyncIterator[Stack]:
        sheets = home / "sheets"
        shutil.copytree(EXAMPLES / "signups" / "sheets", sheets)
        engine = create_engine(url)
        await migrate(engine)
        store = Store(engine)
        redis = await connect(redis_url)
        await redis.flushdb()
        model = await start_scripted_model(scenario if scenario is not None else demo_scenario())
        outbox = await start_outbox(store)
        settings = load_settings({
            "SLUICE_HOME": str(home), "SLUICE_REDIS_URL": redis_url,
            "SLUICE_DATABASE_URL": url, "SLUICE_SCRIPTED_MODEL_URL": model.url,
            "SLUICE_SMTP_PORT": str(outbox.port), "SLUICE_SHEETS_DIR": str(sheets),
            "SLUICE_SANDBOX_WALL_S": "60", "SLUICE_LEASE_TTL_S": "0.6", **env,
        }, env_file=False)
        deps = await Deps.create(settings, redis=redis)
        app = create_app(settings)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        http = aiohttp.ClientSession()
        try:
            yield cls(settings=settings, store=store, redis=redis, deps=deps, model=model,
                      outbox=outbox, http=http, base_url=f"http://127.0.0.1:{port}",
                      sheets_dir=sheets, app=app)
        finally:
            await http.close()
            await runner.cleanup()
            await outbox.stop()
            await model.stop()
            await deps.close()
            await redis.aclose()
            await engine.dispose()

    # HTTP -------------------------------------------------------------------------------------

    async def call(self, method: str, path: str, body: Any = None, *,
                   raw: bytes | None = None) -> tuple[int, Any]:
        kwargs: dict[str, Any] = {"data": raw, "headers": {"Content-Type": "application/json"}} \
            if raw is not None else {"json": body}
        async with self.http.request(method, self.base_url + path, **kwargs) as resp:
            return resp.status, await resp.json(content_type=None)

    async def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, data = await self.call(method, path, body)
        assert status < 300, (status, data)
        return data

    async def ask(self, text: str) -> str:
        thread = await self.ok("POST", "/api/threads", {"text": text, "user": "ana"})
        return str(thread["id"])

    async def thread(self, thread_id: str) -> dict[str, Any]:
        return dict(await self.ok("GET", f"/api/threads/{thread_id}"))

    async def messages(self, thread_id: str, kind: str | None = None) -> list[dict[str, Any]]:
        msgs = (await self.thread(thread_id))["messages"]
        return [m for m in msgs if kind is None or m["kind"] == kind]

    async def click(self, message: dict[str, Any], action: str, *, user: str = "ana",
                    count: int | None = None) -> tuple[int, Any]:
        button = next(b for b in message["buttons"] if b["action"] == action)
        body = {"message_id": message["id"], "action": action, "value": button["value"],
                "user": user}
        if count is not None:
            body["count"] = count
        return await self.call("POST", "/api/actions", body)

    # Work -------------------------------------------------------------------------------------

    async def drain(self) -> None:
        """Run a burst worker until the queue is empty, then wait until the bot rendered all."""
        while True:
            worker = build_worker(self.settings, burst=True, deps=self.deps, poll_delay=0)
            await worker.main()
            await worker.close()
            await self.settled()
            if not await self.redis.zcard("arq:queue"):
                return

    async def settled(self, timeout: float = 15.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if await self._all_rendered():
                return
            await asyncio.sleep(0.02)
        raise TimeoutError("the bot did not render every event in time")

    async def _all_rendered(self) -> bool:
        if not await self.redis.exists(STREAM):
            return True
        info = await self.redis.xinfo_stream(STREAM)
        groups = await self.redis.xinfo_groups(STREAM)
        group = next((g for g in groups if _s(g["name"]) == GROUP), None)
        if group is None:
            return False
        return bool(group["pending"] == 0
                    and _s(group["last-delivered-id"]) == _s(info["last-generated-id"]))

    async def outbox_mails(self) -> list[dict[str, Any]]:
        return list(await self.ok("GET", "/api/outbox"))


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
