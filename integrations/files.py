"""Files: the thread's attachments and the workspace's uploads, read as text, rows or images.

See ARCHITECTURE.md, "AI-friendly integrations". A program names a file by its name; Sluice finds
it among the attachments of the thread the request came from (newest first, including earlier
runs' result tables) and the uploads folder (`SLUICE_FILES_DIR`, default `.sluice/files`).
CSV and XLSX files read as rows like sheets, PDFs as text (pypdf), text and HTML as text, and
images go to the `vision` model kind through the ai integration, which counts their cost.
"""

from __future__ import annotations

import asyncio
import builtins
import difflib
import io
import mimetypes
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from core.db import AttachmentRow
from core.errors import IntegrationError
from core.text import html_to_text
from integrations.ai import AI
from integrations.base import Integration, Row, action
from integrations.sheets import read_rows

_TABLES = {".csv", ".xlsx"}
_IMAGES = {"image/png", "image/jpeg", "image/gif", "image/webp"}
_MAX_IMAGE_BYTES = 20 * 1024 * 1024
_DESCRIBED = 50


class FileInfo(TypedDict):
    """A file the program can read: where it is from ("thread" or "uploads") and its size."""

    name: str
    content_type: str
    size: int
    source: str


@dataclass(frozen=True)
class _Found:
    info: FileInfo
    attachment_id: str | None = None
    path: Path | None = None


def _content_type(name: str, given: str = "") -> str:
    if given and given != "application/octet-stream":
        return given
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def pdf_pages(name: str, data: bytes) -> builtins.list[str]:
    from pypdf import PdfReader  # imported when there is a PDF to read
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise IntegrationError(f"The PDF '{name}' is password-protected; ask for an "
                                   "unprotected copy.", file=name)
        return [(page.extract_text() or "").strip() for page in reader.pages]
    except PdfReadError as exc:
        raise IntegrationError(f"'{name}' is not a readable PDF ({exc}).", file=name) from None


