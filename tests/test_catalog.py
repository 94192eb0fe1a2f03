"""The catalog: generated stubs, manifest, effects, descriptions and dispatch over the wire form."""

from __future__ import annotations

import ast
import datetime as dt
import inspect
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import pytest

from core.errors import IntegrationError
from core.protocols import Completion
from integrations import wire
from integrations.ai import AI
from integrations.base import EffectCall, Integration, Row, action, actions_of
from integrations.catalog import Catalog, build_local_catalog
from integrations.mail import LocalMail
from integrations.sheets import LocalSheets, Sheet
from integrations.stubs import signature_text
from tests._canned import CannedModel


class Probe(Integration):
    """A test integration that takes a handle as an argument and fails on request."""

    name = "probe"

    @action("read")
    async def key_of(self, sheet: Sheet) -> str:
        """The key of a sheet handle."""
        assert isinstance(sheet, Sheet) and isinstance(sheet.owner, LocalSheets)
        return sheet.key

    @action("write")
    async def explode(self) -> None:
        """Fails with a message that carries secrets."""
        raise RuntimeError("connect postgres://sluice:hunter2@db:5432 failed, token=abc123")


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    sheets_dir = tmp_path / "sheets"
    sheets_dir.mkdir()
    (sheets_dir / "signups.csv").write_text("Name,Email,Budget\nAna,ana@example.com,\n")
    return Catalog([
        LocalSheets(sheets_dir),
        LocalMail(smtp_host="127.0.0.1", smtp_port=1, sender="sluice@localhost",
                  mailbox=tmp_path / "mailbox"),
        AI(CannedModel()),
    ])


def test_stubs_parse_and_show_every_action_with_its_docstring(catalog: Catalog) -> None:
    stubs = catalog.stubs()
    tree = ast.parse(stubs)
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    for cls in (LocalSheets, LocalMail, AI, Sheet):
        methods = {n.name: n for n in classes[cls.__name__].body if isinstance(n, ast.FunctionDef)}
        assert list(methods) == list(actions_of(cls))
        for name, node in methods.items():
            assert ast.get_docstring(node) == inspect.getdoc(getattr(cls, name))
    assert {"Row", "Email", "Attachment", "IntegrationError"} <= set(classes)
    assert "def open(self, name: str) -> Sheet:" in stubs
    assert "def list(self) -> builtins.list[str]:" in stubs
    assert "def update(self, row: Row | str, values: dict[str, Any]) -> Row:" in stubs
    assert "    date: datetime | None\n" in stubs
    assert stubs.endswith("sheets: LocalSheets\nmail: LocalMail\nai: AI\n")
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert functions == {"each", "now", "today"}


def test_stubs_are_byte_stable(catalog: Catalog, tmp_path: Path) -> None:
    again = Catalog([LocalSheets(tmp_path), LocalMail(smtp_host="x", smtp_port=2, sender="a@b",
                                                      mailbox=tmp_path), AI(CannedModel())])
    assert again.stubs() == catalog.stubs()


def test_programs_type_check_against_the_stubs(catalog: Catalog, tmp_path: Path) -> None:
    mypy_api = pytest.importorskip("mypy.api")
    (tmp_path / "sluice_runtime.pyi").write_text(catalog.stubs())
    program = tmp_path / "program.py"
    program.write_text(textwrap.dedent("""\
        from sluice_runtime import *

        sheet = sheets.open("signups")
        values = {"Budget": 5000}

        def ask(row: Row) -> str:
            body = ai.generate(f"Ask {row['Name']} for their budget")
            sheet.update(row, {"Asked on": today()})
            sheet.update(row.id, values)
            return mail.send(row["Email"], "Budget?", body)

        sent = each(sheet.find(Budget=None), ask, concurrency=2)
        for email in mail.inbox(unread_only=True, limit=3):
            fields = ai.extract(email["text"], {"total": "a number"})
            total = float(fields["total"] or 0) + len(email["attachments"])
            if email["date"] is not None and email["date"] < now():
                print(ai.classify(email["text"], ["invoice", "other"]), total)
        try:
            sheets.open("nope")
        except IntegrationError as err:
            print(err.message)
        """))
    bad = tmp_path / "bad.py"
    bad.write_text("from sluice_runtime import *\nsheets.open(3)\nmail.send_email('a@b.c')\n")
    out, _, status = mypy_api.run(["--strict", "--no-incremental", "--cache-dir", "/dev/null",
                                   str(program)])
    assert status == 0, out
    out, _, status = mypy_api.run(["--no-incremental", "--cache-dir", "/dev/null", str(bad)])
    assert status == 1 and '"LocalMail" has no attribute "send_email"' in out


