"""A local Google Docs API v1: documents.create, documents.get and documents.batchUpdate.

Follows https://developers.google.com/docs/api/reference/rest: a document body is a list of
structural elements with UTF-16 start/end indexes (a section break at 0, paragraphs ending in
"\\n", tables whose table, rows and cells each take one index and whose cells hold paragraphs).
batchUpdate supports `insertText` (at `location.index` or `endOfSegmentLocation`), `insertTable`
(a newline is inserted before the table, as the API documents) and `createNamedRange` (a name of
1 to 256 UTF-16 code units over a range inside the body; documents.get lists them under
`namedRanges`, by name). An insertion
index that is not inside a paragraph is refused with Google's 400 body, so a connector's index
arithmetic is checked for real. Requests in one batch are applied in order, all or nothing.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

_ids = itertools.count(1)


@dataclass
class Table:
    cells: list[list[list[str]]]  # rows -> cells -> paragraphs (each ending in "\n")


@dataclass
class Doc:
    title: str
    body: list[str | Table] = field(default_factory=lambda: ["\n"])  # paragraphs and tables
    revision: int = 1
    named: dict[str, list[tuple[str, int, int]]] = field(default_factory=dict)  # id, start, end

    def text(self) -> str:
        """What a reader sees: paragraphs, and table rows as cells joined with " | "."""
        out = []
        for element in self.body:
            if isinstance(element, Table):
                out += [" | ".join("".join(c).rstrip("\n") for c in row) + "\n"
                        for row in element.cells]
            else:
                out.append(element)
        return "".join(out)


class _BadRequest(Exception):
    pass


class GoogleDocsFake:
    def __init__(self, *, token: str = "test-token") -> None:
        self.token = token
        self.docs: dict[str, Doc] = {}
        self.requests: list[tuple[str, str]] = []

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard])
        app.router.add_post("/v1/documents", self._create)
        app.router.add_route("*", "/v1/documents/{rest}", self._document)
        return app

    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return _error(401, "Request had invalid authentication credentials.",
                          "UNAUTHENTICATED")
        return await handler(request)

    async def _create(self, request: web.Request) -> web.Response:
        body = await request.json()
        doc_id = f"doc{next(_ids):06d}"
        self.docs[doc_id] = Doc(body.get("title") or "Untitled document")
        return web.json_response(_render(doc_id, self.docs[doc_id]))

    async def _document(self, request: web.Request) -> web.Response:
        doc_id, _, verb = request.match_info["rest"].partition(":")
        doc = self.docs.get(doc_id)
        if doc is None:
            return _error(404, "Requested entity was not found.", "NOT_FOUND")
        if request.method == "GET" and not verb:
            return web.json_response(_render(doc_id, doc))
        if request.method == "POST" and verb == "batchUpdate":
            return await self._batch_update(request, doc_id, doc)
        return _error(404, f"Method not found: {request.path}", "NOT_FOUND")

    async def _batch_update(self, request: web.Request, doc_id: str, doc: Doc) -> web.Response:
        body = (await request.json()).get("requests", [])
        work, named = copy.deepcopy(doc.body), copy.deepcopy(doc.named)
        replies = []
        for n, item in enumerate(body):
            try:
                replies.append(_named_range(work, named, item["createNamedRange"])
                               if "createNamedRange" in item else _apply(work, item))
            except _BadRequest as exc:
                return _error(400, f"Invalid requests[{n}].{next(iter(item))}: {exc}",
                              "INVALID_ARGUMENT")
        doc.body, doc.named = work, named
        doc.revision += 1
        return web.json_response({"documentId": doc_id, "replies": replies,
                                  "writeControl": {"requiredRevisionId": f"rev{doc.revision}"}})


def _named_range(body: list[str | Table], named: dict[str, list[tuple[str, int, int]]],
                 spec: dict[str, Any]) -> dict[str, Any]:
    name, where = str(spec.get("name", "")), spec.get("range") or {}
    if not 1 <= _units(name) <= 256:
        raise _BadRequest("The name must be between 1 and 256 characters.")
    start, end = where.get("startIndex"), where.get("endIndex")
    if not (isinstance(start, int) and isinstance(end, int) and 1 <= start < end
            <= _length(body)):
        raise _BadRequest("The range must be within the body and not empty.")
    range_id = f"kix.{next(_ids):08x}"
    named.setdefault(name, []).append((range_id, start, end))
    return {"createNamedRange": {"namedRangeId": range_id}}


def _apply(body: list[str | Table], item: dict[str, Any]) -> dict[str, Any]:
    if "insertText" in item:
        spec = item["insertText"]
        _insert_text(body, _where(body, spec), str(spec["text"]))
    elif "insertTable" in item:
        spec = item["insertTable"]
        rows, columns = int(spec["rows"]), int(spec["columns"])
        if rows < 1 or columns < 1:
            raise _BadRequest("Table must have at least one row and one column.")
        _insert_table(body, _where(body, spec), rows, columns)
    else:
        raise _BadRequest("unsupported request in this fake")
    return {}


def _where(body: list[str | Table], spec: dict[str, Any]) -> int:
    if "endOfSegmentLocation" in spec:
        return _length(body) - 1  # before the final newline of the body
    index = spec.get("location", {}).get("index")
    if not isinstance(index, int):
        raise _BadRequest("location.index is required")
    return index


def _length(body: list[str | Table]) -> int:
    """The index just past the body (the section break takes index 0)."""
    return 1 + sum(_size(e) for e in body)


def _units(text: str) -> int:
    """A text's length in the API's indexes: UTF-16 code units (an emoji takes two)."""
    return len(text.encode("utf-16-le")) // 2


def _offset(text: str, units: int) -> int:
    """The position in `text` that is `units` UTF-16 code units in."""
    position = len(text.encode("utf-16-le")[:units * 2].decode("utf-16-le", "ignore"))
    if _units(text[:position]) != units:
        raise _BadRequest("The insertion index cannot be within a surrogate pair.")
    return position


def _size(element: str | Table) -> int:
    if isinstance(element, str):
        return _units(element)
    return 1 + sum(1 + sum(1 + sum(_units(p) for p in cell) for cell in row)
                   for row in element.cells) + 1  # table start ... table end marker


def _locate(paragraphs: list[str], start: int, index: int) -> tuple[int, int] | None:
    """(paragraph number, offset) of `index` inside `paragraphs` that begin at `start`."""
    at = start
    for n, text in enumerate(paragraphs):
        if at <= index < at + _units(text):
            return n, _offset(text, index - at)
        at += _units(text)
    return None


def _insert_text(body: list[str | Table], index: int, text: str) -> None:
    at = 1
    for n, element in enumerate(body):
        if isinstance(element, str):
            if at <= index < at + _units(element):
                offset = _offset(element, index - at)
                merged = element[:offset] + text + element[offset:]
                body[n:n + 1] = _split(merged)
                return
            at += _units(element)
            continue
        at += 1
        for row in element.cells:
            at += 1
            for cell in row:
                at += 1
                found = _locate(cell, at, index)
                if found is not None:
                    p, offset = found
                    cell[p:p + 1] = _split(cell[p][:offset] + text + cell[p][offset:])
                    return
                at += sum(_units(p) for p in cell)
        at += 1
    raise _BadRequest("The insertion index must be inside the bounds of an existing paragraph. "
                      "You can still create new paragraphs by inserting newlines.")


def _insert_table(body: list[str | Table], index: int, rows: int, columns: int) -> None:
    at = 1
    for n, element in enumerate(body):
        if isinstance(element, str) and at <= index < at + _units(element):
            offset = _offset(element, index - at)
            table = Table([[["\n"] for _ in range(columns)] for _ in range(rows)])
            body[n:n + 1] = [element[:offset] + "\n", table, element[offset:]]
            return
        at += _size(element)
    raise _BadRequest("Tables can only be inserted inside the bounds of a paragraph in the body.")


def _split(text: str) -> list[str]:
    parts = text.split("\n")
    return [p + "\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def _render(doc_id: str, doc: Doc) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"endIndex": 1, "sectionBreak": {
        "sectionStyle": {"columnSeparatorStyle": "NONE", "contentDirection": "LEFT_TO_RIGHT"}}}]
    at = 1
    for element in doc.body:
        rendered, at = (_paragraph(element, at) if isinstance(element, str)
                        else _table(element, at))
        content.append(rendered)
    named = {name: {"name": name, "namedRanges": [
        {"namedRangeId": range_id, "name": name, "ranges": [{"startIndex": start,
                                                            "endIndex": end}]}
        for range_id, start, end in ranges]} for name, ranges in doc.named.items()}
    return {"documentId": doc_id, "title": doc.title, "revisionId": f"rev{doc.revision}",
            "body": {"content": content}, **({"namedRanges": named} if named else {})}


def _paragraph(text: str, at: int) -> tuple[dict[str, Any], int]:
    end = at + _units(text)
    return {"startIndex": at, "endIndex": end, "paragraph": {"elements": [
        {"startIndex": at, "endIndex": end, "textRun": {"content": text, "textStyle": {}}}],
        "paragraphStyle": {"namedStyleType": "NORMAL_TEXT"}}}, end


def _table(table: Table, at: int) -> tuple[dict[str, Any], int]:
    start = at
    at += 1
    rows = []
    for row in table.cells:
        row_start = at
        at += 1
        cells = []
        for cell in row:
            cell_start = at
            at += 1
            content = []
            for text in cell:
                paragraph, at = _paragraph(text, at)
                content.append(paragraph)
            cells.append({"startIndex": cell_start, "endIndex": at, "content": content})
        rows.append({"startIndex": row_start, "endIndex": at, "tableCells": cells})
    at += 1
    return {"startIndex": start, "endIndex": at, "table": {
        "rows": len(table.cells), "columns": len(table.cells[0]), "tableRows": rows}}, at


def _error(code: int, message: str, status: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message, "status": status}},
                             status=code)
