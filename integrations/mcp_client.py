"""Any MCP server as an integration: its tools become typed actions.

See ARCHITECTURE.md, "AI-friendly integrations". A connection names a server to start (stdio:
`command`, with `env`) or to reach (Streamable HTTP: `url`, with `headers`). When the catalog is
built, `MCPServerIntegration.ready()` connects, lists the tools and returns an instance of a class
made for this server: one async method per tool, whose signature comes from the tool's input
schema (objects become TypedDicts, enums Literals), whose return type comes from its output
schema, and whose docstring is the tool's description. So the model sees the tools as stubs
like any other integration, and mypy checks programs against them.

A tool annotated read-only is a read; every other tool is a write (previewed, journaled, never
redone blindly unless annotated idempotent). Structured results are returned as the dicts and
lists the output schema describes; otherwise the text content. Tool errors raise
`IntegrationError` with the server's text.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import keyword
import logging
import re
import shlex
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypedDict

import httpx2
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult, Tool

from core.errors import IntegrationError
from core.settings import Settings
from integrations.base import ActionSpec, Integration, action
from integrations.kept import KeptConnections
from integrations.registry import CredentialField, Service, named
from integrations.vault import Credentials

logger = logging.getLogger(__name__)
USABLE_S = 5.0  # a kept connection's server must list its tools within this to be reused
_TOOL_ATTR = "__sluice_mcp_tool__"
_TAKEN = frozenset(dir(Integration)) | {"name", "summary", "resources", "client", "tools"}
_SCALARS: dict[str, Any] = {"string": str, "integer": int, "number": float, "boolean": bool,
                            "null": type(None)}


def _camel(text: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[^0-9A-Za-z]+", text)
                   if part) or "Tool"


def _identifier(text: str, taken: frozenset[str] | set[str] = frozenset()) -> str:
    name = re.sub(r"\W+", "_", text).strip("_") or "tool"
    name = f"_{name}" if name[0].isdigit() else name
    name = name.lower() if name.isupper() else name
    while keyword.iskeyword(name) or name in taken or name.startswith("_"):
        name = f"{name.lstrip('_')}_"
    return name


class _Types:
    """Python types for the JSON schemas of one server's tools (TypedDicts named once)."""

    def __init__(self) -> None:
        self.named: dict[str, type] = {}

    def of(self, schema: Any, hint: str, defs: dict[str, Any]) -> Any:
        if not isinstance(schema, dict):
            return Any
        if "$ref" in schema:
            ref = str(schema["$ref"]).rsplit("/", 1)[-1]
            return self.of(defs.get(ref, {}), ref, defs)
        for key in ("anyOf", "oneOf"):
            if key in schema:
                arms = [self.of(arm, hint, defs) for arm in schema[key]]
                return _union(arms)
        if "enum" in schema and all(isinstance(v, str | int | bool) for v in schema["enum"]):
            return Literal[tuple(schema["enum"])]
        kind = schema.get("type")
        if isinstance(kind, list):
            return _union([self.of({**schema, "type": k}, hint, defs) for k in kind])
        if kind == "array":
            return list[self.of(schema.get("items", {}), hint + "Item", defs)]  # type: ignore[misc]
        if kind == "object" or "properties" in schema:
            return self._object(schema, hint, defs)
        return _SCALARS.get(str(kind), Any)

    def _object(self, schema: dict[str, Any], hint: str, defs: dict[str, Any]) -> Any:
        properties = schema.get("properties")
        if not properties:
            return dict[str, Any]
        name = str(schema.get("title") or hint)
        name = _camel(name)
        if name in self.named:
            return self.named[name]
        required = set(schema.get("required", []))
        fields = {key: self.of(value, name + _camel(key), defs) for key, value in
                  properties.items() if key.isidentifier() and not keyword.iskeyword(key)}
        total = all(key in required for key in fields)
        made = TypedDict(name, fields, total=total)  # type: ignore[misc]
        made.__doc__ = str(schema.get("description") or f"{name}, as the MCP tool gives it.")
        self.named[name] = made
        return made


def _union(arms: list[Any]) -> Any:
    unique = list(dict.fromkeys(arms))
    if len(unique) == 1:
        return unique[0]
    return typing.Union[tuple(unique)]  # noqa: UP007 - built from a runtime list


def _parameters(tool: Tool, types: _Types) -> tuple[list[inspect.Parameter], dict[str, str]]:
    """The keyword parameters for a tool's input schema, and python name -> argument name."""
    schema = tool.input_schema or {}
    defs = schema.get("$defs", {}) or schema.get("definitions", {})
    required = set(schema.get("required", []))
    params: list[inspect.Parameter] = []
    names: dict[str, str] = {}
    taken: set[str] = {"self"}
    ordered = sorted(schema.get("properties", {}).items(), key=lambda kv: kv[0] not in required)
    for key, prop in ordered:
        python = _identifier(key, taken)
        taken.add(python)
        names[python] = key
        annotation = types.of(prop, _camel(tool.name) + _camel(key), defs)
        if key in required:
            params.append(inspect.Parameter(python, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                            annotation=annotation))
        else:
            default = prop.get("default") if isinstance(prop, dict) else None
            simple = default is None or isinstance(default, str | int | float | bool)
            keep = simple and default is not None
            params.append(inspect.Parameter(
                python, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default if keep else None,
                annotation=annotation if keep else typing.Optional[annotation]))  # noqa: UP045
    return params, names


