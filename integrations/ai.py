"""Model calls as integration actions: write text, extract fields, classify.

See ARCHITECTURE.md, "CodeAct, not ReAct": a program maps a function over many items, and that
function may ask a model for one small thing per item. The prompts here are fixed templates, so the
same input always produces the same messages (a scripted model can answer them, and the journal
can match them on replay). Every answer's `Completion` is handed to `on_completion`, so the
runtime can count tokens and spend; the last `USAGE_KEPT` are kept in `usage` (a run may make
100,000 calls, and the runtime has counted them already).
"""

from __future__ import annotations

import base64
import difflib
import json
import re
from collections import deque
from collections.abc import Callable
from typing import Any, Final

from core.errors import IntegrationError
from core.protocols import ChatMessage, Completion, ModelClient, TaskKind
from integrations.base import Integration, action

_WRITE_SYSTEM = (
    "You write text for a team's business workflow. Answer with the requested text only: "
    "no preamble, no surrounding quotes, no notes."
)
_EXTRACT_SYSTEM = (
    "You extract data from text. Answer with one JSON object and nothing else. Its keys are "
    "exactly the fields below. Use null for a field the text does not give; do not guess.\n"
    "Fields:\n{fields}"
)
_CLASSIFY_SYSTEM = (
    "You classify text. Answer with exactly one of these labels, written as given, and "
    "nothing else:\n{labels}"
)
_LOOK_SYSTEM = (
    "You look at images for a team's business workflow. Answer the question about the image "
    "plainly and only from what it shows; say so when it does not show the answer."
)
_FENCE = re.compile(r"```[A-Za-z0-9_-]*")
USAGE_KEPT: Final = 1_000


def first_json_object(text: str) -> dict[str, Any] | None:
    """The first JSON object in `text`, ignoring code fences and prose around it."""
    cleaned = _FENCE.sub("", text)
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", cleaned):
        try:
            value, _ = decoder.raw_decode(cleaned, match.start())
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return None


def _key(name: str) -> str:
    return re.sub(r"[\W_]+", "", name.casefold())


def _fill(data: dict[str, Any], schema: dict[str, str]) -> dict[str, Any]:
    """Exactly the schema's fields, in its order; keys match ignoring case and spacing."""
    by_key = {_key(str(k)): v for k, v in data.items()}
    return {field: data[field] if field in data else by_key.get(_key(field)) for field in schema}


def pick_label(answer: str, labels: list[str]) -> str | None:
    """The label a model's answer names, or None when it names none of them."""
    by_fold = {label.casefold(): label for label in labels}
    cleaned = answer.strip().strip("\"'`*.:").strip().casefold()
    if cleaned in by_fold:
        return by_fold[cleaned]
    folded = answer.casefold()
    named = [
        label for label in labels
        if re.search(rf"(?<!\w){re.escape(label.casefold())}(?!\w)", folded)
    ]
    if named:
        longest = max(named, key=len)
        if all(other.casefold() in longest.casefold() for other in named):
            return longest  # "not spam" also contains "spam"
    close = difflib.get_close_matches(cleaned, list(by_fold), n=1, cutoff=0.8)
    return by_fold[close[0]] if close else None


