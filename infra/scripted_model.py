"""The scripted model: an OpenAI-compatible chat server that answers from a scenario.

See ARCHITECTURE.md, "Models are pluggable": tests and the offline demo point litellm at this
server over loopback, so the real client code path (HTTP, retries, fallbacks, cost) is exercised.

It also speaks the subset of Anthropic's Messages API (`POST /v1/messages`, no streaming) that
litellm's `anthropic/` provider uses, so Anthropic-style requests (system blocks with
`cache_control` markers) can be tested the same way.

A scenario is ordered `rules` (the first whose regexes match the prompt answers) and `failures`
(a model answers 429/500/503 a number of times, then recovers). Every request is recorded, so tests
can count model calls. Run it alone with `python -m infra.scripted_model --scenario FILE --port N`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, model_validator

from codegen.prompt import CONFIRM, SAMPLE_REVIEW_HEADING

__all__ = [
    "Scenario",
    "ScenarioSource",
    "ScriptedFailure",
    "ScriptedModelServer",
    "ScriptedRequest",
    "ScriptedRule",
    "ScriptedUsage",
    "load_scenario",
    "main",
    "scripted_model",
    "start_scripted_model",
]

_PROMPT_SHOWN = 200


class ScriptedUsage(BaseModel):
    """Token counts a rule reports instead of the length-based estimate."""

    model_config = ConfigDict(extra="forbid")

    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)


class ScriptedRule(BaseModel):
    """One answer: used when its regexes match the prompt and its model (if any) was asked for."""

    model_config = ConfigDict(extra="forbid")

    match: str = Field(default="", description="Regex searched in the last user message (re.S).")
    match_system: str | None = Field(default=None, description="Regex on the system message.")
    model: str | None = Field(default=None, description="Only answer requests for this model.")
    response: str | None = None
    responses: list[str] | None = Field(
        default=None, description="Answers given in turn; the last one repeats."
    )
    delay_ms: int = Field(default=0, ge=0)
    usage: ScriptedUsage | None = None

    @model_validator(mode="after")
    def _check(self) -> ScriptedRule:
        if (self.response is None) == (self.responses is None):
            raise ValueError("a rule needs exactly one of 'response' or 'responses'")
        if self.responses is not None and not self.responses:
            raise ValueError("'responses' must list at least one answer")
        for pattern in (self.match, self.match_system):
            if pattern is not None:
                _compile(pattern)
        return self

    def answers(self, *, model: str, prompt: str, system: str) -> bool:
        """Whether this rule answers a request for `model` with this prompt and system message."""
        if self.model is not None and not _same_model(self.model, model):
            return False
        if self.match_system is not None and not re.search(self.match_system, system, re.S):
            return False
        return re.search(self.match, prompt, re.S) is not None


class ScriptedFailure(BaseModel):
    """`model` answers `status` the next `times` requests, then succeeds."""

    model_config = ConfigDict(extra="forbid")

    model: str
    status: Literal[429, 500, 503]
    times: int = Field(default=1, ge=1)
    retry_after: int | None = Field(default=None, ge=0, description="Retry-After header, seconds.")


class Scenario(BaseModel):
    """What the scripted model answers. Load one from a file with `load_scenario`."""

    model_config = ConfigDict(extra="forbid")

    rules: list[ScriptedRule] = Field(default_factory=list)
    failures: list[ScriptedFailure] = Field(default_factory=list)
    confirm_samples: bool = Field(
        default=True, description="Answer the planner's sample review with CONFIRM when no "
        "rule matches it (a rule matching '# Sample run' can revise the program instead).")


class ScriptedRequest(BaseModel):
    """One request the server answered, with the HTTP status it answered."""

    model: str
    messages: list[dict[str, JsonValue]]
    status: int
    stream: bool = False
    api: Literal["openai", "anthropic"] = "openai"
    system: JsonValue = Field(default=None, description="Anthropic's top-level system blocks.")


class _ChatBody(BaseModel):
    """The part of an OpenAI chat-completions request body the server reads."""

    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[dict[str, JsonValue]]
    stream: bool = False
    stream_options: dict[str, JsonValue] | None = None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.get("include_usage"))

    def last_text(self, role: str) -> str:
        """The text of the last message with `role`, or "" when there is none."""
        for message in reversed(self.messages):
            if message.get("role") == role:
                return _text_of(message.get("content"))
        return ""


class _MessagesBody(BaseModel):
    """The part of an Anthropic Messages request body the server reads."""

    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[dict[str, JsonValue]]
    system: JsonValue = None
    stream: bool = False

    def as_chat(self) -> _ChatBody:
        """The same request in OpenAI's shape, so rules and token counts read it alike."""
        system: list[dict[str, JsonValue]] = (
            [{"role": "system", "content": self.system}] if self.system else [])
        return _ChatBody(model=self.model, messages=[*system, *self.messages])


