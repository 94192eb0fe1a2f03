"""The scripted model server over real HTTP with a raw aiohttp client (no litellm here)."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from infra.scripted_model import (
    Scenario,
    ScriptedModelServer,
    load_scenario,
    scripted_model,
)

ROOT = Path(__file__).resolve().parents[1]

ORDERED = {
    "rules": [
        {"match": "budget", "match_system": "planner", "response": "plan with a budget"},
        {"match": "budget", "response": "any budget"},
        {"match": "turn", "responses": ["first", "second"]},
        {"match": "counted", "response": "12345678", "usage": {"prompt_tokens": 7,
                                                                 "completion_tokens": 3}},
        {"match": "", "model": "scripted-backup", "response": "backup answers anything"},
    ],
}


@pytest.fixture
async def server() -> AsyncIterator[ScriptedModelServer]:
    async with scripted_model(ORDERED) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def chat(
    http: aiohttp.ClientSession, server: ScriptedModelServer, text: str, **body: Any
) -> tuple[int, dict[str, Any]]:
    messages = [*body.pop("before", []), {"role": "user", "content": text}]
    payload = {"model": "scripted", "messages": messages, **body}
    async with http.post(f"{server.url}/v1/chat/completions", json=payload) as response:
        return response.status, await response.json()


def answer(body: dict[str, Any]) -> str:
    return str(body["choices"][0]["message"]["content"])


async def test_answer_has_the_openai_shape(
    http: aiohttp.ClientSession, server: ScriptedModelServer
) -> None:
    status, body = await chat(http, server, "what budget?", model="scripted-x")

    assert status == 200
    assert body["object"] == "chat.completion"
    assert body["id"] and isinstance(body["created"], int)
    assert body["model"] == "scripted-x"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "any budget"}
    assert body["choices"][0]["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["prompt_tokens"] == len("what budget?") // 4 + 1
    assert usage["completion_tokens"] == len("any budget") // 4 + 1
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_first_matching_rule_wins(
    http: aiohttp.ClientSession, server: ScriptedModelServer
) -> None:
    planner = [{"role": "system", "content": "You are the planner."}]

    _, with_system = await chat(http, server, "a budget", before=planner)
    _, without = await chat(http, server, "a budget")
    _, backup = await chat(http, server, "a budget", model="scripted-backup")
    _, backup_other = await chat(http, server, "anything else", model="openai/scripted-backup")

    assert answer(with_system) == "plan with a budget"
    assert answer(without) == "any budget"
    assert answer(backup) == "any budget"  # an earlier rule without a model matches first
    assert answer(backup_other) == "backup answers anything"


async def test_responses_are_given_in_turn_and_the_last_repeats(
    http: aiohttp.ClientSession, server: ScriptedModelServer
) -> None:
    answers = [answer((await chat(http, server, f"turn {n}"))[1]) for n in range(3)]

    assert answers == ["first", "second", "second"]


async def test_explicit_usage(http: aiohttp.ClientSession, server: ScriptedModelServer) -> None:
    _, body = await chat(http, server, "counted")

    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}


async def test_the_match_is_searched_in_the_last_user_message(
    http: aiohttp.ClientSession, server: ScriptedModelServer
) -> None:
    earlier = [{"role": "user", "content": "budget"}, {"role": "assistant", "content": "ok"}]

    status, body = await chat(http, server, "nothing relevant", before=earlier)

    assert status == 400
    assert body["error"]["code"] == "no_scripted_match"


async def test_unmatched_prompt_is_an_openai_style_400_naming_the_prompt(
    http: aiohttp.ClientSession, server: ScriptedModelServer
) -> None:
    prompt = "x" * 150 + "tail" + "y" * 200

    status, body = await chat(http, server, prompt)

    assert status == 400
    error = body["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "no_scripted_match"
    assert error["message"] == f"scripted model: no rule matches the prompt: {prompt[:200]}"


async def test_streaming_sends_sse_chunks_then_usage_then_done(
    http: aiohttp.ClientSession, server: ScriptedModelServer
) -> None:
    payload = {"model": "scripted", "stream": True, "stream_options": {"include_usage": True},
               "messages": [{"role": "user", "content": "budget please"}]}
    async with http.post(f"{server.url}/v1/chat/completions", json=payload) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        raw = await response.text()

    events = [line.removeprefix("data: ") for line in raw.split("\n\n") if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "any budget"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == len("any budget") // 4 + 1


async def test_streaming_without_include_usage_sends_no_usage(
    http: aiohttp.ClientSession, server: ScriptedModelServer
) -> None:
    payload = {"model": "scripted", "stream": True,
               "messages": [{"role": "user", "content": "budget"}]}
    async with http.post(f"{server.url}/v1/chat/completions", json=payload) as response:
        raw = await response.text()

    assert "usage" not in raw
    assert raw.endswith("data: [DONE]\n\n")


async def test_failures_answer_their_status_then_recover(http: aiohttp.ClientSession) -> None:
    scenario = {"rules": [{"match": "", "response": "fine"}],
                "failures": [{"model": "scripted", "status": 429, "times": 2, "retry_after": 3}]}
    payload = {"model": "scripted", "messages": [{"role": "user", "content": "hi"}]}
    async with scripted_model(scenario) as server:
        seen = []
        for _ in range(3):
            async with http.post(f"{server.url}/v1/chat/completions", json=payload) as response:
                seen.append((response.status, response.headers.get("Retry-After")))
                body = await response.json()
        other = await chat(http, server, "hi", model="scripted-backup")

    assert seen == [(429, "3"), (429, "3"), (200, None)]
    assert answer(body) == "fine"
    assert other[0] == 200


async def test_every_request_is_recorded(
    http: aiohttp.ClientSession, server: ScriptedModelServer
) -> None:
    await chat(http, server, "budget")
    await chat(http, server, "no rule for this")

    async with http.get(f"{server.url}/scripted/requests") as response:
        listed = await response.json()

    assert [(r["model"], r["status"]) for r in listed] == [("scripted", 200), ("scripted", 400)]
    assert listed[0]["messages"] == [{"role": "user", "content": "budget"}]
    assert [r.status for r in server.requests] == [200, 400]
    async with http.delete(f"{server.url}/scripted/requests") as response:
        assert response.status == 200
    assert server.requests == []


async def test_the_scenario_can_be_replaced_at_run_time(
    http: aiohttp.ClientSession, server: ScriptedModelServer
) -> None:
    replacement = {"rules": [{"match": "budget", "response": "new answer"}]}
    async with http.post(f"{server.url}/scripted/scenario", json=replacement) as response:
        assert response.status == 200
    async with http.post(f"{server.url}/scripted/scenario", json={"rules": [{}]}) as response:
        refused = response.status, await response.json()

    _, body = await chat(http, server, "budget")

    assert answer(body) == "new answer"
    assert refused[0] == 400
    assert "response" in refused[1]["error"]["message"]


async def test_delay_ms_delays_the_answer(http: aiohttp.ClientSession) -> None:
    async with scripted_model({"rules": [{"match": "", "response": "late", "delay_ms": 150}]}) as s:
        started = time.perf_counter()
        await chat(http, s, "hi")
        elapsed = time.perf_counter() - started

    assert elapsed >= 0.15


def test_scenarios_load_from_yaml_json_and_text(tmp_path: Path) -> None:
    yaml_file = tmp_path / "scenario.yaml"
    yaml_file.write_text("rules:\n  - match: hi\n    response: hello\n")
    json_file = tmp_path / "scenario.json"
    json_file.write_text(json.dumps(ORDERED))

    assert load_scenario(yaml_file).rules[0].response == "hello"
    assert load_scenario(str(yaml_file)).rules[0].response == "hello"
    assert len(load_scenario(json_file).rules) == len(ORDERED["rules"])
    assert load_scenario("rules:\n  - {match: a, responses: [b]}\n").rules[0].responses == ["b"]
    assert load_scenario({}) == Scenario()


def test_the_demo_scenario_is_valid() -> None:
    scenario = load_scenario(ROOT / "examples" / "signups" / "scenario.yaml")

    assert scenario.rules


@pytest.mark.parametrize(
    ("rule", "problem"),
    [
        ({"match": "(unclosed", "response": "x"}, "bad regex"),
        ({"match": "a"}, "exactly one of 'response' or 'responses'"),
        ({"match": "a", "response": "x", "responses": ["y"]}, "exactly one"),
        ({"match": "a", "responses": []}, "at least one"),
        ({"match": "a", "response": "x", "colour": "red"}, "colour"),
    ],
)
def test_bad_rules_are_refused_with_the_reason(rule: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match="scenario") as caught:
        load_scenario("rules: " + json.dumps([rule]))

    assert problem in str(caught.value)


async def test_runs_standalone_and_stops_on_sigterm(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    scenario = tmp_path / "s.yaml"
    scenario.write_text("rules:\n  - match: ping\n    response: pong\n")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "infra.scripted_model", "--scenario", str(scenario), "--port", "0",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        url = (await asyncio.wait_for(process.stdout.readline(), timeout=20)).decode().strip()
        payload = {"model": "scripted", "messages": [{"role": "user", "content": "ping"}]}
        async with http.post(f"{url}/v1/chat/completions", json=payload) as response:
            body = await response.json()
    finally:
        process.terminate()
        code = await asyncio.wait_for(process.wait(), timeout=10)

    assert url.startswith("http://127.0.0.1:")
    assert answer(body) == "pong"
    assert code == 0