class AI(Integration):
    """A language model for small steps inside a job: write, extract, classify."""

    name = "ai"
    summary = "Language model: write text, extract fields from text as JSON, classify text."

    def __init__(
        self, models: ModelClient, *, on_completion: Callable[[Completion], None] | None = None
    ) -> None:
        self.models = models
        self.usage: deque[Completion] = deque(maxlen=USAGE_KEPT)
        self._on_completion = on_completion

    @action("read")
    async def generate(self, prompt: str, *, instructions: str | None = None) -> str:
        """Write text for `prompt` (an email body, a summary, a reply) and return it.

        `instructions` adds standing guidance such as tone, length or language, e.g.
        "Friendly, at most three sentences, sign as the Sales team".
        """
        system = _WRITE_SYSTEM if not instructions else f"{_WRITE_SYSTEM}\n\n{instructions}"
        text = await self._complete([_system(system), _user(prompt)], kind="write")
        return text.strip()

    @action("read")
    async def extract(self, text: str, schema: dict[str, str]) -> dict[str, Any]:
        """Pull the fields of `schema` out of `text`; returns {field: value} for every field.

        `schema` maps field name -> what it holds, e.g. {"company": "company name",
        "budget": "budget in euros, a number", "due": "due date, YYYY-MM-DD"}. A field the text
        does not give is None. Values are what the model wrote (strings, numbers, lists); convert
        them before arithmetic. Raises IntegrationError when the model does not answer with JSON.
        """
        if not schema:
            raise IntegrationError("schema needs at least one field, e.g. {'total': 'a number'}.")
        fields = "\n".join(f"- {name}: {about}" for name, about in schema.items())
        json_schema: dict[str, object] = {
            "type": "object",
            "properties": {name: {"description": about} for name, about in schema.items()},
            "required": list(schema),
        }
        answer = await self._complete(
            [_system(_EXTRACT_SYSTEM.format(fields=fields)), _user(text)],
            kind="extract", json_schema=json_schema,
        )
        data = first_json_object(answer)
        if data is None:
            raise IntegrationError(
                f"The model did not answer with a JSON object for extract(); it said: "
                f"{_excerpt(answer)}", answer=_excerpt(answer),
            )
        return _fill(data, schema)

    @action("read")
    async def classify(self, text: str, labels: list[str]) -> str:
        """The one label from `labels` that fits `text` best, spelled exactly as in `labels`.

        Example: ai.classify(email["text"], ["invoice", "question", "spam"]). Raises
        IntegrationError when the model's answer names none of the labels.
        """
        if not labels:
            raise IntegrationError("labels needs at least one label, e.g. ['yes', 'no'].")
        labels = [str(label) for label in labels]
        listed = "\n".join(f"- {label}" for label in labels)
        answer = await self._complete(
            [_system(_CLASSIFY_SYSTEM.format(labels=listed)), _user(text)], kind="classify"
        )
        label = pick_label(answer, labels)
        if label is None:
            raise IntegrationError(
                f"The model answered {_excerpt(answer)}, which is none of the labels: "
                f"{', '.join(labels)}.", answer=_excerpt(answer), labels=labels,
            )
        return label

    async def look(self, images: list[tuple[bytes, str]], prompt: str, *,
                   schema: dict[str, str] | None = None) -> str | dict[str, Any]:
        """Ask the vision model about images ((data, content type) pairs); not an action.

        Without `schema` the answer is text; with one it is {field: value} as extract() gives.
        Connectors that hold images (files, mail attachments) offer it as their own actions.
        """
        urls = [f"data:{ctype};base64,{base64.b64encode(data).decode()}"
                for data, ctype in images]
        if schema is None:
            message = ChatMessage(role="user", content=str(prompt), images=urls)
            return (await self._complete([_system(_LOOK_SYSTEM), message], kind="vision")).strip()
        fields = "\n".join(f"- {name}: {about}" for name, about in schema.items())
        message = ChatMessage(role="user", content=str(prompt), images=urls)
        answer = await self._complete(
            [_system(_EXTRACT_SYSTEM.format(fields=fields)), message], kind="vision",
            json_schema=_json_schema(schema))
        data = first_json_object(answer)
        if data is None:
            raise IntegrationError(f"The model did not answer with a JSON object for the image; "
                                   f"it said: {_excerpt(answer)}", answer=_excerpt(answer))
        return _fill(data, schema)

    async def _complete(
        self, messages: list[ChatMessage], *, kind: TaskKind,
        json_schema: dict[str, object] | None = None,
    ) -> str:
        completion = await self.models.complete(messages, kind=kind, json_schema=json_schema)
        self.usage.append(completion)
        if self._on_completion is not None:
            self._on_completion(completion)
        return completion.text


def _json_schema(schema: dict[str, str]) -> dict[str, object]:
    return {
        "type": "object",
        "properties": {name: {"description": about} for name, about in schema.items()},
        "required": list(schema),
    }


def _system(content: str) -> ChatMessage:
    return ChatMessage(role="system", content=content)


def _user(content: str) -> ChatMessage:
    return ChatMessage(role="user", content=str(content))


def _excerpt(text: str, limit: int = 120) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= limit else flat[: limit - 1] + "…")
