"""The files integration on real files: uploads, thread attachments in the database, PDFs with a
text layer, spreadsheets, and images sent to the vision kind through litellm and the scripted
model server."""

from __future__ import annotations

import base64
import struct
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import openpyxl
import pytest

from core.db import create_engine, migrate
from core.errors import IntegrationError
from core.store import Store
from integrations.ai import AI
from integrations.files import Files
from tests._scripted import scripted_models

SCENARIO = {"rules": [
    {"match": "What is the total", "response": "120.50 EUR"},
    {"match": "Extract the fields from the image", "response":
        '{"vendor": "Acme GmbH", "total": 120.5}'},
    {"match_system": "You extract data", "response": '{"invoice": "INV-7", "total": "120.50"}'},
]}


def pdf(*pages: list[str]) -> bytes:
    """A small PDF whose pages carry these lines as text (Helvetica)."""
    count = len(pages)
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(count))
    objects = ["<< /Type /Catalog /Pages 2 0 R >>",
               f"<< /Type /Pages /Kids [{kids}] /Count {count} >>"]
    for i, lines in enumerate(pages):
        text = " ".join(f"({line}) Tj 0 -16 Td" for line in lines)
        stream = f"BT /F1 12 Tf 72 720 Td {text} ET"
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents "
                       f"{4 + 2 * i} 0 R /Resources << /Font << /F1 {3 + 2 * count} 0 R >> >> >>")
        objects.append(f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream")
    objects.append("<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    out, offsets = b"%PDF-1.4\n", []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{offset:010d} 00000 n \n".encode() for offset in offsets)
    out += (f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n"
            "%%EOF\n").encode()
    return out


def png() -> bytes:
    """A 1×1 red PNG."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00")) + chunk(b"IEND", b""))


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    engine = create_engine(db_url)
    await migrate(engine)
    yield Store(engine)
    await engine.dispose()


@pytest.fixture
def uploads(tmp_path: Path) -> Path:
    folder = tmp_path / "files"
    folder.mkdir()
    (folder / "invoice.pdf").write_bytes(pdf(["Invoice INV-7", "Total 120.50 EUR"],
                                             ["Page two: thank you"]))
    (folder / "scan.pdf").write_bytes(pdf([]))
    (folder / "notes.txt").write_text("Call Ana on Monday.\n")
    (folder / "page.html").write_text("<html><body><h1>Offer</h1><p>10% off</p>"
                                      "<script>x()</script></body></html>")
    (folder / "receipt.png").write_bytes(png())
    book = openpyxl.Workbook()
    book.active.append(["Name", "Amount"])
    book.active.append(["Ana", 12.5])
    book.save(folder / "totals.xlsx")
    (folder / ".hidden").write_text("not listed")
    return folder


async def test_lists_thread_attachments_then_uploads(store: Store, uploads: Path) -> None:
    thread = await store.create_thread(surface="console")
    other = await store.create_thread(surface="console")
    await store.add_attachment(thread.id, name="leads.csv", content_type="text/csv",
                               data=b"id,Company\nL-1,Acme\n")
    await store.add_attachment(other.id, name="secret.csv", content_type="text/csv", data=b"x")
    files = Files(folder=uploads, ai=AI(_NoModel()), engine=store.engine, thread_id=thread.id)
    listed = await files.list()
    assert [(f["name"], f["source"]) for f in listed] == [
        ("leads.csv", "thread"), ("invoice.pdf", "uploads"), ("notes.txt", "uploads"),
        ("page.html", "uploads"), ("receipt.png", "uploads"), ("scan.pdf", "uploads"),
        ("totals.xlsx", "uploads")]
    assert listed[0] == {"name": "leads.csv", "content_type": "text/csv", "size": 20,
                         "source": "thread"}
    rows = await files.read_rows("Leads.csv")
    assert [(r.id, dict(r)) for r in rows] == [("L-1", {"id": "L-1", "Company": "Acme"})]
    described = await files.describe()
    assert described["count"] == 7 and described["files"][1]["name"] == "invoice.pdf"


async def test_text_of_pdfs_text_and_html(uploads: Path) -> None:
    files = Files(folder=uploads, ai=AI(_NoModel()))
    assert await files.read_text("invoice.pdf") == (
        "Invoice INV-7\nTotal 120.50 EUR\n\nPage two: thank you")
    assert await files.read_pages("invoice.pdf") == ["Invoice INV-7\nTotal 120.50 EUR",
                                                     "Page two: thank you"]
    assert await files.read_text("notes.txt") == "Call Ana on Monday.\n"
    assert await files.read_text("page.html") == "Offer\n\n10% off"
    assert [dict(r) for r in await files.read_rows("totals.xlsx")] == [
        {"Name": "Ana", "Amount": 12.5}]


async def test_wrong_kind_of_file_says_which_action_to_use(uploads: Path) -> None:
    files = Files(folder=uploads, ai=AI(_NoModel()))
    cases = {
        ("read_text", "receipt.png"): "'receipt.png' is an image; use files.ask_image",
        ("read_text", "totals.xlsx"): "'totals.xlsx' is a spreadsheet; use files.read_rows",
        ("read_text", "scan.pdf"): "The PDF 'scan.pdf' has no text layer",
        ("read_rows", "notes.txt"): "'notes.txt' is not a CSV or XLSX file; use read_text",
        ("read_pages", "notes.txt"): "'notes.txt' is not a PDF; use read_text",
        ("read_text", "invoce.pdf"): "There is no file 'invoce.pdf'. Files: invoice.pdf, "
                                     "notes.txt, page.html, receipt.png, scan.pdf, totals.xlsx. "
                                     "Did you mean 'invoice.pdf'?",
    }
    for (method, name), message in cases.items():
        with pytest.raises(IntegrationError) as info:
            await getattr(files, method)(name)
        assert info.value.message.startswith(message), (method, name, info.value.message)
    with pytest.raises(IntegrationError, match="is not an image"):
        await files.ask_image("notes.txt", "What is it?")


async def test_images_go_to_the_vision_kind_and_text_to_extract(uploads: Path) -> None:
    async with scripted_models(SCENARIO) as (server, models):
        ai = AI(models)
        files = Files(folder=uploads, ai=ai)
        answer = await files.ask_image("receipt.png", "What is the total, with its currency?")
        fields = await files.extract("receipt.png", {"vendor": "company", "total": "a number"})
        from_pdf = await files.extract("invoice.pdf", {"invoice": "number", "total": "amount"})
    assert answer == "120.50 EUR"
    assert fields == {"vendor": "Acme GmbH", "total": 120.5}
    assert from_pdf == {"invoice": "INV-7", "total": "120.50"}
    image_request = server.requests[0]
    parts = image_request.messages[-1]["content"]
    assert isinstance(parts, list)
    assert parts[0] == {"type": "text", "text": "What is the total, with its currency?"}
    image = parts[1]
    assert isinstance(image, dict) and image["type"] == "image_url"
    url = image["image_url"]["url"]  # type: ignore[index,call-overload]
    assert url == "data:image/png;base64," + base64.b64encode(png()).decode()
    assert len(ai.usage) == 3 and all(c.cost_usd for c in ai.usage)
    assert "Invoice INV-7" in str(server.requests[2].messages[-1]["content"])


class _NoModel:
    async def complete(self, *args: object, **kwargs: object) -> object:
        raise AssertionError("no model call expected")
