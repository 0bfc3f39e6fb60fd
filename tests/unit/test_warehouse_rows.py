"""Decoded records -> the analytics store's rows (no broker, no database)."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from passerelle.connectors.warehouse import ddl
from passerelle.connectors.warehouse.rows import (
    CAMPAIGNS,
    COLUMNS,
    HITS,
    LINKS,
    PATHS,
    PRIVACY,
    PROFILES,
    Batch,
    SiteZones,
    parse_site_timezones,
)
from tests.records import enriched_hit

T0 = datetime(2026, 3, 1, 22, 30, tzinfo=UTC)  # 23:30 in Paris, 17:30 in New York
MS = int(T0.timestamp() * 1000)
PARIS = SiteZones({"shop.example": "Europe/Paris"})


def at(minutes: int) -> int:
    return MS + minutes * 60_000


def test_columns_are_the_tables_columns_in_ddl_order() -> None:
    import duckdb

    conn = duckdb.connect()
    for sql in ddl.statements():
        conn.execute(sql)
    for table, columns in COLUMNS.items():
        assert [r[0] for r in conn.execute(f"DESCRIBE {table}").fetchall()] == [c for c, _ in columns], table


def test_day_is_the_sites_local_day() -> None:
    batch = Batch(SiteZones({"shop.example": "Europe/Paris", "blog.example": "America/New_York"}))
    batch.add(HITS, "v1", enriched_hit("v1", at(60), event_id="a"))  # 00:30 in Paris on the 2nd
    batch.add(HITS, "v2", enriched_hit("v2", at(60), event_id="b", site="blog.example"))  # 18:30 on the 1st
    batch.add(HITS, "v3", enriched_hit("v3", at(60), event_id="c", site="other.example"))  # UTC: 23:30 on the 1st
    days = {row[0]: row[5] for row in batch.inserts["hits"].values()}
    assert days == {"a": date(2026, 3, 2), "b": date(2026, 3, 1), "c": date(2026, 3, 1)}


def test_visit_and_daily_add_up_and_the_first_hit_sets_the_visit() -> None:
    batch = Batch(PARIS)
    batch.add(HITS, "v1", enriched_hit("v1", at(0), event_id="h1", campaign="K1"))
    batch.add(HITS, "v1", enriched_hit("v1", at(5), event_id="h2", campaign="K1", customer="c1", order=("o1", 30.0)))
    batch.add(HITS, "v1", enriched_hit("v1", at(5), event_id="h2", campaign="K1", customer="c1", order=("o1", 30.0)))
    batch.add(HITS, "v2", enriched_hit("v2", at(1), event_id="h3"))
    (v1, v2) = batch.visit_rows()
    assert v1[:4] == ("v1:1", "shop.example", "v1", "c1")
    assert (v1[4], v1[5]) == (T0, datetime.fromtimestamp(at(5) / 1000, UTC))  # started_at, last_hit_at
    assert (v1[8], v1[11], v1[14], v1[15], v1[16]) == ("email", "K1", 2, 1, 30.0)  # the duplicate hit counted once
    assert v2[14] == 1
    assert sorted(batch.daily_rows(existing_visits=set())) == [
        ("shop.example", date(2026, 3, 1), "direct", "", "", 1, 1, 0, 0.0),
        ("shop.example", date(2026, 3, 1), "email", "", "K1", 2, 1, 1, 30.0),
    ]
    # A visit already in the store (its first hit in an earlier batch) adds hits, not a visit.
    assert ("shop.example", date(2026, 3, 1), "email", "", "K1", 2, 0, 1, 30.0) in batch.daily_rows({"v1:1"})
    assert list(batch.inserts["identities"]) == [("v1", "c1")]


def test_compacted_tables_keep_the_latest_value_and_a_tombstone_deletes() -> None:
    batch = Batch(PARIS)
    campaign = {"key": "K1", "name": "Spring", "partner": "mailer", "channel": "email", "medium": "email",
                "cost_model": None, "cost_amount": None, "currency": None, "declared_at": MS}  # fmt: skip
    batch.add(CAMPAIGNS, "K1", campaign)
    batch.add(CAMPAIGNS, "K1", {**campaign, "name": "Summer"})
    batch.add(CAMPAIGNS, "K2", campaign)
    batch.add(CAMPAIGNS, "K2", None)
    assert batch.campaigns["K1"] is not None and batch.campaigns["K1"][1] == "Summer"
    assert batch.campaigns["K2"] is None


def test_conversion_paths_keep_the_highest_revision() -> None:
    batch = Batch(PARIS)
    path = {"conversion_id": "cv1", "visitor_id": "v1", "customer_id": None, "order_id": None, "revenue": 1.0,
            "currency": None, "converted_at": MS, "path_length": 1, "time_to_conversion_ms": 0, "revision": 2,
            "touchpoints": [{"channel": "email"}, {"channel": "direct"}]}  # fmt: skip
    batch.add(PATHS, "v1", path)
    batch.add(PATHS, "v1", {**path, "revision": 1})
    row = batch.paths["cv1"]
    assert (row[-1], row[9], row[10]) == (2, "email", "direct")


def test_erasures_drop_the_persons_older_records_and_consent_changes_erase_nothing() -> None:
    batch = Batch(PARIS)
    batch.add(PRIVACY, "c1", {"kind": "consent_change", "customer_id": "c1", "visitor_id": None,
                              "requested_at": at(10)})  # fmt: skip
    assert batch.erasures == []
    batch.add(PRIVACY, "c1", {"kind": "erasure", "customer_id": "c1", "visitor_id": "v1", "requested_at": at(10)})
    batch.add(PROFILES, "c2", None, timestamp_ms=at(10))
    batch.add(PROFILES, "c3", {"customer_id": "c3"})  # an update: nothing to erase
    assert [(e.customer_id, e.visitor_id) for e in batch.erasures] == [("c1", "v1"), ("c2", None)]
    batch.add(HITS, "v1", enriched_hit("v1", at(5), event_id="old"))  # before the erasure: never written
    batch.add(HITS, "v9", enriched_hit("v9", at(5), event_id="old-c2", customer="c2"))
    batch.add(HITS, "v1", enriched_hit("v1", at(20), event_id="new"))  # after it: a new life
    batch.add(LINKS, "v1", {"visitor_id": "v1", "customer_id": "c1", "site": "s", "linked_at": at(1), "source": "x"})
    assert list(batch.inserts["hits"]) == ["new"]
    assert batch.inserts["identities"] == {}


@pytest.mark.parametrize("text", ["shop", "shop=", "shop=Mars/Olympus"])
def test_malformed_site_timezones_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="shop"):
        parse_site_timezones(text)


def test_site_timezones_parse() -> None:
    assert parse_site_timezones(" shop=Europe/Paris , blog=America/New_York") == {
        "shop": "Europe/Paris", "blog": "America/New_York"
    }  # fmt: skip
