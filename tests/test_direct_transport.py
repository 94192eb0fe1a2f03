"""`transport: direct` deployments (codegen/direct.py, models.py): OpenAI-compatible chat
completions over one aiohttp session, answered by the scripted model server over loopback, and
chains that mix them with litellm deployments.

A few tests use a small aiohttp server of their own: to capture the exact request bodies both
transports send, and to answer with a body that is not a chat completion.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from codegen.model_config import model_routes
from codegen.models import LiteLLMModels, price_per_token
from core.errors import ConfigurationError, ModelError
from infra.scripted_model import ScenarioSource, ScriptedModelServer, scripted_model
from tests._scripted import scripted_settings, user
from tests._stack import Stack

KEY = "sk-direct-test-not-a-real-key"
ANSWERS: dict[str, object] = {"rules": [{"match": "plan this", "response": "print('planned')",
                                         "usage": {"prompt_tokens": 120,
                                                   "completion_tokens": 30}}]}
PRICE = (0.000011, 0.000033)  # no real model costs this: the test can tell whose price it is


def deployment(url: str, name: str, *, direct: bool = True, extra: str = "") -> str:
    transport = "    transport: direct\n" if direct else ""
    return (f"  - model: openai/{name}\n    api_key_env: DIRECT_KEY\n    api_base: {url}/v1\n"
            f"{transport}{extra}")


@asynccontextmanager
async def models_for(
    folder: Path, url: str, chain: str, *, head: str = "num_retries: 1\n"
) -> AsyncIterator[LiteLLMModels]:
    path = folder / "models.yaml"
    path.write_text(f"{head}default:\n{chain}")
    models = LiteLLMModels.from_settings(
        scripted_settings(None, SLUICE_MODELS_FILE=str(path), DIRECT_KEY=KEY))
    try:
        yield models
    finally:
        await models.aclose()


@asynccontextmanager
async def served(
    folder: Path, scenario: ScenarioSource, chain: list[tuple[str, bool]], *, extra: str = "",
    head: str = "num_retries: 1\n",
) -> AsyncIterator[tuple[ScriptedModelServer, LiteLLMModels]]:
    async with scripted_model(scenario) as server:
        text = "".join(deployment(server.url, name, direct=direct, extra=extra)
                       for name, direct in chain)
        async with models_for(folder, server.url, text, head=head) as models:
            yield server, models


def failing(*pairs: tuple[str, int]) -> dict[str, object]:
    return {**ANSWERS, "failures": [{"model": m, "status": s, "times": 5} for m, s in pairs]}


async def test_a_direct_deployment_answers_with_usage_and_its_price(tmp_path: Path) -> None:
    price = ("    price: {input_cost_per_token: 0.000011, output_cost_per_token: 0.000033}\n")
    async with served(tmp_path, ANSWERS, [("direct-priced", True)], extra=price) as (
            server, models):
        completion = await models.complete(user("please plan this", system="You plan."))

    assert completion.text == "print('planned')"
    assert completion.model == "openai/direct-priced"
    assert (completion.prompt_tokens, completion.completion_tokens) == (120, 30)
    assert completion.cost_usd == pytest.approx(120 * PRICE[0] + 30 * PRICE[1])
    [request] = server.requests
    assert (request.model, request.status) == ("direct-priced", 200)
    assert request.messages == [{"role": "system", "content": "You plan."},
                                {"role": "user", "content": "please plan this"}]


async def test_price_as_prices_a_direct_answer_like_litellm(tmp_path: Path) -> None:
    async with served(tmp_path, ANSWERS, [("direct-borrowed", True)],
                      extra="    price_as: gpt-4o-mini\n") as (_, models):
        completion = await models.complete(user("plan this"))

    prices = price_per_token("gpt-4o-mini")
    assert prices is not None
    assert completion.cost_usd == pytest.approx(120 * prices[0] + 30 * prices[1])


async def test_an_unpriced_direct_model_costs_none_not_zero(tmp_path: Path) -> None:
    async with served(tmp_path, ANSWERS, [("direct-unpriced", True)]) as (_, models):
        completion = await models.complete(user("plan this"))

    assert completion.text == "print('planned')"
    assert completion.cost_usd is None


async def test_a_500_then_a_429_from_direct_deployments_fall_back_to_a_litellm_one(
    tmp_path: Path,
) -> None:
    scenario = failing(("direct-alpha", 500), ("direct-beta", 429))
    chain = [("direct-alpha", True), ("direct-beta", True), ("gpt-4o-mini", False)]
    async with served(tmp_path, scenario, chain) as (server, models):
        first = await models.complete(user("plan this"))
        second = await models.complete(user("plan this"))

    prices = price_per_token("gpt-4o-mini")
    assert prices is not None
    assert (first.text, first.model) == ("print('planned')", "openai/gpt-4o-mini")
    assert first.cost_usd == pytest.approx(120 * prices[0] + 30 * prices[1])
    # The failed deployments cool down: the next call goes straight to the one that answered.
    assert second.model == "openai/gpt-4o-mini"
    assert [(r.model, r.status) for r in server.requests] == [
        ("direct-alpha", 500), ("direct-beta", 429), ("gpt-4o-mini", 200), ("gpt-4o-mini", 200)]


async def test_a_litellm_deployment_failing_falls_back_to_a_direct_one(tmp_path: Path) -> None:
    scenario = failing(("litellm-first", 503))
    chain = [("litellm-first", False), ("direct-second", True)]
    async with served(tmp_path, scenario, chain) as (server, models):
        completion = await models.complete(user("plan this"))

    assert completion.model == "openai/direct-second"
    assert [(r.model, r.status) for r in server.requests] == [
        ("litellm-first", 503), ("direct-second", 200)]


async def test_a_400_from_a_direct_deployment_does_not_fall_back(tmp_path: Path) -> None:
    chain = [("direct-one", True), ("direct-two", True)]
    async with served(tmp_path, ANSWERS, chain) as (server, models):
        with pytest.raises(ModelError) as caught:
            await models.complete(user("nothing matches this"))

    assert caught.value.fields["reason"] == "no_match"
    assert "The scripted model has no answer for this prompt" in caught.value.message
    assert [(r.model, r.status) for r in server.requests] == [("direct-one", 400)]


async def test_when_a_direct_chain_fails_the_person_reads_the_first_failure(
    tmp_path: Path,
) -> None:
    scenario = failing(("direct-p", 500), ("direct-q", 503))
    async with served(tmp_path, scenario, [("direct-p", True), ("direct-q", True)]) as (
            server, models):
        with pytest.raises(ModelError) as caught:
            await models.complete(user("plan this"))

    assert caught.value.message.startswith(
        "openai/direct-p is unavailable right now (HTTP 500), and the fallback "
        "openai/direct-q failed too.")
    assert KEY not in str(caught.value.to_dict())
    # The last deployment gets the retries (num_retries: 1), as with litellm.
    assert [(r.model, r.status) for r in server.requests] == [
        ("direct-p", 500), ("direct-q", 503), ("direct-q", 503)]


async def test_a_slow_direct_deployment_times_out_and_falls_back(tmp_path: Path) -> None:
    scenario = {"rules": [{"match": "", "model": "direct-slow", "response": "late",
                           "delay_ms": 5000}, *ANSWERS["rules"]]}  # type: ignore[misc]
    chain = [("direct-slow", True), ("direct-quick", True)]
    async with served(tmp_path, scenario, chain, head="timeout_s: 0.3\n") as (_, models):
        completion = await models.complete(user("plan this"))

    assert completion.model == "openai/direct-quick"


@asynccontextmanager
async def http_server(answer: bytes) -> AsyncIterator[tuple[str, list[bytes]]]:
    """A loopback server answering every chat request with `answer`; yields its URL and the
    request bodies it received."""
    bodies: list[bytes] = []

    async def chat(request: web.Request) -> web.Response:
        bodies.append(await request.read())
        return web.Response(body=answer, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", bodies
    finally:
        await runner.cleanup()


COMPLETION = json.dumps({
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "same-body",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "{\"a\": 1}"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}}).encode()


async def test_both_transports_send_the_same_request_body(tmp_path: Path) -> None:
    schema: dict[str, object] = {"title": "Invoice fields!", "type": "object",
                                 "properties": {"a": {"description": "a number"}},
                                 "required": ["a"]}
    answers = []
    async with http_server(COMPLETION) as (url, bodies):
        for direct in (False, True):
            async with models_for(tmp_path, url, deployment(url, "same-body", direct=direct)) \
                    as models:
                answers.append(await models.complete(
                    user("Total: 12 EUR", system="You extract."), kind="extract",
                    json_schema=schema))

    through_litellm, direct_body = (json.loads(body) for body in bodies)
    assert direct_body == through_litellm
    assert direct_body["response_format"]["json_schema"]["name"] == "Invoice_fields_"
    assert [(a.text, a.prompt_tokens, a.completion_tokens) for a in answers] == [
        ('{"a": 1}', 7, 3)] * 2


async def test_an_answer_that_is_not_a_chat_completion_is_a_clear_error(tmp_path: Path) -> None:
    async with http_server(b'{"result": "hello"}') as (url, _), \
            models_for(tmp_path, url, deployment(url, "not-openai")) as models:
        with pytest.raises(ModelError) as caught:
            await models.complete(user("plan this"))

    message = caught.value.message
    assert caught.value.fields["reason"] == "malformed"
    assert message.startswith("openai/not-openai answered with something that is not an "
                              "OpenAI chat completion")
    assert '{"result": "hello"}' in message
    assert f"({url}/v1)" in message and "transport: litellm" in message


async def test_an_answer_without_usage_costs_none(tmp_path: Path) -> None:
    answer = json.dumps({"choices": [{"message": {"content": "hi"}}]}).encode()
    async with http_server(answer) as (url, _):
        chain = deployment(url, "no-usage", extra="    price_as: gpt-4o-mini\n")
        async with models_for(tmp_path, url, chain) as models:
            completion = await models.complete(user("plan this"))

    assert completion.text == "hi"
    assert completion.cost_usd is None


@pytest.mark.parametrize(("entry", "fix"), [
    ("  - {model: openai/x, transport: fast}\n",
     "default[0].transport: transport must be `litellm` (the default: any provider litellm "
     "knows) or `direct` (OpenAI-compatible servers only), not 'fast'"),
    ("  - {model: anthropic/claude-sonnet-4-5, transport: direct}\n",
     "transport `direct` speaks OpenAI's chat-completions API only, and "
     "anthropic/claude-sonnet-4-5 is not spelled as an OpenAI-compatible model"),
    ("  - {model: openai/x, transport: direct, cache_control: true}\n",
     "transport `direct` sends no cache_control markers"),
])
def test_the_models_file_checks_transport(tmp_path: Path, entry: str, fix: str) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(f"default:\n{entry}")
    with pytest.raises(ConfigurationError) as caught:
        model_routes(scripted_settings("http://127.0.0.1:9", SLUICE_MODELS_FILE=str(path)))

    assert str(path) in caught.value.message
    assert fix in caught.value.message


def test_litellm_stays_the_default_and_doctor_shows_direct(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text("default:\n  - {model: openai/a, api_base: http://127.0.0.1:9/v1}\n"
                    "kinds:\n  write:\n"
                    "    - {model: openai/b, api_base: http://127.0.0.1:9/v1, transport: direct}\n")
    routes = model_routes(scripted_settings(None, SLUICE_MODELS_FILE=str(path)))
    scripted = model_routes(scripted_settings("http://127.0.0.1:9"))

    assert [r.transport for r in routes.chains["plan"]] == ["litellm"]
    assert routes.describe()["write"] == "openai/b (direct)"
    # The scripted model (tests, the demo) always goes through litellm's real client path.
    assert all(not r.direct for chain in scripted.chains.values() for r in chain)


PLAN = '''\
I'll write one line about each signup.

```python
names = ["Ana", "Bo", "Cy", "Dee"]

def summarize(name):
    return ai.generate(f"Summarize signup {name} in one line.")

lines = each(names, summarize)
print(f"{len(lines)} summaries written")
```
'''


async def test_a_run_whose_direct_deployments_fail_finishes_with_no_error_in_the_thread(
    redis_server: Any, tmp_path: Path,
) -> None:
    scenario = {"rules": [{"match": "one line about every signup", "response": PLAN},
                          {"match": "^Summarize signup", "response": "A line."}],
                "failures": [{"model": "direct-alpha", "status": 500, "times": 100},
                             {"model": "direct-beta", "status": 429, "times": 100}]}
    async with scripted_model(scenario) as server:
        path = tmp_path / "models.yaml"
        path.write_text(
            f"kinds:\n  plan:\n{deployment(server.url, 'scripted', direct=False)}default:\n"
            + "".join(deployment(server.url, name, direct=direct) for name, direct in
                      [("direct-alpha", True), ("direct-beta", True), ("gpt-4o-mini", False)]))
        env = {"SLUICE_MODELS_FILE": str(path), "DIRECT_KEY": KEY}
        async with Stack.running(redis_url=redis_server.url, home=tmp_path / "home",
                                 env=env) as stack:
            thread_id = await stack.ask("Write one line about every signup")
            await stack.drain()  # it writes nothing and costs cents: it starts at once
            messages = await stack.messages(thread_id)
            await stack.deps.models.aclose()  # type: ignore[attr-defined]

    assert [m for m in messages if m["kind"] == "error"] == []
    assert [m["kind"] for m in messages] == ["request", "ack", "plan", "status", "result"]
    assert "4 summaries written" in messages[-1]["text"]
    assert messages[-2]["text"].startswith("Finished: 4/4 done, 0 failed")
    item_calls = [(r.model, r.status) for r in server.requests
                  if str(r.messages[-1]["content"]).startswith("Summarize signup")]
    assert ("direct-alpha", 500) in item_calls and ("direct-beta", 429) in item_calls
    assert {model for model, status in item_calls if status == 200} == {"gpt-4o-mini"}


def test_codegen_keeps_litellm_offline_and_unloaded_when_a_direct_call_fails_oddly() -> None:
    """Importing codegen tells litellm to use its bundled prices (it fetches them from the
    network otherwise), and a failure that is not litellm's is classified without importing
    litellm (seconds of the worker's event loop, and a fetch of prices where it was not told)."""
    code = ("import os, sys\n"
            "import codegen.models as models\n"
            "print(os.environ['LITELLM_LOCAL_MODEL_COST_MAP'])\n"
            "print(models._reason(AssertionError(), None), 'litellm' in sys.modules)\n")
    env = {k: v for k, v in os.environ.items() if k != "LITELLM_LOCAL_MODEL_COST_MAP"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], timeout=120, check=False)
    assert done.stdout.split() == ["True", "unavailable", "False"], done.stderr
