"""What the worker journals, keeps and feeds back in around a sandboxed run: the paths of effects,
the clock and the random seed (ARCHITECTURE.md, "Durable execution by journal and replay"), and the
thread's variables (workers/_state.py, "State outlives the process"). Real child processes, as in
test_sandbox.py; the handler is test data standing in for the integrations.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
from typing import Any

from integrations.base import EffectCall, Row
from workers._state import decode_state, encode_state, untagged_names
from workers.sandbox import SandboxLimits, SandboxOutcome, detect_isolation, run_sandboxed

ISOLATION = detect_isolation()
LIMITS = SandboxLimits(cpu_s=10, wall_s=20, memory_mb=1024, output_kb=64)
MANIFEST: dict[str, Any] = {
    "integrations": {"sheets": {"actions": {"open": "read"}},
                     "mail": {"actions": {"send": "write"}}},
    "resources": {"Sheet": {"actions": {"rows": "read", "update": "write"}}},
}
NOW = {"__datetime__": "2024-05-06T23:30:00+02:00"}
ROWS = [{"__row__": [str(i), {"Name": f"person{i}"}]} for i in range(5)]


class Handler:
    """Answers the clock and a small sheet, keeping every call as it completes; writes take a
    random little while, so that concurrent ones complete out of order."""

    def __init__(self) -> None:
        self.calls: list[EffectCall] = []

    async def __call__(self, call: EffectCall) -> Any:
        if call.action in ("update", "send"):
            await asyncio.sleep(random.random() / 50)
        self.calls.append(call)
        if call.integration == "runtime":
            return NOW
        if call.action == "open":
            return {"__handle__": ["sheets", "Sheet", call.args[0]]}
        return ROWS if call.action == "rows" else None


async def run(program: str, handler: Handler | None = None, **options: Any) -> SandboxOutcome:
    return await run_sandboxed(program, manifest=MANIFEST, handler=handler or Handler(),
                               limits=LIMITS, isolation=ISOLATION, **options)


PATHS = """\
sheet = sheets.open("s")
rows = sheet.rows()
def visit(row):
    sheet.update(row, {"Seen": True})
    mail.send(to=row["Name"] + "@example.com")
each(rows[:3], visit, concurrency=4)
def nested(row):
    return each([row["Name"], "again"], lambda name: sheet.rows(), concurrency=4)
each(rows[3:], nested, concurrency=4)
def advanced():
    for n in range(2):
        yield sheet.rows()[n]["Name"]
for name in advanced():
    mail.send(to=f"{name}@example.com")
    each([name], lambda k: mail.send(to=k + "@example.com"))
    mail.send(to="again@example.com")
print(now().year)
"""


async def test_effect_paths_follow_the_program_not_completion_order() -> None:
    first, second = Handler(), Handler()
    for handler in (first, second):
        outcome = await run(PATHS, handler)
        assert outcome.ok, outcome.error
        assert outcome.output == "2024\n"
    items = [f"each#1/item#{i}/call#{n}" for i in range(3) for n in (1, 2)]
    nested = [f"each#2/item#{i}/each#1/item#{j}/call#1" for i in range(2) for j in range(2)]
    # A top-level loop's iterations are scopes of their own, each() inside them too; what
    # advancing the loop's iterable asks for is the enclosing scope's (call#3, call#4).
    loop = [f"for@13/iter#{n}/{tail}" for n in range(2)
            for tail in ("call#1", "call#2", "each#1/item#0/call#1")]
    assert sorted(c.path for c in first.calls) == sorted(
        ["call#1", "call#2", *items, *nested, *loop, "call#3", "call#4", "call#5"])
    assert _by_path(first.calls) == _by_path(second.calls)
    paths = _by_path(first.calls)
    assert paths["each#1/item#2/call#2"] == (
        "mail", "send", '[[],{"to":"person2@example.com"}]')
    assert paths["call#3"][1] == paths["call#4"][1] == "rows"
    assert paths["for@13/iter#1/call#2"] == ("mail", "send", '[[],{"to":"again@example.com"}]')
    assert paths["call#5"] == ("runtime", "now", "[[],{}]")


def _by_path(calls: list[EffectCall]) -> dict[str, tuple[str, str, str]]:
    return {c.path: (c.integration, c.action, json.dumps([c.args, c.kwargs], separators=(",", ":")))
            for c in calls}


FIRST = """\
import datetime
import pandas as pd
df = pd.DataFrame({"name": ["ann", "bo", "cy"], "zip": ["0123", "4", "5"], "n": [1, 2, 3]})
people = [{"name": "ann", "age": 31}, {"name": "bo", "age": None}]
config = {"threshold": 5, "tags": ["x", "y"]}
when = datetime.date(2024, 5, 6)
count = 42
pending = (n for n in range(3))
sheet = sheets.open("signups")
class Box:
    pass
