"""The estimate a person approves: a static guess, corrected by what the sample run measured."""

from __future__ import annotations

from codegen.estimate import estimate_program, refine_estimate
from core.types import SampleRun

PROGRAM = f"""\
rows = {list(range(40))}
answers = each(rows, lambda row: ai.generate(f"Summarize {{row}}"), concurrency=4)
"""
EFFECTS = {"sheets.open": "read", "Sheet.rows": "read", "ai.generate": "read"}


def sample(cost: float | None) -> SampleRun:
    return SampleRun(items=3, available=40, model_calls=3, tokens=300, cost_usd=cost,
                     seconds=0.9, item_seconds=[0.25, 0.3, 0.35],
                     item_costs=[] if cost is None else [cost / 3] * 3,
                     item_tokens=[100] * 3, item_model_calls=[1] * 3, fixed_seconds=0.2)


def test_a_priced_sample_replaces_the_unknown_price_of_the_static_guess() -> None:
    static = estimate_program(PROGRAM, effects=EFFECTS, workspace={}, prices=None)
    assert static.cost_usd is None
    assert any("price is unknown" in note for note in static.notes)

    refined = refine_estimate(static, sample(0.003), program=PROGRAM)

    assert refined.cost_usd is not None and abs(refined.cost_usd - 0.04) < 1e-9
    assert not any("price is unknown" in note for note in refined.notes)
    assert refined.items == 40 and refined.model_calls == 40


def test_an_unpriced_sample_keeps_the_cost_unknown_and_says_so() -> None:
    static = estimate_program(PROGRAM, effects=EFFECTS, workspace={}, prices=None)
    refined = refine_estimate(static, sample(None), program=PROGRAM)
    assert refined.cost_usd is None
    assert any("price is unknown" in note for note in refined.notes)


def test_the_measured_time_per_item_is_worded_at_its_scale() -> None:
    static = estimate_program(PROGRAM, effects=EFFECTS, workspace={}, prices=None)
    for item_seconds, shown in (([0.25, 0.3, 0.35], "300 ms"), ([1.5, 1.5, 1.5], "1.50 s"),
                                ([0.0001] * 3, "under 1 ms")):
        measured = sample(None).model_copy(update={"item_seconds": item_seconds})
        refined = refine_estimate(static, measured, program=PROGRAM)
        assert f"Measured on 3 sample items: {shown} per item." in refined.notes
