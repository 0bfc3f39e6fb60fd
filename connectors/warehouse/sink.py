"""The analytics store's sink: Kafka topics -> DuckDB or PostgreSQL, exactly-once.

Exactly-once without Kafka transactions: the next offset of every partition
is stored in the store itself (``sink_offsets``), in the same database
transaction as the rows of the batch. A restart (or a new owner of a
partition after a rebalance) seeks to the stored offsets in ``on_assign``, so
a batch is either wholly in the store with its offsets or not at all, whatever
kills the process. Offsets are also committed to Kafka, asynchronously and
only for consumer-lag tools: the store's are the ones that count.

A record that cannot be decoded goes to the dead-letter topic with its bytes
and the reason (as the stream runtime does), and its offset moves on: the sink
never stops on one record. The dead letters of a batch are flushed before the
batch commits (at least once: a crash in between writes them again).

The sink is embeddable: :meth:`Sink.run` takes a ``threading.Event`` to stop
on, so the partner API runs it in a thread when its store is DuckDB (one
process may write a DuckDB file, and no other may read it meanwhile).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from passerelle.connectors.warehouse import rows as R
from passerelle.connectors.warehouse.rows import Batch, Erasures, SiteZones
from passerelle.connectors.warehouse.store import Store
from passerelle.connectors.warehouse.writer import OffsetMove, Writer
from passerelle.schemas import clients
from passerelle.schemas.catalog import load_catalog
from passerelle.schemas.clients.kafka import classify
from passerelle.schemas.errors import RegistryUnavailableError
from passerelle.schemas.serde import AvroDecoder, SchemaCache, registry_fetcher
from passerelle.streams.runtime.deadletter import dead_letter_record, write_dead_letter

log = logging.getLogger(__name__)

DEFAULT_TOPICS: Final[dict[str, str]] = {
    R.HITS: "hits.enriched",
    R.CARTS: "carts.abandoned",
    R.MESSAGES: "remarketing.messages",
    R.DELIVERIES: "remarketing.deliveries",
    R.CAMPAIGNS: "campaigns",
    R.POSTVIEW: "ads.postview",
    R.METRICS: "partners.metrics",
    R.PATHS: "conversions.paths",
    R.PRIVACY: "privacy.requests",
    R.PROFILES: "crm.profiles",
    R.LINKS: "identity.links",
    R.MARKOV: "attribution.markov",
}
"""The topic each role reads by default: the catalog's names."""

SCHEMAS: Final[dict[str, str]] = {
    R.HITS: "EnrichedHit", R.CARTS: "CartAbandoned", R.MESSAGES: "RemarketingMessage",
    R.DELIVERIES: "RemarketingDelivery", R.CAMPAIGNS: "Campaign", R.POSTVIEW: "PostView",
    R.METRICS: "PartnerMetric", R.PATHS: "ConversionPath", R.PRIVACY: "PrivacyRequest",
    R.PROFILES: "CrmProfile", R.LINKS: "IdentityLink", R.MARKOV: "MarkovAttribution",
}  # fmt: skip
"""The contract each role's values are read with (a record of another shape is a dead letter, not misread)."""

KEYED: Final = frozenset({R.CAMPAIGNS, R.METRICS, R.PROFILES, R.LINKS, R.MARKOV})
"""Roles whose key matters (tombstones of compacted tables); other keys are never decoded."""


def parse_topics(text: str) -> dict[str, str]:
    """``hits=my.hits,campaigns=my.campaigns`` -> the topic of each role (the rest: catalog names)."""
    topics = dict(DEFAULT_TOPICS)
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        role, sep, topic = part.partition("=")
        role, topic = role.strip(), topic.strip()
        if not sep or role not in DEFAULT_TOPICS or not topic:
            raise ValueError(f"warehouse topic {part!r}: expected role=topic with a role among {', '.join(R.ROLES)}")
        topics[role] = topic
    return topics


@dataclass
class SinkConfig:
    """What a sink reads, as whom, and how it batches."""

    connection: clients.Connection
    topics: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_TOPICS))
    site_timezones: Mapping[str, str] = field(default_factory=dict)
    name: str = "warehouse"  # the sink's rows in sink_offsets
    group_id: str = "passerelle-warehouse"
    instance_id: str = "0"  # static group membership: a restarted sink gets its partitions back at once
    batch_size: int = 10_000  # most records per transaction
    max_wait_s: float = 0.5  # longest a batch waits to fill up
    dead_letter_topic: str = clients.DEAD_LETTER_TOPIC
    catalog_path: Path | None = None
    progress_every_s: float = 10.0


