"""Google Docs through google-api-python-client: create, append text, add a filled table.

ARCHITECTURE.md, "AI-friendly integrations": the Docs API addresses everything by character
index (a table is 1 index, each row 1, each cell 1, and every cell holds a paragraph); the
connector does that arithmetic so the program calls `doc.add_table(rows)` once. The client is
built from the discovery document bundled with the library (`static_discovery=True`), so
building it needs no network; `base_url` replaces Google's endpoint (tests use a local fake).
Reads are retried by the library on 429 and 5xx; writes are not repeated. An append carries a
named range named after its idempotency key, made in the same (atomic) batchUpdate as the text,
so that after a crash the mark tells whether the text was added.
"""

from __future__ import annotations

import asyncio
import builtins
import hashlib
from typing import Any

from google.auth.credentials import Credentials
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError

from core.errors import IntegrationError
from integrations.base import Found, Integration, Resource, action

SCOPES = ("https://www.googleapis.com/auth/documents",)
_READ_RETRIES = 3
_MARK = "sluice:"
_MARK_MAX = 256  # the Docs API's limit on a named range's name, in UTF-16 code units


def _mark(idempotency_key: str) -> str:
    """The name of the named range an append with this key leaves on its text."""
    name = _MARK + idempotency_key
    if _utf16_length(name) <= _MARK_MAX:
        return name
    return _MARK + hashlib.sha256(idempotency_key.encode()).hexdigest()


def _utf16_length(text: str) -> int:
    """A text's length in the Docs API's index units (UTF-16 code units)."""
    return len(text.encode("utf-16-le")) // 2


def _end(document: dict[str, Any]) -> int:
    """Where text added at the end of the body starts (before its final newline)."""
    content = document["body"]["content"]
    return int(content[-1]["endIndex"]) - 1 if content else 1


def _cell_text(value: Any) -> str:
    return "" if value is None else str(value).replace("\n", " ")


def _text(elements: builtins.list[dict[str, Any]]) -> str:
    """The plain text of structural elements; a table's cells are joined with " | "."""
    out: builtins.list[str] = []
    for element in elements:
        if "paragraph" in element:
            out += [e.get("textRun", {}).get("content", "")
                    for e in element["paragraph"].get("elements", [])]
        elif "table" in element:
            for row in element["table"].get("tableRows", []):
                cells = [_text(c.get("content", [])).rstrip("\n") for c in row["tableCells"]]
                out.append(" | ".join(cells) + "\n")
    return "".join(out)


def _cell_indexes(table: dict[str, Any]) -> builtins.list[builtins.list[int]]:
    """Where text goes in each cell: the start index of the cell's first paragraph."""
    return [[cell["content"][0]["startIndex"] for cell in row["tableCells"]]
            for row in table["table"]["tableRows"]]


def _table_rows(rows: Any) -> builtins.list[builtins.list[str]]:
    if not isinstance(rows, builtins.list | tuple) or not rows:
        raise IntegrationError("add_table needs a non-empty list of rows, each a list of cell "
                               "values, e.g. [['Name', 'Amount'], ['Ana', 5000]].")
    table = []
    for row in rows:
        if isinstance(row, dict):
            raise IntegrationError("add_table takes rows as lists of cells; for dicts pass "
                                   "[list(rows[0])] + [list(r.values()) for r in rows].")
        table.append([_cell_text(v) for v in (row if isinstance(row, builtins.list | tuple)
                                                else [row])])
    width = max(len(r) for r in table)
    return [r + [""] * (width - len(r)) for r in table]