def test_manifest_lists_effects(catalog: Catalog) -> None:
    assert catalog.manifest() == {
        "integrations": {
            "sheets": {"actions": {"list": "read", "open": "read"}},
            "mail": {"actions": {"send": "write", "inbox": "read"}},
            "ai": {"actions": {"generate": "read", "extract": "read", "classify": "read"}},
        },
        "resources": {"Sheet": {"actions": {"rows": "read", "columns": "read",
                                            "update": "write", "append": "write",
                                            "find": "read"}}},
    }


def test_effect_of_and_describe_action(catalog: Catalog) -> None:
    send = EffectCall("mail", "send", ["ana@example.com", "Budget?", "Hi Ana, " * 20],
                      {"idempotency_key": "k"})
    assert catalog.effect_of(send) == "write"
    assert catalog.describe_action(send) == (
        "mail.send(to='ana@example.com', subject='Budget?', "
        "body='Hi Ana, Hi Ana, Hi Ana, Hi Ana, Hi Ana,…')"
    )
    update = EffectCall("sheets", "update", [wire.encode(Row("row-1")), {"Budget": 5000}], {},
                        handle=("sheets", "Sheet", "signups"))
    assert catalog.effect_of(update) == "write"
    assert catalog.describe_action(update) == (
        "Sheet('signups').update(row=Row('row-1'), values={'Budget': 5000})"
    )
    find = EffectCall("sheets", "find", [], {"Email": "a@b.c"}, handle=("sheets", "Sheet", "s"))
    assert catalog.effect_of(find) == "read"
    assert catalog.describe_action(find) == "Sheet('s').find(Email='a@b.c')"


class SandboxSheet:
    """What the sandbox side holds for a handle: only its identity."""

    def __init__(self, integration: str, kind: str, key: str) -> None:
        self.handle = (integration, kind, key)


async def test_dispatch_round_trip_through_the_wire(catalog: Catalog, tmp_path: Path) -> None:
    opened = await catalog.dispatch(EffectCall("sheets", "open", ["signups"], {}))
    assert opened == {"__handle__": ["sheets", "Sheet", "signups"]}
    sheet = wire.loads(wire.dumps(opened), SandboxSheet)
    assert sheet.handle == ("sheets", "Sheet", "signups")
    rows = wire.decode(await catalog.dispatch(EffectCall("sheets", "rows", [], {},
                                                         handle=sheet.handle)))
    assert rows == [Row("row-1", {"Name": "Ana", "Email": "ana@example.com", "Budget": None})]
    assert rows[0].id == "row-1"
    call = EffectCall("sheets", "update", wire.encode([rows[0], {"Budget": 5000}]), {},
                      handle=sheet.handle)
    updated = wire.decode(await catalog.dispatch(call))
    assert isinstance(updated, Row) and updated["Budget"] == "5000"
    assert "Ana,ana@example.com,5000" in (tmp_path / "sheets" / "signups.csv").read_text()


async def test_dispatch_binds_handles_in_arguments(tmp_path: Path) -> None:
    catalog = Catalog([LocalSheets(tmp_path), Probe()])
    call = EffectCall("probe", "key_of", [{"__handle__": ["sheets", "Sheet", "signups"]}], {})
    assert await catalog.dispatch(call) == "signups"
    assert catalog.manifest()["resources"] == {"Sheet": {"actions": {
        "rows": "read", "columns": "read", "update": "write", "append": "write", "find": "read"}}}


