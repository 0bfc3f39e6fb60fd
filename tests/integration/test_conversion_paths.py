"""Conversion paths on the real broker and registry: one path across two devices, CRM rows, erasure.

The processor runs as ``passerelle conversion-paths`` runs it (a ``Runner``,
exactly-once) on topics of this test, 3 partitions each (co-partitioned). A
customer visits on a laptop (identified), then anonymously on a phone whose
key hashes to another partition, logs in on the phone and orders there: one
``ConversionPath`` with the laptop's and the phone's visits, read back from
``conversions.paths``, and the same path as the JDBC sink reads
``crm.conversion_paths`` (Connect JSON). A CRM tombstone then deletes the
CRM rows (tombstones).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from passerelle.schemas.catalog import load_catalog
from passerelle.schemas.clients import Connection, registry_client
from passerelle.schemas.serde import AvroEncoder
from passerelle.streams.conversion_paths.processor import ConversionPathsProcessor, ConversionPathsTopics
from passerelle.streams.conversion_paths.rules import DAY_MS, MINUTE_MS
from passerelle.streams.runtime import Runner, RunnerConfig
from tests.integration.kafka_helpers import STRING_KEY, TopicReader, create_topics, produce_avro
from tests.records import enriched_hit

pytestmark = pytest.mark.integration
CATALOG = load_catalog()
PARTITIONS = 3


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (the Java client's and librdkafka's ``murmur2_random`` for non-null keys)."""
    m, r = 0x5BD1E995, 24
    length = len(data)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    for i in range(0, length - length % 4, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    rest = length % 4
    tail = data[length - rest :]
    if rest == 3:
        h ^= tail[2] << 16
    if rest >= 2:
        h ^= tail[1] << 8
    if rest >= 1:
        h ^= tail[0]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


@dataclass(frozen=True)
class Setup:
    topics: ConversionPathsTopics
    app: str
    dlq: str
    bootstrap: str
    registry: str


@pytest.fixture
def setup(unique: Callable[[str], str], kafka_bootstrap: str, schema_registry_url: str) -> Setup:
    t = ConversionPathsTopics(
        hits_enriched=unique("hits.enriched"), postview=unique("ads.postview"), events=unique("paths.events"),
        paths=unique("conversions.paths"), crm_paths=unique("crm.conversion_paths"),
        customer_channels=unique("crm.customer_channels"), crm_profiles=unique("crm.profiles"),
        privacy_requests=None,
    )  # fmt: skip
    dlq = unique("dlq")
    create_topics(kafka_bootstrap, {t.hits_enriched: PARTITIONS, t.postview: PARTITIONS, t.events: PARTITIONS,
                                    t.paths: 1, dlq: 1})  # fmt: skip
    create_topics(kafka_bootstrap, {t.crm_paths: 1, t.customer_channels: 1, t.crm_profiles: 1},
                  {"cleanup.policy": "compact"})  # fmt: skip
    return Setup(t, unique("conversion-paths"), dlq, kafka_bootstrap, schema_registry_url)


def runner(s: Setup) -> Runner:
    t = s.topics
    names = {t.hits_enriched: "EnrichedHit", t.postview: "PostView", t.events: "PathEvent",
             t.paths: "ConversionPath", t.crm_paths: "CrmConversionPath",
             t.customer_channels: "CustomerChannels"}  # fmt: skip
    processor = ConversionPathsProcessor(t)
    return Runner(processor, RunnerConfig(
        app_id=s.app, bootstrap_servers=s.bootstrap, schema_registry_url=s.registry,
        input_schemas={topic: CATALOG.schema_text(names[topic]) for topic in processor.inputs},
        output_schemas={topic: CATALOG.schema_text(names[topic]) for topic in processor.outputs},
        wire_formats={t.crm_paths: "connect-json", t.customer_channels: "connect-json"}, dead_letter_topic=s.dlq,
        static_membership=True,
    ))  # fmt: skip


@pytest.fixture
def running(setup: Setup) -> Iterator[list[BaseException]]:
    r = runner(setup)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            r.run()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True, name="conversion-paths")
    thread.start()
    yield errors
    r.stop()
    thread.join(30)
    assert not thread.is_alive()


def partition_of(s: Setup, topic: str, key: str) -> int:
    """Where the producer puts ``key`` (its Avro bytes hashed with murmur2), to pick devices on two partitions."""
    client = registry_client(Connection.plain(s.bootstrap, s.registry))
    data = AvroEncoder.for_subject(client, f"{topic}-key", STRING_KEY).encode(key)
    return (murmur2(data) & 0x7FFFFFFF) % PARTITIONS


