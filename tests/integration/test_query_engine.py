"""The query model on a fixed, hand-written data set, on DuckDB and on a real PostgreSQL.

Every expected table below is computed by hand from the rows of ``DATA``
(comments say which rows make each figure). The period is 2026-03-09 to
2026-03-29 in Europe/Paris (three Monday-to-Sunday weeks; 2026-03-29 is the
spring-forward day: 00:30 UTC is 01:30 local, 01:30 UTC is 03:30 local); the
comparison period is the three weeks before.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime
from typing import Any

import pytest

from passerelle.connectors.data_query.engine import QueryError, parse_query, run, site_timezone
from passerelle.connectors.data_query.result import Period
from passerelle.connectors.warehouse.store import Store, open_store
from passerelle.deploy.local import postgres

PARIS = "Europe/Paris"
PERIOD = Period(date(2026, 3, 9), date(2026, 3, 29), "2026-03-09,2026-03-29", PARIS)
PREVIOUS = Period(date(2026, 2, 16), date(2026, 3, 8), "previous", PARIS)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


TRAFFIC = ("medium", "source", "campaign", "campaign_key", "campaign_name", "campaign_partner",
           "crm_gender", "crm_age_band", "crm_csp")  # fmt: skip
EMAIL = ("email", "newsletter", "spring", "K1", "Spring", "acme")
NONE6 = (None,) * 6
F = ("F", "25-34", "cadre")
M = ("M", "35-44", "employe")
# visit id, site, visitor, customer, started (UTC), local day, landing page, traffic (6), crm (3)
VISITS = [
    ("v1", "shop", "A", "c1", "2026-03-10 08:00", "2026-03-10", "/home", EMAIL, F),
    ("v2", "shop", "A", "c1", "2026-03-11 09:00", "2026-03-11", "/p", ("cpc", "google", None, None, None, None), F),
    ("v3", "shop", "B", "c2", "2026-03-11 12:00", "2026-03-11", "/home", EMAIL, M),
    ("v4", "shop", "C", None, "2026-03-29 00:30", "2026-03-29", "/home", ("direct", *NONE6[1:]), (None,) * 3),
    ("v5", "shop", "D", None, "2026-03-29 01:30", "2026-03-29", "/p", ("direct", *NONE6[1:]), (None,) * 3),
    ("v6", "shop", "B", "c2", "2026-03-03 10:00", "2026-03-03", "/home", EMAIL, M),  # previous period
    ("v7", "blog", "E", None, "2026-03-10 10:00", "2026-03-10", "/", ("organic", "google", *NONE6[2:]), (None,) * 3),
]
# order hits: event id, visit, time (UTC), order id, revenue (e1b reloads e1's confirmation page)
ORDERS = [("e1", "v1", "2026-03-10 08:10", "O1", 100.0), ("e1b", "v1", "2026-03-10 08:11", "O1", 100.0),
          ("e2", "v3", "2026-03-11 12:30", "O2", 50.0), ("e3", "v5", "2026-03-29 01:40", "O3", 30.0)]  # fmt: skip


def rows() -> dict[str, list[dict[str, Any]]]:
    data: dict[str, list[dict[str, Any]]] = {
        "sites": [{"site": "shop", "timezone": PARIS}, {"site": "blog", "timezone": "UTC"}],
        "visits": [],
        "hits": [],
    }
    by_id = {}
    for vid, site, visitor, customer, start, day, landing, traffic, crm in VISITS:
        common = {"site": site, "visitor_id": visitor, "customer_id": customer, "day": date.fromisoformat(day),
                  **dict(zip(TRAFFIC, (*traffic, *crm), strict=True))}  # fmt: skip
        by_id[vid] = common
        data["visits"].append({"visit_id": vid, **common, "started_at": utc(start), "last_hit_at": utc(start),
                               "landing_page": landing, "hits": 1, "orders": 0, "revenue": 0.0})  # fmt: skip
        data["hits"].append(hit(f"pv-{vid}", vid, common, start, "page_view"))
    for eid, vid, at, order, revenue in ORDERS:
        data["hits"].append(hit(eid, vid, by_id[vid], at, "order") | {"order_id": order, "revenue": revenue})
    data["carts_abandoned"] = [
        {"event_id": f"cart{i}", "episode_id": f"ep{i}", "site": "shop", "visitor_id": v, "customer_id": None,
         "value": 80.0, "currency": "EUR", "detected_at": utc(at), "day": date.fromisoformat(at[:10])}
        for i, (v, at) in enumerate([("A", "2026-03-10 09:00"), ("C", "2026-03-29 02:00"), ("B", "2026-03-11 13:00")])
    ]  # fmt: skip
    messages = [("m1", "c1", "2026-03-05 08:00", "delivered"), ("m2", "c2", "2026-03-11 12:00", "delivered"),
                ("m3", "c1", "2026-03-12 08:00", "dead_lettered")]  # fmt: skip
    data["remarketing_messages"] = [
        {"message_id": m, "sequence_id": f"s{m}", "step": 1, "customer_id": c, "site": "shop", "has_promotion": False,
         "created_at": utc(at), "day": date.fromisoformat(at[:10])} for m, c, at, _ in messages
    ]  # fmt: skip
    data["remarketing_deliveries"] = [
        {"message_id": m, "sequence_id": f"s{m}", "step": 1, "customer_id": c, "partner": "mailer", "outcome": out,
         "latency_ms": 10, "decided_at": utc(at[:-2] + "01")} for m, c, at, out in messages
    ]  # fmt: skip
    data["campaigns"] = [
        {"key": k, "name": n, "partner": p, "channel": "email", "medium": "email", "cost_model": None,
         "cost_amount": None, "currency": None, "declared_at": utc("2026-01-01 00:00")}
        for k, n, p in [("K1", "Spring", "acme"), ("K2", "Banner", "displayco")]
    ]  # fmt: skip
    data["postview"] = [
        {"postview_id": pid, "kind": kind, "visitor_id": v, "customer_id": None, "site": "shop", "campaign_key": k,
         "event_time": utc(at), "day": date.fromisoformat(at[:10]), "visit_id": "v", "order_id": None,
         "revenue": rev, "currency": None}
        for pid, kind, v, k, at, rev in [("pv1", "visit", "C", "K2", "2026-03-29 00:30", None),
                                         ("pv2", "order", "D", "K2", "2026-03-29 01:40", 30.0),
                                         ("pv3", "visit", "A", "K1", "2026-03-10 08:00", None)]
    ]  # fmt: skip
    data["partner_metrics"] = [
        {"metric_id": f"{p}|{k}|{d}|{m}", "partner": p, "campaign_key": k, "day": date.fromisoformat(d), "metric": m,
         "value": v, "currency": "EUR" if m == "cost" else None}
        for p, k, d, m, v in [
            ("acme", "K1", "2026-03-10", "impressions", 1000.0), ("acme", "K1", "2026-03-10", "clicks", 40.0),
            ("acme", "K1", "2026-03-10", "cost", 20.0), ("acme", "K1", "2026-03-11", "clicks", 10.0),
            ("acme", "K1", "2026-03-11", "cost", 5.0), ("displayco", "K2", "2026-03-29", "impressions", 5000.0),
            ("displayco", "K2", "2026-03-29", "cost", 60.0), ("acme", "K1", "2026-03-03", "cost", 10.0),  # previous
        ]
    ]  # fmt: skip
    return data


def hit(event_id: str, visit_id: str, common: dict[str, Any], at: str, kind: str) -> dict[str, Any]:
    return {"event_id": event_id, **common, "event_time": utc(at), "type": kind, "url": "https://x/",
            "page": None, "visit_id": visit_id, "visit_number": 1, "campaign_undeclared": False,
            "product_id": None, "order_id": None, "revenue": None, "currency": None}  # fmt: skip


def load(store: Store) -> Store:
    with store.connect() as conn:
        for table, items in rows().items():
            for item in items:
                names = ", ".join(item)
                marks = ", ".join([store.param] * len(item))
                conn.execute(f"INSERT INTO {table} ({names}) VALUES ({marks})", list(item.values()))
        if store.dialect == "postgres":
            conn.commit()
    return store


@pytest.fixture(scope="module", params=["duckdb", "postgres"])
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    if request.param == "duckdb":
        s = load(open_store("duckdb:///:memory:"))
        yield s
        s.close()
        return
    pg: postgres.Postgres = request.getfixturevalue("crm_postgres")
    postgres.psql(pg, "DROP DATABASE IF EXISTS analytics_q")
    postgres.psql(pg, "CREATE DATABASE analytics_q")
    password = pg.passwords()["postgres"]
    yield load(open_store(f"postgresql://postgres:{password}@{pg.host}:{pg.port}/analytics_q"))


def ask(
    store: Store, body: dict[str, Any], period: Period = PERIOD, compare: Period | None = None
) -> list[tuple[Any, ...]]:
    result = run(store, parse_query({"site": "shop", **body}), period, compare=compare)
    return [tuple(round(v, 6) if isinstance(v, float) else v for v in row) for row in result.rows]


def d(text: str) -> date:
    return date.fromisoformat(text)


def test_every_metric_in_one_total_row(store: Store) -> None:
    metrics = ["hits", "visits", "visitors", "orders", "revenue", "conversion_rate", "average_order_value",
               "abandoned_carts", "cart_abandonment_rate", "remarketing_sent", "remarketing_delivered",
               "recovered_orders", "recovered_revenue", "postview_visits", "postview_conversions", "postview_revenue",
               "impressions", "clicks", "cost", "cpc", "cpa", "roas"]  # fmt: skip
    # hits: 5 page views + 4 order hits; orders O1 (reloaded once), O2, O3; m1 (5 days before O1) and m2
    # (30 min before O2) recover them; m3 failed; partner figures are not per site (K1 25 + K2 60).
    expected = (9, 5, 4, 3, 180.0, 0.6, 60.0, 3, 0.5, 2, 1, 2, 150.0, 2, 1, 30.0, 6000, 50, 85.0,
                1.7, round(85 / 3, 6), round(180 / 85, 6))  # fmt: skip
    assert ask(store, {"metrics": metrics}) == [expected]


def test_day_with_orders_and_visits(store: Store) -> None:
    assert ask(store, {"metrics": ["visits", "orders", "revenue"], "dimensions": ["day"]}) == [
        (d("2026-03-10"), 1, 1, 100.0), (d("2026-03-11"), 2, 1, 50.0), (d("2026-03-29"), 2, 1, 30.0)]  # fmt: skip


def test_hours_on_the_dst_day_are_local(store: Store) -> None:
    body = {"metrics": ["visits", "hits"], "dimensions": ["hour"],
            "filters": [{"dimension": "day", "op": "eq", "value": "2026-03-29"}]}  # fmt: skip
    assert ask(store, body) == [(1, 1, 1), (3, 1, 2)]  # 00:30 UTC → 01:30; 01:30 and 01:40 UTC → 03:xx


def test_week_month_and_comparison(store: Store) -> None:
    assert ask(store, {"metrics": ["visits"], "dimensions": ["month"]}) == [(d("2026-03-01"), 5)]
    # v6 (2026-03-03) is 21 days before 2026-03-24: its week meets the week of 2026-03-23
    weeks = ask(store, {"metrics": ["visits", "cost"], "dimensions": ["week"]}, compare=PREVIOUS)
    assert weeks == [(d("2026-03-09"), 3, 25.0, 0, 0.0), (d("2026-03-23"), 2, 60.0, 1, 10.0)]
    by_medium = ask(store, {"metrics": ["visits"], "dimensions": ["medium"]}, compare=PREVIOUS)
    assert by_medium == [("cpc", 1, 0), ("direct", 2, 0), ("email", 2, 1)]


def test_sort_limit_offset_and_total(store: Store) -> None:
    body = {"metrics": ["visits", "orders"], "dimensions": ["medium", "landing_page"],
            "sort": [{"by": "visits", "desc": True}], "limit": 2, "offset": 1}  # fmt: skip
    result = run(store, parse_query({"site": "shop", **body}), PERIOD)
    assert list(result.rows) == [("cpc", "/p", 1, 0), ("direct", "/home", 1, 0)]
    assert result.total_rows == 4
    assert [c.name for c in result.columns] == ["medium", "landing_page", "visits", "orders"]
    assert ask(store, {**body, "offset": 3}) == [("direct", "/p", 1, 1)]
    beyond = run(store, parse_query({"site": "shop", **body, "offset": 10}), PERIOD)
    assert list(beyond.rows) == [] and beyond.total_rows == 4


def test_declared_campaigns_with_partner_costs(store: Store) -> None:
    body = {"metrics": ["cost", "clicks", "cpc", "orders", "cpa", "roas", "impressions"],
            "dimensions": ["campaign_key", "campaign_name", "campaign_partner"]}  # fmt: skip
    assert ask(store, body) == [
        ("K1", "Spring", "acme", 25.0, 50, 0.5, 2, 12.5, 6.0, 1000),
        ("K2", "Banner", "displayco", 60.0, 0, None, 0, None, 0.0, 5000),
        (None, None, None, 0.0, 0, None, 1, 0.0, None, 0),  # O3, direct
    ]


def test_crm_dimensions_and_campaign_source(store: Store) -> None:
    body = {"metrics": ["visits", "visitors"], "dimensions": ["crm_gender", "crm_age_band", "crm_csp"]}
    assert ask(store, body) == [
        ("F", "25-34", "cadre", 2, 1),
        ("M", "35-44", "employe", 1, 1),
        (None, None, None, 2, 2),
    ]
    body = {"metrics": ["postview_visits", "postview_conversions", "postview_revenue"], "dimensions": ["campaign_key"]}
    assert ask(store, body) == [("K1", 1, 0, 0.0), ("K2", 1, 1, 30.0)]
    body = {"metrics": ["visits"], "dimensions": ["source", "campaign"]}
    assert ask(store, body) == [("google", None, 1), ("newsletter", "spring", 2), (None, None, 2)]


def test_all_sites_and_site_timezone(store: Store) -> None:
    result = run(store, parse_query({"metrics": ["visits", "hits"], "dimensions": ["site"]}), PERIOD)
    assert list(result.rows) == [("blog", 1, 1), ("shop", 5, 9)]
    assert site_timezone(store, "shop") == PARIS
    assert site_timezone(store, "nowhere") == "UTC" and site_timezone(store, None) == "UTC"


@pytest.mark.parametrize(
    ("flt", "visits"),
    [
        ({"dimension": "medium", "op": "ne", "value": "email"}, 3),
        ({"dimension": "source", "op": "eq", "value": None}, 2),
        ({"dimension": "source", "op": "ne", "value": "google"}, 4),  # a missing source is not google
        ({"dimension": "medium", "op": "in", "value": ["cpc", "direct"]}, 3),
        ({"dimension": "medium", "op": "not_in", "value": ["cpc", "direct"]}, 2),
        ({"dimension": "landing_page", "op": "starts_with", "value": "/h"}, 3),
        ({"dimension": "landing_page", "op": "contains", "value": "om"}, 3),
        ({"dimension": "hour", "op": "in", "value": [1, 3]}, 2),
        ({"dimension": "week", "op": "eq", "value": "2026-03-09"}, 3),
    ],
)
def test_filters(store: Store, flt: dict[str, Any], visits: int) -> None:
    assert ask(store, {"metrics": ["visits"], "filters": [flt]}) == [(visits,)]


def test_segment_keeps_every_fact_of_matching_visitors(store: Store) -> None:
    # visitors with an email visit in the period: A (v1) and B (v3): their visits v1 v2 v3, orders O1 O2,
    # carts of A and B, A's post-view visit
    body = {"metrics": ["visits", "orders", "abandoned_carts", "postview_visits"],
            "segment": {"filters": [{"dimension": "medium", "op": "eq", "value": "email"}]}}  # fmt: skip
    assert ask(store, body) == [(3, 2, 2, 1)]


def test_an_empty_period_gives_a_zero_row(store: Store) -> None:
    empty = Period(date(2025, 1, 1), date(2025, 1, 31), "2025-01", PARIS)
    assert ask(store, {"metrics": ["visits", "revenue", "conversion_rate"]}, period=empty) == [(0, 0.0, None)]


def test_too_many_rows_without_a_limit_is_refused() -> None:
    store = open_store("duckdb:///:memory:")
    with store.connect() as conn:  # 10,001 landing pages on one day
        conn.execute(
            "INSERT INTO visits SELECT 'x' || i, 'shop', 'V', NULL, TIMESTAMPTZ '2026-03-10 10:00:00+00',"
            " TIMESTAMPTZ '2026-03-10 10:00:00+00', DATE '2026-03-10', '/p' || i, 'direct', NULL, NULL, NULL, NULL,"
            " NULL, 1, 0, 0, NULL, NULL, NULL FROM range(10001) t(i)"
        )
    body = {"metrics": ["visits"], "dimensions": ["landing_page"]}
    with pytest.raises(QueryError, match="too many rows: the query gives 10001 rows, more than the maximum 10000"):
        run(store, parse_query(body), PERIOD)
    page = run(store, parse_query({**body, "limit": 10_000, "offset": 10_000}), PERIOD)
    assert list(page.rows) == [("/p9999", 1)] and page.total_rows == 10_001
    store.close()
