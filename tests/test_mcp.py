"""MCP servers as integrations: a real server process written with the mcp SDK
(tests/mcp_servers/inventory.py), over stdio and over Streamable HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from core.errors import IntegrationError
from core.settings import Settings
from integrations.base import EffectCall
from integrations.catalog import Catalog
from integrations.kept import KeptConnections
from integrations.mcp_client import MCPServerIntegration
from integrations.registry import build_catalog
from integrations.vault import Vault
from tests._canned import CannedModel

SERVER = Path(__file__).parent / "mcp_servers" / "inventory.py"
API_KEY = "inv-key-7f3a9c"




@pytest.fixture
async def catalog(engine: AsyncEngine, tmp_path: Path) -> AsyncIterator[Catalog]:
    """The workspace catalog with the inventory server connected over stdio from the vault."""
    settings = Settings(home=tmp_path / "state")
    await Vault.from_settings(settings, engine).put("default", "inventory", "mcp", {
        "command": f"{sys.executable} {SERVER}", "env": json.dumps({"INVENTORY_API_KEY": API_KEY}),
    })
    built = await build_catalog(settings, CannedModel(), engine=engine)
    yield built
    await built.aclose()


async def test_tools_become_typed_stubs_with_effects(catalog: Catalog) -> None:
    stubs = catalog.stubs()
    assert "class InventoryTools:" in stubs and stubs.endswith("inventory: InventoryTools\n")
    assert textwrap.dedent('''\
        class Product(TypedDict):
            """One product in the catalogue."""

            sku: str
            name: str
            price: float
            in_stock: int
        ''') in stubs
    assert ("    def find_products(self, query: str, max_price: float | None = None) -> "
            "list[Product]:\n        \"\"\"Products whose name contains the query") in stubs
    assert "    def reserve(self, sku: str, quantity: int) -> Reservation:" in stubs
    assert "def stock_report(self, detail: Literal['short', 'long'] = 'short') -> str:" in stubs
    assert catalog.manifest()["integrations"]["inventory"]["actions"] == {
        "find_products": "read", "reserve": "write", "stock_report": "read", "whoami": "read"}
    assert catalog.previews()["inventory.reserve"] == "call reserve {n} times"
    assert API_KEY in catalog.secrets and API_KEY not in stubs
    assert (await catalog.describe())["inventory"] == {"server": "inventory", "tools": 4}


async def test_calls_return_structured_results_and_tool_errors_say_why(catalog: Catalog) -> None:
    found = await catalog.dispatch(EffectCall("inventory", "find_products", ["mug"],
                                              {"max_price": 13}))
    assert found == [{"sku": "SKU-1", "name": "Blue mug", "price": 12.5, "in_stock": 40}]
    reservation = await catalog.dispatch(EffectCall("inventory", "reserve", [],
                                                    {"sku": "SKU-3", "quantity": 2}))
    assert reservation == {"sku": "SKU-3", "quantity": 2, "remaining": 3}
    assert await catalog.dispatch(EffectCall("inventory", "stock_report", [], {})) == \
        "3 products"
    assert await catalog.dispatch(EffectCall("inventory", "whoami", [], {})) == "account inv-"
    with pytest.raises(IntegrationError) as info:
        await catalog.dispatch(EffectCall("inventory", "reserve", ["SKU-2", 1], {}))
    assert info.value.message.startswith("The tool reserve failed: ")
    assert "only 0 of SKU-2 in stock" in info.value.message
    with pytest.raises(IntegrationError, match=r"inventory\.reserve\(\): missing a required "):
        await catalog.dispatch(EffectCall("inventory", "reserve", ["SKU-1"], {}))


async def test_programs_type_check_against_the_tools(catalog: Catalog, tmp_path: Path) -> None:
    mypy_api = pytest.importorskip("mypy.api")
    (tmp_path / "sluice_runtime.pyi").write_text(catalog.stubs())
    good = tmp_path / "good.py"
    good.write_text(textwrap.dedent("""\
        from sluice_runtime import *

        for product in inventory.find_products("mug", max_price=20.0):
            if product["in_stock"] > 0:
                booked = inventory.reserve(product["sku"], 1)
                print(booked["remaining"] * product["price"])
        print(inventory.stock_report(detail="long"))
        """))
    bad = tmp_path / "bad.py"
    bad.write_text("from sluice_runtime import *\n"
                   "print(inventory.find_products(3)[0]['colour'])\n"
                   "inventory.stock_report(detail='medium')\n")
    out, _, status = mypy_api.run(["--strict", "--no-incremental", "--cache-dir", "/dev/null",
                                   str(good)])
    assert status == 0, out
    out, _, status = mypy_api.run(["--no-incremental", "--cache-dir", "/dev/null", str(bad)])
    assert status == 1
    assert 'TypedDict "Product" has no key "colour"' in out
    assert "incompatible type \"int\"; expected \"str\"" in out
    assert "\"Literal['medium']\"" in out


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def http_server() -> Iterator[str]:
    port = _free_port()
    process = subprocess.Popen([sys.executable, str(SERVER), "http", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(300):  # until it listens (or exits)
            if process.poll() is not None:
                raise RuntimeError(f"the MCP server exited: {process.stderr.read()!r}")  # type: ignore[union-attr]
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            import time

            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.terminate()
        process.wait(timeout=10)


async def test_streamable_http_server(http_server: str) -> None:
    integration = await MCPServerIntegration(connection="shop", url=http_server,
                                             headers={"Authorization": "Bearer x"}).ready()
    try:
        assert type(integration).__name__ == "ShopTools" and integration.name == "shop"
        catalog = Catalog([integration])
        found = await catalog.dispatch(EffectCall("shop", "find_products", [], {"query": "pot"}))
        assert found == [{"sku": "SKU-3", "name": "Teapot", "price": 39.9, "in_stock": 5}]
        results = await asyncio.gather(*(catalog.dispatch(
            EffectCall("shop", "stock_report", [], {})) for _ in range(5)))
        assert results == ["3 products"] * 5
    finally:
        await integration.aclose()


async def test_a_server_that_cannot_start_is_left_out(engine: AsyncEngine, tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(home=tmp_path / "state")
    await Vault.from_settings(settings, engine).put("default", "broken", "mcp", {
        "command": f"{sys.executable} -c 'raise SystemExit(3)'"})
    catalog = await build_catalog(settings, CannedModel(), engine=engine)
    try:
        assert "broken" not in catalog.integrations
        assert "connection 'broken' (mcp) left out" in caplog.text
    finally:
        await catalog.aclose()


async def test_a_worker_keeps_a_server_between_catalogs_and_stops_it_when_idle(
        engine: AsyncEngine, tmp_path: Path) -> None:
    starts = tmp_path / "starts.txt"
    settings = Settings(home=tmp_path / "state")
    await Vault.from_settings(settings, engine).put("default", "inventory", "mcp", {
        "command": f"{sys.executable} {SERVER}",
        "env": json.dumps({"INVENTORY_API_KEY": API_KEY, "INVENTORY_STARTS": str(starts)})})
    kept = KeptConnections(idle_s=0.5)
    try:
        # A plan, its sample run and the run: one server start, every tool call answered.
        for _ in range(3):
            catalog = await build_catalog(settings, CannedModel(), engine=engine, kept=kept)
            report = await catalog.dispatch(EffectCall("inventory", "stock_report", [], {}))
            await catalog.aclose()
            assert report == "3 products"
        [pid] = starts.read_text().split()

        # Left unused for idle_s, it is stopped; the next catalog starts it again.
        await _until(lambda: not _running(int(pid)))
        catalog = await build_catalog(settings, CannedModel(), engine=engine, kept=kept)
        assert await catalog.dispatch(EffectCall("inventory", "whoami", [], {})) == "account inv-"
        _first, second = starts.read_text().split()

        # A server that died while kept is noticed and replaced, not handed out.
        await catalog.aclose()
        os.kill(int(second), signal.SIGKILL)
        catalog = await build_catalog(settings, CannedModel(), engine=engine, kept=kept)
        assert await catalog.dispatch(EffectCall("inventory", "stock_report", [], {})) == (
            "3 products")
        assert len(starts.read_text().split()) == 3
        await catalog.aclose()
    finally:
        await kept.aclose()  # the worker stops: every kept server with it
    assert not any(_running(int(p)) for p in starts.read_text().split())


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie has exited
        return stat.read().split(") ")[-1][0] != "Z"


async def _until(condition: Callable[[], bool], within_s: float = 10.0) -> None:
    for _ in range(int(within_s / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {within_s} s")