def _returns(tool: Tool, types: _Types) -> tuple[Any, bool]:
    """(return type, whether structured results are wrapped as {"result": ...})."""
    schema = tool.output_schema
    if not schema:
        return str, False
    defs = schema.get("$defs", {})
    properties = schema.get("properties", {})
    if set(properties) == {"result"} and schema.get("required") == ["result"]:
        return types.of(properties["result"], _camel(tool.name) + "Result", defs), True
    return types.of(schema, _camel(tool.name) + "Result", defs), False


def _docstring(tool: Tool, names: dict[str, str]) -> str:
    text = (tool.description or f"The MCP tool {tool.name}.").strip()
    schema = tool.input_schema or {}
    lines = []
    for python, key in names.items():
        about = (schema.get("properties", {}).get(key) or {}).get("description")
        if about:
            lines.append(f"    {python}: {about}")
    if lines:
        text += "\n\nArguments:\n" + "\n".join(lines)
    return text


def _result(tool: Tool, result: CallToolResult, wrapped: bool) -> Any:
    texts = [getattr(block, "text", "") for block in result.content
             if getattr(block, "type", "") == "text"]
    if result.is_error:
        message = " ".join(t for t in texts if t) or "the tool reported an error"
        raise IntegrationError(f"The tool {tool.name} failed: {message[:500]}", tool=tool.name)
    if result.structured_content is not None and tool.output_schema:
        data = result.structured_content
        return data.get("result") if wrapped and isinstance(data, dict) else data
    return "\n".join(texts)


