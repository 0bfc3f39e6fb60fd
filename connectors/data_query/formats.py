"""Write a :class:`Result` as JSON, CSV, XLSX, HTML or an Excel web query (IQY), as a stream of byte chunks.

Rows are pulled from ``result.rows`` one at a time and written into chunks of
about 64 KiB, so a large result goes from the database cursor to the HTTP
answer without being held whole in memory (XLSX is the exception: a zip must be
finished before it can be read, so it is spooled to a temporary file first, in
memory up to 8 MiB).

Choices, for every consumer to rely on:

* Values are normalized by column type first (:func:`cell_value`): ``int`` → int,
  ``float``/``money``/``percent`` → float (a ``Decimal`` from the database too;
  ``percent`` stays a ratio, 0.25 = 25 %), ``date``/``datetime`` kept, ``text`` → str,
  ``None`` stays empty. NaN and infinities are written as empty (JSON ``null``).
* JSON: dates and datetimes as ISO 8601 strings; the query echoed, the resolved
  period (and comparison period) with its expression and time zone.
* CSV (RFC 4180): CRLF line ends, quoting by the csv module, a header row of column
  *names* (stable for machine imports; labels are in the HTML and XLSX), UTF-8 with
  a byte-order mark so Excel shows accents (read it with ``encoding="utf-8-sig"``).
  Floats are written with Python's shortest round-trip form, so reading back gives
  the same number. A text cell starting with ``=``, ``+``, ``-``, ``@``, tab or CR
  gets a leading ``'`` (OWASP's guard against formula injection: dimension values
  come from tracked pages and referrers, and a CSV is opened in Excel).
* XLSX: sheet ``Data`` with a bold, frozen header row of labels and typed cells
  (number formats ``yyyy-mm-dd``, ``yyyy-mm-dd hh:mm:ss``, ``#,##0``, ``#,##0.00``,
  ``0.00%``); text is always stored as text, never as a formula. Excel has no time
  zones: aware datetimes are written as wall-clock times in the period's time zone.
  Sheet ``Query`` holds the period, the comparison and the query.
* HTML: a complete page without external resources whose only ``<table>`` has a
  ``<thead>`` of labels (``data-name``/``data-type`` attributes) and cells written
  as in the CSV (what Excel's web query parses into numbers and dates).
* IQY: the Excel web-query file (``WEB``, ``1``, the URL, an empty POST line, then
  the options), CRLF line ends, selecting the page's first table; its URL is the
  caller's (the template's HTML URL with the period left relative), so Excel's
  "Refresh" brings the new days.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import tempfile
from collections.abc import Iterable, Iterator
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from passerelle.connectors.data_query.result import Column, Period, Result

FORMATS: tuple[str, ...] = ("json", "csv", "xlsx", "html", "iqy")

_MEDIA_TYPES = {
    "json": "application/json",
    "csv": "text/csv; charset=utf-8; header=present",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "html": "text/html; charset=utf-8",
    "iqy": "text/x-ms-iqy",
}
CHUNK_SIZE = 64 * 1024
"""Bytes gathered before a chunk is yielded: few enough writes, small enough memory."""

XLSX_NUMBER_FORMATS = {
    "date": "yyyy-mm-dd",
    "datetime": "yyyy-mm-dd hh:mm:ss",
    "int": "#,##0",
    "money": "#,##0.00",
    "percent": "0.00%",
}

IQY_OPTIONS = (
    "Selection=1",
    "Formatting=None",
    "PreFormattedTextToColumns=True",
    "ConsecutiveDelimitersAsOne=True",
    "SingleBlockTextImport=False",
    "DisableDateRecognition=False",
    "DisableRedirections=False",
)
"""The options Excel writes when it saves a web query; ``Selection=1`` takes the first table of the page."""

_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def media_type(fmt: str) -> str:
    """The ``Content-Type`` of a format."""
    return _MEDIA_TYPES[_check_format(fmt)]


def render(result: Result, fmt: str, *, iqy_url: str | None = None, title: str | None = None) -> Iterator[bytes]:
    """``result`` written in ``fmt`` as byte chunks; rows are consumed as the chunks are."""
    fmt = _check_format(fmt)
    if fmt == "iqy":
        if iqy_url is None:
            raise ValueError("the iqy format needs iqy_url: the HTML URL Excel will refresh")
        return iter([iqy(iqy_url)])
    if fmt == "json":
        return _chunked(_json_parts(result))
    if fmt == "csv":
        return _chunked(_csv_parts(result))
    if fmt == "html":
        return _chunked(_html_parts(result, title))
    return _xlsx(result, title)


def cell_value(value: Any, column: Column) -> Any:
    """``value`` as the type its column declares (see the module docstring); ``None`` for empty."""
    if value is None:
        return None
    kind = column.type
    if kind == "int":
        return int(value)
    if kind in ("float", "money", "percent"):
        number = float(value)
        return None if math.isnan(number) or math.isinf(number) else number
    if kind == "date":
        return value.date() if isinstance(value, datetime) else value
    if kind == "datetime":
        return value
    return str(value)


def iqy(url: str) -> bytes:
    """An Excel web-query file pointing at ``url`` (http or https, one line)."""
    if not url.startswith(("http://", "https://")) or any(ch in url for ch in "\r\n"):
        raise ValueError(f"iqy URL must be a single-line http(s) URL, got {url!r}")
    lines = ("WEB", "1", url, "", *IQY_OPTIONS)
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


# --- shared helpers --------------------------------------------------------------------------------------------


def _check_format(fmt: str) -> str:
    name = fmt.lower()
    if name not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: expected one of {', '.join(FORMATS)}")
    return name


def _chunked(parts: Iterable[str]) -> Iterator[bytes]:
    buffer: list[str] = []
    size = 0
    for part in parts:
        buffer.append(part)
        size += len(part)
        if size >= CHUNK_SIZE:
            yield "".join(buffer).encode("utf-8")
            buffer, size = [], 0
    if buffer:
        yield "".join(buffer).encode("utf-8")


def _typed_rows(result: Result) -> Iterator[list[Any]]:
    columns = list(result.columns)
    for row in result.rows:
        if len(row) != len(columns):
            raise ValueError(f"a row has {len(row)} values for {len(columns)} columns: {row!r}")
        yield [cell_value(value, column) for value, column in zip(row, columns, strict=True)]


def _text(value: Any) -> str:
    """The machine form shared by CSV and HTML: ISO dates, shortest round-trip floats, empty for None."""
    if value is None:
        return ""
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _period_json(period: Period | None) -> dict[str, str] | None:
    if period is None:
        return None
    return {
        "start": period.start.isoformat(),
        "end": period.end.isoformat(),
        "expression": period.expression,
        "timezone": period.timezone,
    }


def _json_default(value: Any) -> Any:
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


# --- JSON ------------------------------------------------------------------------------------------------------


def _json_parts(result: Result) -> Iterator[str]:
    head = {
        "query": result.query,
        "period": _period_json(result.period),
        "comparison": _period_json(result.comparison),
        "columns": [{"name": c.name, "kind": c.kind, "type": c.type, "label": c.label} for c in result.columns],
    }
    text = json.dumps(head, ensure_ascii=False, default=_json_default)
    yield text[:-1] + ', "rows": ['
    separator = "\n"
    for row in _typed_rows(result):
        yield separator + json.dumps(row, ensure_ascii=False, default=_json_default, allow_nan=False)
        separator = ",\n"
    yield '\n], "total_rows": ' + json.dumps(result.total_rows) + "}"


# --- CSV -------------------------------------------------------------------------------------------------------


def _csv_parts(result: Result) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow([c.name for c in result.columns])
    yield "\ufeff" + buffer.getvalue()
    text_columns = [c.type == "text" for c in result.columns]
    for row in _typed_rows(result):
        buffer.seek(0)
        buffer.truncate()
        writer.writerow(
            [
                _guard(_text(v)) if is_text and v is not None else _text(v)
                for v, is_text in zip(row, text_columns, strict=True)
            ]
        )
        yield buffer.getvalue()


def _guard(text: str) -> str:
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


# --- HTML ------------------------------------------------------------------------------------------------------


def _html_parts(result: Result, title: str | None) -> Iterator[str]:
    esc = html.escape
    name = title or "Data Query"
    period = result.period
    caption = f"{period.start.isoformat()} to {period.end.isoformat()} ({period.expression}, {period.timezone})"
    if result.comparison is not None:
        comparison = result.comparison
        caption += f"; compared with {comparison.start.isoformat()} to {comparison.end.isoformat()}"
    yield (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{esc(name)}</title>"
        "<style>table{border-collapse:collapse}th,td{border:1px solid #999;padding:2px 6px}"
        'td[data-type="int"],td[data-type="float"],td[data-type="money"],td[data-type="percent"]{text-align:right}'
        "</style></head><body>\n"
        f"<h1>{esc(name)}</h1>\n<p>{esc(caption)}</p>\n"
        '<table id="data"><thead><tr>'
    )
    yield "".join(
        f'<th data-name="{esc(c.name)}" data-type="{esc(c.type)}">{esc(c.label)}</th>' for c in result.columns
    )
    yield "</tr></thead>\n<tbody>\n"
    types = [esc(c.type) for c in result.columns]
    for row in _typed_rows(result):
        cells = "".join(f'<td data-type="{t}">{esc(_text(v))}</td>' for v, t in zip(row, types, strict=True))
        yield f"<tr>{cells}</tr>\n"
    yield "</tbody></table>\n</body></html>\n"


# --- XLSX ------------------------------------------------------------------------------------------------------


def _xlsx(result: Result, title: str | None) -> Iterator[bytes]:
    from openpyxl import Workbook
    from openpyxl.cell import WriteOnlyCell
    from openpyxl.styles import Font

    zone = ZoneInfo(result.period.timezone)
    workbook = Workbook(write_only=True)
    sheet = workbook.create_sheet("Data")
    sheet.freeze_panes = "A2"
    bold = Font(bold=True)
    header = []
    for column in result.columns:
        cell = WriteOnlyCell(sheet, value=column.label)
        cell.font = bold
        header.append(cell)
    sheet.append(header)
    formats_by_column = [XLSX_NUMBER_FORMATS.get(column.type) for column in result.columns]
    for row in _typed_rows(result):
        cells: list[Any] = []
        for value, number_format in zip(row, formats_by_column, strict=True):
            if value is None:
                cells.append(None)
            elif isinstance(value, str):
                if value.startswith("="):  # openpyxl would store it as a formula: force text
                    cell = WriteOnlyCell(sheet, value=value)
                    cell.data_type = "s"
                    value = cell
                cells.append(value)
            elif number_format is None:
                cells.append(value)  # a plain float: openpyxl's default (General) is right
            else:
                if isinstance(value, datetime) and value.tzinfo is not None:
                    value = value.astimezone(zone).replace(tzinfo=None)
                cell = WriteOnlyCell(sheet, value=value)
                cell.number_format = number_format
                cells.append(cell)
        sheet.append(cells)

    about = workbook.create_sheet("Query")
    about.append(["title", title or "Data Query"])
    for label, period in (("period", result.period), ("comparison", result.comparison)):
        if period is not None:
            about.append([f"{label} start", period.start])
            about.append([f"{label} end", period.end])
            about.append([f"{label} expression", period.expression])
    about.append(["timezone", result.period.timezone])
    about.append(["query", json.dumps(result.query, ensure_ascii=False, default=_json_default)])
    about.append(["total rows", result.total_rows])

    with tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024) as spool:
        workbook.save(spool)
        spool.seek(0)
        while chunk := spool.read(CHUNK_SIZE):
            yield chunk
