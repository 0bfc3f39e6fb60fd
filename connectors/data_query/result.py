"""What a query returns, independent of the backend and of the output format.

The query model (``engine``) produces a :class:`Result`; the formats
(``formats``) write it as JSON, CSV, XLSX, HTML or IQY. ``rows`` is an
iterator so large results stream from the database cursor to the HTTP answer
without being held whole in memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Literal

ColumnType = Literal["text", "date", "datetime", "int", "float", "money", "percent"]
"""How a value is written: ``money`` is a float with two decimals, ``percent`` a ratio (0.25 = 25 %)."""


@dataclass(frozen=True)
class Column:
    name: str
    """The metric's or dimension's name as the query names it (``visits``, ``medium``)."""
    kind: Literal["dimension", "metric"]
    type: ColumnType
    label: str
    """A human header (``Visits``, ``Conversion rate``)."""


@dataclass(frozen=True)
class Period:
    """Local days of a site, both ends included, and the expression they came from."""

    start: date
    end: date
    expression: str
    """What the user asked (``last7``, ``{R:{D:-1}}``, ``2026-11-01,2026-11-30``).

    Kept so that a refreshable link stays relative.
    """
    timezone: str = "UTC"


@dataclass
class Result:
    columns: Sequence[Column]
    rows: Iterator[tuple[Any, ...]]
    period: Period
    query: dict[str, Any] = field(default_factory=dict)
    """The query as received, echoed in JSON answers."""
    total_rows: int | None = None
    """Rows before limit/offset, when known (pagination)."""
    comparison: Period | None = None
    """The previous period, when the query asked for a comparison (its metrics are columns ``<metric>_previous``)."""
