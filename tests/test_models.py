"""LiteLLMModels calling the scripted model server for real, through litellm's Router and HTTP."""

from __future__ import annotations

import time

import pytest

from codegen.models import LiteLLMModels, ModelRoute, price_per_token
from core.errors import ConfigurationError, ModelError
from infra.scripted_model import scripted_model
from tests._scripted import scripted_models, scripted_settings, user

# The backup model answers anything, so a request that reached it by mistake would succeed.
ANSWERS = {
    "rules": [
        {"match": "", "model": "scripted-backup", "response": "backup answer"},
        {"match": "plan this", "response": "print('planned')"},
        {"match": "extract", "response": '{"total": 12}'},
    ],
}


def failing(status: int, *, times: int = 5, retry_after: int | None = None) -> dict[str, object]:
    """ANSWERS, with the primary scripted model failing `times` times first."""
    failure: dict[str, object] = {"model": "scripted", "status": status, "times": times}
    if retry_after is not None:
        failure["retry_after"] = retry_after
    return {**ANSWERS, "failures": [failure]}


def gpt_4o_mini_cost(prompt_tokens: int, completion_tokens: int) -> float:
    prices = price_per_token("gpt-4o-mini")
    assert prices is not None
    return prompt_tokens * prices[0] + completion_tokens * prices[1]


async def test_answers_through_litellm_with_tokens_and_cost() -> None:
    async with scripted_models(ANSWERS) as (server, models):
        completion = await models.complete(user("please plan this", system="You plan."))

    assert completion.text == "print('planned')"
    assert completion.model == "openai/scripted"
    assert completion.prompt_tokens == (len("You plan.") + len("please plan this")) // 4 + 1
    assert completion.completion_tokens == len("print('planned')") // 4 + 1
    assert completion.cost_usd == pytest.approx(
        gpt_4o_mini_cost(completion.prompt_tokens, completion.completion_tokens)
    )
    assert completion.cost_usd is not None and completion.cost_usd > 0
    assert completion.seconds > 0
    [request] = server.requests
    assert request.model == "scripted"
    assert request.messages[-1] == {"role": "user", "content": "please plan this"}


async def test_every_task_kind_is_served_and_json_schema_is_accepted() -> None:
    schema: dict[str, object] = {"title": "Totals", "type": "object",
                                 "properties": {"total": {"type": "integer"}}}
    async with scripted_models(ANSWERS) as (server, models):
        for kind in ("plan", "extract", "write", "classify", "vision"):
            completion = await models.complete(user("extract it"), kind=kind, json_schema=schema)
            assert completion.text == '{"total": 12}'

    assert len(server.requests) == 5


async def test_unmatched_prompt_is_a_model_error_naming_the_prompt_without_fallback() -> None:
    async with scripted_models(ANSWERS) as (server, models):
        with pytest.raises(ModelError) as caught:
            await models.complete(user("something no rule expects"))

    message = caught.value.message
    assert "The scripted model has no answer for this prompt" in message
    assert "something no rule expects" in message
    assert "SLUICE_MODEL_API_KEY" in message
    assert caught.value.fields["reason"] == "no_match"
    # A 400 is neither retried nor sent to the fallback.
    assert [(r.model, r.status) for r in server.requests] == [("scripted", 400)]


async def test_a_500_falls_back_within_the_same_call() -> None:
    async with scripted_models(failing(500)) as (server, models):
        completion = await models.complete(user("plan this"))

    assert completion.text == "backup answer"
    assert completion.model == "openai/scripted-backup"
    assert completion.cost_usd is not None and completion.cost_usd > 0
    assert [(r.model, r.status) for r in server.requests] == [
        ("scripted", 500), ("scripted-backup", 200)
    ]


async def test_a_429_with_retry_after_falls_back_without_waiting() -> None:
    async with scripted_models(failing(429, retry_after=30)) as (server, models):
        started = time.perf_counter()
        completion = await models.complete(user("plan this"))
        elapsed = time.perf_counter() - started

    assert completion.text == "backup answer"
    assert elapsed < 5
    assert [(r.model, r.status) for r in server.requests] == [
        ("scripted", 429), ("scripted-backup", 200)
    ]


