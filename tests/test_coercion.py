"""Value coercion against a schema: near misses made right, ambiguity refused with the options."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from core.errors import IntegrationError
from integrations.coercion import (
    AmbiguousValueError,
    Field,
    InvalidValueError,
    coerce,
    date_format_of,
    describe_fields,
    match_name,
    options,
    parse_number,
)

STATUS = Field("Lead Status", "choice", options=options([
    ("new", "New"), ("qualifiedlead", "Qualified Lead"), ("unqualified", "Unqualified"),
    ("newlead", "New Lead"),
]))
WHERE = "property 'Lead Status' of contacts"


@pytest.mark.parametrize("given", ["Qualified Lead", "qualified lead", "qualifiedlead",
                                   "QUALIFIED-LEAD", "Qualifed Lead", " qualified_lead "])
def test_choice_near_misses_become_the_stored_value(given: str) -> None:
    assert coerce(STATUS, given, where=WHERE) == "qualifiedlead"


def test_ambiguous_choice_lists_the_candidates_and_the_options() -> None:
    with pytest.raises(AmbiguousValueError) as info:
        coerce(STATUS, "Lead", where=WHERE)
    assert info.value.message == (
        "'Lead' could mean 'qualifiedlead' (Qualified Lead) or 'newlead' (New Lead) for "
        "property 'Lead Status' of contacts. Options: 'new' (New), 'qualifiedlead' (Qualified "
        "Lead), 'unqualified' (Unqualified), 'newlead' (New Lead). Pass one of these values "
        "exactly.")
    assert info.value.fields["candidates"] == ["qualifiedlead", "newlead"]
    assert isinstance(info.value, IntegrationError)


def test_unknown_choice_lists_options() -> None:
    with pytest.raises(InvalidValueError) as info:
        coerce(STATUS, "Customer", where=WHERE)
    assert info.value.message.startswith("'Customer' is not an option of property 'Lead Status'")
    assert "Options: 'new' (New)" in info.value.message
    assert info.value.fields["options"] == ["new", "qualifiedlead", "unqualified", "newlead"]


def test_multi_choice_from_text_or_list() -> None:
    tags = Field("Tags", "choices", options=options(["urgent", "vip", "billing"]))
    assert coerce(tags, "VIP, Billing", where="w") == ["vip", "billing"]
    assert coerce(tags, ["urgent"], where="w") == ["urgent"]


@pytest.mark.parametrize(("given", "expected"), [
    ("$1,234.50", Decimal("1234.50")), ("1.234,50 €", Decimal("1234.50")), ("EUR 12", 12),
    ("5 000", 5000), ("(12.00)", Decimal("-12.00")), ("-3", -3), ("1,234", 1234),
    ("12,5", Decimal("12.5")), ("1.234.567", 1234567), (7, 7), (2.5, 2.5),
])
def test_numbers_with_currency_symbols_and_separators(given: object, expected: object) -> None:
    value = coerce(Field("Amount", "number"), given, where="column 'Amount'")
    assert value == expected and type(value) is type(expected)


def test_percent_is_ambiguous_and_words_are_not_numbers() -> None:
    with pytest.raises(AmbiguousValueError, match=r"percentage: pass the number to store, "
                       r"e\.g\. 15 or 0\.15"):
        parse_number("15%", where="column 'Rate'")
    with pytest.raises(InvalidValueError, match="holds numbers; 'about 5k' is not one"):
        coerce(Field("Budget", "number"), "about 5k", where="column 'Budget'")
    with pytest.raises(InvalidValueError, match="holds whole numbers"):
        coerce(Field("Seats", "integer"), "2.5", where="column 'Seats'")
    assert coerce(Field("Seats", "integer"), "3.0", where="w") == 3


def test_guessed_types_keep_plain_other_values_but_refuse_ambiguous_ones() -> None:
    guessed = Field("Budget", "number", strict=False)
    assert coerce(guessed, "n/a", where="w") == "n/a"
    assert coerce(guessed, "$5,000", where="w") == 5000
    with pytest.raises(AmbiguousValueError):
        coerce(Field("Due", "date", strict=False), "12/03/2026", where="column 'Due'")


def test_dates_in_the_fields_order_or_refused_when_ambiguous() -> None:
    iso = Field("Due", "date")
    with pytest.raises(AmbiguousValueError) as info:
        coerce(iso, "12/03/2026", where="column 'Due' of the sheet 'invoices'")
    assert info.value.message == (
        "'12/03/2026' for column 'Due' of the sheet 'invoices' could be 12 March 2026 or "
        "3 December 2026. Pass a date, e.g. date(2026, 3, 12), or ISO text '2026-03-12' or "
        "'2026-12-03'.")
    day_first = Field("Due", "date", date_format="%d/%m/%Y")
    month_first = Field("Due", "date", date_format="%m/%d/%Y")
    assert coerce(day_first, "12/03/2026", where="w") == dt.date(2026, 3, 12)
    assert coerce(month_first, "12/03/2026", where="w") == dt.date(2026, 12, 3)
    assert coerce(iso, "25/03/2026", where="w") == dt.date(2026, 3, 25)  # only one reading
    assert coerce(iso, "03/25/26", where="w") == dt.date(2026, 3, 25)
    assert coerce(iso, "12.03.2026", where="w") == dt.date(2026, 3, 12)  # dots: day first
    assert coerce(iso, "12 March 2026", where="w") == dt.date(2026, 3, 12)
    assert coerce(iso, "Mar 12, 2026", where="w") == dt.date(2026, 3, 12)
    assert coerce(iso, dt.datetime(2026, 3, 12, 9), where="w") == dt.date(2026, 3, 12)
    with pytest.raises(InvalidValueError, match="not a real date"):
        coerce(iso, "2026-02-30", where="w")
    with pytest.raises(InvalidValueError, match="holds dates; 'soon' is not one"):
        coerce(iso, "soon", where="w")


def test_booleans_emails_and_clearing() -> None:
    flag = Field("Paid", "boolean")
    assert [coerce(flag, v, where="w") for v in ("yes", "X", "false", 1)] == [
        True, True, False, True]
    with pytest.raises(InvalidValueError, match="is true or false"):
        coerce(flag, "maybe", where="w")
    mail = Field("Email", "email")
    assert coerce(mail, "Ana Lima <ana@example.com>", where="w") == "ana@example.com"
    with pytest.raises(InvalidValueError, match="'ana at example' is not one"):
        coerce(mail, "ana at example", where="w")
    assert coerce(STATUS, None, where="w") is None and coerce(flag, " ", where="w") is None


def test_describe_conventions() -> None:
    fields = [Field("Name"), STATUS, Field("Due", "date", date_format="%d/%m/%Y"),
              Field("Tags", "choices", options=options(["a", "b"]), required=True)]
    assert describe_fields(fields) == {
        "Lead Status": {"type": "choice", "options": {
            "new": "New", "qualifiedlead": "Qualified Lead", "unqualified": "Unqualified",
            "newlead": "New Lead"}},
        "Due": {"type": "date", "format": "DD/MM/YYYY"},
        "Tags": {"type": "choices", "options": ["a", "b"], "required": True},
    }


def test_guessing_a_text_date_format_and_matching_names() -> None:
    assert date_format_of(["2026-03-12", "2026-04-01"]) == "%Y-%m-%d"
    assert date_format_of(["25/03/2026", "01/04/2026"]) == "%d/%m/%Y"
    assert date_format_of(["03/25/2026"]) == "%m/%d/%Y"
    assert date_format_of(["soon"]) is None
    assert match_name(["Name", "Budget", "Amount"], "budjet ") == 1
    assert match_name(["Amount"], "Amount 2") is None


@pytest.mark.parametrize(("names", "name", "meant"), [
    (["Name", "Budget"], "Budjet", "Budget"),
    (["Address"], "Adress", "Address"),
    (["Email"], "Emial", "Email"),
    (["Company"], "compnay", "Company"),
    (["Phone number"], "Phone nubmer", "Phone number"),
    (["Budget"], "budget ", "Budget"),
    (["Asked"], "Asked on", None),  # a new column, not a typo of "Asked"
    (["Sent"], "Sent at", None),
    (["Paid"], "Paid on", None),
    (["Budget asked"], "Budget asked on", None),
    (["Amount"], "Amount 2", None),
])
def test_column_names_match_typos_but_not_longer_names(names: list[str], name: str,
                                                         meant: str | None) -> None:
    index = match_name(names, name)
    assert (None if index is None else names[index]) == meant
