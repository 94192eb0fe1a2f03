"""The direct transport: OpenAI-compatible chat completions straight over keep-alive HTTP.

See ARCHITECTURE.md, "Models are pluggable". litellm's per-call path (Router, the openai SDK,
httpx, pydantic models of every response, cost diagnostics) costs 13-16 ms of CPU per call on a
small machine, so one event loop tops out near 60 calls/s: far too slow for `each()` over many
items with a model call each. A deployment the models file declares `transport: direct` is called
here instead: the request body litellm sends to an `openai/` model (model, messages,
response_format), one POST on a keep-alive connection of the small HTTP/1.1 client the models
object holds (`codegen._http1`), the answer and usage read straight from the JSON. Only
OpenAI-compatible servers qualify; litellm stays the default for every deployment and the only
way to reach every other provider. `codegen.models` walks chains that mix the two, and prices and
explains failures alike for both.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Final

import orjson

from codegen._http1 import Endpoint, HttpClient, HttpError
from codegen.model_config import ModelRoute
from core.protocols import ChatMessage

__all__ = ["DirectAnswer", "DirectDeployment", "DirectError", "DirectSession"]

_OPENAI_BASE: Final = "https://api.openai.com/v1"
_SHOWN: Final = 120
# litellm cools a deployment down (and its Router falls back) on these statuses, on 5xx and on
# failures without a status; any other 4xx is the request's fault and fails the same elsewhere.
_PROVIDER_SIDE: Final = frozenset({401, 404, 408, 429})
_CONNECTIONS: Final = 512


class DirectError(Exception):
    """A direct deployment's failure, carrying what `codegen.models` reads off litellm's errors:
    `status_code`, the provider's error `code` and `body` (its error object), and a `reason`."""

    def __init__(self, message: str, *, reason: str, status_code: int | None = None,
                 code: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.status_code = status_code
        self.code = code
        self.body: dict[str, object] = {"message": message}
        self.retry_after = retry_after

    @property
    def provider_side(self) -> bool:
        """Whether the next deployment of the chain should take over (litellm's rule)."""
        status = self.status_code
        return status is None or status in _PROVIDER_SIDE or status >= 500


class DirectAnswer:
    """The parts of a chat completion Sluice uses; token counts are None when the server sent
    no usage (the answer's cost is then unknown, not zero)."""

    __slots__ = ("completion_tokens", "prompt_tokens", "text")

    def __init__(self, text: str, prompt_tokens: int | None, completion_tokens: int | None) -> None:
        self.text = text
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens


class DirectDeployment:
    """One `transport: direct` deployment: its endpoint (URL and headers) and timeout, built
    once."""

    def __init__(self, route: ModelRoute, *, timeout_s: float) -> None:
        self.route = route
        self.url = f"{(route.api_base or _OPENAI_BASE).rstrip('/')}/chat/completions"
        self.name = route.model.removeprefix("openai/")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if route.api_key:
            headers["Authorization"] = f"Bearer {route.api_key}"
        self.endpoint = Endpoint.parse(self.url, headers)
        self.timeout_s = route.timeout_s or timeout_s

    def body(self, messages: list[ChatMessage],
             response_format: dict[str, object] | None) -> bytes:
        """The request body litellm would send for this model: model, messages, and
        response_format when structured output is asked for."""
        request: dict[str, object] = {"model": self.name, "messages": [
            {"role": m.role, "content": m.content} if not m.images else m.model_dump()
            for m in messages]}
        if response_format is not None:
            request["response_format"] = response_format
        try:
            return orjson.dumps(request)
        except TypeError:  # a lone surrogate, say: the standard library writes it escaped
            return json.dumps(request, separators=(",", ":")).encode()


class DirectSession:
    """The HTTP client all direct deployments of one models object share. Its connections
    belong to the event loop that opened them: a call from another loop starts a new client."""

    def __init__(self) -> None:
        self._client: HttpClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def post(self, deployment: DirectDeployment, body: bytes) -> DirectAnswer:
        """POST `body` to the deployment and read the answer.

        Raises:
            DirectError: an HTTP error status, a timeout, a lost connection, or an answer that is
                not a chat completion.
        """
        try:
            answer = await self._open().post(deployment.endpoint, body,
                                             timeout=deployment.timeout_s)
        except HttpError as exc:
            if exc.timeout:
                raise DirectError(f"no answer within {deployment.timeout_s:g} s",
                                  reason="timeout") from None
            raise DirectError(str(exc), reason="unavailable") from None
        if answer.status >= 400:
            raise _http_error(answer.status, answer.body, answer.headers.get("retry-after"))
        return _answer(answer.body)

    async def aclose(self) -> None:
        """Close the connections."""
        self.close()

    def close(self) -> None:
        """Close the connections (from any code: closing a transport does not wait)."""
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def _open(self) -> HttpClient:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            self.close()
            self._client = HttpClient(max_connections=_CONNECTIONS)
            self._loop = loop
        return self._client


def _answer(raw: bytes) -> DirectAnswer:
    """`choices[0].message.content` and `usage` of a chat completion."""
    try:
        data = orjson.loads(raw)
        text = data["choices"][0]["message"]["content"] or ""
        usage = data.get("usage")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        text, usage = None, None
    if not isinstance(text, str):
        raise DirectError(f"the answer is not an OpenAI chat completion: {_excerpt(raw)}",
                          reason="malformed")
    if not isinstance(usage, Mapping):
        return DirectAnswer(text, None, None)
    return DirectAnswer(text, _count(usage.get("prompt_tokens")),
                        _count(usage.get("completion_tokens")))


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and value >= 0 else None


def _http_error(status: int, raw: bytes, retry_after: str | None) -> DirectError:
    """The provider's error, from an OpenAI-style `{"error": {"message", "code"}}` body."""
    try:
        error = json.loads(raw).get("error")
    except (ValueError, AttributeError):
        error = None
    if not isinstance(error, Mapping):
        error = {"message": _excerpt(raw) or f"HTTP {status}"}
    code = error.get("code") if isinstance(error.get("code"), str) else None
    return DirectError(str(error.get("message") or f"HTTP {status}"), status_code=status,
                       code=code, reason=_reason(status, code), retry_after=_seconds(retry_after))


def _reason(status: int, code: str | None) -> str:
    """The same words `codegen.models` gives litellm's errors."""
    if status == 408:
        return "timeout"
    if status == 429:
        return "rate_limited"
    if status in (401, 403):
        return "auth"
    if code == "context_length_exceeded":
        return "too_long"
    return "rejected" if 400 <= status < 500 else "unavailable"


def _seconds(header: str | None) -> float | None:
    try:
        return max(0.0, float(header)) if header else None
    except ValueError:
        return None  # an HTTP date: litellm's default cooldown applies


def _excerpt(raw: bytes) -> str:
    text = " ".join(raw[: _SHOWN * 2].decode("utf-8", "replace").split())
    return text if len(text) <= _SHOWN else text[: _SHOWN - 1] + "…"
