"""Turning what a run did into the few numbers a person cares about."""

from __future__ import annotations

from core.types import Estimate

_PHRASES = {
    "mail.send": ("sent {n} email", "sent {n} emails"),
    "Sheet.update": ("updated {n} row", "updated {n} rows"),
    "Sheet.append": ("added {n} row", "added {n} rows"),
}


def describe_counts(counts: dict[str, int]) -> list[str]:
    """["sent 3 emails", "updated 3 rows"] from {"mail.send": 3, "Sheet.update": 3}."""
    parts = []
    for key, n in sorted(counts.items()):
        one, many = _PHRASES.get(key, (f"{key} ×{{n}}", f"{key} ×{{n}}"))
        parts.append((one if n == 1 else many).format(n=n))
    return parts


def run_summary(*, writes: dict[str, int], items_done: int | None, failures: int,
                seconds: float, model_calls: int, cost_usd: float | None) -> str:
    done = describe_counts(writes) or ["made no changes"]
    text = f"Done in {seconds:.1f} s: " + ", ".join(done) + "."
    if items_done is not None:
        text += f" {items_done} item{'s' if items_done != 1 else ''} processed"
        text += f", {failures} failed." if failures else ", none failed."
    if model_calls:
        cost = "price unknown" if cost_usd is None else f"${cost_usd:.4f}"
        text += f" {model_calls} AI call{'s' if model_calls != 1 else ''} ({cost})."
    return text


def unconfirmed_note(*, checked: int, confirmed: int, redone: int) -> str:
    """What a resumed run did with the writes a stopped worker had started and not confirmed,
    for the result message ('' when there were none)."""
    if not checked and not redone:
        return ""
    parts = []
    if confirmed:
        parts.append(f"{confirmed} {'was' if confirmed == 1 else 'were'} found already done "
                     "and not repeated")
    if checked > confirmed:
        undone = checked - confirmed
        parts.append(f"{undone} {'was' if undone == 1 else 'were'} found not done and done now")
    if redone:
        parts.append(f"{redone} {'was' if redone == 1 else 'were'} done again, which the service "
                     "ignores when it is a repeat")
    total = checked + redone
    return (f"A worker stopped during the run and another resumed it: of the {total} "
            f"write{'s' if total != 1 else ''} it had left unconfirmed, " + "; ".join(parts) + ".")


def estimate_vs_actual(estimate: Estimate, *, seconds: float, cost_usd: float | None,
                       model_calls: int) -> str:
    """"Estimated ~12 s and $0.0040 (30 AI calls); it took 11.2 s and $0.0038 (30).\""""
    est_cost = "price unknown" if estimate.cost_usd is None else f"${estimate.cost_usd:.4f}"
    cost = "price unknown" if cost_usd is None else f"${cost_usd:.4f}"
    return (f"Estimated ~{estimate.seconds:.1f} s and {est_cost} ({estimate.model_calls} AI "
            f"calls); it took {seconds:.1f} s and {cost} ({model_calls}).")
