"""Near-miss values made right against a connector's schema, or refused with the options.

See ARCHITECTURE.md, "AI-friendly integrations". Every connector describes its user-defined
schema as `Field`s (a sheet's columns, a CRM's properties, a table's columns) and passes each value
a program writes through `coerce()`:

- choices: "Qualified Lead" -> `qualifiedlead` (the option whose value or label it names, ignoring
  case, spacing and punctuation, or a close spelling);
- numbers: "$1,234.50", "1.234,50 €", "(12)" -> Decimal("1234.50"), Decimal("1234.50"), -12;
- dates: "12/03/2026" read in the field's own order (day first for a DD/MM/YYYY column), ISO,
  "12 March 2026", "Mar 12, 2026";
- booleans ("yes", "x", "false"), emails ("Ana <ana@example.com>" -> "ana@example.com").

When a value could mean two things ("12/03/2026" for a column without a known order, "15%" for a
number) or matches no option, `coerce()` raises an `IntegrationError` that lists the valid
options and says what to pass instead, so the model fixes its call in one turn.

A field the service declares (an Airtable single select, an Excel dropdown) is `strict`: a value
that is not of its type is refused. A field whose type was only guessed from the values already
there (a CSV column of numbers) is not: a value that is plainly not of the type ("n/a") is kept
as given, while a near miss is still converted and an ambiguous value still refused.
"""

from __future__ import annotations

import datetime as dt
import difflib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from core.errors import IntegrationError

FieldType = Literal[
    "text", "number", "integer", "boolean", "date", "datetime", "choice", "choices", "email"
]

_ACCEPT = 0.85  # similarity above which a near-miss option is taken
_MARGIN = 0.08  # ... when the runner-up is at least this much less similar
_SUGGEST = 0.7
_CURRENCY = re.compile(r"(?i)(us\$|a\$|c\$|[$€£¥₹₩₽¢]|\b(?:usd|eur|gbp|jpy|chf|cad|aud|inr)\b)")
_NUMBER = re.compile(r"^[+-]?(\d+(?:[.,\s'_]\d+)*)$")
_PLAIN_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_NUMERIC_DATE = re.compile(r"^(\d{1,4})([/.\-])(\d{1,2})\2(\d{1,4})$")
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_EMAIL = re.compile(r"^[^@\s<>(),;:\"\[\]\\]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")
_TRUE = {"true", "yes", "y", "1", "on", "x", "checked", "✓", "✔", "t"}
_FALSE = {"false", "no", "n", "0", "off", "unchecked", "f", "-"}
_WORDY_DATE_FORMATS = (
    "%d %B %Y", "%d %b %Y", "%B %d %Y", "%b %d %Y", "%d-%b-%Y", "%d-%B-%Y", "%A %d %B %Y",
    "%a %d %b %Y", "%B %Y %d",
)
# How a text column stores dates, as `Field.date_format`; the order is the tie-break when the
# values there fit several.
TEXT_DATE_FORMATS = ("%Y-%m-%d", "%d/%m/%Y", "%m/%d/%Y", "%d.%m.%Y", "%Y/%m/%d", "%d-%m-%Y")
_SHOWN_FORMAT = {"%Y": "YYYY", "%m": "MM", "%d": "DD"}


class InvalidValueError(IntegrationError):
    """The value is not of the field's type, nor near enough to convert."""

    code = "invalid_value"


class AmbiguousValueError(IntegrationError):
    """The value could mean more than one thing; the message lists what to pass instead."""

    code = "ambiguous_value"


@dataclass(frozen=True)
class Option:
    """One allowed value of a choice field: what the service stores, and what people see."""

    value: str
    label: str = ""

    def shown(self) -> str:
        if self.label and self.label != self.value:
            return f"{self.value!r} ({self.label})"
        return repr(self.value)


@dataclass(frozen=True)
class Field:
    """One user-defined field of a connector's schema: a column, a property, a table column.

    `date_format` is how a text store writes dates (`"%d/%m/%Y"`); None means native dates (or
    ISO text). `strict` is False when the type was guessed from existing values, not declared.
    """

    name: str
    type: FieldType = "text"
    options: tuple[Option, ...] = ()
    date_format: str | None = None
    strict: bool = True
    required: bool = False
    read_only: bool = False

    def describe(self) -> dict[str, Any]:
        """The field for the model, compact: {"type": "choice", "options": [...]} and so on.

        Conventions every connector's `describe()` follows: `type` is one of `FieldType`;
        `options` lists the stored values (a dict of value -> label when labels differ);
        `format` shows how dates are written as text ("DD/MM/YYYY"); `required`/`read_only`
        appear only when true.
        """
        described: dict[str, Any] = {"type": self.type}
        if self.options:
            labelled = any(o.label and o.label != o.value for o in self.options)
            described["options"] = (
                {o.value: o.label or o.value for o in self.options} if labelled
                else [o.value for o in self.options]
            )
        if self.date_format:
            described["format"] = shown_date_format(self.date_format)
        if self.required:
            described["required"] = True
        if self.read_only:
            described["read_only"] = True
        return described


