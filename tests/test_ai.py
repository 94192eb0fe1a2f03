"""The ai integration against a scripted ModelClient (a stand-in for the external model)."""

from __future__ import annotations

import pytest

from core.errors import IntegrationError
from core.protocols import ChatMessage, Completion, TaskKind
from integrations.ai import AI, USAGE_KEPT, first_json_object, pick_label


class ScriptedModel:
    """Answers each call with the next canned text and remembers what it was asked."""

    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[list[ChatMessage], TaskKind, dict[str, object] | None]] = []

    async def complete(
        self,
        messages: list[ChatMessage],
        *,
        kind: TaskKind = "plan",
        json_schema: dict[str, object] | None = None,
    ) -> Completion:
        self.calls.append((messages, kind, json_schema))
        return Completion(text=self.answers.pop(0), model="scripted", prompt_tokens=10,
                          completion_tokens=5, cost_usd=0.001)


async def test_generate_uses_write_kind_and_records_usage() -> None:
    model = ScriptedModel("  Hi Ana, what is your budget?  ")
    seen: list[Completion] = []
    ai = AI(model, on_completion=seen.append)
    text = await ai.generate("Ask Ana for her budget", instructions="One sentence.")
    assert text == "Hi Ana, what is your budget?"
    messages, kind, schema = model.calls[0]
    assert kind == "write" and schema is None
    assert messages[0].role == "system" and messages[0].content.endswith("\n\nOne sentence.")
    assert messages[1].content == "Ask Ana for her budget"
    assert list(ai.usage) == seen and seen[0].cost_usd == 0.001


async def test_prompts_are_deterministic() -> None:
    model = ScriptedModel("a", "b", '{"x": 1}', '{"x": 2}', "yes", "yes")
    ai = AI(model)
    for _ in range(2):
        await ai.generate("p")
    for _ in range(2):
        await ai.extract("t", {"x": "a number"})
    for _ in range(2):
        await ai.classify("t", ["yes", "no"])
    for first, second in zip(model.calls[::2], model.calls[1::2], strict=True):
        assert first == second


async def test_extract_parses_fenced_json_and_fills_missing() -> None:
    answer = 'Sure! Here it is:\n```json\n{"Company": "Acme", "total": 120.5}\n```'
    model = ScriptedModel(answer)
    result = await AI(model).extract("Invoice from Acme, total 120.50",
                                     {"company": "company name", "total": "a number",
                                      "due": "due date"})
    assert result == {"company": "Acme", "total": 120.5, "due": None}
    messages, kind, schema = model.calls[0]
    assert kind == "extract"
    assert "- company: company name\n- total: a number\n- due: due date" in messages[0].content
    assert schema == {
        "type": "object",
        "properties": {"company": {"description": "company name"},
                       "total": {"description": "a number"},
                       "due": {"description": "due date"}},
        "required": ["company", "total", "due"],
    }


async def test_extract_without_json_is_an_error() -> None:
    with pytest.raises(IntegrationError, match="did not answer with a JSON object"):
        await AI(ScriptedModel("I cannot find an invoice here.")).extract("x", {"total": "n"})
    with pytest.raises(IntegrationError, match="at least one field"):
        await AI(ScriptedModel()).extract("x", {})


def test_first_json_object_skips_noise() -> None:
    assert first_json_object('{broken} then {"a": {"b": [1, 2]}} and {"c": 3}') == {
        "a": {"b": [1, 2]}
    }
    assert first_json_object("[1, 2]") is None


@pytest.mark.parametrize(
    ("answer", "label"),
    [
        ("Invoice", "invoice"),
        ('"question".', "question"),
        ("The label is: spam", "spam"),
        ("not spam", "not spam"),
        ("questoin", "question"),
    ],
)
async def test_classify_returns_one_of_the_labels(answer: str, label: str) -> None:
    model = ScriptedModel(answer)
    labels = ["invoice", "question", "spam", "not spam"]
    assert await AI(model).classify("some text", labels) == label
    messages, kind, _ = model.calls[0]
    assert kind == "classify"
    assert messages[0].content.endswith("- invoice\n- question\n- spam\n- not spam")


async def test_classify_unknown_answer_lists_labels() -> None:
    with pytest.raises(IntegrationError) as info:
        await AI(ScriptedModel("maybe")).classify("text", ["yes", "no"])
    assert info.value.message == "The model answered 'maybe', which is none of the labels: yes, no."
    with pytest.raises(IntegrationError, match="at least one label"):
        await AI(ScriptedModel()).classify("text", [])


def test_pick_label_ambiguous_mentions_are_none() -> None:
    assert pick_label("either yes or no", ["yes", "no"]) is None


async def test_usage_keeps_the_latest_answers_and_every_one_reaches_the_runtime() -> None:
    calls = USAGE_KEPT + 5
    model = ScriptedModel(*(f"answer {i}" for i in range(calls)))
    seen: list[Completion] = []
    ai = AI(model, on_completion=seen.append)
    for i in range(calls):
        await ai.generate(f"item {i}")
    assert len(seen) == calls
    assert len(ai.usage) == USAGE_KEPT and ai.usage[-1].text == f"answer {calls - 1}"
