"""How a run's progress reads in its thread (`bot.render.progress_text`)."""

from __future__ import annotations

from bot.render import progress_text
from core.types import Progress


def test_a_run_with_a_known_total_says_the_time_left_at_its_pace() -> None:
    progress = Progress(done=5, failed=1, total=24, elapsed_s=12.0, cost_usd=0.0123)
    assert progress_text(progress) == (
        "Running: 5/24 done, 1 failed · 12 s · $0.0123 · about 36 s left")


def test_without_a_total_or_a_finished_item_there_is_no_time_left() -> None:
    assert progress_text(Progress(done=7, elapsed_s=4.25)) == (
        "Running: 7/? done, 0 failed · 4.2 s · $0.0000")
    assert progress_text(Progress(total=10, elapsed_s=2.0)) == (
        "Running: 0/10 done, 0 failed · 2.0 s · $0.0000")


def test_a_finished_run_and_an_unknown_price() -> None:
    done = Progress(done=300, total=300, elapsed_s=200.0, price_unknown=True)
    assert progress_text(done, finished=True) == (
        "Finished: 300/300 done, 0 failed · 3 min · price unknown")
