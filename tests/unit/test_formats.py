"""Export formats: CSV, XLSX and HTML read back equal the JSON; IQY has Excel's form; rows stream."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from html.parser import HTMLParser
from typing import Any
from zoneinfo import ZoneInfo

import openpyxl
import pytest

from passerelle.connectors.data_query import formats
from passerelle.connectors.data_query.formats import FORMATS, media_type, render
from passerelle.connectors.data_query.result import Column, Period, Result

pytestmark = pytest.mark.unit

COLUMNS = [
    Column("day", "dimension", "date", "Day"),
    Column("medium", "dimension", "text", "Medium"),
    Column("last_hit", "dimension", "datetime", "Last hit"),
    Column("visits", "metric", "int", "Visits"),
    Column("bounce", "metric", "float", "Bounce time"),
    Column("revenue", "metric", "money", "Revenue"),
    Column("conversion", "metric", "percent", "Conversion rate"),
]
ROWS: list[tuple[Any, ...]] = [
    (date(2026, 11, 29), "email", datetime(2026, 11, 29, 22, 30, tzinfo=UTC), 1234, 12.5, Decimal("1999.90"), 0.0425),
    (date(2026, 11, 30), 'Référent, "quoted"\nline', datetime(2026, 11, 30, 8, 0, tzinfo=UTC), 0, 0.1, 0.0, 1.0),
    (date(2026, 11, 30), None, None, None, None, None, None),
]
PERIOD = Period(date(2026, 11, 29), date(2026, 11, 30), "{R:{D:{start:-2,end:-1}}}", "Europe/Paris")
COMPARISON = Period(date(2026, 11, 27), date(2026, 11, 28), "2026-11-27,2026-11-28", "Europe/Paris")
QUERY = {"metrics": ["visits"], "period": "{R:{D:{start:-2,end:-1}}}", "site": "shop"}


def make_result(rows: list[tuple[Any, ...]] = ROWS) -> Result:
    return Result(
        columns=COLUMNS, rows=iter(rows), period=PERIOD, query=QUERY, total_rows=len(rows), comparison=COMPARISON
    )


def rendered(fmt: str, rows: list[tuple[Any, ...]] = ROWS, **kwargs: Any) -> bytes:
    return b"".join(render(make_result(rows), fmt, **kwargs))


@pytest.fixture(scope="module")
def as_json() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(rendered("json"))
    return document


def test_json_echoes_query_period_and_types(as_json: dict[str, Any]) -> None:
    assert as_json["query"] == QUERY
    assert as_json["period"] == {
        "start": "2026-11-29",
        "end": "2026-11-30",
        "expression": "{R:{D:{start:-2,end:-1}}}",
        "timezone": "Europe/Paris",
    }
    assert as_json["comparison"]["start"] == "2026-11-27"
    assert as_json["columns"][6] == {
        "name": "conversion",
        "kind": "metric",
        "type": "percent",
        "label": "Conversion rate",
    }
    assert as_json["total_rows"] == 3
    assert as_json["rows"] == [
        ["2026-11-29", "email", "2026-11-29T22:30:00+00:00", 1234, 12.5, 1999.9, 0.0425],
        ["2026-11-30", 'Référent, "quoted"\nline', "2026-11-30T08:00:00+00:00", 0, 0.1, 0.0, 1.0],
        ["2026-11-30", None, None, None, None, None, None],
    ]


def json_cells_as_text(as_json: dict[str, Any]) -> list[list[str]]:
    """The JSON rows in the machine text form CSV and HTML use (ISO dates, shortest floats, empty for null)."""
    return [["" if v is None else repr(v) if isinstance(v, float) else str(v) for v in row] for row in as_json["rows"]]


def test_csv_reads_back_equal_to_the_json(as_json: dict[str, Any]) -> None:
    data = rendered("csv")
    assert data.startswith(b"\xef\xbb\xbf")  # BOM for Excel
    assert b"\r\n" in data and data.endswith(b"\r\n")
    rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"), newline="")))
    assert rows[0] == [c["name"] for c in as_json["columns"]]
    assert rows[1:] == json_cells_as_text(as_json)
    # typed values parse back to the JSON's
    assert float(rows[1][5]) == as_json["rows"][0][5] and int(rows[1][3]) == 1234


def test_csv_guards_text_against_formula_injection() -> None:
    rows = [(date(2026, 11, 30), '=HYPERLINK("http://x")', None, -5, -1.5, None, None)]
    data = rendered("csv", rows).decode("utf-8-sig")
    parsed = list(csv.reader(io.StringIO(data, newline="")))
    assert parsed[1][1] == '\'=HYPERLINK("http://x")'
    assert parsed[1][3:5] == ["-5", "-1.5"]  # numbers are not text: left alone


def test_xlsx_reads_back_equal_to_the_json(as_json: dict[str, Any]) -> None:
    book = openpyxl.load_workbook(io.BytesIO(rendered("xlsx")))
    assert book.sheetnames == ["Data", "Query"]
    sheet = book["Data"]
    values = [list(row) for row in sheet.iter_rows(values_only=True)]
    assert values[0] == [c["label"] for c in as_json["columns"]]
    assert all(cell.font.b for cell in sheet[1])
    assert sheet.freeze_panes == "A2"
    expected = []
    for row in as_json["rows"]:
        day, medium, last_hit, *numbers = row
        # Excel has no time zones: wall-clock time in the site's zone (Paris is UTC+1 in November)
        local = (
            datetime.fromisoformat(last_hit).astimezone(ZoneInfo("Europe/Paris")).replace(tzinfo=None)
            if last_hit
            else None
        )
        expected.append([datetime.fromisoformat(day), medium, local, *numbers])
    assert values[1:] == expected
    first = sheet[2]
    assert [c.number_format for c in first] == [
        "yyyy-mm-dd",
        "General",
        "yyyy-mm-dd hh:mm:ss",
        "#,##0",
        "General",
        "#,##0.00",
        "0.00%",
    ]
    assert isinstance(first[3].value, int) and first[0].is_date
    about = {row[0]: row[1] for row in book["Query"].iter_rows(values_only=True)}
    assert about["period expression"] == PERIOD.expression
    assert json.loads(about["query"]) == QUERY


def test_xlsx_text_is_never_a_formula() -> None:
    rows = [(date(2026, 11, 30), "=1+1", None, 1, None, None, None)]
    cell = openpyxl.load_workbook(io.BytesIO(rendered("xlsx", rows)))["Data"]["B2"]
    assert cell.value == "=1+1" and cell.data_type == "s"


class TableReader(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tables = 0
        self.head: list[dict[str, str | None]] = []
        self.rows: list[list[str]] = []
        self.types: list[str | None] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self.tables += 1
        elif tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []
            if tag == "th":
                self.head.append(dict(attrs))
            elif len(self.rows) == 2:
                self.types.append(dict(attrs).get("data-type"))
        elif tag in ("script", "link", "img"):
            raise AssertionError(f"external resource or script: <{tag}>")

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell))
            self._cell = None


def test_html_table_has_the_same_cells(as_json: dict[str, Any]) -> None:
    page = rendered("html", title="Visits <by> medium").decode("utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert "<title>Visits &lt;by&gt; medium</title>" in page
    reader = TableReader()
    reader.feed(page)
    assert reader.tables == 1
    assert reader.rows[0] == [c["label"] for c in as_json["columns"]]
    assert [h["data-name"] for h in reader.head] == [c["name"] for c in as_json["columns"]]
    assert reader.types == [c["type"] for c in as_json["columns"]]
    assert reader.rows[1:] == json_cells_as_text(as_json)


def test_iqy_has_the_form_excel_expects() -> None:
    url = "https://data.example.com/v1/templates/weekly/run.html?period=%7BR%3A%7BD%3A-1%7D%7D"
    data = rendered("iqy", iqy_url=url)
    assert b"\r\n" in data and b"\n" not in data.replace(b"\r\n", b"")
    lines = data.decode("utf-8").split("\r\n")
    assert lines[:4] == ["WEB", "1", url, ""]  # type, version, URL, no POST parameters
    options = dict(line.split("=", 1) for line in lines[4:] if line)
    assert options["Selection"] == "1"  # the page's first (and only) table
    assert options["Formatting"] == "None"
    assert set(options) >= {
        "PreFormattedTextToColumns",
        "ConsecutiveDelimitersAsOne",
        "SingleBlockTextImport",
        "DisableDateRecognition",
        "DisableRedirections",
    }
    assert media_type("iqy") == "text/x-ms-iqy"


def test_iqy_needs_a_single_line_http_url() -> None:
    with pytest.raises(ValueError, match="iqy_url"):
        rendered("iqy")
    with pytest.raises(ValueError, match="single-line http"):
        rendered("iqy", iqy_url="https://x/?a=1\r\nPOST")
    with pytest.raises(ValueError, match="single-line http"):
        rendered("iqy", iqy_url="file:///etc/passwd")


def test_media_types_and_unknown_format() -> None:
    assert FORMATS == ("json", "csv", "xlsx", "html", "iqy")
    assert media_type("json") == "application/json"
    assert media_type("CSV").startswith("text/csv")
    assert media_type("xlsx") == "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    assert media_type("html").startswith("text/html")
    with pytest.raises(ValueError, match="unknown format 'xml': expected one of json, csv, xlsx, html, iqy"):
        media_type("xml")


def test_a_row_of_the_wrong_width_is_refused() -> None:
    with pytest.raises(ValueError, match="a row has 2 values for 7 columns"):
        rendered("csv", [(date(2026, 11, 30), "x")])


def test_empty_result_is_still_a_valid_document() -> None:
    assert json.loads(rendered("json", []))["rows"] == []
    assert list(csv.reader(io.StringIO(rendered("csv", []).decode("utf-8-sig")))) == [[c.name for c in COLUMNS]]
    assert openpyxl.load_workbook(io.BytesIO(rendered("xlsx", [])))["Data"].max_row == 1


@pytest.mark.parametrize("fmt", ["json", "csv", "html"])
def test_text_formats_stream_rows(fmt: str) -> None:
    total = 100_000
    pulled = 0

    def rows() -> Iterator[tuple[Any, ...]]:
        nonlocal pulled
        for i in range(total):
            pulled += 1
            yield (date(2026, 11, 30), f"medium-{i}", None, i, float(i), float(i), i / total)

    result = Result(columns=COLUMNS, rows=rows(), period=PERIOD)
    chunks = render(result, fmt)
    first = next(chunks)
    assert pulled < total  # the first chunk left before the last row was read
    assert len(first) <= 2 * formats.CHUNK_SIZE
    rest = b"".join(chunks)
    assert pulled == total
    if fmt == "json":
        assert len(json.loads(first + rest)["rows"]) == total