class Files(Integration):
    """Files attached to this thread and uploaded to the workspace: read text, rows, images."""

    name = "files"
    summary = "Files: attachments and uploads as text (PDF too), rows (CSV/XLSX) or images."

    def __init__(self, *, folder: Path, ai: AI, engine: AsyncEngine | None = None,
                 thread_id: str | None = None) -> None:
        self.folder = Path(folder)
        self.ai = ai
        self.thread_id = thread_id
        self._session = async_sessionmaker(engine, expire_on_commit=False) if engine else None

    @action("read")
    async def list(self) -> builtins.list[FileInfo]:
        """The files there are: this thread's attachments (newest first), then the uploads.

        Each FileInfo has name, content_type, size (bytes) and source ("thread" or "uploads").
        """
        return [found.info for found in await self._all()]

    @action("read")
    async def read_text(self, name: str) -> str:
        """The text of a file: a PDF's text (pages separated by a blank line), a text, CSV,
        JSON or Markdown file as it is, an HTML file reduced to readable text.

        Raises IntegrationError for a PDF without a text layer (a scan: use ask_image on a
        picture of it instead), for spreadsheets (use read_rows) and for images (use ask_image).
        """
        found, data = await self._read(name)
        kind = found.info["content_type"]
        if kind == "application/pdf":
            text = "\n\n".join(p for p in pdf_pages(found.info["name"], data) if p)
            if not text:
                raise IntegrationError(f"The PDF '{found.info['name']}' has no text layer (it is "
                                       "probably a scan).", file=found.info["name"])
            return text
        self._refuse_binary(found)
        text = _decode(data)
        return html_to_text(text) if kind == "text/html" else text

    @action("read")
    async def read_pages(self, name: str) -> builtins.list[str]:
        """The text of each page of a PDF, in order ("" for a page without text)."""
        found, data = await self._read(name)
        if found.info["content_type"] != "application/pdf":
            raise IntegrationError(f"'{found.info['name']}' is not a PDF; use read_text.",
                                   file=found.info["name"])
        return pdf_pages(found.info["name"], data)

    @action("read")
    async def read_rows(self, name: str) -> builtins.list[Row]:
        """The rows of a CSV or XLSX file (first worksheet; its first row is the header).

        Rows are like sheet rows: a dict of column header -> value, with `row.id` ("row-N", or
        the value of an "id" column). To change the data, write it to a sheet with sheets.
        """
        found, data = await self._read(name)
        suffix = Path(found.info["name"]).suffix.lower()
        if suffix not in _TABLES:
            raise IntegrationError(f"'{found.info['name']}' is not a CSV or XLSX file; use "
                                   "read_text.", file=found.info["name"])
        return await asyncio.to_thread(rows_of, data, suffix)

    @action("read")
    async def ask_image(self, name: str, question: str) -> str:
        """Ask the vision model a question about an image file (PNG, JPEG, GIF, WebP), e.g.
        files.ask_image("receipt.jpg", "What is the total, with its currency?")."""
        found, data = await self._image(name)
        answer = await self.ai.look([(data, found.info["content_type"])], question)
        return str(answer)

    @action("read")
    async def extract(self, name: str, schema: dict[str, str]) -> dict[str, Any]:
        """Pull the fields of `schema` out of a file: an image (read by the vision model), a PDF
        or a text file. Returns {field: value}, None for a field the file does not give.

        `schema` maps field name -> what it holds, e.g. {"vendor": "company that issued the
        invoice", "total": "total amount, a number", "due": "due date, YYYY-MM-DD"}.
        """
        if not schema:
            raise IntegrationError("schema needs at least one field, e.g. {'total': 'a number'}.")
        found = await self._find(name)
        if found.info["content_type"] in _IMAGES:
            _found, data = await self._image(name)
            prompt = f"Extract the fields from the image '{found.info['name']}'."
            result = await self.ai.look([(data, found.info["content_type"])], prompt,
                                        schema=schema)
            return result if isinstance(result, dict) else {}
        return await self.ai.extract(await self.read_text(name), schema)

    async def describe(self) -> dict[str, Any]:
        """{"files": the first files with name, content_type, size, source; "count": all}."""
        found = await self._all()
        return {"count": len(found), "files": [f.info for f in found[:_DESCRIBED]]}

    # Finding and reading files.

    async def _all(self) -> builtins.list[_Found]:
        return await self._attachments() + await asyncio.to_thread(self._uploads)

    async def _attachments(self) -> builtins.list[_Found]:
        if self._session is None or self.thread_id is None:
            return []
        async with self._session() as s:
            rows = (await s.execute(
                select(AttachmentRow.id, AttachmentRow.name, AttachmentRow.content_type,
                       func.length(AttachmentRow.data).label("size"))
                .where(AttachmentRow.thread_id == self.thread_id)
                .order_by(AttachmentRow.created_at.desc(), AttachmentRow.id))).all()
        return [_Found(FileInfo(name=r.name, content_type=_content_type(r.name, r.content_type),
                                size=int(r.size or 0), source="thread"), attachment_id=r.id)
                for r in rows]

    def _uploads(self) -> builtins.list[_Found]:
        if not self.folder.is_dir():
            return []
        paths = sorted(p for p in self.folder.iterdir()
                       if p.is_file() and not p.name.startswith("."))
        return [_Found(FileInfo(name=p.name, content_type=_content_type(p.name),
                                size=p.stat().st_size, source="uploads"), path=p)
                for p in paths]

    async def _find(self, name: str) -> _Found:
        found = await self._all()
        exact = [f for f in found if f.info["name"] == name]
        folded = [f for f in found
                  if f.info["name"].casefold() == str(name).strip().casefold()]
        if exact or folded:
            return (exact or folded)[0]
        names = builtins.list(dict.fromkeys(f.info["name"] for f in found))
        close = difflib.get_close_matches(str(name), names, n=1, cutoff=0.6)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        listed = ", ".join(names[:30]) or "none"
        raise IntegrationError(f"There is no file '{name}'. Files: {listed}.{hint}", file=name,
                               files=names[:30])

    async def _read(self, name: str) -> tuple[_Found, bytes]:
        found = await self._find(name)
        if found.path is not None:
            return found, await asyncio.to_thread(found.path.read_bytes)
        assert self._session is not None
        async with self._session() as s:
            row = await s.get(AttachmentRow, found.attachment_id)
        if row is None:
            raise IntegrationError(f"The file '{name}' was removed.", file=name)
        return found, bytes(row.data)

    async def _image(self, name: str) -> tuple[_Found, bytes]:
        found, data = await self._read(name)
        if found.info["content_type"] not in _IMAGES:
            raise IntegrationError(f"'{found.info['name']}' is not an image (PNG, JPEG, GIF or "
                                   "WebP); use read_text or read_rows.", file=found.info["name"])
        if len(data) > _MAX_IMAGE_BYTES:
            raise IntegrationError(f"The image '{found.info['name']}' is larger than 20 MB.",
                                   file=found.info["name"])
        return found, data

    @staticmethod
    def _refuse_binary(found: _Found) -> None:
        kind, name = found.info["content_type"], found.info["name"]
        if kind in _IMAGES or kind.startswith("image/"):
            raise IntegrationError(f"'{name}' is an image; use files.ask_image or files.extract.",
                                   file=name)
        if Path(name).suffix.lower() == ".xlsx":
            raise IntegrationError(f"'{name}' is a spreadsheet; use files.read_rows.", file=name)
        if not (kind.startswith("text/") or kind in ("application/json", "application/xml")
                or Path(name).suffix.lower() in (".md", ".txt", ".csv", ".eml", ".log")):
            raise IntegrationError(f"'{name}' ({kind}) is not a text file Sluice can read.",
                                   file=name)


def rows_of(data: bytes, suffix: str) -> builtins.list[Row]:
    with tempfile.TemporaryDirectory(prefix="sluice-file-") as folder:
        path = Path(folder) / f"file{suffix}"
        path.write_bytes(data)
        return read_rows(path)
