"""Which models answer which task kind: a models file, keys from the environment, or scripted.

See ARCHITECTURE.md, "Models are pluggable". Each task kind (plan, extract, write, classify, vision)
gets an ordered chain of deployments; `codegen.models` turns the chains into a litellm Router.
Where the chains come from, first match wins:

1. a models file (`SLUICE_MODELS_FILE`, else `HOME/models.yaml` or `HOME/models.toml` when present)
   whose deployments name the variable holding their key (`api_key_env`); a deployment whose
   variable is not set is left out of its chain;
2. `SLUICE_MODEL` with `SLUICE_MODEL_API_KEY`, for every kind (and for kinds the file leaves
   without a usable deployment);
3. with no key anywhere, the scripted model server for every kind.

Nothing here imports litellm (it takes seconds): `sluice doctor` reads the chains without it.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.errors import ConfigurationError
from core.protocols import TaskKind
from core.settings import Settings

__all__ = [
    "SCRIPTED_BACKUP_MODEL",
    "SCRIPTED_MODEL",
    "TASK_KINDS",
    "TRANSPORTS",
    "DeploymentConfig",
    "DeploymentPrice",
    "ModelRoute",
    "ModelRoutes",
    "ModelsFile",
    "describe_models",
    "is_openai_compatible",
    "load_models_file",
    "model_routes",
    "models_file_path",
    "scripted_route",
    "wants_cache_control",
]

TASK_KINDS: Final[tuple[TaskKind, ...]] = ("plan", "extract", "write", "classify", "vision")
SCRIPTED_MODEL: Final = "scripted"
SCRIPTED_BACKUP_MODEL: Final = "scripted-backup"
_SCRIPTED_KEY: Final = "scripted"
Transport = Literal["litellm", "direct"]
TRANSPORTS: Final[tuple[Transport, ...]] = ("litellm", "direct")
_FIX: Final = ('Fix the file (README, "Choosing models", has an example), or point '
               "SLUICE_MODELS_FILE at another file.")
# The system message is marked for caching on every request (the hook's message injection).
_CACHE_SYSTEM: Final[tuple[dict[str, str], ...]] = ({"location": "message", "role": "system"},)


class DeploymentPrice(BaseModel):
    """Prices for a model litellm does not know (or a negotiated rate), in dollars per token."""

    model_config = ConfigDict(extra="forbid")

    input_cost_per_token: float = Field(ge=0)
    output_cost_per_token: float = Field(ge=0)


class DeploymentConfig(BaseModel):
    """One deployment in a kind's chain, as written in the models file."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, description="litellm model name, provider/model.")
    api_key_env: str | None = Field(
        default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Name of the environment variable holding the key; omit for keyless servers.")
    api_base: str | None = None
    timeout_s: float | None = Field(default=None, gt=0)
    price: DeploymentPrice | None = None
    price_as: str | None = Field(default=None, description="A known model whose prices apply.")
    cache_control: bool | None = Field(
        default=None, description="Mark the system message for caching; default: Anthropic-style "
        "models (they need explicit markers), not others (they cache by themselves).")
    transport: Transport = Field(
        default="litellm", description="`litellm` (any provider litellm knows), or `direct`: "
        "OpenAI-compatible servers only, one HTTP request per call, for high call rates.")

    @model_validator(mode="before")
    @classmethod
    def _no_keys_in_the_file(cls, data: object) -> object:
        if isinstance(data, Mapping) and "api_key" in data:
            raise ValueError("API keys never go in the models file: put the key in an environment "
                             "variable and name that variable with `api_key_env`")
        return data

    @field_validator("transport", mode="before")
    @classmethod
    def _known_transport(cls, value: object) -> object:
        if value not in TRANSPORTS:
            raise ValueError(f"transport must be `litellm` (the default: any provider litellm "
                             f"knows) or `direct` (OpenAI-compatible servers only), not {value!r}")
        return value

    @model_validator(mode="after")
    def _direct_speaks_openai(self) -> DeploymentConfig:
        if self.transport != "direct":
            return self
        if not is_openai_compatible(self.model):
            raise ValueError(f"transport `direct` speaks OpenAI's chat-completions API only, and "
                             f"{self.model} is not spelled as an OpenAI-compatible model: write "
                             "it as openai/<model> with the server's `api_base`, or use transport "
                             "`litellm`")
        if self.cache_control:
            raise ValueError("transport `direct` sends no cache_control markers: remove "
                             "`cache_control`, or use transport `litellm`")
        return self


class ModelsFile(BaseModel):
    """The models file: per-kind chains (or one `default` chain) and Router limits."""

    model_config = ConfigDict(extra="forbid")

    kinds: dict[TaskKind, list[DeploymentConfig]] = Field(default_factory=dict)
    default: list[DeploymentConfig] = Field(
        default_factory=list, description="The chain of every kind not listed under `kinds`.")
    num_retries: int | None = Field(
        default=None, ge=0, le=10, description="Retries within one deployment before falling back.")
    timeout_s: float | None = Field(default=None, gt=0, description="Per attempt, seconds.")
    cooldown_s: float | None = Field(
        default=None, gt=0, description="How long a failed deployment is skipped (a provider's "
        "Retry-After wins). Never 0: the next deployment is tried only while this one cools.")

    def chain_for(self, kind: TaskKind) -> tuple[str, list[DeploymentConfig]]:
        """The key path and the deployments configured for `kind`."""
        if kind in self.kinds:
            return f"kinds.{kind}", self.kinds[kind]
        return "default", self.default


@dataclass(frozen=True)
class ModelRoute:
    """One deployment: a litellm model name, how to reach it, and which model's prices it costs."""

    model: str
    price_as: str
    api_key: str | None = field(default=None, repr=False)
    api_base: str | None = None
    scripted: bool = False
    timeout_s: float | None = None
    cache_system: bool = False
    price: tuple[float, float] | None = None
    key_env: str | None = None
    transport: Transport = "litellm"

    @property
    def direct(self) -> bool:
        """Whether calls go straight over HTTP (`codegen.direct`) instead of through litellm."""
        return self.transport == "direct"

    def litellm_params(self, *, timeout_s: float) -> dict[str, object]:
        params: dict[str, object] = {"model": self.model, "timeout": self.timeout_s or timeout_s}
        if self.api_key:
            params["api_key"] = self.api_key
        if self.api_base:
            params["api_base"] = self.api_base
        if self.cache_system:
            params["cache_control_injection_points"] = [dict(p) for p in _CACHE_SYSTEM]
        return params


@dataclass(frozen=True)
class ModelRoutes:
    """Every kind's chain of deployments, where they came from, and the Router's limits."""

    chains: Mapping[TaskKind, tuple[ModelRoute, ...]]
    source: str
    timeout_s: float
    num_retries: int | None = None
    cooldown_s: float | None = None
    notes: tuple[str, ...] = ()

    @property
    def scripted(self) -> bool:
        """Whether every deployment is the scripted model server."""
        return all(route.scripted for chain in self.chains.values() for route in chain)

    def describe(self) -> dict[TaskKind, str]:
        """Each kind's chain as text: `first → fallback → …` (a direct deployment says so)."""
        return {kind: " → ".join("scripted model server" if r.scripted else
                                 f"{r.model} (direct)" if r.direct else r.model for r in chain)
                for kind, chain in self.chains.items()}


def is_openai_compatible(model: str) -> bool:
    """Whether `model` is spelled as litellm spells an OpenAI-compatible server: `openai/<name>`
    (with the server's `api_base`, or OpenAI's own API without one)."""
    return model.startswith("openai/") and len(model) > len("openai/")


def wants_cache_control(model: str) -> bool:
    """Whether `model` needs explicit `cache_control` markers for prompt caching.

    Anthropic's API, and Claude on Bedrock or Vertex, cache only what is marked; OpenAI-style
    providers cache a long enough stable prefix by themselves.
    """
    lowered = model.lower()
    return lowered.startswith("anthropic/") or "claude" in lowered


def scripted_route(url: str, name: str, *, price_as: str) -> ModelRoute:
    """The scripted model server at `url` serving model `name` (for example "scripted")."""
    bare = name.removeprefix("openai/")
    return ModelRoute(model=f"openai/{bare}", price_as=price_as, api_key=_SCRIPTED_KEY,
                      api_base=f"{url.rstrip('/')}/v1", scripted=True)


def models_file_path(settings: Settings) -> Path | None:
    """The models file to read: SLUICE_MODELS_FILE, else HOME/models.yaml|toml if present.

    Raises:
        ConfigurationError: SLUICE_MODELS_FILE names a file that does not exist.
    """
    if settings.models_file is not None:
        if not settings.models_file.is_file():
            raise ConfigurationError(
                f"SLUICE_MODELS_FILE names {settings.models_file}, which is not a file. Create it "
                "(README, \"Choosing models\"), or unset SLUICE_MODELS_FILE.")
        return settings.models_file
    for name in ("models.yaml", "models.yml", "models.toml"):
        candidate = settings.home / name
        if candidate.is_file():
            return candidate
    return None


def load_models_file(path: Path) -> ModelsFile:
    """Parse and check a models file: TOML for `.toml`, else YAML.

    Raises:
        ConfigurationError: naming the file, each bad key path, and the fix.
    """
    try:
        data = _parse(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"The models file {path} cannot be read: {exc}. {_FIX}",
                                 path=str(path)) from None
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(f"The models file {path} is not valid "
                                 f"{'TOML' if _is_toml(path) else 'YAML'}: {exc}. {_FIX}",
                                 path=str(path)) from None
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigurationError(f"The models file {path} must hold a mapping with `kinds` or "
                                 f"`default`, not {type(data).__name__}. {_FIX}", path=str(path))
    try:
        return ModelsFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigurationError(_invalid(path, exc), path=str(path)) from None


def model_routes(
    settings: Settings,
    *,
    fallback_model: str | None = None,
    fallback_api_key: str | None = None,
    fallback_api_base: str | None = None,
) -> ModelRoutes:
    """Every kind's chain for `settings` (see the module docstring for the order of sources).

    `fallback_*` add one fallback to the `SLUICE_MODEL` route, or to the scripted model (then
    `fallback_model` is a model name the scripted server answers as).

    Raises:
        ConfigurationError: a bad models file, a kind left with no usable deployment, or no key
            and no scripted server.
    """
    path = models_file_path(settings)
    notes: tuple[str, ...] = ()
    if path is not None:
        config = load_models_file(path)
        chains, notes = _file_chains(config, path=path, settings=settings)
        if chains:
            return ModelRoutes(chains=chains, source=f"models file {path}",
                               timeout_s=config.timeout_s or settings.model_timeout_s,
                               num_retries=config.num_retries, cooldown_s=config.cooldown_s,
                               notes=notes)
    chain = _env_chain(settings, fallback_model=fallback_model, fallback_api_key=fallback_api_key,
                       fallback_api_base=fallback_api_base)
    source = "scripted model (no key set)" if chain[0].scripted else "SLUICE_MODEL"
    return ModelRoutes(chains={kind: chain for kind in TASK_KINDS}, source=source,
                       timeout_s=settings.model_timeout_s, notes=notes)


def describe_models(settings: Settings) -> list[tuple[str, str]]:
    """(name, value) rows for `sluice doctor`: where the models come from, then kind → chain.

    A configuration problem becomes a row saying so, not an exception.
    """
    placeholder = settings.model_copy(update={
        "scripted_model_url": settings.scripted_model_url or "http://127.0.0.1:0"})
    try:
        routes = model_routes(placeholder)
    except ConfigurationError as exc:
        return [("models", f"not usable: {exc.message}")]
    rows = [("models", routes.source)]
    rows += [(f"model for {kind}", chain) for kind, chain in routes.describe().items()]
    rows += [("models note", note) for note in routes.notes]
    return rows


def _env_chain(
    settings: Settings, *, fallback_model: str | None, fallback_api_key: str | None,
    fallback_api_base: str | None,
) -> tuple[ModelRoute, ...]:
    if settings.using_scripted_model:
        url = _require_scripted_url(settings)
        price_as = settings.scripted_price_as
        primary = scripted_route(url, SCRIPTED_MODEL, price_as=price_as)
        if not fallback_model:
            return (primary,)
        return primary, scripted_route(url, fallback_model, price_as=price_as)
    primary = _env_route(settings)
    if not fallback_model:
        return (primary,)
    return primary, ModelRoute(model=fallback_model, price_as=fallback_model,
                               api_key=fallback_api_key, api_base=fallback_api_base,
                               cache_system=wants_cache_control(fallback_model))


def _env_route(settings: Settings) -> ModelRoute:
    return ModelRoute(model=settings.model, price_as=settings.model,
                      api_key=settings.model_api_key, api_base=settings.model_api_base,
                      cache_system=wants_cache_control(settings.model),
                      key_env="SLUICE_MODEL_API_KEY")


def _file_chains(
    config: ModelsFile, *, path: Path, settings: Settings
) -> tuple[dict[TaskKind, tuple[ModelRoute, ...]], tuple[str, ...]]:
    """Each kind's usable deployments; empty when no deployment anywhere has its key."""
    chains: dict[TaskKind, tuple[ModelRoute, ...]] = {}
    unset: dict[TaskKind, list[str]] = {}
    for kind in TASK_KINDS:
        where, deployments = config.chain_for(kind)
        if not deployments:
            raise ConfigurationError(
                f"The models file {path} gives no deployments for `{where}` (task kind {kind}). "
                f"Add `kinds.{kind}` or a `default` list. {_FIX}", path=str(path))
        chains[kind] = tuple(r for d in deployments if (r := _file_route(d, settings)) is not None)
        unset[kind] = sorted({d.api_key_env for d in deployments
                              if d.api_key_env and not settings.environ_value(d.api_key_env)})
    missing = sorted({name for names in unset.values() for name in names})
    notes = (f"not set, so left out: {', '.join(missing)}",) if missing else ()
    if not any(chains.values()):
        return {}, (f"models file {path}: no key set ({', '.join(missing)})",)
    return _fill_empty(chains, unset, path=path, settings=settings), notes


def _fill_empty(
    chains: dict[TaskKind, tuple[ModelRoute, ...]], unset: Mapping[TaskKind, Sequence[str]], *,
    path: Path, settings: Settings,
) -> dict[TaskKind, tuple[ModelRoute, ...]]:
    """Kinds left with no deployment take `SLUICE_MODEL` when it has a key; else it is an error."""
    for kind, chain in chains.items():
        if chain:
            continue
        if settings.model_api_key:
            chains[kind] = (_env_route(settings),)
            continue
        raise ConfigurationError(
            f"The models file {path} leaves task kind {kind} without a usable model: "
            f"{' and '.join(unset[kind])} {'is' if len(unset[kind]) == 1 else 'are'} not set. "
            f"Set {' or '.join(unset[kind])}, add a deployment whose key is set to `kinds.{kind}`, "
            "or set SLUICE_MODEL_API_KEY for SLUICE_MODEL to serve it.", path=str(path), kind=kind)
    return chains


def _file_route(deployment: DeploymentConfig, settings: Settings) -> ModelRoute | None:
    """The route for `deployment`, or None when the variable naming its key is not set."""
    key = settings.environ_value(deployment.api_key_env) if deployment.api_key_env else None
    if deployment.api_key_env and not key:
        return None
    price = deployment.price
    cache = deployment.cache_control
    return ModelRoute(
        model=deployment.model,
        price_as=deployment.price_as or deployment.model,
        api_key=key,
        api_base=deployment.api_base,
        timeout_s=deployment.timeout_s,
        cache_system=wants_cache_control(deployment.model) if cache is None else cache,
        price=(price.input_cost_per_token, price.output_cost_per_token) if price else None,
        key_env=deployment.api_key_env,
        transport=deployment.transport,
    )


def _require_scripted_url(settings: Settings) -> str:
    if not settings.scripted_model_url:
        raise ConfigurationError(
            "No model is configured: SLUICE_MODEL_API_KEY is not set, so Sluice uses the scripted "
            "model, but SLUICE_SCRIPTED_MODEL_URL is not set either. Start everything with "
            "`sluice up` (it runs the scripted model), set SLUICE_SCRIPTED_MODEL_URL="
            "http://127.0.0.1:PORT, or set SLUICE_MODEL_API_KEY to use a real model."
        )
    return settings.scripted_model_url


def _is_toml(path: Path) -> bool:
    return path.suffix.lower() == ".toml"


def _parse(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    return tomllib.loads(text) if _is_toml(path) else yaml.safe_load(text)


def _invalid(path: Path, exc: ValidationError) -> str:
    lines = [f"The models file {path} is not valid:"]
    for err in exc.errors():
        message = re.sub(r"^Value error, ", "", err["msg"])
        lines.append(f"- {_key_path(err['loc'])}: {message}")
    lines.append(_FIX)
    return "\n".join(lines)


def _key_path(loc: Sequence[int | str]) -> str:
    """("kinds", "plan", 0, "model") → "kinds.plan[0].model"; the root is "(top level)"."""
    out = ""
    for part in loc:
        if part == "[key]":
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def needs_scripted_model(settings: Settings) -> bool:
    """Whether some task kind goes to the scripted model server: no models file gives usable
    deployments and `SLUICE_MODEL_API_KEY` is unset (what `sluice up` starts the server for).

    Raises:
        ConfigurationError: a bad models file.
    """
    path = models_file_path(settings)
    if path is not None:
        chains, _notes = _file_chains(load_models_file(path), path=path, settings=settings)
        if chains:
            return any(route.scripted for chain in chains.values() for route in chain)
    return settings.using_scripted_model
