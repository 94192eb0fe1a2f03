"""Model routing from a models file: chains of deployments per task kind, fallbacks, prices,
prompt-cache markers, bad files, and the scripted default (codegen/model_config.py, models.py).

Every completion goes through litellm's Router over HTTP to the scripted model server, which
speaks OpenAI's chat API and Anthropic's Messages API.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from typer.testing import CliRunner

from codegen.model_config import (
    TASK_KINDS,
    load_models_file,
    model_routes,
    needs_scripted_model,
)
from codegen.models import LiteLLMModels, price_per_token
from core.errors import ConfigurationError, ModelError
from core.settings import load_settings
from infra.cli import app
from infra.scripted_model import ScenarioSource, ScriptedModelServer, scripted_model
from tests._scripted import scripted_settings, user

KEY = "sk-routing-test-not-a-real-key"
ANSWERS: dict[str, object] = {"rules": [{"match": "plan this", "response": "print('planned')"}]}
# Prices no real model has, so the test can tell which deployment a cost was computed for.
GAMMA_PRICE = (0.000123, 0.000456)


def chain_file(folder: Path, url: str, models: list[str], *, kind: str = "plan",
               extra: str = "") -> Path:
    """A YAML models file: `kind` (and the default for other kinds) tries `models` in order."""
    deployments = "".join(
        f"    - model: openai/{name}\n      api_key_env: ROUTING_KEY\n      api_base: {url}/v1\n"
        for name in models)
    path = folder / "models.yaml"
    path.write_text(f"num_retries: 1\ndefault:\n  - model: openai/other\n"
                    f"    api_key_env: ROUTING_KEY\n    api_base: {url}/v1\n"
                    f"kinds:\n  {kind}:\n{deployments}{extra}")
    return path


@asynccontextmanager
async def routed(
    folder: Path, scenario: ScenarioSource, models: list[str], *, extra: str = ""
) -> AsyncIterator[tuple[ScriptedModelServer, LiteLLMModels]]:
    async with scripted_model(scenario) as server:
        path = chain_file(folder, server.url, models, extra=extra)
        settings = scripted_settings(None, SLUICE_MODELS_FILE=str(path), ROUTING_KEY=KEY)
        models_client = LiteLLMModels.from_settings(settings)
        try:
            yield server, models_client
        finally:
            models_client.close()


def failures(*pairs: tuple[str, int]) -> dict[str, object]:
    return {**ANSWERS, "failures": [{"model": m, "status": s, "times": 5} for m, s in pairs]}


async def test_a_500_then_a_429_fall_through_to_the_third_deployment_priced_as_it(
    tmp_path: Path,
) -> None:
    price = (f"      price: {{input_cost_per_token: {GAMMA_PRICE[0]}, "
             f"output_cost_per_token: {GAMMA_PRICE[1]}}}\n")
    scenario = failures(("routing-alpha", 500), ("routing-beta", 429))
    chain = ["routing-alpha", "routing-beta", "routing-gamma"]
    async with routed(tmp_path, scenario, chain, extra=price) as (server, models):
        completion = await models.complete(user("please plan this", system="You plan."))
        assert models.priced_as == "openai/routing-alpha"

    assert completion.text == "print('planned')"
    assert completion.model == "openai/routing-gamma"
    assert [(r.model, r.status) for r in server.requests] == [
        ("routing-alpha", 500), ("routing-beta", 429), ("routing-gamma", 200)]
    expected = (completion.prompt_tokens * GAMMA_PRICE[0]
                + completion.completion_tokens * GAMMA_PRICE[1])
    assert completion.cost_usd == pytest.approx(expected)
    assert price_per_token("openai/routing-gamma") == pytest.approx(GAMMA_PRICE)


async def test_a_400_does_not_fall_back(tmp_path: Path) -> None:
    async with routed(tmp_path, failures(), ["routing-one", "routing-two"]) as (server, models):
        with pytest.raises(ModelError) as caught:
            await models.complete(user("nothing matches this"))

    assert caught.value.fields["reason"] == "no_match"
    assert [(r.model, r.status) for r in server.requests] == [("routing-one", 400)]


async def test_a_400_from_the_second_deployment_does_not_reach_the_third(tmp_path: Path) -> None:
    scenario = {"rules": [{"match": "plan this", "model": "routing-z", "response": "wrong"}],
                "failures": [{"model": "routing-x", "status": 503, "times": 5}]}
    async with routed(tmp_path, scenario, ["routing-x", "routing-y", "routing-z"]) as (
            server, models):
        with pytest.raises(ModelError) as caught:
            await models.complete(user("plan this"))

    assert [(r.model, r.status) for r in server.requests] == [
        ("routing-x", 503), ("routing-y", 400)]
    assert caught.value.message.startswith("openai/routing-x is unavailable right now")


async def test_when_the_whole_chain_fails_the_person_reads_which_models_failed(
    tmp_path: Path,
) -> None:
    scenario = failures(("routing-p", 500), ("routing-q", 503))
    async with routed(tmp_path, scenario, ["routing-p", "routing-q"]) as (_, models):
        with pytest.raises(ModelError) as caught:
            await models.complete(user("plan this"))

    message = caught.value.message
    assert message.startswith("openai/routing-p is unavailable right now (HTTP 500), and the "
                              "fallback openai/routing-q failed too.")
    assert "scripted failure" not in message  # no raw provider text
    assert KEY not in str(caught.value.to_dict())


async def test_a_fallback_with_no_known_price_costs_none_not_zero(tmp_path: Path) -> None:
    scenario = failures(("gpt-4o-mini", 500))
    async with routed(tmp_path, scenario, ["gpt-4o-mini", "routing-unpriced"]) as (_, models):
        completion = await models.complete(user("plan this"))

    assert completion.model == "openai/routing-unpriced"
    assert completion.cost_usd is None


async def test_a_priced_fallback_after_an_unpriced_failure_is_priced(tmp_path: Path) -> None:
    scenario = failures(("routing-unpriced-2", 429))
    async with routed(tmp_path, scenario, ["routing-unpriced-2", "gpt-4o-mini"]) as (_, models):
        completion = await models.complete(user("plan this"))

    prices = price_per_token("gpt-4o-mini")
    assert prices is not None
    assert completion.model == "openai/gpt-4o-mini"
    assert completion.cost_usd == pytest.approx(
        completion.prompt_tokens * prices[0] + completion.completion_tokens * prices[1])


async def test_kinds_not_listed_take_the_default_chain(tmp_path: Path) -> None:
    rules = {"rules": [{"match": "", "model": "other", "response": "from default"},
                       *ANSWERS["rules"]]}  # type: ignore[misc]
    async with routed(tmp_path, rules, ["routing-plan"]) as (server, models):
        completion = await models.complete(user("extract this"), kind="extract")

    assert completion.text == "from default"
    assert [r.model for r in server.requests] == ["other"]


def anthropic_file(folder: Path, url: str, *, cache: str = "") -> Path:
    path = folder / "models.yaml"
    path.write_text(
        "default:\n"
        "  - model: anthropic/claude-sonnet-4-5\n"
        "    api_key_env: ANTHROPIC_TEST_KEY\n"
        f"    api_base: {url}\n{cache}"
        "  - model: openai/routing-openai\n"
        "    api_key_env: ROUTING_KEY\n"
        f"    api_base: {url}/v1\n")
    return path


async def test_an_anthropic_deployment_marks_the_system_message_for_caching(
    tmp_path: Path,
) -> None:
    system = "You write one program. " * 20
    async with scripted_model(ANSWERS) as server:
        settings = scripted_settings(None, SLUICE_MODELS_FILE=str(anthropic_file(tmp_path,
                                     server.url)), ANTHROPIC_TEST_KEY=KEY, ROUTING_KEY=KEY)
        models = LiteLLMModels.from_settings(settings)
        try:
            first = await models.complete(user("plan this", system=system))
            second = await models.complete(user("plan this", system=system))
        finally:
            models.close()

    assert first.text == second.text == "print('planned')"
    assert first.model == "anthropic/claude-sonnet-4-5"
    assert first.cost_usd is not None and first.cost_usd > 0  # claude-sonnet-4-5 is priced
    [one, two] = server.requests
    assert one.api == "anthropic"
    assert one.system == [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}]
    assert one.system == two.system  # byte-stable between requests, so the cache applies


async def test_an_anthropic_failure_falls_back_to_an_openai_style_deployment_unmarked(
    tmp_path: Path,
) -> None:
    scenario = failures(("claude-sonnet-4-5", 500))
    async with scripted_model(scenario) as server:
        settings = scripted_settings(None, SLUICE_MODELS_FILE=str(anthropic_file(tmp_path,
                                     server.url)), ANTHROPIC_TEST_KEY=KEY, ROUTING_KEY=KEY)
        models = LiteLLMModels.from_settings(settings)
        try:
            completion = await models.complete(user("plan this", system="You plan."))
        finally:
            models.close()

    assert completion.model == "openai/routing-openai"
    assert [(r.api, r.status) for r in server.requests] == [("anthropic", 500), ("openai", 200)]
    assert server.requests[1].messages[0] == {"role": "system", "content": "You plan."}


async def test_cache_control_false_turns_the_marker_off(tmp_path: Path) -> None:
    async with scripted_model(ANSWERS) as server:
        path = anthropic_file(tmp_path, server.url, cache="    cache_control: false\n")
        settings = scripted_settings(None, SLUICE_MODELS_FILE=str(path),
                                     ANTHROPIC_TEST_KEY=KEY, ROUTING_KEY=KEY)
        models = LiteLLMModels.from_settings(settings)
        try:
            await models.complete(user("plan this", system="You plan."))
        finally:
            models.close()

    assert "cache_control" not in str(server.requests[0].system)


YAML_FILE = """\
num_retries: 2
timeout_s: 30
cooldown_s: 10
default:
  - model: openai/gpt-4o-mini
    api_key_env: OPENAI_TEST_KEY