class Document(Resource):
    """One Google Doc. Get one with `docs.create(title)` or `docs.open(document_id)`."""

    @action("read")
    async def text(self) -> str:
        """The document's text; table rows appear as cells joined with " | "."""
        document = await self._docs().get(self.key)
        return _text(document["body"]["content"])

    @action("write", preview="append text to {n} documents")
    async def append_text(self, text: str, *, idempotency_key: str | None = None) -> None:
        """Add `text` as new paragraph(s) at the end of the document ("\\n" starts a new one).

        Leave `idempotency_key` out: the runtime sets it, so that a job resumed after a crash
        can tell whether the text was added.
        """
        body = str(text) if str(text).endswith("\n") else f"{text}\n"
        docs = self._docs()
        requests: list[dict[str, Any]] = [
            {"insertText": {"text": body, "endOfSegmentLocation": {"segmentId": ""}}}]
        if idempotency_key:
            start = _end(await docs.get(self.key))
            requests.append({"createNamedRange": {"name": _mark(idempotency_key), "range": {
                "segmentId": "", "startIndex": start,
                "endIndex": start + _utf16_length(body)}}})
        await docs.update(self.key, requests)

    async def confirm_append_text(self, text: str, *,
                                  idempotency_key: str | None = None) -> Found | None:
        """After a crash: done when the document has the named range `append_text` made with
        the text (one batchUpdate: both or neither), not done when it has not (or the text was
        deleted since, the range with it)."""
        if not idempotency_key:
            return None
        document = await self._docs().get(self.key)
        return Found(done=_mark(idempotency_key) in (document.get("namedRanges") or {}))

    @action("write", preview="add {n} tables")
    async def add_table(self, rows: list[list[Any]]) -> None:
        """Add a table at the end of the document, filled with `rows` (the first row is usually
        the header), e.g. doc.add_table([["Name", "Amount"], ["Ana", 5000]]).

        Values are written as text; short rows are padded with empty cells.
        """
        cells = _table_rows(rows)
        docs = self._docs()
        await docs.update(self.key, [{"insertTable": {
            "rows": len(cells), "columns": len(cells[0]),
            "endOfSegmentLocation": {"segmentId": ""}}}])
        document = await docs.get(self.key)
        table = [e for e in document["body"]["content"] if "table" in e][-1]
        indexes = _cell_indexes(table)
        inserts = [(indexes[r][c], value) for r, row in enumerate(cells)
                   for c, value in enumerate(row) if value]
        # Insert from the end backwards so each insertion leaves the earlier indexes valid.
        requests = [{"insertText": {"location": {"index": index}, "text": value}}
                    for index, value in sorted(inserts, reverse=True)]
        if requests:
            await docs.update(self.key, requests)

    def _docs(self) -> GoogleDocs:
        if not isinstance(self.owner, GoogleDocs):
            raise IntegrationError(f"The document handle '{self.key}' is not connected to docs.")
        return self.owner


class GoogleDocs(Integration):
    """Google Docs: write reports and notes, with tables."""

    name = "docs"
    summary = "Google Docs: create documents, append text, add filled tables."
    resources = (Document,)

    def __init__(self, *, credentials: Credentials,
                 base_url: str = "https://docs.googleapis.com/") -> None:
        self.service = build("docs", "v1", credentials=credentials, static_discovery=True,
                             cache_discovery=False, client_options={"api_endpoint": base_url})

    @action("write", preview="create {n} documents")
    async def create(self, title: str) -> Document:
        """A new, empty document called `title`."""
        answer = await self._run(self.service.documents().create(body={"title": str(title)}))
        return Document(str(answer["documentId"]), self)

    @action("read")
    async def open(self, document_id: str) -> Document:
        """The existing document with this id (from its URL: /document/d/<id>/edit)."""
        await self.get(str(document_id))
        return Document(str(document_id), self)

    async def get(self, document_id: str) -> dict[str, Any]:
        """The document as the Docs API returns it (not an action)."""
        return await self._run(self.service.documents().get(documentId=document_id),
                               retries=_READ_RETRIES)

    async def update(self, document_id: str, requests: builtins.list[dict[str, Any]]) -> None:
        """Apply `requests` in one documents.batchUpdate (not an action)."""
        await self._run(self.service.documents().batchUpdate(
            documentId=document_id, body={"requests": requests}))

    async def _run(self, request: Any, retries: int = 0) -> dict[str, Any]:
        try:
            answer: dict[str, Any] = await asyncio.to_thread(request.execute,
                                                             num_retries=retries)
        except HttpError as exc:
            raise IntegrationError(f"Google Docs refused the call: {exc.reason} "
                                   f"(HTTP {exc.status_code})", status=exc.status_code) from None
        return answer
