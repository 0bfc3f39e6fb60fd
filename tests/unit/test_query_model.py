"""Parsing a report query: what is accepted, and every refusal (HTTP 400) names its problem."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import pytest

from passerelle.connectors.data_query.catalog import DIMENSIONS, METRICS
from passerelle.connectors.data_query.engine import columns, parse_query
from passerelle.connectors.data_query.query import MAX_ROWS, Filter, QueryError, Sort


def test_a_full_query_is_parsed() -> None:
    q = parse_query({
        "site": "shop", "metrics": ["visits", "conversion_rate"], "dimensions": ["day", "medium"],
        "filters": [{"dimension": "medium", "op": "in", "value": ["email", "cpc"]},
                    {"dimension": "day", "op": "ne", "value": "2026-03-01"}],
        "segment": {"filters": [{"dimension": "crm_gender", "op": "eq", "value": "F"}]},
        "sort": [{"by": "visits", "desc": True}], "limit": 50, "offset": 100, "period": "last7", "compare": True,
    })  # fmt: skip
    assert q.metrics == ("visits", "conversion_rate") and q.dimensions == ("day", "medium")
    assert q.filters == (Filter("medium", "in", ("email", "cpc")), Filter("day", "ne", date(2026, 3, 1)))
    assert q.segment == (Filter("crm_gender", "eq", "F"),)
    assert q.sort == (Sort("visits", True),) and (q.limit, q.offset, q.compare) == (50, 100, True)
    assert q.facts() == ("visits", "orders")  # conversion rate needs orders
    assert [c.name for c in columns(q, compare=True)] == [
        "day", "medium", "visits", "conversion_rate", "visits_previous", "conversion_rate_previous"]  # fmt: skip
    assert [c.type for c in columns(q)] == ["date", "text", "int", "percent"]


def test_partner_metrics_go_with_declared_campaign_dimensions() -> None:
    q = parse_query({"metrics": ["cost", "cpa", "roas"], "dimensions": ["week", "campaign_key", "campaign_name"]})
    assert q.facts() == ("orders", "partner")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"metrics": ["visists"]}, "unknown metric 'visists'; known: hits, visits"),
        ({"metrics": []}, "metrics: name at least one metric"),
        ({"dimensions": ["day"]}, "metrics: name at least one metric"),
        ({"metrics": ["visits"], "dimensions": ["dya"]}, "unknown dimension 'dya'; known: hour, day"),
        ({"metrics": ["visits", "visits"]}, "metrics: a metric is named twice"),
        ({"metrics": ["visits"], "colour": 1}, "unknown field 'colour'"),
        (
            {"metrics": ["cost"], "dimensions": ["landing_page"]},
            "incompatible combination: metric 'cost' comes from partner_metrics, which has no dimension 'landing_page'",
        ),
        (
            {"metrics": ["cpc"], "dimensions": ["medium"]},
            "metric 'cpc' (needs 'cost') comes from partner_metrics, which has no dimension 'medium'",
        ),
        (
            {"metrics": ["visits", "impressions"], "filters": [{"dimension": "crm_gender", "value": "F"}]},
            "metric 'impressions' comes from partner_metrics, which has no dimension 'crm_gender'",
        ),
        ({"metrics": ["cost"], "dimensions": ["hour"]}, "which has no dimension 'hour'"),
        (
            {"metrics": ["remarketing_sent"], "segment": {"filters": [{"dimension": "medium", "value": "email"}]}},
            "incompatible combination: a segment selects visitors, and metric 'remarketing_sent'",
        ),
        (
            {"metrics": ["visits"], "segment": {"filters": [{"dimension": "campaign_keyy", "value": "K"}]}},
            "segment filters: unknown dimension 'campaign_keyy'",
        ),
        ({"metrics": ["visits"], "segment": {"who": "me"}}, 'segment must be {"filters": [...]}'),
        (
            {"metrics": ["visits"], "filters": [{"dimension": "medium", "op": "like", "value": "e"}]},
            "filters: unknown op 'like' on 'medium'; known: eq, ne, in, not_in, contains, starts_with",
        ),
        (
            {"metrics": ["visits"], "filters": [{"dimension": "day", "op": "contains", "value": "03"}]},
            "op 'contains' applies to text dimensions, not 'day'",
        ),
        (
            {"metrics": ["visits"], "filters": [{"dimension": "day", "value": "yesterday"}]},
            "filter on 'day': value must be a day yyyy-mm-dd, got 'yesterday'",
        ),
        ({"metrics": ["visits"], "filters": [{"dimension": "hour", "value": 24}]}, "value must be an hour 0-23"),
        ({"metrics": ["visits"], "filters": [{"dimension": "medium", "value": 3}]}, "value must be text, got 3"),
        (
            {"metrics": ["visits"], "filters": [{"dimension": "medium", "op": "in", "value": []}]},
            "op 'in' on 'medium' needs a non-empty list of values",
        ),
        (
            {"metrics": ["visits"], "sort": [{"by": "orders"}]},
            "sort: 'orders' is not a metric or dimension of this query",
        ),
        (
            {"metrics": ["visits"], "limit": MAX_ROWS + 1},
            f"too many rows: limit {MAX_ROWS + 1} is above the maximum {MAX_ROWS}",
        ),
        ({"metrics": ["visits"], "limit": 0}, "limit must be a positive integer"),
        ({"metrics": ["visits"], "offset": -1}, "offset must be an integer >= 0"),
        ({"metrics": ["visits"], "compare": "yes"}, "compare must be true or false"),
        ({"metrics": ["visits"], "site": ""}, "site must be a site name"),
    ],
)
def test_refusals_name_the_problem(body: dict[str, Any], message: str) -> None:
    with pytest.raises(QueryError) as err:
        parse_query(body)
    assert message in str(err.value)


def test_the_documentation_lists_every_metric_and_dimension() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "data-query.md").read_text()
    for name, metric in METRICS.items():
        assert f"| `{name}` | {metric.label} | {metric.type} | {metric.definition} |" in text
    for name in DIMENSIONS:
        assert f"| `{name}` |" in text