class SinkMetrics:
    """Prometheus metrics of a sink, in their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry or CollectorRegistry()
        self.records = Counter("passerelle_warehouse_records_total", "Records consumed", ["topic"], registry=r)
        self.rows = Counter("passerelle_warehouse_rows_total", "Rows written or merged", ["table"], registry=r)
        self.batches = Counter("passerelle_warehouse_batches_total", "Batches committed to the store", registry=r)
        self.dead_letters = Counter(
            "passerelle_warehouse_dead_letters_total", "Records sent to the dead-letter topic", registry=r
        )
        self.commit_seconds = Histogram(
            "passerelle_warehouse_commit_seconds", "Time to write one batch in one transaction", registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )  # fmt: skip
        self.lag = Gauge(
            "passerelle_warehouse_consumer_lag_records", "High watermark minus the next offset stored",
            ["topic", "partition"], registry=r,
        )  # fmt: skip


class Sink:
    """Reads the configured topics into a :class:`Store` until ``stop`` is set (see the module docstring)."""

    def __init__(self, store: Store, config: SinkConfig, metrics: SinkMetrics | None = None) -> None:
        self.store = store
        self.config = config
        self.metrics = metrics or SinkMetrics()
        self.zones = SiteZones(config.site_timezones)
        self.roles = {topic: role for role, topic in config.topics.items()}
        self._stored: dict[tuple[str, int], int | None] = {}  # assigned partitions: next offset in the store
        self._writer: Writer | None = None
        self._erased = Erasures()
        self.committed_batches = 0
        self.processor = f"warehouse-{config.name}"  # names the sink in dead letters

    # --- the loop ------------------------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        cfg = self.config
        clients.ensure_reachable(cfg.connection)
        catalog = load_catalog(cfg.catalog_path)
        cache = SchemaCache(registry_fetcher(clients.registry_client(cfg.connection)))
        decoders = {
            role: AvroDecoder(cache, reader_schema=catalog.schema_text(SCHEMAS[role])).decode for role in cfg.topics
        }
        key_decoder = AvroDecoder(cache).decode
        producer = clients.producer(cfg.connection, {"linger.ms": 5})
        consumer = clients.consumer(
            cfg.connection,
            cfg.group_id,
            {
                "isolation.level": "read_committed",
                "auto.offset.reset": "earliest",
                "enable.auto.offset.store": False,
                "group.instance.id": f"{cfg.group_id}-{cfg.instance_id}",
                "session.timeout.ms": 15000,
            },
        )
        with self.store.connect() as conn:
            self._writer = writer = Writer(self.store, conn, cfg.name)
            writer.write_sites(self.zones.rows())
            for kind, person, at in writer.erasures():
                self._erased.add(kind, person, at)
            consumer.subscribe(
                sorted(self.roles), on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke
            )
            log.info("warehouse sink %s: reading %d topics into %s", cfg.name, len(self.roles), self.store.dialect)
            total, window_start, window_records = 0, time.monotonic(), 0
            try:
                while not stop.is_set():
                    messages = self._consume(consumer, stop)
                    if not messages:
                        continue
                    done = self._process(messages, decoders, key_decoder, producer, consumer, stop)
                    if not done:
                        break  # stopped while the registry was down: nothing of this batch written
                    total += len(messages)
                    window_records += len(messages)
                    now = time.monotonic()
                    if now - window_start >= cfg.progress_every_s:
                        log.info("warehouse sink %s: %d records (%.0f/s), %d batches", cfg.name, total,
                                 window_records / (now - window_start), self.committed_batches)  # fmt: skip
                        window_start, window_records = now, 0
            finally:
                self._writer = None
                producer.flush(10)
                consumer.close()
        log.info("warehouse sink %s stopped after %d records", cfg.name, total)

    def _consume(self, consumer: Any, stop: threading.Event) -> list[Any]:
        """Up to ``batch_size`` records, waiting at most ``max_wait_s`` for more once the first came."""
        cfg = self.config
        out: list[Any] = []
        deadline = time.monotonic() + cfg.max_wait_s
        while len(out) < cfg.batch_size and not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for msg in consumer.consume(min(cfg.batch_size - len(out), 5000), timeout=min(left, 0.2)):
                err = msg.error()
                if err is None:
                    out.append(msg)
                elif err.code() != KafkaError._PARTITION_EOF:
                    problem = classify(err, cfg.connection)  # an ACL or credentials: no retry fixes it
                    if problem is not None:
                        raise problem
                    if err.fatal():
                        raise RuntimeError(f"warehouse sink: fatal Kafka error: {err.str()}")
                    log.warning("warehouse sink: %s", err.str())
        return out

    def _process(
        self, messages: list[Any], decoders: Mapping[str, Any], key_decoder: Any, producer: Any, consumer: Any,
        stop: threading.Event,
    ) -> bool:  # fmt: skip
        assert self._writer is not None
        batch = Batch(self.zones, self._erased)
        moves: dict[tuple[str, int], OffsetMove] = {}
        letters = 0
        per_topic: dict[str, int] = {}
        for msg in messages:
            topic, partition = msg.topic(), msg.partition()
            tp = (topic, partition)
            if tp not in self._stored:
                continue  # revoked while it was being fetched: its new owner reads it
            role = self.roles[topic]
            while True:
                try:
                    value = msg.value()
                    key = key_decoder(msg.key()) if role in KEYED and msg.key() is not None else None
                    if role == R.PROFILES and value is not None:
                        decoded = None  # a profile update erases nothing: not even decoded
                        batch.skipped += 1
                    else:
                        decoded = None if value is None else decoders[role](value)
                        ts = msg.timestamp()[1]
                        batch.add(role, key, decoded, ts if ts and ts > 0 else int(time.time() * 1000))
                    break
                except RegistryUnavailableError as exc:  # not the record's fault: wait, never dead-letter
                    log.warning("warehouse sink: %s; retrying", exc)
                    if stop.wait(1.0):
                        return False
                except Exception as exc:
                    letter = dead_letter_record(
                        topic=topic, partition=partition, offset=msg.offset(), key=msg.key(), value=msg.value(),
                        headers=msg.headers(), error=exc, stage="deserialize", processor=self.processor,
                    )  # fmt: skip
                    write_dead_letter(producer, self.config.dead_letter_topic, letter)
                    log.warning("warehouse sink: %s dead-lettered: %s", letter.origin, exc)
                    letters += 1
                    break
            moves[tp] = OffsetMove(self._stored[tp], msg.offset() + 1)
            per_topic[topic] = per_topic.get(topic, 0) + 1
        if not moves:
            return True
        if letters:
            producer.flush(30)
            self.metrics.dead_letters.inc(letters)
        started = time.monotonic()
        written = self._writer.write(batch, moves)
        self.metrics.commit_seconds.observe(time.monotonic() - started)
        for tp, move in moves.items():
            self._stored[tp] = move.next_offset
        if batch.erasures:  # the store added the visitor ids linked to each erased customer
            for kind, person, at in self._writer.erasures():
                self._erased.add(kind, person, at)
        self.committed_batches += 1
        self.metrics.batches.inc()
        for table, count in written.items():
            self.metrics.rows.labels(table).inc(count)
        for topic, count in per_topic.items():
            self.metrics.records.labels(topic).inc(count)
        offsets = [TopicPartition(t, p, m.next_offset) for (t, p), m in moves.items()]
        try:
            consumer.commit(offsets=offsets, asynchronous=True)  # informational: lag tools see the group move
        except Exception as exc:
            log.debug("warehouse sink: informational offset commit failed: %s", exc)
        for done in offsets:
            try:
                _, high = consumer.get_watermark_offsets(done, cached=True)
                self.metrics.lag.labels(done.topic, str(done.partition)).set(max(0, high - done.offset))
            except Exception:
                continue
        return True

    # --- rebalances ------------------------------------------------------------------------------------------------

    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        """Start each partition at the offset stored with the rows (the beginning when none is stored)."""
        assert self._writer is not None
        stored = self._writer.offsets(sorted({tp.topic for tp in partitions}))
        for tp in partitions:
            offset = stored.get((tp.topic, tp.partition))
            self._stored[(tp.topic, tp.partition)] = offset
            tp.offset = OFFSET_BEGINNING if offset is None else offset
        consumer.assign(partitions)
        log.info("warehouse sink: assigned %s", ", ".join(f"{t.topic}[{t.partition}]@{t.offset}" for t in partitions))

    def _on_revoke(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._stored.pop((tp.topic, tp.partition), None)
        consumer.unassign()
