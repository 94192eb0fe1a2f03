"""Cron expressions for scheduled automations: five fields, evaluated in UTC.

`minute hour day-of-month month day-of-week`, each `*`, `N`, `A-B`, lists `A,B` and steps `*/N`
or `A-B/N`; day-of-week 0-7 with 0 and 7 both Sunday. As in cron, when both day fields are
restricted a time matches if either does.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from core.errors import InvalidInputError

_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12),
           ("day of week", 0, 7))
MAX_LOOKBACK = timedelta(days=1)


@dataclass(frozen=True)
class CronSpec:
    expression: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    days_restricted: bool
    weekdays_restricted: bool

    def matches(self, at: datetime) -> bool:
        if at.minute not in self.minutes or at.hour not in self.hours:
            return False
        if at.month not in self.months:
            return False
        day_ok = at.day in self.days
        weekday_ok = (at.isoweekday() % 7) in self.weekdays
        if self.days_restricted and self.weekdays_restricted:
            return day_ok or weekday_ok
        return day_ok and weekday_ok

    def last_fire(self, after: datetime, until: datetime) -> datetime | None:
        """The latest minute in (after, until] this spec fires at; missed ones collapse to one.

        Looks back at most a day, so a scheduler that was down for a week fires once, not 7×.
        """
        start = max(after, until - MAX_LOOKBACK)
        minute = until.replace(second=0, microsecond=0)
        while minute > start:
            if self.matches(minute):
                return minute
            minute -= timedelta(minutes=1)
        return None


def parse_cron(expression: str) -> CronSpec:
    """Parse a five-field cron expression; raises InvalidInputError saying what is wrong."""
    parts = expression.split()
    if len(parts) != 5:
        raise InvalidInputError(
            f"The schedule {expression!r} has {len(parts)} fields; a cron expression has 5: "
            "minute hour day-of-month month day-of-week, for example '0 9 * * 1-5'.")
    values = [_field(part, *spec) for part, spec in zip(parts, _FIELDS, strict=True)]
    weekdays = frozenset(d % 7 for d in values[4])
    return CronSpec(expression=" ".join(parts), minutes=values[0], hours=values[1],
                    days=values[2], months=values[3], weekdays=weekdays,
                    days_restricted=parts[2] != "*", weekdays_restricted=parts[4] != "*")


def _field(text: str, name: str, low: int, high: int) -> frozenset[int]:
    found: set[int] = set()
    for item in text.split(","):
        found |= _item(item, name, low, high)
    return frozenset(found)


def _item(item: str, name: str, low: int, high: int) -> set[int]:
    base, _, step_text = item.partition("/")
    try:
        step = int(step_text) if step_text else 1
        if base == "*":
            first, last = low, high
        elif "-" in base:
            first, last = (int(x) for x in base.split("-", 1))
        else:
            first = last = int(base)
    except ValueError:
        raise InvalidInputError(f"The {name} field {item!r} is not a number, range, list or "
                                "step (examples: 5, 1-5, 1,15, */10).") from None
    if step < 1 or not low <= first <= last <= high:
        raise InvalidInputError(f"The {name} field {item!r} is outside {low}-{high}.")
    return set(range(first, last + 1, step))
