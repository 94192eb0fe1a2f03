"""A small MCP server made with the mcp SDK, for tests: `python inventory.py [stdio | http PORT]`.

Its tools cover what the MCP integration must type: an object result (a pydantic model), a list of
them, an enum argument, an optional argument, a read-only annotation, a tool that fails, and one
that needs an API key from its environment.
"""

from __future__ import annotations

import os
import sys
from typing import Literal

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations
from pydantic import BaseModel, Field

server = MCPServer("inventory")
STOCK = {"SKU-1": ("Blue mug", 12.5, 40), "SKU-2": ("Red mug", 14.0, 0),
         "SKU-3": ("Teapot", 39.9, 5)}
reserved: dict[str, int] = {}


class Product(BaseModel):
    """One product in the catalogue."""

    sku: str
    name: str
    price: float = Field(description="Price in euros")
    in_stock: int


class Reservation(BaseModel):
    sku: str
    quantity: int
    remaining: int


READ = ToolAnnotations(read_only_hint=True)


@server.tool(annotations=READ)
def find_products(query: str, max_price: float | None = None) -> list[Product]:
    """Products whose name contains the query (case-insensitive), cheapest first."""
    found = [Product(sku=sku, name=name, price=price, in_stock=count)
             for sku, (name, price, count) in STOCK.items()
             if query.casefold() in name.casefold() and (max_price is None or price <= max_price)]
    return sorted(found, key=lambda p: p.price)


@server.tool()
def reserve(sku: str, quantity: int) -> Reservation:
    """Reserve stock of one product; fails when there is not enough."""
    if sku not in STOCK:
        raise ToolError(f"unknown sku {sku}")
    name, price, count = STOCK[sku]
    if quantity > count:
        raise ToolError(f"only {count} of {sku} in stock")
    STOCK[sku] = (name, price, count - quantity)
    reserved[sku] = reserved.get(sku, 0) + quantity
    return Reservation(sku=sku, quantity=quantity, remaining=count - quantity)


@server.tool(annotations=READ)
def stock_report(detail: Literal["short", "long"] = "short") -> str:
    """A plain-text stock report."""
    if detail == "short":
        return f"{len(STOCK)} products"
    return "\n".join(f"{sku}: {count}" for sku, (_n, _p, count) in STOCK.items())


@server.tool(annotations=READ)
def whoami() -> str:
    """Which account the server uses (from its INVENTORY_API_KEY)."""
    key = os.environ.get("INVENTORY_API_KEY", "")
    return f"account {key[:4]}" if key else "no key"


if __name__ == "__main__":
    if starts := os.environ.get("INVENTORY_STARTS"):  # tests count the server's starts
        with open(starts, "a") as log:
            log.write(f"{os.getpid()}\n")
    if len(sys.argv) > 2 and sys.argv[1] == "http":
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run()
