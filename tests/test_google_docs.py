"""Google Docs through google-api-python-client, built offline from the bundled discovery
document and pointed at a local fake of the Docs API that checks insertion indexes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from core.errors import IntegrationError
from integrations import wire
from integrations.base import EffectCall, Found
from integrations.catalog import Catalog
from integrations.saas import FACTORIES
from integrations.saas.google_docs import GoogleDocs
from tests.fakes import serve
from tests.fakes.google_docs import GoogleDocsFake
from workers.sandbox import SandboxLimits, detect_isolation, run_sandboxed

LIMITS = SandboxLimits(cpu_s=20, wall_s=60, memory_mb=512, output_kb=64)


@pytest.fixture
async def docs() -> AsyncIterator[tuple[GoogleDocsFake, Catalog, GoogleDocs]]:
    fake = GoogleDocsFake()
    async with serve(fake.app()) as url:
        integration = FACTORIES["google_docs"]({"access_token": fake.token, "base_url": url},
                                               None)  # type: ignore[arg-type]
        assert isinstance(integration, GoogleDocs)
        yield fake, Catalog([integration], secrets=[fake.token]), integration


async def test_a_program_writes_a_report_with_a_table(
    docs: tuple[GoogleDocsFake, Catalog, GoogleDocs],
) -> None:
    fake, catalog, _docs = docs
    program = (
        "doc = docs.create('Q3 budgets')\n"
        "doc.append_text('Budgets by person')\n"
        "doc.add_table([['Name', 'Budget'], ['Ana', 5000], ['Bo', None], ['Cy', 120, 'extra']])\n"
        "doc.append_text('Total: 5120')\n"
        "doc.add_table([['Done']])\n"
        "print(doc.text())\n"
    )

    async def handler(call: EffectCall) -> Any:
        return await catalog.dispatch(call)

    outcome = await run_sandboxed(program, manifest=catalog.manifest(), handler=handler,
                                  limits=LIMITS, isolation=detect_isolation())
    assert outcome.ok, outcome.error
    [doc] = fake.docs.values()
    assert doc.title == "Q3 budgets"
    assert doc.text() == (
        "Budgets by person\n"
        "\n"
        "Name | Budget | \n"
        "Ana | 5000 | \n"
        "Bo |  | \n"
        "Cy | 120 | extra\n"
        "Total: 5120\n"
        "\n"
        "Done\n"
        "\n"
    )
    assert outcome.output == doc.text() + "\n"
    batch_updates = [r for r in fake.requests if r[1].endswith(":batchUpdate")]
    assert len(batch_updates) == 1 + 2 + 1 + 2  # text, table+cells, text, table+cells


async def test_an_append_a_crash_left_unconfirmed_is_told_by_its_mark(
    docs: tuple[GoogleDocsFake, Catalog, GoogleDocs],
) -> None:
    fake, catalog, integration = docs
    doc = await integration.create("Notes")
    await doc.append_text("Ana: 5000 ✓")

    def append(text: str, key: str) -> EffectCall:
        return EffectCall("docs", "append_text", wire.encode([text]),
                          {"idempotency_key": key}, handle=("docs", "Document", doc.key))

    call = append("Bo: 450 😀", "run-1/call#2")
    assert await catalog.confirm(call) == Found(done=False)
    await catalog.dispatch(call)
    assert await catalog.confirm(call) == Found(done=True)
    assert await catalog.confirm(append("Bo: 450 😀", "run-1/call#3")) == Found(done=False)
    assert fake.docs[doc.key].text() == "Ana: 5000 ✓\nBo: 450 😀\n\n"
    # The mark covers the appended text (indexes in UTF-16 code units: the emoji takes two).
    [(_id, start, end)] = fake.docs[doc.key].named["sluice:run-1/call#2"]
    assert (start, end) == (1 + len("Ana: 5000 ✓\n"), 1 + len("Ana: 5000 ✓\n") + 11)
    long_key = "run-2/" + "each#1/item#7/" * 30 + "call#1"
    await catalog.dispatch(append("Cy", long_key))  # a key too long for a name is hashed
    assert await catalog.confirm(append("Cy", long_key)) == Found(done=True)
    # Text and tables after an emoji land where they should (indexes in UTF-16 code units).
    await doc.add_table([["😀 Name", "Budget"], ["Ana", "5000"]])
    await doc.append_text("End")
    assert (await doc.text()).endswith(
        "Bo: 450 😀\nCy\n\n😀 Name | Budget\nAna | 5000\nEnd\n\n")


async def test_the_fake_refuses_an_index_outside_a_paragraph(
    docs: tuple[GoogleDocsFake, Catalog, GoogleDocs],
) -> None:
    fake, _catalog, integration = docs
    doc = await integration.create("t")
    await doc.add_table([["a"]])
    table_start = (await integration.get(doc.key))["body"]["content"][2]["startIndex"]
    with pytest.raises(IntegrationError, match=r"refused the call: Invalid requests\[0\]"
                       r"\.insertText: The insertion index must be inside the bounds"):
        await integration.update(doc.key, [
            {"insertText": {"location": {"index": table_start}, "text": "x"}}])
    assert fake.docs[doc.key].text() == "\na\n\n"


async def test_bad_rows_and_unknown_documents_say_what_to_do(
    docs: tuple[GoogleDocsFake, Catalog, GoogleDocs],
) -> None:
    _fake, catalog, integration = docs
    doc = await integration.create("t")
    with pytest.raises(IntegrationError, match="add_table takes rows as lists of cells"):
        await doc.add_table([{"Name": "Ana"}])
    with pytest.raises(IntegrationError, match="non-empty list of rows"):
        await doc.add_table([])
    with pytest.raises(IntegrationError, match="Requested entity was not found"):
        await catalog.dispatch(EffectCall("docs", "open", wire.encode(["nope"]), {}))


async def test_without_a_base_url_the_real_google_is_not_reached() -> None:
    integration = FACTORIES["google_docs"]({"access_token": "t"}, None)  # type: ignore[arg-type]
    catalog = Catalog([integration])
    with pytest.raises(IntegrationError, match="failed"):
        await asyncio.wait_for(catalog.dispatch(EffectCall("docs", "create", ["x"], {})), 60)
