"""Bad input never stops a processor nor blocks a partition (issue "hardening"), on the real broker and registry.

Each test reproduces a case found by probing ``passerelle enrich``: the
enrichment processor runs in this process on unique topics, fed with valid
hits and one kind of poison; afterwards every valid hit is enriched exactly
once, every poison record is in the dead-letter topic exactly once with its
reason, and the runner is still running.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from passerelle.schemas.catalog import load_catalog
from passerelle.schemas.clients import Connection, producer, registry_client
from passerelle.schemas.serde import AvroEncoder
from passerelle.streams.enrichment.processor import EnrichmentProcessor, EnrichmentTopics
from passerelle.streams.runtime import Runner, RunnerConfig
from passerelle.streams.runtime.deadletter import header_dict
from tests.conftest import start_registry_process, stop_process
from tests.integration.kafka_helpers import TopicReader, create_topics, produce_avro

pytestmark = pytest.mark.integration
CATALOG = load_catalog()
T0 = int(time.time() * 1000)


def hit(n: int, visitor: str = "v1", **changes: Any) -> dict[str, Any]:
    value = {
        "event_id": f"e{n}", "site": "shop.example", "visitor_id": visitor, "customer_id": None,
        "event_time": T0 + n, "type": "page_view", "url": "https://shop.example/", "referrer": None, "page": None,
        "campaign_params": {}, "product": None, "order": None, "consent": {"analytics": True, "marketing": True},
        "user_agent": None, "ip_truncated": "203.0.113.0",
    }  # fmt: skip
    value.update(changes)
    return value


@dataclass
class Flow:
    topics: EnrichmentTopics
    dlq: str
    bootstrap: str
    registry: str
    runner: Runner
    thread: threading.Thread

    def produce(self, records: list[tuple[str | None, dict[str, Any] | None]], stem: str = "Hit",
                raw: list[tuple[bytes | None, bytes | None]] | None = None) -> None:  # fmt: skip
        produce_avro(self.bootstrap, self.registry, self.topics.hits_raw, CATALOG.schema_text(stem), records,
                     raw or [])  # fmt: skip

    def consumed(self, count: int, timeout: float = 60) -> None:
        """Wait until the processor has read ``count`` input records (and committed what they produced)."""
        deadline = time.monotonic() + timeout
        while self.runner.records_in < count and time.monotonic() < deadline:
            assert self.thread.is_alive(), "the processor stopped"
            time.sleep(0.1)
        assert self.runner.records_in >= count, f"{self.runner.records_in} of {count} records read"

    def enriched(self, until: int, idle: float = 3.0) -> list[str]:
        reader = TopicReader(self.bootstrap, self.registry, self.topics.hits_enriched)
        try:
            return [v["event_id"] for _, v in reader.read(until=until, timeout=60, idle=idle)]
        finally:
            reader.close()

    def dead_letters(self, until: int, idle: float = 3.0) -> list[tuple[Any, dict[str, str]]]:
        reader = TopicReader(self.bootstrap, self.registry, self.dlq, decode=False)
        try:
            return [(msg, header_dict(msg.headers())) for msg, _ in reader.read(until=until, timeout=60, idle=idle)]
        finally:
            reader.close()


@pytest.fixture
def flow(kafka_bootstrap: str, schema_registry_url: str, unique: Callable[[str], str]) -> Iterator[Callable[..., Flow]]:
    started: list[Flow] = []

    def start(registry: str | None = None, partitions: int = 1) -> Flow:
        registry = registry or schema_registry_url
        t = EnrichmentTopics(
            hits_raw=unique("hits.raw"), hits_enriched=unique("hits.enriched"),
            identity_links=unique("identity.links"), campaigns=unique("campaigns"),
            undeclared=unique("campaigns.undeclared"), crm_profiles=unique("crm.profiles"), privacy_requests=None,
        )  # fmt: skip
        dlq = unique("dlq")
        create_topics(kafka_bootstrap, {t.hits_raw: partitions, t.hits_enriched: 1, dlq: 1})
        create_topics(kafka_bootstrap, {t.identity_links: 1, t.campaigns: 1, t.undeclared: 1, t.crm_profiles: 1},
                      {"cleanup.policy": "compact"})  # fmt: skip
        schema = CATALOG.schema_text
        config = RunnerConfig(
            app_id=unique("enrich"), bootstrap_servers=kafka_bootstrap, schema_registry_url=registry,
            output_schemas={t.hits_enriched: schema("EnrichedHit"), t.identity_links: schema("IdentityLink"),
                            t.undeclared: schema("Campaign")},
            input_schemas={t.hits_raw: schema("Hit")}, dead_letter_topic=dlq, registry_retry_max_s=0.5,
        )  # fmt: skip
        runner = Runner(EnrichmentProcessor(t), config)
        thread = threading.Thread(target=runner.run, daemon=True)
        thread.start()
        result = Flow(t, dlq, kafka_bootstrap, schema_registry_url, runner, thread)
        started.append(result)
        return result

    yield start
    for f in started:
        f.runner.stop()
        f.thread.join(30)


def test_an_output_too_large_to_write_is_dead_lettered_alone(flow: Callable[..., Flow]) -> None:
    """Two hits with a 900,000-character campaign tag among seven good ones, in one batch."""
    f = flow()
    huge = {"utm_source": "x" * 900_000}
    records: list[tuple[str | None, dict[str, Any] | None]] = [("v1", hit(n, f"v{n}")) for n in range(1, 8)]
    records.insert(3, ("vbig1", hit(100, "vbig1", campaign_params=huge)))
    records.insert(6, ("vbig2", hit(101, "vbig2", campaign_params=huge)))
    f.produce(records)
    f.consumed(9)
    enriched = f.enriched(until=9)
    dead = f.dead_letters(until=2)
    assert f.thread.is_alive(), "the processor stopped"
    assert sorted(e for e in enriched if not e.startswith("e10")) == [f"e{n}" for n in range(1, 8)]
    big_dead = [h["exception.message"] for _, h in dead]
    big_out = [e for e in enriched if e.startswith("e10")]
    # Each big hit is enriched or dead-lettered (its output or its state too large), never both, never lost.
    assert len(big_out) + sum("exceeds the" in m for m in big_dead) >= 2, (big_out, big_dead)
    assert not [e for e in big_out if any(e in m for m in big_dead)]


def test_a_record_too_large_for_the_dead_letter_topic_is_kept_truncated(flow: Callable[..., Flow]) -> None:
    f = flow()
    poison = b"\x07" + b"p" * 999_899  # 999,900 bytes, no magic byte
    f.produce([("v1", hit(1))], raw=[(b"k", poison)])
    f.produce([("v1", hit(2))])
    f.consumed(3)
    assert f.enriched(until=2) == ["e1", "e2"]
    [(msg, headers)] = f.dead_letters(until=1)
    assert headers["stage"] == "deserialize" and "magic byte" in headers["exception.message"]
    assert headers["truncated"] == "true" and headers["original.size"] == "999900"
    assert headers["original.sha256"] == hashlib.sha256(poison).hexdigest()
    assert msg.value() == poison[: len(msg.value())] and len(msg.value()) < 100_000
    assert f.thread.is_alive()


def test_a_record_of_another_schema_dead_letters_itself_alone(
    flow: Callable[..., Flow], kafka_bootstrap: str, schema_registry_url: str
) -> None:
    """good, NotAHit, good, good, good on one partition in one flush; then a record written as an EnrichedHit."""
    f = flow()
    not_a_hit = json.dumps({"type": "record", "name": "NotAHit", "namespace": "probe", "fields": [
        {"name": "site", "type": "string"}, {"name": "visitor_id", "type": "string"},
        {"name": "event_time", "type": "long"}]})  # fmt: skip
    conn = Connection.plain(kafka_bootstrap, schema_registry_url)
    client = registry_client(conn)
    wrong = AvroEncoder.for_subject(client, f"probe-{uuid.uuid4().hex[:6]}-value", not_a_hit)
    key = AvroEncoder.for_subject(client, f"{f.topics.hits_raw}-key", '"string"')
    target = producer(conn, {"linger.ms": 200})
    hit_enc = AvroEncoder.for_subject(client, f"{f.topics.hits_raw}-value", CATALOG.schema_text("Hit"))
    records = [
        (key.encode("v1"), hit_enc.encode(hit(1))),
        (key.encode("v1"), wrong.encode({"site": "s", "visitor_id": "v1", "event_time": T0})),
        (key.encode("v1"), hit_enc.encode(hit(2))),
        (key.encode("v1"), hit_enc.encode(hit(3))),
        (key.encode("v1"), hit_enc.encode(hit(4))),
    ]
    for k, v in records:
        target.produce(f.topics.hits_raw, v, k)
    assert target.flush(30) == 0
    f.consumed(5)
    assert f.enriched(until=4) == ["e1", "e2", "e3", "e4"]
    enriched_enc = AvroEncoder.for_subject(client, f"probe-{uuid.uuid4().hex[:6]}-value",
                                           CATALOG.schema_text("EnrichedHit"))  # fmt: skip
    sample = TopicReader(kafka_bootstrap, schema_registry_url, f.topics.hits_enriched).read(until=1)[0][1]
    f.produce([("v1", hit(5))], raw=[(key.encode("v1"), enriched_enc.encode(sample))])
    dead = f.dead_letters(until=2)
    assert [h["stage"] for _, h in dead] == ["deserialize", "deserialize"]
    assert dead[0][1]["offset"] == "1" and "invalid Avro body" in dead[0][1]["exception.message"]
    assert f.enriched(until=5) == ["e1", "e2", "e3", "e4", "e5"]
    assert f.thread.is_alive()


def test_a_null_value_is_dead_lettered_visibly(flow: Callable[..., Flow]) -> None:
    f = flow()
    f.produce([("v1", hit(1)), ("v1", None), ("v1", hit(2))])
    f.consumed(3)
    assert f.enriched(until=2) == ["e1", "e2"]
    [(msg, headers)] = f.dead_letters(until=1)
    assert msg.value() is None and headers["offset"] == "1"
    assert "null value" in headers["exception.message"]
    assert f.runner.metrics.dead_letters.labels("enrichment", "deserialize")._value.get() == 1


def test_a_registry_outage_delays_records_and_dead_letters_none(
    flow: Callable[..., Flow], kafka_bootstrap: str, tmp_path: Path
) -> None:
    """With the registry down, a record whose schema id is not cached yet waits; nothing is dead-lettered."""
    from passerelle.deploy.local.stack import free_port

    port, topic = free_port(), f"_schemas-outage-{uuid.uuid4().hex[:8]}"
    registry = start_registry_process(kafka_bootstrap, port, topic, tmp_path / "registry.log")
    url = f"http://127.0.0.1:{port}"
    try:
        f = flow(registry=url)
        f.registry = url
        f.produce([("v1", hit(1))])
        f.consumed(1)
        assert f.enriched(until=1) == ["e1"]
        # A compatible newer Hit (one more optional field): a schema id the processor has not fetched yet.
        newer = json.loads(CATALOG.schema_text("Hit"))
        newer["fields"].append({"name": "probe", "type": ["null", "string"], "default": None})
        client = registry_client(Connection.plain(kafka_bootstrap, url))
        encoder = AvroEncoder.for_subject(client, f"probe-{uuid.uuid4().hex[:6]}-value", json.dumps(newer))
        key = AvroEncoder.for_subject(client, f"{f.topics.hits_raw}-key", '"string"')
        stop_process(registry)
        target = producer(Connection.plain(kafka_bootstrap))
        for n in (2, 3, 4):
            target.produce(f.topics.hits_raw, encoder.encode({**hit(n), "probe": "x"}), key.encode("v1"))
        assert target.flush(30) == 0
        retries = f.runner.metrics.registry_retries.labels("enrichment")
        deadline = time.monotonic() + 60  # the processor meets the unknown id while the registry is down
        while retries._value.get() < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert retries._value.get() >= 1
        assert f.dead_letters(until=1, idle=1) == []
        registry = start_registry_process(kafka_bootstrap, port, topic, tmp_path / "registry.log")
        assert f.enriched(until=4) == ["e1", "e2", "e3", "e4"]  # in order, once each
        assert f.dead_letters(until=1, idle=2) == []
        assert f.thread.is_alive()
    finally:
        stop_process(registry)
