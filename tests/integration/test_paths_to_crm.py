"""Issue 14, end to end: hits of one person on two devices -> one conversion path -> CRM rows -> erasure.

The conversion-paths processor runs on topics of this test as
``test_conversion_paths`` runs it (its ``setup`` and ``running`` fixtures); the
shipped ``crm-paths-sink`` and ``crm-channels-sink`` run on the session's
Connect worker, renamed as ``test_crm_paths_sink`` renames them but reading the
processor's private ``crm.conversion_paths`` and ``crm.customer_channels``, and
write the migrated tables of the session's CRM database. A laptop's anonymous
campaign visit, identified by a later login on the laptop; an anonymous visit
on a phone whose key hashes to another partition, a login and an order there:
one path with both devices' visits, the PostgreSQL rows equal to the topic's
records, then a CRM tombstone erases the customer and the rows are deleted.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest

from passerelle.connectors.connect import configs
from passerelle.deploy.local import connect, postgres
from passerelle.streams.conversion_paths.rules import DAY_MS, MINUTE_MS
from tests.integration.connect_helpers import cleanup, create_topics, psql_rows
from tests.integration.kafka_helpers import TopicReader, produce_avro
from tests.integration.test_conversion_paths import (  # noqa: F401 - setup and running are fixtures
    CATALOG,
    Setup,
    connect_view,
    partition_of,
    running,
    setup,
)
from tests.integration.test_crm_paths_sink import CHANNEL_COLUMNS, PATH_COLUMNS, Sink, Sinks, wait_for
from tests.records import enriched_hit

pytestmark = pytest.mark.integration


def on_topic(sink: Sink, topic: str) -> None:
    """The shipped sink, renamed as ``test_crm_paths_sink`` renames it, reading the processor's topic instead."""
    sink.topic = topic
    sink.connector = configs.ConnectorFile(sink.connector.name, {**sink.connector.config, "topics": topic})


@pytest.fixture
def crm_sinks(
    setup: Setup,  # noqa: F811
    kafka_bootstrap: str,
    connect_worker: connect.Worker,
    crm_postgres: postgres.Postgres,
) -> Iterator[Sinks]:
    s = Sinks(kafka_bootstrap, connect_worker, crm_postgres)
    on_topic(s.paths, setup.topics.crm_paths)
    on_topic(s.channels, setup.topics.customer_channels)
    create_topics(kafka_bootstrap, [s.paths.dlq])
    configs.apply(s.client, [s.paths.connector, s.channels.connector], wait=90)
    try:
        yield s
    finally:
        cleanup(s.client, crm_postgres, s.paths.connector, s.channels.connector)
        del s.producer


