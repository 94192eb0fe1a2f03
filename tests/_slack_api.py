"""A local Slack Web API for tests: the methods Sluice calls, on a random loopback port.

Follows Slack's published API (https://api.slack.com/methods): answers are JSON with `ok`, the
bot token is checked on every call, `chat.postMessage` returns the new message's `ts`,
`files.getUploadURLExternal` hands out an upload URL served here, and `rate_limit()` makes the
next calls of a method answer HTTP 429 with `Retry-After`, as Slack does. Every call is recorded.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

TEAM_ID = "T0SLUICE"
BOT_USER_ID = "UBOT"
BOT_ID = "BBOT"


@dataclass
class Call:
    method: str
    args: dict[str, Any]
    status: int = 200


@dataclass
class SlackMessage:
    channel: str
    ts: str
    text: str
    blocks: list[dict[str, Any]]
    thread_ts: str | None
    user: str = BOT_USER_ID
    edits: list[str] = field(default_factory=list)  # texts of every chat.update, in order


@dataclass
class Upload:
    file_id: str
    filename: str
    data: bytes = b""
    channel: str | None = None
    thread_ts: str | None = None


class FakeSlack:
    def __init__(self, *, token: str, oauth: dict[str, str] | None = None,
                 app_token: str | None = None) -> None:
        self.token = token
        self.app_token = app_token  # Socket Mode: apps.connections.open takes this one
        self.sockets: list[web.WebSocketResponse] = []
        self.acks: list[dict[str, Any]] = []  # what the app answered to each envelope
        self.responses: list[dict[str, Any]] = []  # posted to a command's response_url
        self.closed_channels: set[str] = set()  # chat.postMessage answers not_in_channel
        self.oauth = oauth or {}  # code -> bot token issued by oauth.v2.access
        self.calls: list[Call] = []
        self.messages: dict[tuple[str, str], SlackMessage] = {}
        self.uploads: dict[str, Upload] = {}
        self.views: dict[str, dict[str, Any]] = {}
        self.files: dict[str, bytes] = {}  # path under /files/ -> content, for downloads
        self.downloads: list[str] = []  # Authorization headers that fetched a file
        self._limits: dict[str, list[int]] = {}
        self._seq = 0
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    @property
    def api_url(self) -> str:
        return self.base_url + "/api/"

    async def start(self) -> None:
        app = web.Application(client_max_size=50 * 1024 * 1024)
        app.router.add_post("/api/{method}", self._api)
        app.router.add_get("/api/{method}", self._api)
        app.router.add_post("/upload/{file_id}", self._upload)
        app.router.add_get("/files/{path:.+}", self._file)
        app.router.add_get("/socket", self._socket)
        app.router.add_post("/response", self._response)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.base_url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        for socket in self.sockets:
            await socket.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def rate_limit(self, method: str, times: int, *, retry_after: int = 1) -> None:
        """The next `times` calls of `method` get HTTP 429 with `Retry-After: retry_after`."""
        self._limits.setdefault(method, []).extend([retry_after] * times)

    # Reading what happened --------------------------------------------------------------------

    def called(self, method: str) -> list[dict[str, Any]]:
        return [c.args for c in self.calls if c.method == method and c.status == 200]

    def limited(self) -> list[str]:
        return [c.method for c in self.calls if c.status == 429]

    def thread(self, channel: str, thread_ts: str) -> list[SlackMessage]:
        """Replies in a thread, oldest first (what conversations.replies lists)."""
        return sorted((m for m in self.messages.values()
                       if m.channel == channel and m.thread_ts == thread_ts),
                      key=lambda m: float(m.ts))

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(predicate), timeout)

    # The API ----------------------------------------------------------------------------------

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        args = await _args(request)
        limits = self._limits.get(method)
        if limits:
            retry_after = limits.pop(0)
            self.calls.append(Call(method, args, status=429))
            return web.json_response({"ok": False, "error": "ratelimited"}, status=429,
                                     headers={"Retry-After": str(retry_after)})
        expected = self.app_token if method == "apps.connections.open" else self.token
        if method != "oauth.v2.access" and \
                request.headers.get("Authorization") != f"Bearer {expected}":
            self.calls.append(Call(method, args, status=401))
            return web.json_response({"ok": False, "error": "invalid_auth"})
        handler = getattr(self, "_" + method.replace(".", "_"), None)
        if handler is None:
            return web.json_response({"ok": False, "error": "unknown_method"}, status=404)
        body = handler(args)
        self.calls.append(Call(method, args))
        await self._notify()
        return web.json_response(body)

    def _next_ts(self) -> str:
        self._seq += 1
        return f"{1_800_000_000 + self._seq}.{self._seq:06d}"

    def _apps_connections_open(self, _args: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "url": self.base_url.replace("http://", "ws://") + "/socket"}

    def _auth_test(self, _args: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "url": "https://sluice-test.slack.com/", "team": "Sluice Test",
                "user": "sluice", "team_id": TEAM_ID, "user_id": BOT_USER_ID, "bot_id": BOT_ID}

    def _chat_postMessage(self, args: dict[str, Any]) -> dict[str, Any]:
        if args["channel"] in self.closed_channels:
            return {"ok": False, "error": "not_in_channel"}
        ts = self._next_ts()
        message = SlackMessage(channel=args["channel"], ts=ts, text=args.get("text", ""),
                               blocks=_blocks(args), thread_ts=args.get("thread_ts"))
        self.messages[(message.channel, ts)] = message
        return {"ok": True, "channel": message.channel, "ts": ts,
                "message": {"type": "message", "text": message.text, "ts": ts,
                            "bot_id": BOT_ID}}

    def _chat_update(self, args: dict[str, Any]) -> dict[str, Any]:
        message = self.messages.get((args["channel"], args["ts"]))
        if message is None:
            return {"ok": False, "error": "message_not_found"}
        message.text, message.blocks = args.get("text", ""), _blocks(args)
        message.edits.append(message.text)
        return {"ok": True, "channel": message.channel, "ts": message.ts, "text": message.text}

    def _chat_postEphemeral(self, _args: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "message_ts": self._next_ts()}

    def _files_getUploadURLExternal(self, args: dict[str, Any]) -> dict[str, Any]:
        file_id = "F" + secrets.token_hex(5).upper()
        self.uploads[file_id] = Upload(file_id=file_id, filename=args["filename"])
        return {"ok": True, "upload_url": f"{self.base_url}/upload/{file_id}",
                "file_id": file_id}

    def _files_completeUploadExternal(self, args: dict[str, Any]) -> dict[str, Any]:
        files = json.loads(args["files"])
        for entry in files:
            upload = self.uploads[entry["id"]]
            upload.channel, upload.thread_ts = args.get("channel_id"), args.get("thread_ts")
        return {"ok": True, "files": [{"id": f["id"], "title": f.get("title", "")}
                                      for f in files]}

    def _conversations_replies(self, args: dict[str, Any]) -> dict[str, Any]:
        root = self.messages.get((args["channel"], args["ts"]))
        replies = self.thread(args["channel"], args["ts"])
        listed = ([root] if root else []) + replies
        return {"ok": True, "messages": [{"type": "message", "ts": m.ts, "text": m.text,
                                          "thread_ts": m.thread_ts or m.ts} for m in listed],
                "has_more": False}

    def _users_info(self, args: dict[str, Any]) -> dict[str, Any]:
        user = args["user"]
        return {"ok": True, "user": {"id": user, "name": user.lower(), "real_name": user,
                                     "is_bot": user == BOT_USER_ID}}

    def _views_publish(self, args: dict[str, Any]) -> dict[str, Any]:
        view = args["view"] if isinstance(args["view"], dict) else json.loads(args["view"])
        self.views[args["user_id"]] = view
        return {"ok": True, "view": {"id": "V1", **view}}

    def _oauth_v2_access(self, args: dict[str, Any]) -> dict[str, Any]:
        token = self.oauth.get(args.get("code", ""))
        if token is None:
            return {"ok": False, "error": "invalid_code"}
        return {"ok": True, "access_token": token, "token_type": "bot", "scope": "chat:write",
                "bot_user_id": BOT_USER_ID, "app_id": "A0SLUICE",
                "team": {"id": TEAM_ID, "name": "Sluice Test"}, "enterprise": None,
                "is_enterprise_install": False, "authed_user": {"id": "UANA"}}

    async def _response(self, request: web.Request) -> web.Response:
        self.responses.append(await request.json())
        await self._notify()
        return web.Response(text="ok")

    # Socket Mode (https://api.slack.com/apis/socket-mode) --------------------------------------

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()  # answers the client's pings with pongs
        await socket.prepare(request)
        await socket.send_json({"type": "hello", "num_connections": 1,
                                "connection_info": {"app_id": "A0SLUICE"}})
        self.sockets.append(socket)
        await self._notify()
        async for frame in socket:
            if frame.type == web.WSMsgType.TEXT:
                self.acks.append(json.loads(frame.data))
                await self._notify()
        return socket

    async def send_envelope(self, kind: str, payload: dict[str, Any]) -> str:
        """Deliver `payload` over the app's socket as Slack does; returns its envelope id."""
        envelope_id = secrets.token_hex(8)
        await self.sockets[-1].send_json({"envelope_id": envelope_id, "type": kind,
                                          "accepts_response_payload": kind != "events_api",
                                          "payload": payload, "retry_attempt": 0,
                                          "retry_reason": ""})
        return envelope_id

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # Files ------------------------------------------------------------------------------------

    async def _upload(self, request: web.Request) -> web.Response:
        upload = self.uploads.get(request.match_info["file_id"])
        if upload is None:
            return web.Response(status=404)
        upload.data = await request.read()
        return web.Response(text=f"OK - {len(upload.data)}")

    async def _file(self, request: web.Request) -> web.Response:
        self.downloads.append(request.headers.get("Authorization", ""))
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.Response(text="<html>sign in</html>", content_type="text/html")
        data = self.files.get(request.match_info["path"])
        if data is None:
            return web.Response(status=404)
        return web.Response(body=data, content_type="application/octet-stream")


async def _args(request: web.Request) -> dict[str, Any]:
    args: dict[str, Any] = dict(request.query)
    if request.content_type == "application/json":
        args.update(await request.json())
    elif request.can_read_body:
        args.update(dict(await request.post()))
    return args


def _blocks(args: dict[str, Any]) -> list[dict[str, Any]]:
    blocks = args.get("blocks") or []
    return json.loads(blocks) if isinstance(blocks, str) else list(blocks)
