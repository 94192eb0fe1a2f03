"""The bundled demo: `examples/signups/`, run through the real stack.

`prepare_demo` lays a fresh copy of the demo sheet under `.sluice/demo/`; `drive_demo` asks the
demo request through the console API, approves the plan, waits for the result, and `check_demo`
says whether the outbox and the sheet are what they should be.
"""

from __future__ import annotations

import asyncio
import csv
import shutil
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import aiohttp

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "signups"
ASKED_COLUMN = "Budget asked on"


@dataclass
class DemoFiles:
    sheets_dir: Path
    scenario: Path
    request: str

    @property
    def sheet(self) -> Path:
        return self.sheets_dir / "signups.csv"


def prepare_demo(home: Path, example: Path = EXAMPLE) -> DemoFiles:
    """A fresh copy of the demo workspace (a re-run starts from the same sheet)."""
    target = home.resolve() / "demo" / "sheets"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(example / "sheets", target)
    return DemoFiles(sheets_dir=target, scenario=example / "scenario.yaml",
                     request=(example / "request.txt").read_text().strip())


class ConsoleClient:
    """The console's JSON API, as the page uses it."""

    def __init__(self, http: aiohttp.ClientSession, base_url: str) -> None:
        self.http = http
        self.base = base_url

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        async with self.http.request(method, self.base + path, json=body) as resp:
            data = await resp.json()
            if resp.status >= 400:
                raise RuntimeError(f"{method} {path} -> {resp.status}: {data}")
            return data

    async def wait_for(self, thread_id: str, kind: str, *, after: int = 0,
                       timeout: float = 120.0) -> dict[str, Any]:
        """The first message of `kind` at index >= `after` (polls the thread)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            thread = await self.call("GET", f"/api/threads/{thread_id}")
            for message in thread["messages"][after:]:
                if message["kind"] == kind or (kind != "error" and message["kind"] == "error"):
                    return dict(message)
            await asyncio.sleep(0.2)
        raise TimeoutError(f"no {kind!r} message in thread {thread_id} after {timeout:.0f} s")


async def drive_demo(base_url: str, request: str, *, approve: bool = True) -> str:
    """Ask, approve, wait for the result; returns the thread id."""
    async with aiohttp.ClientSession() as http:
        console = ConsoleClient(http, base_url)
        thread = await console.call("POST", "/api/threads", {"text": request, "user": "demo"})
        plan = await console.wait_for(thread["id"], "plan")
        if plan["kind"] != "plan" or not approve:
            return str(thread["id"])
        button = next(b for b in plan["buttons"] if b["action"] == "approve")
        await console.call("POST", "/api/actions", {"message_id": plan["id"], "action": "approve",
                                                    "value": button["value"], "user": "demo"})
        await console.wait_for(thread["id"], "result")
        return str(thread["id"])


async def thread_text(base_url: str, thread_id: str) -> str:
    async with aiohttp.ClientSession() as http:
        thread = await ConsoleClient(http, base_url).call("GET", f"/api/threads/{thread_id}")
    blocks = []
    for m in thread["messages"]:
        who = m["user"] if m["author"] == "user" else "Sluice"
        files = "".join(f"\n  [attachment] {a['name']} ({a['size']} bytes)"
                        for a in m["attachments"])
        buttons = "".join(f" [{b['label']}]" for b in m["buttons"])
        blocks.append(f"{who} ({m['kind']}):\n  " + m["text"].replace("\n", "\n  ") + files
                      + (f"\n {buttons}" if buttons else ""))
    return "\n\n".join(blocks)


def check_demo(original: Path, current: Path, outbox: list[dict[str, Any]],
               today: date) -> list[str]:
    """Problems with the demo's end state; empty when the outbox and the sheet are right."""
    with original.open(newline="") as f:
        before = list(csv.DictReader(f))
    with current.open(newline="") as f:
        after = list(csv.DictReader(f))
    expected = sorted(r["Email"] for r in before if not r["Budget"].strip())
    sent = sorted(rcpt for mail in outbox for rcpt in mail["recipients"])
    problems = []
    if sent != expected:
        problems.append(f"outbox: expected one email each to {expected}, found {sent}")
    if len(after) != len(before):
        problems.append(f"sheet: expected {len(before)} rows, found {len(after)}")
    for row in after:
        want = today.isoformat() if row["Email"] in expected else ""
        got = (row.get(ASKED_COLUMN) or "").strip()
        if got != want:
            problems.append(f"sheet: {row['Email']} has {ASKED_COLUMN!r} = {got!r}, "
                            f"expected {want!r}")
    return problems