ScenarioSource = Scenario | Mapping[str, object] | str | Path
"""A scenario, a mapping, a `Path` to a YAML/JSON file, or a string: a file's path or YAML text."""


def load_scenario(source: ScenarioSource) -> Scenario:
    """A scenario from a model, a mapping, a file (`.json` is read as JSON, else YAML) or YAML text.

    A one-line string naming an existing file is read as that file; any other string is YAML.

    Raises:
        ValueError: the scenario is not valid, naming its source and the problem.
    """
    if isinstance(source, Scenario):
        return source
    if isinstance(source, Mapping):
        return Scenario.model_validate(source)
    is_file = isinstance(source, Path) or ("\n" not in source and Path(source).is_file())
    text = Path(source).read_text(encoding="utf-8") if is_file else str(source)
    where = f"file {source}" if is_file else "text"
    try:
        as_json = is_file and Path(source).suffix == ".json"
        data = json.loads(text) if as_json else yaml.safe_load(text)
        return Scenario.model_validate(data or {})
    except (ValueError, yaml.YAMLError) as exc:
        raise ValueError(f"The scripted model scenario ({where}) is not valid: {exc}") from exc


@dataclass
class _Script:
    """A scenario with its counters: which answer each rule gives next, failures left."""

    scenario: Scenario
    turns: dict[int, int] = field(default_factory=dict)
    failures_left: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.failures_left = [failure.times for failure in self.scenario.failures]

    def take_failure(self, model: str) -> ScriptedFailure | None:
        """The failure to answer for `model` now, counting it down; None to answer normally."""
        for index, failure in enumerate(self.scenario.failures):
            if self.failures_left[index] > 0 and _same_model(failure.model, model):
                self.failures_left[index] -= 1
                return failure
        return None

    def find_rule(self, body: _ChatBody) -> ScriptedRule | None:
        """The first rule that answers `body`."""
        prompt, system = body.last_text("user"), body.last_text("system")
        for rule in self.scenario.rules:
            if rule.answers(model=body.model, prompt=prompt, system=system):
                return rule
        return None

    def next_answer(self, rule: ScriptedRule) -> str:
        """The rule's answer for this turn; a `responses` list advances and repeats its last."""
        if rule.responses is None:
            return rule.response or ""
        key = id(rule)  # rules live as long as this scenario, so their ids are stable keys
        turn = self.turns.get(key, 0)
        self.turns[key] = turn + 1
        return rule.responses[min(turn, len(rule.responses) - 1)]


