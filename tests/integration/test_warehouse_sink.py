"""The analytics store's sink on a real broker and registry, into DuckDB and a real PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from passerelle.connectors.warehouse.sink import DEFAULT_TOPICS, SCHEMAS, Sink, SinkConfig
from passerelle.connectors.warehouse.store import Store, open_store
from passerelle.deploy.local import postgres
from passerelle.schemas.catalog import load_catalog
from passerelle.schemas.clients import Connection, consumer
from tests.integration.kafka_helpers import create_topics, produce_avro
from tests.records import enriched_hit

CATALOG = load_catalog()
T0 = datetime(2026, 3, 1, 22, 30, tzinfo=UTC)  # 23:30 in Paris: the local day is 2026-03-01; 00:30 the 2nd
MS = int(T0.timestamp() * 1000)


def make_topics(unique: Callable[[str], str], bootstrap: str, hit_partitions: int = 3) -> dict[str, str]:
    topics = {role: unique(f"wh.{role}") for role in DEFAULT_TOPICS}
    create_topics(bootstrap, {t: hit_partitions if role == "hits" else 1 for role, t in topics.items()})
    return topics


def produce(bootstrap: str, registry: str, topics: dict[str, str], role: str, records: Iterable[Any], **kw: Any) -> int:
    return produce_avro(bootstrap, registry, topics[role], CATALOG.schema_text(SCHEMAS[role]), records, **kw)


def stored(store: Store, topics: dict[str, str]) -> dict[str, int]:
    """Records consumed per role according to the store (the sum of next offsets: one producer, no gaps)."""
    with store.connect() as conn:
        rows = conn.execute("SELECT topic, SUM(next_offset) FROM sink_offsets GROUP BY topic").fetchall()
        if store.dialect == "postgres":
            conn.commit()
    by_topic = {t: int(n) for t, n in rows}
    return {role: by_topic.get(t, 0) for role, t in topics.items()}


def wait_for(store: Store, topics: dict[str, str], expected: dict[str, int], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = stored(store, topics)
        if all(got[r] >= n for r, n in expected.items()):
            return
        time.sleep(0.2)
    raise AssertionError(f"the sink did not consume {expected} within {timeout}s: {stored(store, topics)}")


def query(store: Store, sql: str) -> list[tuple[Any, ...]]:
    with store.connect() as conn:
        rows = conn.execute(sql).fetchall()
        if store.dialect == "postgres":
            conn.commit()
    return [tuple(r) for r in rows]


@pytest.fixture(params=["duckdb", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "duckdb":
        opened = open_store(f"duckdb:///{tmp_path / 'warehouse.duckdb'}")
    else:
        pg: postgres.Postgres = request.getfixturevalue("crm_postgres")
        name = f"analytics_{os.getpid()}_{int(time.time() * 1000) % 10**8}"
        postgres.psql(pg, f"CREATE DATABASE {name}")
        opened = open_store(f"postgresql://postgres:{pg.passwords()['postgres']}@{pg.host}:{pg.port}/{name}")
    try:
        yield opened
    finally:
        opened.close()


def test_every_topic_into_the_store_then_an_erasure(
    store: Store, kafka_bootstrap: str, schema_registry_url: str, unique: Callable[[str], str]
) -> None:
    topics = make_topics(unique, kafka_bootstrap)
    dlq = unique("wh.dlq")
    create_topics(kafka_bootstrap, {dlq: 1})
    at = lambda minutes: MS + minutes * 60_000  # noqa: E731
    hits = [  # v1: a visit from direct (then identified, an order of 30 EUR); v2: a K1 email visit just after midnight
        enriched_hit("v1", at(0), event_id="h1"),
        enriched_hit("v1", at(5), event_id="h2", customer="c1", order=("o1", 30.0)),
        enriched_hit("v2", at(60), event_id="h3", campaign="K1"),
        enriched_hit("v2", at(61), event_id="h4", campaign="K1"),
    ]
    n_hits = produce(kafka_bootstrap, schema_registry_url, topics, "hits", [(h["visitor_id"], h) for h in hits],
                     raw=[(b"v9", b"not avro")])  # fmt: skip
    base = {"site": "shop.example", "customer_id": "c1"}
    produce(kafka_bootstrap, schema_registry_url, topics, "carts", [("v1", {
        **base, "event_id": "cart1", "visitor_id": "v1", "email": None, "episode_id": "ep1", "lines": [],
        "value": 30.0, "currency": "EUR", "viewed_products": [], "crm": None, "marketing_consent": True,
        "site_marketing_consent": None, "last_activity_at": at(1), "detected_at": at(2)})])  # fmt: skip
    produce(kafka_bootstrap, schema_registry_url, topics, "messages", [("c1", {
        **base, "message_id": "m1", "sequence_id": "s1", "step": 1, "email": "c1@example.com", "products": [],
        "lines": [], "promotion": None, "created_at": at(3)})])  # fmt: skip
    produce(kafka_bootstrap, schema_registry_url, topics, "deliveries", [("m1", {
        "message_id": "m1", "sequence_id": "s1", "step": 1, "customer_id": "c1", "partner": "mailer",
        "outcome": "delivered", "reason": "", "attempts": 1, "last_status": 200, "last_answer": None,
        "latency_ms": 12, "source_partition": 0, "source_offset": 0, "first_attempt_at": at(3),
        "decided_at": at(3)})])  # fmt: skip
    campaign = {"key": "K1", "name": "Spring", "partner": "mailer", "channel": "email", "medium": "email",
                "tagged_url_template": "", "valid_from": None, "valid_to": None, "cost_model": "cpc",
                "cost_amount": 0.5, "currency": "EUR", "declared_at": at(-60)}  # fmt: skip
    produce(kafka_bootstrap, schema_registry_url, topics, "campaigns", [("K1", campaign), ("K2", {**campaign,
            "key": "K2"}), ("K2", None)])  # fmt: skip
    produce(kafka_bootstrap, schema_registry_url, topics, "postview", [("v1", {
        **base, "postview_id": "pv1", "kind": "visit", "visitor_id": "v1", "campaign_key": "K1",
        "impression_id": "i1", "impression_time": at(-10), "impressions": 1, "event_id": "h1", "visit_id": "v1:1",
        "event_time": at(0), "delay_ms": 600_000, "visit_medium": "direct", "visit_campaign": None,
        "order_id": None, "revenue": None, "currency": None})])  # fmt: skip
    produce(kafka_bootstrap, schema_registry_url, topics, "metrics", [("pm1", {
        "metric_id": "pm1", "partner": "mailer", "campaign_key": "K1", "date": "2026-03-01", "metric": "cost",
        "value": 12.5, "currency": "EUR", "received_at": at(0)})])  # fmt: skip
    path = {"conversion_id": "cv1", "visitor_id": "v1", "customer_id": "c1", "order_id": "o1", "revenue": 30.0,
            "currency": "EUR", "touchpoints": [], "converted_at": at(5), "goal": None, "revenue_cents": 3000,
            "path_length": 1, "time_to_conversion_ms": 300_000, "revision": 0, "models": []}  # fmt: skip
    produce(kafka_bootstrap, schema_registry_url, topics, "paths", [("v1", path), ("v1", {**path, "revision": 1,
            "path_length": 2})])  # fmt: skip
    run = {"period": "last30", "period_start": at(-43200), "period_end": at(0), "computed_at": at(1), "journeys": 9,
           "conversions": 3, "channels": [{"channel": "email", "removal_effect": 0.5, "credit": 0.5,
                                           "conversions": 1.5}]}  # fmt: skip
    rerun = {**run, "computed_at": at(2), "conversions": 4, "channels": [
        {"channel": "direct", "removal_effect": 0.25, "credit": 0.25, "conversions": 1.0},
        {"channel": "search", "removal_effect": 0.75, "credit": 0.75, "conversions": 3.0}]}  # fmt: skip
    produce(kafka_bootstrap, schema_registry_url, topics, "markov", [("last30", run), ("march", {**run,
            "period": "march"}), ("last30", rerun), ("march", None)])  # fmt: skip

    config = SinkConfig(
        connection=Connection.plain(kafka_bootstrap, schema_registry_url),
        topics=topics,
        site_timezones={"shop.example": "Europe/Paris"},
        group_id=unique("wh.group"),
        dead_letter_topic=dlq,
        max_wait_s=0.2,
    )
    stop = threading.Event()
    sink = Sink(store, config)
    thread = threading.Thread(target=sink.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(store, topics, {"hits": n_hits, "paths": 2, "campaigns": 3, "metrics": 1, "postview": 1,
                                 "markov": 4})
        assert sorted(r[0] for r in query(store, "SELECT event_id FROM hits")) == ["h1", "h2", "h3", "h4"]
        d1, d2 = date(2026, 3, 1), date(2026, 3, 2)
        assert query(store, "SELECT visit_id, day, landing_page, medium, hits, orders, revenue, customer_id "
                     "FROM visits ORDER BY visit_id") == [
            ("v1:1", d1, "https://shop.example/", "direct", 2, 1, 30.0, "c1"),
            ("v2:1", d2, "https://shop.example/", "email", 2, 0, 0.0, None),
        ]  # fmt: skip
        assert query(
            store, "SELECT day, medium, source, campaign_key, hits, visits, orders, revenue FROM daily ORDER BY day"
        ) == [(d1, "direct", "", "", 2, 1, 1, 30.0), (d2, "email", "", "K1", 2, 1, 0, 0.0)]
        assert query(store, "SELECT visitor_id, customer_id FROM identities") == [("v1", "c1")]
        assert query(store, "SELECT key, name, cost_amount FROM campaigns") == [("K1", "Spring", 0.5)]  # K2 deleted
        assert query(store, "SELECT metric_id, day, value FROM partner_metrics") == [("pm1", d1, 12.5)]
        assert query(store, "SELECT conversion_id, revision, path_length FROM conversion_paths") == [("cv1", 1, 2)]
        # The latest run of a label replaces its channels whole (email is gone); a tombstone deletes the label.
        assert query(store, "SELECT period, channel, period_conversions, credit, conversions FROM markov_credits "
                     "ORDER BY channel") == [("last30", "direct", 4, 0.25, 1.0), ("last30", "search", 4, 0.75, 3.0)]
        assert query(store, "SELECT event_id, day FROM carts_abandoned") == [("cart1", d1)]
        assert query(store, "SELECT message_id, has_promotion FROM remarketing_messages") == [("m1", False)]
        assert query(store, "SELECT message_id, outcome FROM remarketing_deliveries") == [("m1", "delivered")]
        assert query(store, "SELECT postview_id, day FROM postview") == [("pv1", d1)]
        assert query(store, "SELECT site, timezone FROM sites") == [("shop.example", "Europe/Paris")]
        assert dead_letters(kafka_bootstrap, dlq) == [b"not avro"]

        # An erasure of customer c1 reaches their anonymous hits too (v1, linked by the identified hit).
        produce(kafka_bootstrap, schema_registry_url, topics, "privacy", [("c1", {
            "request_id": "r1", "kind": "erasure", "customer_id": "c1", "visitor_id": None,
            "marketing_consent": None, "requested_at": at(120)})])  # fmt: skip
        wait_for(store, topics, {"privacy": 1})
        for table, column in (("hits", "event_id"), ("visits", "visit_id")):
            assert sorted(r[0] for r in query(store, f"SELECT {column} FROM {table}")) == (
                ["h3", "h4"] if table == "hits" else ["v2:1"]
            )
        for table in ("identities", "carts_abandoned", "remarketing_messages", "remarketing_deliveries",
                      "postview", "conversion_paths"):  # fmt: skip
            assert query(store, f"SELECT COUNT(*) FROM {table}") == [(0,)], table
        # A late record of the erased person, dated before the erasure, is never written.
        produce(kafka_bootstrap, schema_registry_url, topics, "hits", [("v1", enriched_hit("v1", at(30),
                event_id="h5"))])  # fmt: skip
        wait_for(store, topics, {"hits": n_hits + 1})
        assert sorted(r[0] for r in query(store, "SELECT event_id FROM hits")) == ["h3", "h4"]
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()


def dead_letters(bootstrap: str, topic: str) -> list[bytes | None]:
    reader = consumer(Connection.plain(bootstrap), f"{topic}-reader", {"auto.offset.reset": "earliest"})
    reader.subscribe([topic])
    out: list[bytes | None] = []
    deadline = time.monotonic() + 20
    while not out and time.monotonic() < deadline:
        out += [m.value() for m in reader.consume(10, timeout=1) if m.error() is None]
    reader.close()
    return out


# --- exactly-once through SIGKILLs -------------------------------------------------------------------------------

N_HITS = int(os.environ.get("PASSERELLE_TEST_WAREHOUSE_HITS", "200000"))


def test_sigkill_three_times_loses_and_duplicates_nothing(
    kafka_bootstrap: str, schema_registry_url: str, unique: Callable[[str], str], tmp_path: Path
) -> None:
    topics = make_topics(unique, kafka_bootstrap, hit_partitions=6)
    group = unique("wh.group")
    db = tmp_path / "warehouse.duckdb"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PASSERELLE_")},
        "PASSERELLE_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "PASSERELLE_SCHEMA_REGISTRY_URL": schema_registry_url,
        "PASSERELLE_WAREHOUSE_TOPICS": ",".join(f"{r}={t}" for r, t in topics.items()),
        "PASSERELLE_WAREHOUSE_MAX_WAIT_MS": "200",
        "PASSERELLE_STATE_DIR": str(tmp_path),
    }
    cmd = [sys.executable, "-m", "passerelle", "warehouse", "--store", f"duckdb:///{db}", "--group-id", group]
    log = (tmp_path / "sink.log").open("ab")

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=log)

    hits = (enriched_hit(f"v{i % 5000}", MS + i, event_id=f"e{i}", visit=1 + i // 50_000) for i in range(N_HITS))
    produced: list[int] = []
    producing = threading.Thread(
        target=lambda: produced.append(
            produce(kafka_bootstrap, schema_registry_url, topics, "hits", ((h["visitor_id"], h) for h in hits))
        ),
        daemon=True,
    )
    sink = start()
    try:
        producing.start()
        for k in range(3):  # kill it mid-run, once it wrote 20%, 40%, 60% of the hits (busy writing the next batch)
            wait_committed(kafka_bootstrap, group, topics["hits"], N_HITS * (k + 1) // 5, timeout=120)
            sink.send_signal(signal.SIGKILL)
            sink.wait(10)
            sink = start()
        producing.join(120)
        assert produced == [N_HITS]
        wait_committed(kafka_bootstrap, group, topics["hits"], N_HITS, timeout=120)
        sink.send_signal(signal.SIGTERM)
        assert sink.wait(30) == 0
    finally:
        if sink.poll() is None:
            sink.kill()
            sink.wait(10)
        log.close()
    store = open_store(f"duckdb:///{db}")
    try:
        assert query(store, "SELECT COUNT(*), COUNT(DISTINCT event_id) FROM hits") == [(N_HITS, N_HITS)]
        assert query(store, "SELECT SUM(hits) FROM visits") == [(N_HITS,)]
        assert query(store, "SELECT SUM(hits), SUM(visits) FROM daily") == [
            (N_HITS, query(store, "SELECT COUNT(*) FROM visits")[0][0])
        ]
    finally:
        store.close()


def wait_committed(bootstrap: str, group: str, topic: str, total: int, timeout: float) -> None:
    """Until the group's committed offsets (informational, committed after each store transaction) reach ``total``."""
    from confluent_kafka import TopicPartition

    reader = consumer(Connection.plain(bootstrap), group)
    deadline = time.monotonic() + timeout
    done = 0
    try:
        while time.monotonic() < deadline:
            parts = [TopicPartition(topic, p) for p in range(6)]
            done = sum(max(0, tp.offset) for tp in reader.committed(parts, timeout=10))
            if done >= total:
                return
            time.sleep(0.1)
    finally:
        reader.close()
    raise AssertionError(f"the sink committed {done} of {total} hits within {timeout}s")