def _method(tool: Tool, types: _Types, method_name: str) -> Any:
    params, names = _parameters(tool, types)
    returns, wrapped = _returns(tool, types)

    self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    signature = inspect.Signature([self_param, *params], return_annotation=returns)

    async def call(self: MCPServerIntegration, *args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(self, *args, **kwargs)
        arguments = {names[k]: v for k, v in bound.arguments.items()
                     if k in names and not (v is None and k in optional)}
        return _result(tool, await self.call(tool.name, arguments), wrapped)

    optional = {p.name for p in params if p.default is not inspect.Parameter.empty}
    call.__name__ = call.__qualname__ = method_name
    call.__doc__ = _docstring(tool, names)
    call.__signature__ = signature  # type: ignore[attr-defined]
    call.__annotations__ = {**{p.name: p.annotation for p in params}, "return": returns}
    annotations = tool.annotations
    read_only = bool(annotations and annotations.read_only_hint)
    idempotent = bool(annotations and annotations.idempotent_hint)
    preview = "" if read_only else f"call {tool.name} {{n}} times"
    marked = action("read" if read_only else "write", preview=preview,
                    idempotent=idempotent)(call)
    setattr(marked, _TOOL_ATTR, tool.name)
    return marked


class MCPServerIntegration(Integration):
    """An MCP server's tools. Instances made by the factory are connected by `ready()`."""

    name = "mcp"
    summary = "An MCP server's tools."

    def __init__(self, *, connection: str, command: str | None = None,
                 env: dict[str, str] | None = None, url: str | None = None,
                 headers: dict[str, str] | None = None, timeout_s: float = 60.0) -> None:
        if bool(command) == bool(url):
            raise IntegrationError("An MCP connection needs either a command (stdio) or a url "
                                   "(Streamable HTTP), not both.")
        self.connection = connection
        self.command, self.env, self.url, self.headers = command, env or {}, url, headers or {}
        self.timeout_s = timeout_s
        self.client: Client | None = None
        self.tools: list[Tool] = []
        self.server_name = ""
        self._live: _Live | None = None
        self._release: Callable[[], None] | None = None  # when the connection is kept

    async def ready(self, *, kept: KeptConnections | None = None) -> Integration:
        """Connect (or take the connection `kept` holds for this server), list the tools, and
        return the integration typed for them."""
        if kept is None:
            live, release = await self._connect(), None
        else:
            connection, release = await kept.acquire(self._key(), self._connect)
            assert isinstance(connection, _Live)
            live = connection
        typed = self._typed_class(live.tools)(connection=self.connection, command=self.command,
                                              env=self.env, url=self.url, headers=self.headers,
                                              timeout_s=self.timeout_s)
        typed.client, typed.tools, typed._live, typed._release = (live.client, live.tools, live,
                                                                   release)
        info = getattr(live.client, "server_info", None) or getattr(
            getattr(live.client, "session", None), "server_info", None)
        typed.server_name = str(getattr(info, "name", "") or "")
        return typed

    def _key(self) -> tuple[Any, ...]:
        """What makes two connections to a server the same (a changed setting: another)."""
        return (self.connection, self.command, self.url, tuple(sorted(self.env.items())),
                tuple(sorted(self.headers.items())))

    async def _connect(self) -> _Live:
        """Start the connection in a task of its own (the SDK's task groups must be left by the
        task that entered them), so any task may call the tools and close it."""
        started: asyncio.Future[tuple[Client, list[Tool]]] = (
            asyncio.get_running_loop().create_future())
        stop = asyncio.Event()
        owner = asyncio.create_task(self._hold(started, stop),
                                    name=f"mcp-{self.connection}")
        try:
            client, tools = await started
        except BaseException:
            stop.set()
            await asyncio.gather(owner, return_exceptions=True)
            raise
        return _Live(client, tools, owner, stop)

    async def _hold(self, started: asyncio.Future[tuple[Client, list[Tool]]],
                    stop: asyncio.Event) -> None:
        try:
            async with Client(self._server(), read_timeout_seconds=self.timeout_s) as client:
                started.set_result((client, await _all_tools(client)))
                await stop.wait()
        except Exception as exc:
            if not started.done():
                started.set_exception(exc)
            else:
                logger.warning("the MCP server '%s' stopped: %s", self.connection,
                               type(exc).__name__)

    def _server(self) -> Any:
        if self.command:
            argv = shlex.split(self.command)
            return StdioServerParameters(command=argv[0], args=argv[1:], env=self.env or None)
        assert self.url is not None
        if self.headers:
            return streamable_http_client(self.url, http_client=httpx2.AsyncClient(
                headers=self.headers, timeout=self.timeout_s))
        return self.url

    def _typed_class(self, tools: list[Tool]) -> type[MCPServerIntegration]:
        types = _Types()
        members: dict[str, Any] = {"name": self.connection, "__module__": __name__,
                                   "__doc__": f"The tools of the MCP server '{self.connection}'."}
        taken: set[str] = set(_TAKEN)
        for tool in tools:
            method_name = _identifier(tool.name, taken)
            taken.add(method_name)
            members[method_name] = _method(tool, types, method_name)
        return type(f"{_camel(self.connection)}Tools", (MCPServerIntegration,), members)

    async def call(self, tool: str, arguments: dict[str, Any]) -> CallToolResult:
        if self.client is None:
            raise IntegrationError(f"The MCP server '{self.connection}' is not connected.")
        return await self.client.call_tool(tool, arguments)

    def redo_is_safe(self, spec: ActionSpec) -> bool:
        return spec.idempotent

    async def describe(self) -> dict[str, Any]:
        """{"server": its name, "tools": how many} (the tools themselves are in the stubs)."""
        return {"server": self.server_name, "tools": len(self.tools)}

    async def aclose(self) -> None:
        """Done with the server: a kept connection is handed back, any other one closed."""
        live, release, self._live, self._release, self.client = (self._live, self._release,
                                                                  None, None, None)
        if release is not None:
            release()
        elif live is not None:
            await live.close()


@dataclass
class _Live:
    """A connection to an MCP server, held open by its `owner` task until `stop` is set."""

    client: Client
    tools: list[Tool]
    owner: asyncio.Task[None]
    stop: asyncio.Event

    async def usable(self) -> bool:
        """Whether the server still answers: it lists its tools again (they may have changed)
        within `USABLE_S`."""
        if self.owner.done():
            return False
        try:
            self.tools = await asyncio.wait_for(_all_tools(self.client), USABLE_S)
        except Exception:  # stopped, hung or broken: the caller opens another connection
            return False
        return True

    async def close(self) -> None:
        self.stop.set()
        await asyncio.gather(self.owner, return_exceptions=True)


async def _all_tools(client: Client) -> list[Tool]:
    tools: list[Tool] = []
    cursor: str | None = None
    for _ in range(100):
        page = await client.list_tools(cursor=cursor)
        tools += page.tools
        cursor = page.next_cursor
        if not cursor:
            break
    return tools


def _json_object(credentials: Credentials, field: str) -> dict[str, str]:
    text = credentials.get(field, "").strip()
    if not text:
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        raise IntegrationError(f"The MCP connection's {field} must be a JSON object of "
                               f'strings, e.g. {{"API_KEY": "..."}}.') from None
    if not isinstance(data, dict):
        raise IntegrationError(f"The MCP connection's {field} must be a JSON object.")
    return {str(k): str(v) for k, v in data.items()}


def _from_credentials(credentials: Credentials, settings: Settings) -> Integration:
    return named(MCPServerIntegration, credentials.name)(
        connection=credentials.name, command=credentials.get("command") or None,
        env=_json_object(credentials, "env"), url=credentials.get("url") or None,
        headers=_json_object(credentials, "headers"))


SERVICE = Service(
    name="mcp",
    summary="Any MCP server: a command to start (stdio) or a Streamable HTTP url.",
    fields=(
        CredentialField("command", "Command that starts the server (stdio), or leave empty",
                        required=False),
        CredentialField("url", "Streamable HTTP url (when there is no command)", required=False),
        CredentialField("env", "Environment for the command, a JSON object (secrets)",
                        secret=True, required=False),
        CredentialField("headers", "HTTP headers for the url, a JSON object (secrets)",
                        secret=True, required=False),
    ),
    factory=_from_credentials,
)