def connect_view(reader: TopicReader) -> dict[str, dict[str, Any] | None]:
    """A Connect JSON topic as the sink reads it: the latest payload per key (None: a tombstone)."""
    return {msg.key().decode(): None if v is None else json.loads(v)["payload"] for msg, v in reader.records}


def test_one_path_across_two_devices_reaches_the_crm_rows_and_erasure_deletes_them(
    setup: Setup, running: list[BaseException]
) -> None:
    s, t = setup, setup.topics
    now = int(time.time() * 1000)
    laptop = "laptop-c1"
    home = partition_of(s, t.hits_enriched, laptop)
    phone = next(f"phone-c1-{i}" for i in range(100) if partition_of(s, t.hits_enriched, f"phone-c1-{i}") != home)

    def h(visitor: str, n: int, at: int, visit: int, customer: str | None = None, **kw: Any) -> dict[str, Any]:
        return enriched_hit(visitor, at, event_id=f"{visitor}-{n}", visit=visit, customer=customer, **kw)

    hits = [
        h(laptop, 1, now - 2 * DAY_MS, 1, "c1", campaign="EREC-7"),  # the laptop: identified, an email visit
        h(phone, 1, now - DAY_MS, 1, medium="social"),  # the phone: anonymous visits
        h(phone, 2, now - 10 * MINUTE_MS, 2, medium="cpc"),
        h(phone, 3, now - 9 * MINUTE_MS, 2, "c1", medium="cpc"),  # login on the phone
        h(phone, 4, now - 5 * MINUTE_MS, 2, "c1", medium="cpc", order=("O-77", 120.5)),
        h("anon-1", 1, now - 5 * MINUTE_MS, 1, order=("O-78", 10.0)),  # never identified: no CRM row
    ]
    produce_avro(s.bootstrap, s.registry, t.hits_enriched, CATALOG.schema_text("EnrichedHit"),
                 [(x["visitor_id"], x) for x in hits])  # fmt: skip
    written = TopicReader(s.bootstrap, s.registry, t.hits_enriched)
    try:
        where = {v["visitor_id"]: msg.partition() for msg, v in written.read(until=len(hits), timeout=15)}
    finally:
        written.close()
    assert where[laptop] != where[phone]  # the devices' hits, and their visitor states, on two partitions
    paths = TopicReader(s.bootstrap, s.registry, t.paths)
    crm = TopicReader(s.bootstrap, s.registry, t.crm_paths, decode=False)
    channels = TopicReader(s.bootstrap, s.registry, t.customer_channels, decode=False)
    try:
        paths.read(until=2, timeout=30)
        assert not running, running
        by_id = {v["conversion_id"]: v for _, v in paths.records}
        path = by_id["order:shop.example:O-77"]
        assert path["customer_id"] == "c1" and path["visitor_id"] == phone
        assert [tp["channel"] for tp in path["touchpoints"]] == ["email", "social", "cpc"]
        assert [tp["visitor_id"] for tp in path["touchpoints"]] == [laptop, phone, phone]
        assert path["path_length"] == 3 and path["revenue_cents"] == 12_050
        for m in path["models"]:
            assert sum(m["revenue_cents"]) == 12_050 and sum(m["credits"]) == pytest.approx(1.0)
        assert by_id["order:shop.example:O-78"]["customer_id"] is None

        crm.read(until=1, timeout=15)
        channels.read(until=1, timeout=15)
        row = connect_view(crm)["order:shop.example:O-77"]
        assert row is not None and row["customer_id"] == "c1" and row["channels"] == "email > social > cpc"
        assert row["path_length"] == path["path_length"] and row["revision"] == path["revision"]
        assert json.loads(row["credits"])["linear"]["revenue_cents"] == next(
            m["revenue_cents"] for m in path["models"] if m["model"] == "linear")  # fmt: skip
        assert set(connect_view(crm)) == {"order:shop.example:O-77"}
        summary = connect_view(channels)["c1"]
        assert summary is not None and summary["touchpoints"] == 3
        assert summary["last_conversion_id"] == "order:shop.example:O-77"

        # Erasure: a CRM tombstone deletes the customer's rows (tombstones for the sink).
        produce_avro(s.bootstrap, s.registry, t.crm_profiles, CATALOG.schema_text("CrmProfile"), [("c1", None)])
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and connect_view(crm).get("order:shop.example:O-77") is not None:
            crm.read(until=len(crm.records) + 1, timeout=0.5)
        assert connect_view(crm)["order:shop.example:O-77"] is None
        channels.read(until=len(channels.records) + 1, timeout=10, idle=3)
        assert connect_view(channels)["c1"] is None
        assert not running, running
    finally:
        paths.close()
        crm.close()
        channels.close()