async def test_a_timeout_falls_back() -> None:
    slow = {"rules": [{"match": "", "model": "scripted", "response": "late", "delay_ms": 5000},
                      *ANSWERS["rules"]]}
    async with scripted_models(slow, environ={"SLUICE_MODEL_TIMEOUT_S": "0.3"}) as (_, models):
        started = time.perf_counter()
        completion = await models.complete(user("plan this"))
        elapsed = time.perf_counter() - started

    assert completion.text == "backup answer"
    assert elapsed < 3


async def test_without_a_fallback_a_503_is_retried_in_the_group() -> None:
    async with scripted_models(failing(503, times=1), fallback=False) as (server, models):
        completion = await models.complete(user("plan this"))

    assert completion.text == "print('planned')"
    assert [r.status for r in server.requests] == [503, 200]


async def test_when_everything_fails_the_error_is_for_a_person() -> None:
    scenario = {**failing(500), "failures": [{"model": "scripted", "status": 500, "times": 5},
                                             {"model": "scripted-backup", "status": 503}]}
    async with scripted_models(scenario, num_retries=0) as (_, models):
        with pytest.raises(ModelError) as caught:
            await models.complete(user("plan this"))

    assert caught.value.fields["reason"] == "unavailable"
    assert "scripted model server" in caught.value.message
    assert "sluice up" in caught.value.message


async def test_an_unknown_price_gives_no_cost_rather_than_zero() -> None:
    priced = {"SLUICE_SCRIPTED_PRICE_AS": "no-such-model-anywhere"}
    async with scripted_models(ANSWERS, environ=priced) as (_, models):
        completion = await models.complete(user("plan this"))

    assert completion.cost_usd is None
    assert models.priced_as == "no-such-model-anywhere"


def test_price_per_token_reads_litellms_price_list() -> None:
    import litellm

    listed = litellm.model_cost["gpt-4o-mini"]
    expected = (listed["input_cost_per_token"], listed["output_cost_per_token"])

    assert price_per_token("gpt-4o-mini") == expected
    assert price_per_token("openai/gpt-4o-mini") == expected
    assert price_per_token("no-such-model-anywhere") is None


async def test_with_a_key_every_kind_uses_the_configured_model() -> None:
    secret = "sk-test-not-a-real-key-1234"
    async with scripted_model(failing(500, times=1)) as server:
        settings = scripted_settings(
            None, SLUICE_MODEL_API_KEY=secret, SLUICE_MODEL="openai/scripted",
            SLUICE_MODEL_API_BASE=f"{server.url}/v1",
        )
        models = LiteLLMModels.from_settings(settings, num_retries=0)
        try:
            with pytest.raises(ModelError) as caught:
                await models.complete(user("plan this"), kind="write")
            completion = await models.complete(user("plan this"), kind="write")
        finally:
            models.close()

    assert completion.text == "print('planned')"
    assert completion.model == "openai/scripted"
    assert completion.cost_usd is None  # "openai/scripted" has no known price
    assert caught.value.fields["reason"] == "unavailable"
    assert "openai/scripted is unavailable" in caught.value.message
    assert secret not in str(caught.value.to_dict())


def test_routes_never_show_their_key() -> None:
    route = ModelRoute(model="openai/gpt-4o-mini", price_as="gpt-4o-mini", api_key="sk-hidden")

    assert "sk-hidden" not in repr(route)


def test_without_a_key_or_a_scripted_server_the_configuration_error_says_what_to_set() -> None:
    with pytest.raises(ConfigurationError) as caught:
        LiteLLMModels.from_settings(scripted_settings(None))

    assert "SLUICE_SCRIPTED_MODEL_URL" in caught.value.message
    assert "SLUICE_MODEL_API_KEY" in caught.value.message
