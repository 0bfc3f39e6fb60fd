"""A report query, parsed and validated: what the JSON body asks, checked against the catalog.

Everything a user can get wrong is refused here with a :class:`QueryError`
naming the problem (the API answers 400 with its message): an unknown metric,
dimension or operator, a filter value of the wrong kind, a metric whose fact
lacks a dimension the query groups or filters by (an incompatible
combination), a sort on a column the query does not return, a limit above
:data:`MAX_ROWS`.

A *segment* restricts the visitor facts to the visitors who had at least one
visit in the period matching all of its filters (``{"filters": [...]}``, on
the dimensions of visits); facts without visitors (messages, deliveries,
partner figures) cannot be segmented.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any, Final

from passerelle.connectors.data_query.catalog import DIMENSIONS, FACTS, METRICS, dimension_sql

MAX_ROWS: Final = 10_000
"""The most rows one answer may hold: a larger limit, or a result larger without a limit, is refused."""
OPS: Final = ("eq", "ne", "in", "not_in", "contains", "starts_with")
TEXT_OPS: Final = ("contains", "starts_with")


class QueryError(ValueError):
    """A query the user must fix; the message names the problem (HTTP 400)."""


@dataclass(frozen=True)
class Filter:
    dimension: str
    op: str
    value: Any
    """A scalar (eq, ne, contains, starts_with; None for eq/ne means missing) or a tuple (in, not_in)."""


@dataclass(frozen=True)
class Sort:
    by: str
    desc: bool = False


@dataclass(frozen=True)
class Query:
    metrics: tuple[str, ...]
    dimensions: tuple[str, ...] = ()
    site: str | None = None
    filters: tuple[Filter, ...] = ()
    segment: tuple[Filter, ...] = ()
    sort: tuple[Sort, ...] = ()
    limit: int | None = None
    """None: up to :data:`MAX_ROWS`, and a larger result is an error rather than silently cut."""
    offset: int = 0
    period: str | None = None
    compare: bool = False
    echo: Mapping[str, Any] | None = None

    def facts(self) -> tuple[str, ...]:
        """The facts the metrics come from, in catalog order."""
        needed = {METRICS[b].fact for m in self.metrics for b in METRICS[m].bases}
        return tuple(f for f in FACTS if f in needed)


def _names(body: Mapping[str, Any], key: str, known: Mapping[str, Any], what: str, required: bool) -> tuple[str, ...]:
    raw = body.get(key, [])
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise QueryError(f"{key} must be a list of {what} names")
    if required and not raw:
        raise QueryError(f"{key}: name at least one {what}; known: {', '.join(known)}")
    for name in raw:
        if name not in known:
            raise QueryError(f"unknown {what} {name!r}; known: {', '.join(known)}")
    if len(set(raw)) != len(raw):
        raise QueryError(f"{key}: a {what} is named twice")
    return tuple(raw)


def _value(dim: str, op: str, value: Any) -> Any:
    kind = DIMENSIONS[dim].type
    if value is None:
        if op in ("eq", "ne"):
            return None
        raise QueryError(f"filter on {dim!r}: op {op!r} needs a value")
    if kind == "text":
        if not isinstance(value, str):
            raise QueryError(f"filter on {dim!r}: value must be text, got {value!r}")
        return value
    if kind == "int":
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 23:
            raise QueryError(f"filter on {dim!r}: value must be an hour 0-23, got {value!r}")
        return value
    try:
        return date.fromisoformat(value) if isinstance(value, str) else _bad()
    except ValueError:
        raise QueryError(f"filter on {dim!r}: value must be a day yyyy-mm-dd, got {value!r}") from None


def _bad() -> date:
    raise ValueError


def _filters(raw: Any, where: str) -> tuple[Filter, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise QueryError(f"{where} must be a list of {{dimension, op, value}}")
    out = []
    for item in raw:
        if not isinstance(item, Mapping):
            raise QueryError(f"{where}: each filter is an object {{dimension, op, value}}")
        dim, op = item.get("dimension"), item.get("op", "eq")
        if dim not in DIMENSIONS:
            raise QueryError(f"{where}: unknown dimension {dim!r}; known: {', '.join(DIMENSIONS)}")
        if op not in OPS:
            raise QueryError(f"{where}: unknown op {op!r} on {dim!r}; known: {', '.join(OPS)}")
        if op in TEXT_OPS and DIMENSIONS[dim].type != "text":
            raise QueryError(f"{where}: op {op!r} applies to text dimensions, not {dim!r}")
        value = item.get("value")
        if op in ("in", "not_in"):
            if not isinstance(value, list) or not value:
                raise QueryError(f"{where}: op {op!r} on {dim!r} needs a non-empty list of values")
            value = tuple(_value(dim, "eq", v) for v in value)
            if None in value:
                raise QueryError(f"{where}: op {op!r} on {dim!r}: use eq/ne with null for a missing value")
        else:
            value = _value(dim, op, value)
        out.append(Filter(dim, op, value))
    return tuple(out)


def _compatible(metrics: tuple[str, ...], used: list[str], segment: bool) -> None:
    """Every fact of the metrics must have every dimension grouped or filtered on (and visitors for a segment)."""
    for name in metrics:
        for base in METRICS[name].bases:
            fact = FACTS[METRICS[base].fact or ""]
            for dim in used:
                if dimension_sql(fact, dim) is None:
                    via = f" (needs {base!r})" if base != name else ""
                    raise QueryError(
                        f"incompatible combination: metric {name!r}{via} comes from {fact.table}, "
                        f"which has no dimension {dim!r}"
                    )
            if segment and fact.visitor is None:
                raise QueryError(
                    f"incompatible combination: a segment selects visitors, and metric {name!r} "
                    f"comes from {fact.table}, which has none"
                )


def parse_query(body: Mapping[str, Any]) -> Query:
    """The :class:`Query` a JSON body asks for; :class:`QueryError` naming the first problem."""
    if not isinstance(body, Mapping):
        raise QueryError("the query must be a JSON object")
    known = {"site", "metrics", "dimensions", "filters", "segment", "sort", "limit", "offset", "period", "compare"}
    extra = sorted(set(body) - known)
    if extra:
        raise QueryError(f"unknown field {extra[0]!r}; known: {', '.join(sorted(known))}")
    metrics = _names(body, "metrics", METRICS, "metric", True)
    dims = _names(body, "dimensions", DIMENSIONS, "dimension", False)
    site = body.get("site")
    if site is not None and (not isinstance(site, str) or not site):
        raise QueryError("site must be a site name (omit it for all sites)")
    filters = _filters(body.get("filters"), "filters")
    seg_raw = body.get("segment")
    if seg_raw is not None and (not isinstance(seg_raw, Mapping) or set(seg_raw) - {"filters"}):
        raise QueryError('segment must be {"filters": [...]} (visitors with a visit matching them in the period)')
    segment = _filters((seg_raw or {}).get("filters"), "segment filters")
    if seg_raw is not None and not segment:
        raise QueryError("segment: give at least one filter")
    for f in segment:
        if dimension_sql(FACTS["visits"], f.dimension) is None:
            raise QueryError(f"segment filters: visits have no dimension {f.dimension!r}")
    _compatible(metrics, list(dict.fromkeys([*dims, *(f.dimension for f in filters)])), bool(segment))

    sort_raw = body.get("sort", [])
    if isinstance(sort_raw, Mapping):
        sort_raw = [sort_raw]
    if not isinstance(sort_raw, list):
        raise QueryError('sort must be a list of {"by": name, "desc": bool}')
    sort = []
    for item in sort_raw:
        if isinstance(item, str):
            item = {"by": item}
        if not isinstance(item, Mapping) or not isinstance(item.get("by"), str):
            raise QueryError('sort: each item is {"by": name, "desc": bool}')
        if item["by"] not in metrics and item["by"] not in dims:
            raise QueryError(f"sort: {item['by']!r} is not a metric or dimension of this query")
        sort.append(Sort(item["by"], bool(item.get("desc", False))))

    limit, offset = body.get("limit"), body.get("offset", 0)
    if limit is not None:
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise QueryError("limit must be a positive integer")
        if limit > MAX_ROWS:
            raise QueryError(f"too many rows: limit {limit} is above the maximum {MAX_ROWS}; use offset to page")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise QueryError("offset must be an integer >= 0")
    period = body.get("period")
    if period is not None and not isinstance(period, str):
        raise QueryError("period must be a period expression such as 'last7'")
    compare = body.get("compare", False)
    if not isinstance(compare, bool):
        raise QueryError("compare must be true or false")
    return Query(metrics, dims, site, filters, segment, tuple(sort), limit, offset, period, compare, dict(body))
