"""Run a report query on the analytics store: the public entry points the API routes call.

``parse_query`` validates a JSON body (``QueryError`` → HTTP 400), ``run``
executes it for a resolved period (and optionally a comparison period) and
returns a :class:`Result`, ``site_timezone`` tells which zone a site's
periods are resolved in. Metric definitions: :mod:`catalog` and
``docs/data-query.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from passerelle.connectors.data_query import query as _query
from passerelle.connectors.data_query.catalog import DIMENSIONS, METRICS
from passerelle.connectors.data_query.query import MAX_ROWS, Query, QueryError
from passerelle.connectors.data_query.result import Column, Period, Result
from passerelle.connectors.data_query.sql import build
from passerelle.connectors.warehouse.store import Store

__all__ = ["Query", "QueryError", "columns", "parse_query", "run", "site_timezone"]


def parse_query(body: Mapping[str, Any]) -> Query:
    """The validated query of a JSON body; ``QueryError`` naming the problem otherwise."""
    return _query.parse_query(body)


def columns(query: Query, *, compare: bool = False) -> list[Column]:
    """The result's columns: dimensions, metrics, then ``<metric>_previous`` when comparing."""
    cols = [Column(d, "dimension", DIMENSIONS[d].type, DIMENSIONS[d].label) for d in query.dimensions]
    cols += [Column(m, "metric", METRICS[m].type, METRICS[m].label) for m in query.metrics]
    if compare:
        cols += [Column(f"{m}_previous", "metric", METRICS[m].type, f"{METRICS[m].label} (previous period)")
                 for m in query.metrics]  # fmt: skip
    return cols


def run(store: Store, query: Query, period: Period, *, compare: Period | None = None) -> Result:
    """The query's rows for ``period`` (local days of ``period.timezone``); at most :data:`MAX_ROWS`.

    Without a limit, a result larger than :data:`MAX_ROWS` is refused
    (``QueryError`` "too many rows") rather than silently cut.
    """
    sql, params = build(query, period, compare, store.param)
    with store.connect() as conn:
        rows = conn.execute(sql, params).fetchall()
        total = rows[0][-1] if rows else None
        if total is None and query.offset:
            count_sql, count_params = build(_first_page(query), period, compare, store.param)
            first = conn.execute(count_sql, count_params).fetchall()
            total = first[0][-1] if first else 0
    total = int(total or 0)
    if query.limit is None and total > MAX_ROWS:
        raise QueryError(
            f"too many rows: the query gives {total} rows, more than the maximum {MAX_ROWS}; "
            "add a limit (and offset to page), filters or fewer dimensions"
        )
    return Result(
        columns=columns(query, compare=compare is not None),
        rows=iter([tuple(row[:-1]) for row in rows]),
        period=period,
        query=dict(query.echo or {}),
        total_rows=total,
        comparison=compare,
    )


def _first_page(query: Query) -> Query:
    from dataclasses import replace

    return replace(query, limit=1, offset=0)


def site_timezone(store: Store, site: str | None) -> str:
    """The site's time zone from the ``sites`` table; ``UTC`` for all sites or a site it does not know."""
    if site is None:
        return "UTC"
    with store.connect() as conn:
        row = conn.execute(f"SELECT timezone FROM sites WHERE site = {store.param}", [site]).fetchone()
    return str(row[0]) if row and row[0] else "UTC"