kinds:
  plan:
    - model: anthropic/claude-sonnet-4-5
      api_key_env: ANTHROPIC_TEST_KEY
    - model: openai/gpt-4o
      api_key_env: OPENAI_TEST_KEY
      timeout_s: 90
  vision:
    - model: openai/my-local-vision
      api_base: http://127.0.0.1:9/v1
      price: {input_cost_per_token: 0.000001, output_cost_per_token: 0.000002}
"""

TOML_FILE = """\
num_retries = 2
timeout_s = 30
cooldown_s = 10

[[default]]
model = "openai/gpt-4o-mini"
api_key_env = "OPENAI_TEST_KEY"

[[kinds.plan]]
model = "anthropic/claude-sonnet-4-5"
api_key_env = "ANTHROPIC_TEST_KEY"

[[kinds.plan]]
model = "openai/gpt-4o"
api_key_env = "OPENAI_TEST_KEY"
timeout_s = 90

[[kinds.vision]]
model = "openai/my-local-vision"
api_base = "http://127.0.0.1:9/v1"
price = { input_cost_per_token = 0.000001, output_cost_per_token = 0.000002 }
"""

BOTH_KEYS = {"ANTHROPIC_TEST_KEY": "sk-ant-test", "OPENAI_TEST_KEY": "sk-oai-test"}


@pytest.mark.parametrize(("name", "text"), [("models.yaml", YAML_FILE),
                                            ("models.toml", TOML_FILE)])
def test_yaml_and_toml_files_give_the_same_chains(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    routes = model_routes(scripted_settings(None, SLUICE_MODELS_FILE=str(path), **BOTH_KEYS))

    assert routes.describe() == {
        "plan": "anthropic/claude-sonnet-4-5 → openai/gpt-4o",
        "extract": "openai/gpt-4o-mini", "write": "openai/gpt-4o-mini",
        "classify": "openai/gpt-4o-mini", "vision": "openai/my-local-vision"}
    assert (routes.num_retries, routes.timeout_s, routes.cooldown_s) == (2, 30, 10)
    claude, gpt = routes.chains["plan"]
    assert claude.api_key == "sk-ant-test" and claude.cache_system
    assert gpt.api_key == "sk-oai-test" and not gpt.cache_system and gpt.timeout_s == 90
    assert claude.litellm_params(timeout_s=30)["cache_control_injection_points"] == [
        {"location": "message", "role": "system"}]
    assert "cache_control_injection_points" not in gpt.litellm_params(timeout_s=30)
    assert routes.chains["vision"][0].price == (0.000001, 0.000002)
    assert "sk-" not in repr(routes)


def test_the_default_file_is_home_models_yaml(tmp_path: Path) -> None:
    (tmp_path / "models.yaml").write_text(YAML_FILE)
    routes = model_routes(scripted_settings(None, SLUICE_HOME=str(tmp_path), **BOTH_KEYS))

    assert routes.source == f"models file {tmp_path / 'models.yaml'}"


def test_a_deployment_whose_key_is_not_set_is_left_out(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(YAML_FILE)
    routes = model_routes(scripted_settings(None, SLUICE_MODELS_FILE=str(path),
                                            OPENAI_TEST_KEY="sk-oai-test"))

    assert routes.describe()["plan"] == "openai/gpt-4o"
    assert routes.notes == ("not set, so left out: ANTHROPIC_TEST_KEY",)


def test_with_no_key_anywhere_every_kind_is_scripted(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(YAML_FILE.split("  vision:")[0])  # every deployment needs a key
    for environ in ({}, {"SLUICE_MODELS_FILE": str(path)}):
        routes = model_routes(scripted_settings("http://127.0.0.1:9", **environ))
        assert routes.scripted
        assert set(routes.describe().values()) == {"scripted model server"}
        assert [routes.chains[k][0].api_base for k in TASK_KINDS] == ["http://127.0.0.1:9/v1"] * 5


def test_a_kind_left_without_a_usable_deployment_names_the_variable(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text("default:\n  - {model: openai/gpt-4o-mini, api_key_env: OPENAI_TEST_KEY}\n"
                    "kinds:\n  vision:\n"
                    "    - {model: anthropic/claude-sonnet-4-5, api_key_env: ANTHROPIC_TEST_KEY}\n")
    with pytest.raises(ConfigurationError) as caught:
        model_routes(scripted_settings(None, SLUICE_MODELS_FILE=str(path),
                                       OPENAI_TEST_KEY="sk-oai-test"))

    message = caught.value.message
    assert str(path) in message
    assert "task kind vision" in message
    assert "ANTHROPIC_TEST_KEY is not set" in message


def test_sluice_model_with_its_key_serves_kinds_the_file_cannot(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text("default:\n  - {model: openai/gpt-4o-mini, api_key_env: OPENAI_TEST_KEY}\n"
                    "kinds:\n  vision:\n"
                    "    - {model: anthropic/claude-sonnet-4-5, api_key_env: ANTHROPIC_TEST_KEY}\n")
    routes = model_routes(scripted_settings(None, SLUICE_MODELS_FILE=str(path),
                                            OPENAI_TEST_KEY="sk-oai-test",
                                            SLUICE_MODEL="openai/gpt-4o",
                                            SLUICE_MODEL_API_KEY="sk-env"))

    assert routes.describe()["vision"] == "openai/gpt-4o"
    assert routes.describe()["plan"] == "openai/gpt-4o-mini"


@pytest.mark.parametrize(("name", "text", "where", "fix"), [
    ("models.yaml", "kinds:\n  plan:\n    - api_key_env: X\n", "kinds.plan[0].model",
     "Field required"),
    ("models.yaml", "kinds:\n  planning:\n    - model: openai/gpt-4o\n", "kinds.planning",
     "'plan'"),
    ("models.yaml", "kinds:\n  plan:\n    - model: openai/gpt-4o\n      api_key: sk-oops\n",
     "kinds.plan[0]", "name that variable with `api_key_env`"),
    ("models.yaml", "num_retries: lots\ndefault: []\n", "num_retries", "valid integer"),
    ("models.yaml", "default:\n  - model: openai/gpt-4o\n    tiemout_s: 3\n",
     "default[0].tiemout_s", "Extra inputs are not permitted"),
    ("models.yaml", "kinds: [plan\n", "line 1", "YAML"),
    ("models.toml", "[[kinds.plan]\nmodel = 1\n", "line 1", "TOML"),
    ("models.yaml", "- model: openai/gpt-4o\n", "mapping", "not list"),
    ("models.yaml", "kinds:\n  plan:\n    - model: openai/gpt-4o\n", "default", "Add `kinds."),
])
def test_a_bad_file_names_itself_the_key_and_the_fix(
    tmp_path: Path, name: str, text: str, where: str, fix: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigurationError) as caught:
        model_routes(scripted_settings("http://127.0.0.1:9", SLUICE_MODELS_FILE=str(path)))

    message = caught.value.message
    assert str(path) in message
    assert where in message
    assert fix in message
    assert "sk-oops" not in message
    assert "Choosing models" in message


def test_a_models_file_that_does_not_exist_says_so(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigurationError) as caught:
        model_routes(scripted_settings(None, SLUICE_MODELS_FILE=str(missing)))

    assert f"SLUICE_MODELS_FILE names {missing}, which is not a file" in caught.value.message


def test_load_models_file_reads_the_toml_example(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text(TOML_FILE)

    config = load_models_file(path)

    assert [d.model for d in config.kinds["plan"]] == ["anthropic/claude-sonnet-4-5",
                                                        "openai/gpt-4o"]


def test_doctor_lists_each_kind_and_its_chain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("SLUICE_MODEL_API_KEY", "SLUICE_SCRIPTED_MODEL_URL", "SLUICE_MODELS_FILE"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "models.yaml"
    path.write_text(YAML_FILE)
    env = {"SLUICE_HOME": str(tmp_path / "home"), "SLUICE_MODELS_FILE": str(path), **BOTH_KEYS}

    result = CliRunner().invoke(app, ["doctor"], env=env)

    assert result.exit_code == 0, result.output
    lines = [" ".join(line.split()) for line in result.output.splitlines()]
    assert "model for plan: anthropic/claude-sonnet-4-5 → openai/gpt-4o" in lines
    assert "model for extract: openai/gpt-4o-mini" in lines
    assert not any("no key set" in line for line in lines)  # the keys come from the file
    assert "sk-ant-test" not in result.output


def test_doctor_without_keys_shows_the_scripted_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("SLUICE_MODEL_API_KEY", "SLUICE_SCRIPTED_MODEL_URL", "SLUICE_MODELS_FILE"):
        monkeypatch.delenv(name, raising=False)

    result = CliRunner().invoke(app, ["doctor"], env={"SLUICE_HOME": str(tmp_path / "home")})

    assert result.exit_code == 0, result.output
    lines = [" ".join(line.split()) for line in result.output.splitlines()]
    assert "models: scripted model (no key set)" in lines
    assert "model for vision: scripted model server" in lines


def test_the_readme_example_is_a_valid_models_file(tmp_path: Path) -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("## Choosing models", 1)[1]
    example = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "models.yaml"
    path.write_text(example)

    routes = model_routes(scripted_settings(None, SLUICE_MODELS_FILE=str(path),
                                            ANTHROPIC_API_KEY="a", OPENAI_API_KEY="b"))

    assert routes.describe()["plan"] == "anthropic/claude-sonnet-4-5 → openai/gpt-4o"
    assert routes.describe()["vision"] == "openai/my-vision-model"
    assert (routes.num_retries, routes.timeout_s, routes.cooldown_s) == (1, 60, 30)


async def test_a_deployment_timeout_from_the_file_falls_back(tmp_path: Path) -> None:
    slow = {"rules": [{"match": "", "model": "routing-slow", "response": "late", "delay_ms": 5000},
                      *ANSWERS["rules"]]}  # type: ignore[misc]
    async with scripted_model(slow) as server:
        path = chain_file(tmp_path, server.url, ["routing-slow", "routing-quick"],
                          extra="")
        text = path.read_text().replace(
            "    - model: openai/routing-slow\n",
            "    - model: openai/routing-slow\n      timeout_s: 0.3\n")
        path.write_text(text)
        settings = scripted_settings(None, SLUICE_MODELS_FILE=str(path), ROUTING_KEY=KEY)
        models = LiteLLMModels.from_settings(settings)
        try:
            completion = await models.complete(user("plan this"))
        finally:
            models.close()

    assert completion.model == "openai/routing-quick"
    assert completion.text == "print('planned')"


async def test_a_failed_deployment_cools_down_for_the_files_cooldown(tmp_path: Path) -> None:
    scenario = {**ANSWERS, "failures": [{"model": "routing-cool", "status": 500, "times": 1}]}
    async with routed(tmp_path, scenario, ["routing-cool", "routing-warm"],
                      extra="cooldown_s: 600\n") as (server, models):
        first = await models.complete(user("plan this"))
        second = await models.complete(user("plan this"))

    assert (first.model, second.model) == ("openai/routing-warm", "openai/routing-warm")
    # routing-cool recovered after one failure, but it is skipped while it cools down.
    assert [(r.model, r.status) for r in server.requests] == [
        ("routing-cool", 500), ("routing-warm", 200), ("routing-warm", 200)]


async def test_a_file_whose_keys_are_all_unset_answers_from_the_scripted_model(
    tmp_path: Path,
) -> None:
    async with scripted_model({"rules": [{"match": "plan this", "model": "scripted",
                                          "response": "scripted plan"}]}) as server:
        path = chain_file(tmp_path, server.url, ["routing-real"])
        models = LiteLLMModels.from_settings(
            scripted_settings(server.url, SLUICE_MODELS_FILE=str(path)))
        try:
            completion = await models.complete(user("plan this"))
        finally:
            models.close()

    assert models.scripted
    assert completion.text == "scripted plan"
    assert [r.model for r in server.requests] == ["scripted"]


async def test_price_as_borrows_a_known_models_prices(tmp_path: Path) -> None:
    async with routed(tmp_path, ANSWERS, ["routing-borrowed"],
                      extra="      price_as: gpt-4o-mini\n") as (_, models):
        completion = await models.complete(user("plan this"))

    prices = price_per_token("gpt-4o-mini")
    assert prices is not None
    assert models.priced_as == "gpt-4o-mini"
    assert completion.cost_usd == pytest.approx(
        completion.prompt_tokens * prices[0] + completion.completion_tokens * prices[1])


def test_sluice_up_starts_the_scripted_model_only_when_a_kind_needs_it(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(YAML_FILE)
    base = {"SLUICE_HOME": str(tmp_path / "home"), "SLUICE_MODELS_FILE": str(path)}
    keyed = load_settings({**base, **BOTH_KEYS}, env_file=False)
    bare = load_settings({"SLUICE_HOME": str(tmp_path / "home")}, env_file=False)
    assert not needs_scripted_model(keyed)  # every kind has a deployment with its key
    assert needs_scripted_model(bare)  # no file, no key: the scripted model answers
