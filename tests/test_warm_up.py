"""A worker warms up (imports litellm, fills mypy's cache) only while no run is going: beside a
run, warming up took half the run's pace (`workers.settings._when_idle`)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from core.types import RunState
from tests._stack import Stack
from tests.test_runtime import ASK_ALWAYS, LONG_EACH, scenario, start_long_run
from workers.settings import _when_idle


async def test_warming_up_waits_until_no_run_is_going(redis_server: Any, tmp_path: Path) -> None:
    async with Stack.running(redis_url=redis_server.url, home=tmp_path,
                             scenario=scenario(LONG_EACH, delay_ms=100), env=ASK_ALWAYS) as stack:
        _thread, status_msg, _sampled, work = await start_long_run(stack)
        warmed: list[str] = []
        warming = asyncio.create_task(_when_idle(stack.deps, lambda: warmed.append("warm"),
                                                 "a test", quiet_s=0.3, every_s=0.05))
        assert stack.deps.runs_going == 1
        await asyncio.sleep(0.9)  # three times the quiet time, with the run going all along
        assert not warmed and not warming.done()
        await stack.click(status_msg, "cancel_run")
        await work
        assert (await stack.store.get_run(status_msg["meta"]["run_id"])).state == \
            RunState.CANCELLED
        assert stack.deps.runs_going == 0
        await asyncio.wait_for(warming, timeout=10)
        assert warmed == ["warm"]