async def test_unknown_actions_and_names(catalog: Catalog) -> None:
    with pytest.raises(IntegrationError) as info:
        await catalog.dispatch(EffectCall("sheets", "get_rows", [], {}))
    assert info.value.message == "sheets has no action 'get_rows'. Actions: list, open."
    with pytest.raises(IntegrationError) as info:
        catalog.effect_of(EffectCall("sheets", "get_rows", [], {}, handle=("sheets", "Sheet", "x")))
    assert info.value.message == ("Sheet has no action 'get_rows'. Actions: rows, columns, "
                                  "update, append, find. Did you mean 'rows'?")
    for hidden in ("describe", "_files", "aclose", "__init__"):  # methods that are not actions
        with pytest.raises(IntegrationError, match="has no action"):
            await catalog.dispatch(EffectCall("sheets", hidden, [], {}))
    with pytest.raises(IntegrationError, match=r"no integration 'drive'\. Integrations: sheets, "):
        await catalog.dispatch(EffectCall("drive", "list", [], {}))
    with pytest.raises(IntegrationError, match="no resource type 'Doc'"):
        await catalog.dispatch(EffectCall("sheets", "rows", [], {}, handle=("sheets", "Doc", "x")))


async def test_bad_arguments_show_the_right_call(catalog: Catalog) -> None:
    with pytest.raises(IntegrationError) as info:
        await catalog.dispatch(EffectCall("sheets", "open", [], {"sheet": "signups"}))
    assert info.value.message == (
        "sheets.open(): missing a required argument: 'name'. "
        "Call it as sheets.open(name: str) -> Sheet."
    )


async def test_other_errors_are_wrapped_without_secrets(tmp_path: Path) -> None:
    catalog = Catalog([Probe()])
    with pytest.raises(IntegrationError) as info:
        await catalog.dispatch(EffectCall("probe", "explode", [], {}))
    message = info.value.message
    assert message == "probe.explode failed (RuntimeError); the details are in the worker's log."
    assert isinstance(info.value.__cause__, RuntimeError)


async def test_describe_gathers_every_integration(catalog: Catalog) -> None:
    described = await catalog.describe()
    assert described["sheets"] == {"signups": {"columns": ["Name", "Email", "Budget"],
                                               "rows": 1, "row_ids": "row-N"}}
    assert described["mail"] == {"sender": "sluice@localhost",
                                 "inbox": {"emails": 0, "unread": 0}}
    assert described["ai"] == {}


async def test_build_local_catalog(tmp_path: Path) -> None:
    from core.settings import Settings

    seen: list[Completion] = []
    catalog = build_local_catalog(Settings(home=tmp_path), CannedModel(), on_completion=seen.append)
    assert list(catalog.integrations) == ["sheets", "mail", "ai"]
    await catalog.dispatch(EffectCall("ai", "generate", ["hello"], {}))
    assert [c.text for c in seen] == ["ok"]
    await catalog.aclose()


def test_duplicate_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="two integrations are named 'sheets'"):
        Catalog([LocalSheets(tmp_path), LocalSheets(tmp_path)])



class Opaque:
    """A type programs cannot name."""


async def _sample(
    self: object, a: int, /, *items: str, mode: Literal["a", "b"] = "a",
    fn: Callable[[int], str] | None = None, when: dt.date | None = None, odd: Opaque | None = None,
) -> tuple[int, ...]:
    return ()


def test_signature_text_renders_other_types() -> None:
    assert signature_text(_sample, shadowed=frozenset({"tuple"})) == (
        "(self: object, a: int, /, *items: str, mode: Literal['a', 'b'] = 'a', "
        "fn: Callable[[int], str] | None = None, when: date | None = None, "
        "odd: Any | None = None) -> builtins.tuple[int, ...]"
    )