def describe_fields(fields: Iterable[Field]) -> dict[str, Any]:
    """`{name: field.describe()}` for the fields that are not plain text (text is the default)."""
    return {f.name: f.describe() for f in fields if f.type != "text" or f.read_only}


def options(values: Iterable[str | tuple[str, str]]) -> tuple[Option, ...]:
    """Options from plain values or (value, label) pairs."""
    return tuple(Option(v) if isinstance(v, str) else Option(v[0], v[1]) for v in values)


def shown_date_format(fmt: str) -> str:
    for code, shown in _SHOWN_FORMAT.items():
        fmt = fmt.replace(code, shown)
    return fmt


def normalized(text: str) -> str:
    """`text` folded for matching: case, spacing and punctuation ignored."""
    return re.sub(r"[\W_]+", "", str(text).casefold())


# Coercion.


def coerce(field: Field, value: Any, *, where: str) -> Any:
    """`value` converted to what `field` stores, or an error listing what it accepts.

    `where` names the field for messages, e.g. "column 'Stage' of the sheet 'leads'". None and
    "" clear a field and pass through. A non-strict field keeps a value that is plainly not of
    its type.

    Raises:
        InvalidValueError: the value is not of the type (strict fields only) or not an option.
        AmbiguousValueError: the value could mean several things; the message lists them.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    convert = _CONVERTERS.get(field.type)
    if convert is None:
        return value
    try:
        return convert(field, value, where)
    except InvalidValueError:
        if field.strict or field.type in ("choice", "choices"):
            raise
        return value


def coerce_values(fields: Mapping[str, Field], values: Mapping[str, Any], *,
                  where: str) -> dict[str, Any]:
    """Each value coerced by its field (looked up by exact name); other values kept as given."""
    result: dict[str, Any] = {}
    for name, value in values.items():
        field = fields.get(name)
        result[name] = value if field is None else coerce(
            field, value, where=where.format(name=name))
    return result


def _to_text(field: Field, value: Any, where: str) -> Any:
    return value


def _to_choice(field: Field, value: Any, where: str) -> str:
    if not field.options:
        return str(value)
    if isinstance(value, list | tuple | set):
        raise InvalidValueError(f"{where} takes one option, not a list. Options: "
                                f"{_listed(field.options)}.", field=field.name)
    return match_option(field, str(value), where=where).value


def _to_choices(field: Field, value: Any, where: str) -> list[str]:
    items = value if isinstance(value, list | tuple | set) else [
        part for part in re.split(r"\s*[,;]\s*", str(value)) if part]
    if not field.options:
        return [str(item) for item in items]
    return [match_option(field, str(item), where=where).value for item in items]


def match_option(field: Field, text: str, *, where: str) -> Option:
    """The option `text` names: exactly, ignoring case and punctuation, or by a clear near miss."""
    stripped = text.strip()
    for option in field.options:
        if stripped in (option.value, option.label):
            return option
    key = normalized(stripped)
    same = [o for o in field.options if key in (normalized(o.value), normalized(o.label))]
    if len(same) == 1:
        return same[0]
    if len(same) > 1:
        raise _ambiguous_option(field, text, same, where)
    scored = sorted(((_similarity(key, o), i) for i, o in enumerate(field.options)), reverse=True)
    best, runner_up = scored[0], scored[1] if len(scored) > 1 else (0.0, -1)
    if best[0] >= _ACCEPT and best[0] - runner_up[0] >= _MARGIN:
        return field.options[best[1]]
    near = sorted(i for score, i in scored if score >= _ACCEPT) or sorted(
        i for _score, i in scored if len(key) >= 3 and _contains(key, field.options[i]))
    close = [field.options[i] for i in near]
    if len(close) > 1:
        raise _ambiguous_option(field, text, close, where)
    hint = f" Did you mean {field.options[best[1]].value!r}?" if best[0] >= _SUGGEST else ""
    raise InvalidValueError(
        f"{text!r} is not an option of {where}. Options: {_listed(field.options)}. Pass one of "
        f"these values exactly.{hint}", field=field.name, value=text,
        options=[o.value for o in field.options])


def _similarity(key: str, option: Option) -> float:
    return max(difflib.SequenceMatcher(None, key, normalized(option.value)).ratio(),
               difflib.SequenceMatcher(None, key, normalized(option.label)).ratio()
               if option.label else 0.0)


def _contains(key: str, option: Option) -> bool:
    return key in normalized(option.value) or (bool(option.label) and key in
                                               normalized(option.label))


def _ambiguous_option(field: Field, text: str, candidates: Sequence[Option],
                      where: str) -> AmbiguousValueError:
    return AmbiguousValueError(
        f"{text!r} could mean {' or '.join(o.shown() for o in candidates)} for {where}. "
        f"Options: {_listed(field.options)}. Pass one of these values exactly.",
        field=field.name, value=text, candidates=[o.value for o in candidates],
        options=[o.value for o in field.options])


def _listed(opts: Sequence[Option], limit: int = 40) -> str:
    shown = [o.shown() for o in opts[:limit]]
    more = [f"… and {len(opts) - limit} more"] if len(opts) > limit else []
    return ", ".join(shown + more)


# Numbers.


def _to_number(field: Field, value: Any, where: str) -> int | float | Decimal:
    if isinstance(value, bool):
        raise InvalidValueError(f"{where} holds numbers; got {value!r}. Pass a number like 5000.",
                                field=field.name)
    if isinstance(value, int | float | Decimal):
        return value
    return parse_number(str(value), where=where, field=field.name)


def _to_integer(field: Field, value: Any, where: str) -> int:
    number = _to_number(field, value, where)
    if number != int(number):
        raise InvalidValueError(f"{where} holds whole numbers; got {value!r}. Round it first, "
                                f"for example round({number}).", field=field.name)
    return int(number)


def parse_number(text: str, *, where: str, field: str = "") -> int | Decimal:
    """"$1,234.50" -> Decimal("1234.50"); "5 000" -> 5000; "(12)" -> -12; "1.234,5" -> 1234.5.

    Raises:
        InvalidValueError: not a number; AmbiguousValueError: a percentage ("15%").
    """
    raw = text.strip()
    cleaned = _CURRENCY.sub("", raw).replace("\u00a0", " ").replace("\u202f", " ").strip()
    negative = cleaned.startswith("(") and cleaned.endswith(")")
    cleaned = cleaned.strip("()").strip()
    if cleaned.endswith("%"):
        number = cleaned[:-1].strip()
        raise AmbiguousValueError(
            f"{raw!r} for {where} is a percentage: pass the number to store, e.g. {number} or "
            f"{_fraction(number)}.", field=field, value=raw)
    if cleaned.endswith("-") and not cleaned.startswith("-"):
        negative, cleaned = True, cleaned[:-1].strip()
    if not _NUMBER.match(cleaned):
        raise InvalidValueError(f"{where} holds numbers; {raw!r} is not one. Pass a number like "
                                "5000 or 12.5.", field=field, value=raw)
    sign = -1 if negative != cleaned.startswith("-") else 1
    digits = _decimal_text(cleaned.lstrip("+-"))
    number = Decimal(digits) * sign
    return int(number) if "." not in digits else number


def _fraction(number: str) -> str:
    try:
        return str(Decimal(number.replace(",", ".")) / 100)
    except InvalidOperation:
        return "a fraction"


def _decimal_text(text: str) -> str:
    """Digits with one "." as the decimal separator, from either convention."""
    text = re.sub(r"[\s'_]", "", text)
    last_dot, last_comma = text.rfind("."), text.rfind(",")
    if last_dot >= 0 and last_comma >= 0:
        decimal = "." if last_dot > last_comma else ","
    elif last_comma >= 0:
        groups = text.split(",")
        thousands = len(groups) > 2 or len(groups[-1]) == 3
        decimal = "" if thousands else ","
    elif text.count(".") > 1:
        decimal = ""  # 1.234.567
    else:
        decimal = "."
    thousand = {",": ".", ".": ",", "": ",."}[decimal]
    for sep in thousand:
        text = text.replace(sep, "")
    return text.replace(",", ".") if decimal == "," else text


def is_plain_number(text: str) -> bool:
    """Whether `text` is a number as programs write it ("5000", "-12.5"), for type guessing."""
    return bool(_PLAIN_NUMBER.match(text.strip()))


# Booleans and emails.


def _to_boolean(field: Field, value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    key = str(value).strip().casefold()
    if key in _TRUE:
        return True
    if key in _FALSE:
        return False
    raise InvalidValueError(f"{where} is true or false; got {value!r}. Pass True or False.",
                            field=field.name, value=str(value))


def _to_email(field: Field, value: Any, where: str) -> str:
    text = str(value).strip()
    match = re.search(r"<([^<>]+)>\s*$", text)
    address = (match.group(1) if match else text).strip().strip(".,;")
    if not _EMAIL.match(address):
        raise InvalidValueError(f"{where} holds an email address; {text!r} is not one. Pass one "
                                "like 'ana@example.com'.", field=field.name, value=text)
    return address


# Dates.


def _to_date(field: Field, value: Any, where: str) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    return parse_date(str(value), where=where, date_format=field.date_format, field=field.name)


def _to_datetime(field: Field, value: Any, where: str) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day)
    text = str(value).strip()
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        pass
    day = parse_date(text, where=where, date_format=field.date_format, field=field.name)
    return dt.datetime(day.year, day.month, day.day)


def parse_date(text: str, *, where: str, date_format: str | None = None,
               field: str = "") -> dt.date:
    """The date `text` names. Day/month order comes from `date_format` when the text cannot say.

    Raises:
        AmbiguousValueError: "12/03/2026" with no known order; InvalidValueError: not a date.
    """
    raw = text.strip()
    if _ISO_DATE.match(raw):
        return _valid_date(raw, "%Y-%m-%d", where, field)
    if date_format:
        try:
            return dt.datetime.strptime(raw, date_format).date()
        except ValueError:
            pass
    numeric = _NUMERIC_DATE.match(raw)
    if numeric:
        return _numeric_date(numeric, raw, where, date_format, field)
    words = " ".join(raw.replace(",", " ").split())
    for fmt in _WORDY_DATE_FORMATS:
        try:
            return dt.datetime.strptime(words, fmt).date()
        except ValueError:
            continue
    try:
        return dt.datetime.fromisoformat(raw).date()
    except ValueError:
        pass
    raise InvalidValueError(f"{where} holds dates; {raw!r} is not one. Pass a date, e.g. "
                            "date(2026, 3, 12), or ISO text '2026-03-12'.", field=field, value=raw)


def _valid_date(raw: str, fmt: str, where: str, field: str) -> dt.date:
    try:
        return dt.datetime.strptime(raw, fmt).date()
    except ValueError:
        raise InvalidValueError(f"{raw!r} for {where} is not a real date. Pass a date, e.g. "
                                "date(2026, 3, 12).", field=field, value=raw) from None


def _numeric_date(match: re.Match[str], raw: str, where: str, date_format: str | None,
                  field: str) -> dt.date:
    first, sep, second, third = match.group(1), match.group(2), match.group(3), match.group(4)
    if len(first) == 4:
        return _valid_date(f"{first}-{second}-{third}", "%Y-%m-%d", where, field)
    year = int(third) + (2000 if len(third) <= 2 else 0)
    a, b = int(first), int(second)
    orders = [order for order in ("dmy", "mdy") if _fits(order, a, b)]
    if len(orders) == 2 and a != b:
        known = _order_of(date_format) or ("dmy" if sep == "." else None)
        if known is None:
            raise _ambiguous_date(raw, where, field, year, a, b)
        orders = [known]
    if not orders:
        raise InvalidValueError(f"{raw!r} for {where} is not a real date. Pass a date, e.g. "
                                "date(2026, 3, 12).", field=field, value=raw)
    day, month = (a, b) if orders[0] == "dmy" else (b, a)
    return _valid_date(f"{year:04d}-{month:02d}-{day:02d}", "%Y-%m-%d", where, field)


def _fits(order: str, a: int, b: int) -> bool:
    day, month = (a, b) if order == "dmy" else (b, a)
    return 1 <= month <= 12 and 1 <= day <= 31


def _order_of(date_format: str | None) -> str | None:
    if not date_format or "%d" not in date_format or "%m" not in date_format:
        return None
    if date_format.startswith(("%Y", "%y")):
        return None  # year first (ISO) says nothing about how people order day and month
    return "dmy" if date_format.index("%d") < date_format.index("%m") else "mdy"


def _ambiguous_date(raw: str, where: str, field: str, year: int, a: int,
                    b: int) -> AmbiguousValueError:
    one, other = dt.date(year, b, a), dt.date(year, a, b)
    return AmbiguousValueError(
        f"{raw!r} for {where} could be {_spoken(one)} or {_spoken(other)}. Pass a date, e.g. "
        f"date({one.year}, {one.month}, {one.day}), or ISO text '{one.isoformat()}' or "
        f"'{other.isoformat()}'.", field=field, value=raw,
        candidates=[one.isoformat(), other.isoformat()])


def _spoken(day: dt.date) -> str:
    return f"{day.day} {day:%B} {day.year}"


def format_date(value: dt.date, date_format: str | None) -> str:
    """A date as a text store writes it (ISO when the format is unknown)."""
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ")
    return value.strftime(date_format) if date_format else value.isoformat()


def date_format_of(texts: Sequence[str]) -> str | None:
    """The one text date format (of TEXT_DATE_FORMATS) all `texts` fit, first one on a tie."""
    if not texts:
        return None
    for fmt in TEXT_DATE_FORMATS:
        if all(fits_date_format(text, fmt) for text in texts):
            return fmt
    return None


def fits_date_format(text: str, fmt: str) -> bool:
    """Whether `text` is a date written as `fmt` ("%d/%m/%Y")."""
    try:
        dt.datetime.strptime(text.strip(), fmt)
    except ValueError:
        return False
    return True


# Column names.


def match_name(names: Sequence[str], name: str, *, cutoff: float = 0.8) -> int | None:
    """The index of the name in `names` that `name` means: exact, then ignoring case and
    spacing, then a typo with the same digits ("Budjet" -> "Budget", "Adress" -> "Address"; not
    "Amount 2" -> "Amount", nor "Asked on" or "Sent at", new columns, -> "Asked" or "Sent")."""
    if name in names:
        return list(names).index(name)
    wanted = normalized(name)
    if not wanted:
        return None
    for i, existing in enumerate(names):
        if existing and normalized(existing) == wanted:
            return i
    digits = _digits(name)
    scored = [
        (difflib.SequenceMatcher(None, wanted, other).ratio(), -i)
        for i, n in enumerate(names)
        if n and _digits(n) == digits and _is_typo(wanted, other := normalized(n))
    ]
    if scored and max(scored)[0] >= cutoff:
        return -max(scored)[1]
    return None


def _is_typo(a: str, b: str) -> bool:
    """Whether normalized names `a` and `b` differ as a slip of the keys would: one letter
    added, dropped, changed or two swapped (two in names of ten letters or more), and not a
    word added at either end ("askedon" is "asked" and more, not a typo of it)."""
    shorter, longer = sorted((a, b), key=len)
    if len(longer) - len(shorter) > 1 and (longer.startswith(shorter)
                                           or longer.endswith(shorter)):
        return False
    allowed = 1 if len(longer) < 10 else 2
    return abs(len(a) - len(b)) <= allowed and _edits(a, b) <= allowed


def _edits(a: str, b: str) -> int:
    """Insertions, deletions, substitutions and swaps of neighbours that make `a` into `b`
    (the optimal string alignment distance)."""
    previous: list[int] = []
    row = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        before, previous, row = previous, row, [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            row[j] = min(previous[j] + 1, row[j - 1] + 1, previous[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                row[j] = min(row[j], before[j - 2] + 1)
    return row[len(b)]


def _digits(name: str) -> str:
    return "".join(ch for ch in name if ch.isdigit())


_CONVERTERS: dict[str, Callable[[Field, Any, str], Any]] = {
    "text": _to_text,
    "number": _to_number,
    "integer": _to_integer,
    "boolean": _to_boolean,
    "date": _to_date,
    "datetime": _to_datetime,
    "choice": _to_choice,
    "choices": _to_choices,
    "email": _to_email,
}


def check_cell_value(sheet: str, column: str, value: Any) -> None:
    """Raise IntegrationError unless `value` fits in one spreadsheet cell (local or hosted)."""
    if value is None or isinstance(value, str | int | float | Decimal | dt.date):
        return
    raise IntegrationError(
        f"A cell holds one value: str, int, float, bool, date or None. Column '{column}' of "
        f"the sheet '{sheet}' was given a {type(value).__name__}; join lists into one string "
        "first, for example ', '.join(items).",
        sheet=sheet, column=column,
    )