box = Box()
def helper():
    return 1
_private = 1
"""

SECOND = """\
print(len(df), df["zip"].tolist(), int(df["n"].sum()))
print(people[0]["age"], config["tags"], when.isoformat(), count + 1)
count = count + 1
"""


async def test_variables_are_kept_and_the_next_run_starts_with_them() -> None:
    first = await run(FIRST)
    assert first.ok, first.error
    assert set(first.variables) == {"df", "people", "config", "when", "count"}
    assert json.loads(first.variables["when"]) == {"__date__": "2024-05-06"}
    assert "__dataframe__" in json.loads(first.variables["df"])
    assert first.summaries == {
        "df": "a pandas DataFrame, 3 rows, columns ['name', 'zip', 'n']",
        "people": "a list of 2 items", "config": "a dict with 2 keys",
        "when": "the value '2024-05-06'", "count": "the value '42'"}
    reasons = {u["name"]: u["reason"] for u in first.unsaved}
    assert set(reasons) == {"pending", "sheet", "box"}
    assert "generator" in reasons["pending"] and "list(" in reasons["pending"]
    assert "Sheet handle" in reasons["sheet"]
    assert "Box object" in reasons["box"]

    second = await run(SECOND, state=first.variables)
    assert second.ok, second.error
    assert second.output == "3 ['0123', '4', '5'] 6\n31 ['x', 'y'] 2024-05-06 43\n"
    assert json.loads(second.variables["count"]) == 43
    assert second.variables["df"] == first.variables["df"]  # kept for the run after
    assert second.unsaved == []


async def test_a_failed_run_keeps_no_variables() -> None:
    outcome = await run("kept = 1\nraise ValueError('no')\n")
    assert not outcome.ok
    assert outcome.variables == {} and outcome.unsaved == []


async def test_the_clock_is_a_runtime_call_with_a_path() -> None:
    handler = Handler()
    program = ("print(now().isoformat(), today().isoformat())\n"
               "print(each([1, 2], lambda n: now().hour, concurrency=2))\n")
    outcome = await run(program, handler)
    assert outcome.ok, outcome.error
    assert outcome.output == "2024-05-06T23:30:00+02:00 2024-05-06\n[23, 23]\n"
    clock = [(c.integration, c.action, c.args, c.kwargs) for c in handler.calls]
    assert clock == [("runtime", "now", [], {})] * 4
    assert sorted(c.path for c in handler.calls) == [
        "call#1", "call#2", "each#1/item#0/call#1", "each#1/item#1/call#1"]


async def test_the_same_seed_gives_the_same_random_numbers() -> None:
    program = "import random\nprint(random.random(), random.randint(1, 10**9))\n"
    first = await run(program, seed=7)
    again = await run(program, seed=7)
    other = await run(program, seed=8)
    assert first.ok and again.ok and other.ok
    assert first.output == again.output != other.output


def test_encode_state_caps_the_size_and_says_why() -> None:
    namespace = {"big": "x" * 100, "small": "y", "row": Row("r1", {"Amount": 5}),
                 "tags": {"a", "b"}, "ids": {1: "one"}}
    variables, unsaved = encode_state(namespace, max_bytes=50)
    assert variables == {"small": '"y"', "row": '{"__row__":["r1",{"Amount":5}]}'}
    reasons = {u["name"]: u["reason"] for u in unsaved}
    assert reasons["big"] == "it would take the saved variables over 50 bytes"
    assert "sorted(" in reasons["tags"]
    assert "keys are not all strings" in reasons["ids"]


def test_saved_variables_without_tags_are_sent_to_decode_to_themselves() -> None:
    when = dt.date(2024, 5, 6)
    texts, _ = encode_state({"rows": [{"a": 1, "b": None}], "row": Row("1", {"a": 1}),
                             "when": when, "note": 'say "__row__"'})
    untagged = untagged_names(texts)
    assert untagged == ["rows"]  # a quote inside a string counts as a tag
    decoded = decode_state(texts)
    assert decode_state(texts) == decoded
    assert decoded == {"rows": [{"a": 1, "b": None}], "row": {"a": 1}, "when": when,
                       "note": 'say "__row__"'}
    assert isinstance(decoded["row"], Row)


def test_decode_state_round_trips_and_skips_what_it_cannot_read() -> None:
    when = dt.datetime(2024, 5, 6, 7, 8, 9)
    texts, _ = encode_state({"when": when, "rows": [Row("1", {"a": [1, 2]})]})
    decoded = decode_state({**texts, "broken": '{"__date__": "not a date"}',
                            "not json": '1},"program":"x"', "not text": 5})
    assert decoded == {"when": when, "rows": [{"a": [1, 2]}]}
    assert isinstance(decoded["rows"][0], Row) and decoded["rows"][0].id == "1"
