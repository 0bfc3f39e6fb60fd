"""One SQL statement (and its parameters) for a query, the same text for DuckDB and PostgreSQL.

Shape, so that no fact multiplies another's rows (no fan-out):

- one *branch* per fact (and per period when comparing): the fact's rows of
  the period, filtered, grouped by the query's dimensions, with its base
  metrics as columns and NULL for the other facts' ones;
- the branches ``UNION ALL``, grouped again by the dimensions: each fact gives
  at most one row per group, so the sums merge facts without counting twice;
  a period marker ``p`` (0 current, 1 previous) splits the sums into
  ``<metric>`` and ``<metric>_previous``. Time dimensions of the previous
  period are shifted onto the current one (by the days between the starts;
  months by the months between them), so "day 3 of this week" meets "day 3 of
  last week";
- ratios computed from the summed bases (NULL when the denominator is 0),
  ``COUNT(*) OVER ()`` for the total before ``LIMIT``/``OFFSET``.

Identifiers come only from :mod:`catalog`; every value is a bound parameter
(the time zone included). Markers ``\\x00n\\x00`` stand for parameter ``n``
while the text is assembled, then become the dialect's placeholders in text
order, so the fragments can be built in any order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from passerelle.connectors.data_query.catalog import FACTS, METRICS, TZ, Fact, dimension_sql
from passerelle.connectors.data_query.query import MAX_ROWS, Filter, Query
from passerelle.connectors.data_query.result import Period

_MARK = re.compile("\x00([0-9]+)\x00")


@dataclass
class _Params:
    values: list[Any] = field(default_factory=list)

    def __call__(self, value: Any) -> str:
        self.values.append(value)
        return f"\x00{len(self.values) - 1}\x00"

    def render(self, sql: str, placeholder: str) -> tuple[str, list[Any]]:
        ordered: list[Any] = []

        def sub(match: re.Match[str]) -> str:
            ordered.append(self.values[int(match.group(1))])
            return placeholder

        return _MARK.sub(sub, sql), ordered


@dataclass(frozen=True)
class _Shift:
    days: int = 0
    months: int = 0


def _dim(fact: Fact, name: str, bind: _Params, tz: str, shift: _Shift) -> str:
    expr = dimension_sql(fact, name)
    assert expr is not None  # the query was checked compatible
    if shift.days and name in ("day", "week"):
        expr = dimension_sql(_shifted(fact, shift.days), name)
        assert expr is not None
    if shift.months and name == "month":
        expr = f"CAST({expr} + INTERVAL '{int(shift.months)} months' AS DATE)"
    return expr.replace(TZ, bind(tz)) if TZ in expr else expr


def _shifted(fact: Fact, days: int) -> Fact:
    from dataclasses import replace

    return replace(fact, day=f"CAST({fact.day} + INTERVAL '{int(days)} days' AS DATE)")


def _condition(expr: str, f: Filter, bind: _Params) -> str:
    if f.op in ("eq", "ne") and f.value is None:
        return f"{expr} IS {'NOT ' if f.op == 'ne' else ''}NULL"
    if f.op == "eq":
        return f"{expr} = {bind(f.value)}"
    if f.op == "ne":
        return f"({expr} IS NULL OR {expr} <> {bind(f.value)})"
    if f.op in ("in", "not_in"):
        values = ", ".join(bind(v) for v in f.value)
        return f"{expr} IN ({values})" if f.op == "in" else f"({expr} IS NULL OR {expr} NOT IN ({values}))"
    if f.op == "contains":
        return f"strpos({expr}, {bind(f.value)}) > 0"
    return f"starts_with({expr}, {bind(f.value)})"


def _filters(fact: Fact, filters: tuple[Filter, ...], bind: _Params, tz: str) -> list[str]:
    out = []
    for f in filters:
        expr = dimension_sql(fact, f.dimension)
        assert expr is not None
        out.append(_condition(expr.replace(TZ, bind(tz)) if TZ in expr else expr, f, bind))
    return out


def _segment(fact: Fact, query: Query, period: Period, bind: _Params) -> str:
    """Visitors with a visit in the period matching every segment filter (an uncorrelated IN)."""
    visits = FACTS["visits"]
    where = [f"{visits.day} BETWEEN {bind(period.start)} AND {bind(period.end)}"]
    if query.site is not None:
        where.append(f"{visits.site} = {bind(query.site)}")
    where += _filters(visits, query.segment, bind, period.timezone)
    return f"{fact.visitor} IN (SELECT v.visitor_id FROM visits v WHERE {' AND '.join(where)})"


def _branch(fact: Fact, query: Query, period: Period, marker: int, shift: _Shift, bind: _Params,
            bases: list[str]) -> str:  # fmt: skip
    tz = period.timezone
    cols = [f"{_dim(fact, d, bind, tz, shift)} AS d{i}" for i, d in enumerate(query.dimensions)]
    cols.append(f"{marker} AS p")
    for base in bases:
        metric = METRICS[base]
        cols.append(
            f"{metric.aggregate if metric.fact == fact.name else f'CAST(NULL AS {metric.sql_type})'} AS b_{base}"
        )
    used = [*query.dimensions, *(f.dimension for f in query.filters)]
    joins = list(dict.fromkeys(fact.joins[d] for d in used if d in fact.joins))
    day = fact.day.replace(TZ, bind(tz)) if TZ in fact.day else fact.day
    where = [f"{day} BETWEEN {bind(period.start)} AND {bind(period.end)}", *fact.where]
    if query.site is not None and fact.site is not None:
        where.append(f"{fact.site} = {bind(query.site)}")
    where += _filters(fact, query.filters, bind, tz)
    if query.segment:
        where.append(_segment(fact, query, period, bind))
    group = f" GROUP BY {', '.join(f'd{i}' for i in range(len(query.dimensions)))}" if query.dimensions else ""
    return f"SELECT {', '.join(cols)} FROM {fact.source} {' '.join(joins)} WHERE {' AND '.join(where)}{group}"


def _months(period: Period, compare: Period) -> int:
    return (period.start.year - compare.start.year) * 12 + period.start.month - compare.start.month


def _output(name: str, prefix: str) -> str:
    metric = METRICS[name]
    if metric.ratio is None:
        if metric.type == "int" and metric.sql_type != "BIGINT":
            return f"CAST(ROUND({prefix}{name}) AS BIGINT)"
        return f"{prefix}{name}"
    num, dens = metric.ratio
    return f"CAST({prefix}{num} AS DOUBLE PRECISION) / NULLIF({' + '.join(prefix + d for d in dens)}, 0)"


def build(query: Query, period: Period, compare: Period | None, placeholder: str) -> tuple[str, list[Any]]:
    """The statement and its parameters; result columns: dimensions, metrics, [previous metrics], total."""
    bind = _Params()
    bases = list(dict.fromkeys(b for m in query.metrics for b in METRICS[m].bases))
    branches = [_branch(FACTS[f], query, period, 0, _Shift(), bind, bases) for f in query.facts()]
    if compare is not None:
        shift = _Shift((period.start - compare.start).days, _months(period, compare))
        branches += [_branch(FACTS[f], query, compare, 1, shift, bind, bases) for f in query.facts()]
    dims = [f"d{i}" for i in range(len(query.dimensions))]
    sums = []
    for base in bases:
        cast = METRICS[base].sql_type
        sums.append(f"CAST(COALESCE(SUM(CASE WHEN p = 0 THEN b_{base} END), 0) AS {cast}) AS c_{base}")
        if compare is not None:
            sums.append(f"CAST(COALESCE(SUM(CASE WHEN p = 1 THEN b_{base} END), 0) AS {cast}) AS q_{base}")
    group = f" GROUP BY {', '.join(dims)}" if dims else ""
    inner = f"SELECT {', '.join([*dims, *sums])} FROM ({' UNION ALL '.join(branches)}) u{group}"
    outs = [f"{_output(m, 'c_')} AS m_{m}" for m in query.metrics]
    if compare is not None:
        outs += [f"{_output(m, 'q_')} AS q_out_{m}" for m in query.metrics]
    names = {d: f"d{i}" for i, d in enumerate(query.dimensions)} | {m: f"m_{m}" for m in query.metrics}
    order = [f"{names[s.by]} {'DESC' if s.desc else 'ASC'} NULLS LAST" for s in query.sort]
    order += [f"{d} ASC NULLS LAST" for d in dims]
    sql = f"SELECT {', '.join([*dims, *outs, 'COUNT(*) OVER () AS total_rows'])} FROM ({inner}) t"
    if order:
        sql += f" ORDER BY {', '.join(order)}"
    sql += f" LIMIT {bind(query.limit if query.limit is not None else MAX_ROWS + 1)} OFFSET {bind(query.offset)}"
    return bind.render(sql, placeholder)