class ScriptedModelServer:
    """The scripted model server. Start it with `start_scripted_model`; stop it with `stop()`."""

    def __init__(self, scenario: Scenario) -> None:
        self._script = _Script(scenario)
        self._requests: list[ScriptedRequest] = []
        self._runner: web.AppRunner | None = None
        self._url = ""
        self._served = 0

    @property
    def url(self) -> str:
        """Base URL such as http://127.0.0.1:PORT (the OpenAI API lives under /v1)."""
        return self._url

    @property
    def requests(self) -> list[ScriptedRequest]:
        """Every request answered so far, oldest first."""
        return list(self._requests)

    @property
    def scenario(self) -> Scenario:
        """The scenario answering now."""
        return self._script.scenario

    def set_scenario(self, scenario: Scenario) -> None:
        """Replace the scenario; answer turns and failure counts start over."""
        self._script = _Script(scenario)

    def clear_requests(self) -> None:
        """Forget the requests recorded so far."""
        self._requests.clear()

    def app(self) -> web.Application:
        """The aiohttp application (also usable with aiohttp's test client)."""
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/chat/completions", self._chat)
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_get("/scripted/requests", self._list_requests)
        app.router.add_delete("/scripted/requests", self._clear_requests)
        app.router.add_post("/scripted/scenario", self._replace_scenario)
        return app

    async def start(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on `host:port` (port 0 picks a free one) and set `url`."""
        runner = web.AppRunner(
            self.app(), access_log=None, shutdown_timeout=2.0, handler_cancellation=True
        )
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runner = runner
        bound_port = runner.addresses[0][1]
        self._url = f"http://{host}:{bound_port}"

    async def stop(self) -> None:
        """Stop listening; safe to call twice."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = _ChatBody.model_validate_json(await request.read())
        except (ValueError, ValidationError) as exc:
            message = f"scripted model: not a chat request: {exc}"
            return _error(400, message, "invalid_request_error")
        failure = self._script.take_failure(body.model)
        if failure is not None:
            return self._recorded(body, _failure_response(failure))
        rule = self._script.find_rule(body)
        if rule is None and self._confirms(body):
            rule = ScriptedRule(response=CONFIRM)
        if rule is None:
            return self._recorded(body, _no_match(body.last_text("user")))
        text = self._script.next_answer(rule)
        if rule.delay_ms:
            await asyncio.sleep(rule.delay_ms / 1000)
        usage = _usage(body, text, rule.usage)
        self._served += 1
        answer = _Answer(f"chatcmpl-scripted-{self._served}", body.model, text, usage)
        self._record(body, 200)
        if body.stream:
            return await _stream(request, answer, include_usage=body.include_usage)
        return web.json_response(answer.completion())

    def _confirms(self, body: _ChatBody) -> bool:
        """Whether to confirm a sample review nobody scripted an answer for."""
        return self._script.scenario.confirm_samples and \
            body.last_text("user").startswith(SAMPLE_REVIEW_HEADING)

    async def _messages(self, request: web.Request) -> web.Response:
        """Anthropic's Messages API: the same rules and failures, Anthropic's shapes."""
        try:
            body = _MessagesBody.model_validate(await request.json())
        except (ValueError, ValidationError) as exc:
            return _anthropic_error(400, f"scripted model: not a messages request: {exc}",
                                    "invalid_request_error")
        if body.stream:
            return self._recorded_messages(body, _anthropic_error(
                400, "scripted model: streaming is not supported on /v1/messages",
                "invalid_request_error"))
        chat = body.as_chat()
        failure = self._script.take_failure(body.model)
        if failure is not None:
            return self._recorded_messages(body, _anthropic_failure(failure))
        rule = self._script.find_rule(chat)
        if rule is None and self._confirms(chat):
            rule = ScriptedRule(response=CONFIRM)
        if rule is None:
            prompt = chat.last_text("user")[:_PROMPT_SHOWN]
            return self._recorded_messages(body, _anthropic_error(
                400, f"scripted model: no rule matches the prompt: {prompt}",
                "invalid_request_error"))
        text = self._script.next_answer(rule)
        if rule.delay_ms:
            await asyncio.sleep(rule.delay_ms / 1000)
        self._served += 1
        answer = _Answer(f"msg_scripted_{self._served}", body.model, text,
                         _usage(chat, text, rule.usage))
        return self._recorded_messages(body, web.json_response(answer.message()))

    def _recorded_messages(self, body: _MessagesBody, response: web.Response) -> web.Response:
        self._requests.append(
            ScriptedRequest(model=body.model, messages=body.messages, status=response.status,
                            api="anthropic", system=body.system)
        )
        return response

    def _record(self, body: _ChatBody, status: int) -> None:
        # The body was validated as it arrived; validating its messages again would double the
        # server's CPU per request, which benchmarks running on the same machine pay for.
        self._requests.append(
            ScriptedRequest.model_construct(model=body.model, messages=body.messages,
                                            status=status, stream=body.stream)
        )

    def _recorded(self, body: _ChatBody, response: web.Response) -> web.Response:
        self._record(body, response.status)
        return response

    async def _list_requests(self, request: web.Request) -> web.Response:
        return web.json_response([r.model_dump(mode="json") for r in self._requests])

    async def _clear_requests(self, request: web.Request) -> web.Response:
        self.clear_requests()
        return web.json_response({"cleared": True})

    async def _replace_scenario(self, request: web.Request) -> web.Response:
        try:
            scenario = Scenario.model_validate(await request.json())
        except (ValueError, ValidationError) as exc:
            return _error(400, f"scripted model: not a scenario: {exc}", "invalid_request_error")
        self.set_scenario(scenario)
        return web.json_response({"rules": len(scenario.rules), "failures": len(scenario.failures)})


@dataclass(frozen=True)
class _Answer:
    """One successful answer, rendered as a completion or as stream chunks."""

    id: str
    model: str
    text: str
    usage: dict[str, int]
    created: int = field(default_factory=lambda: int(time.time()))

    def _envelope(self, kind: str) -> dict[str, JsonValue]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def completion(self) -> dict[str, JsonValue]:
        message: dict[str, JsonValue] = {"role": "assistant", "content": self.text}
        choice: dict[str, JsonValue] = {"index": 0, "message": message, "finish_reason": "stop"}
        return {**self._envelope("chat.completion"), "choices": [choice], "usage": {**self.usage}}

    def message(self) -> dict[str, JsonValue]:
        """The answer as an Anthropic Messages API response."""
        content: list[JsonValue] = [{"type": "text", "text": self.text}]
        usage: dict[str, JsonValue] = {"input_tokens": self.usage["prompt_tokens"],
                                       "output_tokens": self.usage["completion_tokens"]}
        return {"id": self.id, "type": "message", "role": "assistant", "model": self.model,
                "content": content, "stop_reason": "end_turn", "stop_sequence": None,
                "usage": usage}

    def chunks(self, *, include_usage: bool) -> list[dict[str, JsonValue]]:
        """Role first, then the text a word at a time, then the stop, then usage if asked."""
        deltas: list[dict[str, JsonValue]] = [{"role": "assistant", "content": ""}]
        pieces = re.findall(r"\s*\S+\s*", self.text) or [self.text]
        deltas += [{"content": piece} for piece in pieces]
        out = [self._chunk(delta, None) for delta in deltas]
        out.append(self._chunk({}, "stop"))
        if include_usage:
            out.append({**self._envelope("chat.completion.chunk"), "choices": [],
                        "usage": {**self.usage}})
        return out

    def _chunk(self, delta: dict[str, JsonValue], finish: str | None) -> dict[str, JsonValue]:
        choice: dict[str, JsonValue] = {"index": 0, "delta": delta, "finish_reason": finish}
        return {**self._envelope("chat.completion.chunk"), "choices": [choice]}


async def _stream(
    request: web.Request, answer: _Answer, *, include_usage: bool
) -> web.StreamResponse:
    response = web.StreamResponse(
        status=200, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    for chunk in answer.chunks(include_usage=include_usage):
        await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


def _usage(body: _ChatBody, text: str, explicit: ScriptedUsage | None) -> dict[str, int]:
    if explicit is not None:
        prompt, completion = explicit.prompt_tokens, explicit.completion_tokens
    else:
        prompt_chars = sum(len(_text_of(m.get("content"))) for m in body.messages)
        prompt, completion = _estimate_tokens(prompt_chars), _estimate_tokens(len(text))
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def _estimate_tokens(chars: int) -> int:
    """About four characters a token, never zero: deterministic, close enough for estimates."""
    return chars // 4 + 1


_FAILURES: dict[int, tuple[str, str | None, str]] = {
    429: ("requests", "rate_limit_exceeded", "rate limit reached"),
    500: ("server_error", None, "internal server error"),
    503: ("server_error", "service_unavailable", "service unavailable"),
}


def _failure_response(failure: ScriptedFailure) -> web.Response:
    kind, code, what = _FAILURES[failure.status]
    headers = {}
    if failure.retry_after is not None:
        headers["Retry-After"] = str(failure.retry_after)
    message = f"scripted model: {what} for model {failure.model} (scripted failure)"
    return _error(failure.status, message, kind, code=code, headers=headers)


_ANTHROPIC_FAILURES: dict[int, str] = {
    429: "rate_limit_error", 500: "api_error", 503: "overloaded_error",
}


def _anthropic_failure(failure: ScriptedFailure) -> web.Response:
    headers = {}
    if failure.retry_after is not None:
        headers["retry-after"] = str(failure.retry_after)
    message = f"scripted model: HTTP {failure.status} for model {failure.model} (scripted failure)"
    return _anthropic_error(failure.status, message, _ANTHROPIC_FAILURES[failure.status],
                            headers=headers)


def _anthropic_error(
    status: int, message: str, kind: str, *, headers: Mapping[str, str] | None = None
) -> web.Response:
    body = {"type": "error", "error": {"type": kind, "message": message}}
    return web.json_response(body, status=status, headers=headers)


def _no_match(prompt: str) -> web.Response:
    message = f"scripted model: no rule matches the prompt: {prompt[:_PROMPT_SHOWN]}"
    return _error(400, message, "invalid_request_error", code="no_scripted_match")


def _error(
    status: int, message: str, kind: str, *, code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return web.json_response(body, status=status, headers=headers)


def _text_of(content: JsonValue) -> str:
    """Text of a message's content: a string, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict)]
        return "\n".join(p for p in parts if isinstance(p, str))
    return ""


def _same_model(wanted: str, asked: str) -> bool:
    """`scripted` and `openai/scripted` name the same model; the provider prefix is optional."""
    return wanted == asked or wanted.rsplit("/", 1)[-1] == asked.rsplit("/", 1)[-1]


def _compile(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern, re.S)
    except re.error as exc:
        raise ValueError(f"bad regex {pattern!r}: {exc}") from exc


async def start_scripted_model(
    scenario: ScenarioSource,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
) -> ScriptedModelServer:
    """Start a scripted model server on `host:port` (0: a free port) answering from `scenario`."""
    server = ScriptedModelServer(load_scenario(scenario))
    await server.start(host=host, port=port)
    return server


@asynccontextmanager
async def scripted_model(
    scenario: ScenarioSource,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
) -> AsyncIterator[ScriptedModelServer]:
    """`async with scripted_model(scenario) as server:` starts it and always stops it."""
    server = await start_scripted_model(scenario, host=host, port=port)
    try:
        yield server
    finally:
        await server.stop()


async def _serve(scenario: Scenario, *, host: str, port: int) -> None:
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopped.set)
    async with scripted_model(scenario, host=host, port=port) as server:
        print(server.url, flush=True)
        await stopped.wait()


def main(argv: list[str] | None = None) -> None:
    """Run the server until SIGINT or SIGTERM, printing its URL on one line."""
    parser = argparse.ArgumentParser(
        prog="python -m infra.scripted_model",
        description="An OpenAI-compatible chat server that answers from a scenario file.",
    )
    parser.add_argument("--scenario", type=Path, help="YAML or JSON scenario (default: empty)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args(argv)
    try:
        scenario = load_scenario(args.scenario) if args.scenario else Scenario()
    except (OSError, ValueError) as exc:
        parser.exit(2, f"{exc}\n")
    asyncio.run(_serve(scenario, host=args.host, port=args.port))


if __name__ == "__main__":
    main()