def poll(reader: TopicReader, done: Callable[[], bool], timeout: float, what: str) -> None:
    """Read ``reader`` until ``done()``, at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        reader.read(until=len(reader.records) + 1, timeout=0.5)
    assert done(), f"{what}: not within {timeout}s"


def test_two_devices_one_path_in_the_crm_database_and_erasure_deletes_the_rows(
    setup: Setup,  # noqa: F811
    running: list[BaseException],  # noqa: F811
    crm_sinks: Sinks,
) -> None:
    s, t, pg = setup, setup.topics, crm_sinks.pg
    tag = crm_sinks.tag  # ids of this test only: the CRM database is the session's
    customer, order = f"{tag}-c1", f"{tag}-O1"
    cid = f"order:shop.example:{order}"
    now = int(time.time() * 1000)
    laptop = f"{tag}-laptop"
    home = partition_of(s, t.hits_enriched, laptop)
    phone = next(p for i in range(100) if partition_of(s, t.hits_enriched, p := f"{tag}-phone-{i}") != home)

    def h(visitor: str, n: int, at: int, customer: str | None = None, **kw: Any) -> dict[str, Any]:
        return enriched_hit(visitor, at, event_id=f"{visitor}-{n}", visit=1, customer=customer, **kw)

    def send(hits: list[dict[str, Any]]) -> None:
        produce_avro(s.bootstrap, s.registry, t.hits_enriched, CATALOG.schema_text("EnrichedHit"),
                     [(x["visitor_id"], x) for x in hits])  # fmt: skip

    paths = TopicReader(s.bootstrap, s.registry, t.paths)
    crm = TopicReader(s.bootstrap, s.registry, t.crm_paths, decode=False)
    channels = TopicReader(s.bootstrap, s.registry, t.customer_channels, decode=False)
    try:
        # The laptop: an anonymous visit from an email campaign, identified by a login later in the visit (the
        # anonymous touchpoint is handed over to the customer). Its summary row says it reached the customer.
        send([h(laptop, 1, now - 2 * DAY_MS, campaign="EREC-7"), h(laptop, 2, now - 2 * DAY_MS + MINUTE_MS, customer)])
        poll(channels, lambda: (connect_view(channels).get(customer) or {}).get("touchpoints") == 1, 30,
             "the laptop's visit on the customer's channels")  # fmt: skip
        assert not running, running

        # The phone, on another partition: an anonymous social visit, a login, an order.
        send([
            h(phone, 1, now - 10 * MINUTE_MS, medium="social"),
            h(phone, 2, now - 9 * MINUTE_MS, customer, medium="social"),
            h(phone, 3, now - 5 * MINUTE_MS, customer, medium="social", order=(order, 120.5)),
        ])  # fmt: skip

        def of_conversion() -> list[dict[str, Any]]:
            return [v for _, v in paths.records if v["conversion_id"] == cid]

        poll(paths, lambda: bool(of_conversion()), 30, "the path on conversions.paths")
        poll(crm, lambda: connect_view(crm).get(cid) is not None, 15, "the path on crm.conversion_paths")
        poll(channels, lambda: (connect_view(channels).get(customer) or {}).get("last_conversion_id") == cid, 15,
             "the conversion on the customer's channels")  # fmt: skip
        assert not running, running

        # One path, with both devices' visits.
        [path] = of_conversion()
        assert path["customer_id"] == customer and path["visitor_id"] == phone and path["revision"] == 0
        assert [(tp["visitor_id"], tp["channel"]) for tp in path["touchpoints"]] == [
            (laptop, "email"), (phone, "social")]  # fmt: skip
        assert path["path_length"] == 2 and path["revenue_cents"] == 12_050

        # The CRM row equals the topic's record, column by column (money to the cent, credits as JSON).
        record = connect_view(crm)[cid]
        assert record is not None
        assert (record["customer_id"], record["order_id"], record["revenue"], record["path_length"]) == (
            customer, order, 120.5, 2)  # fmt: skip
        assert record["channels"] == "email > social" and record["revision"] == path["revision"]
        linear = next(m for m in path["models"] if m["model"] == "linear")
        assert json.loads(record["credits"])["linear"] == {
            "credits": linear["credits"], "revenue_cents": linear["revenue_cents"]}  # fmt: skip
        wait_for(crm_sinks, crm_sinks.paths, PATH_COLUMNS, {cid: record})
        [(revenue, credits)] = psql_rows(pg, "SELECT revenue, credits FROM conversion_paths "
                                             "WHERE conversion_id = %s", (cid,))  # fmt: skip
        assert revenue == Decimal("120.50") and credits == json.loads(record["credits"])

        summary = connect_view(channels)[customer]
        assert summary is not None and summary["touchpoints"] == 2 and summary["channels"] == "social, email"
        wait_for(crm_sinks, crm_sinks.channels, CHANNEL_COLUMNS, {customer: summary})

        # Erasure: a CRM tombstone; the processor writes tombstones, the sinks delete both rows.
        produce_avro(s.bootstrap, s.registry, t.crm_profiles, CATALOG.schema_text("CrmProfile"), [(customer, None)])
        poll(crm, lambda: connect_view(crm)[cid] is None, 15, "the path's tombstone")
        poll(channels, lambda: connect_view(channels)[customer] is None, 15, "the summary's tombstone")
        wait_for(crm_sinks, crm_sinks.paths, PATH_COLUMNS, {cid: None}, timeout=20)
        wait_for(crm_sinks, crm_sinks.channels, CHANNEL_COLUMNS, {customer: None}, timeout=20)
        for sql in ("SELECT count(*) FROM conversion_paths WHERE customer_id = %s",
                    "SELECT count(*) FROM customer_channels WHERE customer_id = %s"):  # fmt: skip
            assert psql_rows(pg, sql, (customer,)) == [(0,)]
        assert not running, running
    finally:
        paths.close()
        crm.close()
        channels.close()
