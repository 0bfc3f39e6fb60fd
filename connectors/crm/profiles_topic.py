"""The ``crm.profiles`` topic as the CSV import sees it: the table read to its end, then the changes published.

The import publishes only what changes the table, so it must first know the
table: every partition is read from the start up to the end offsets of the
moment the import began (records produced meanwhile do not make it wait
forever). Publishing goes through the client layer's idempotent ``acks=all``
producer, and only acknowledged records count as published: a re-run must be
able to trust the summary to know whether anything is left to send.

Confluent-kafka and the client layer are imported where they are used, not
at the top: the CLI imports this module with every command, and
confluent-kafka should load only when a command talks to Kafka, not for
``--help``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from passerelle.connectors.crm.csv_import import CRM_TOPIC, CurrentProfiles, RunProgress
from passerelle.connectors.crm.csv_mapping import EXIT_UNDELIVERED, CsvImportError

if TYPE_CHECKING:
    from confluent_kafka import Consumer

    from passerelle.schemas.clients import Connection

log = logging.getLogger(__name__)
GROUP_ID = "passerelle-crm-import"
"""Never joined nor committed (partitions are assigned): it only satisfies librdkafka."""


def read_current_profiles(
    conn: Connection, topic: str, progress: RunProgress | None = None, idle_s: float = 30.0
) -> CurrentProfiles:
    """Every partition of ``topic`` read from the start to its end offset at call time, decoded (Avro).

    An undecodable record leaves its customer absent (the file's line then
    replaces it); a registry that does not answer stops the import, since
    without the table every line would look new.
    """
    from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

    from passerelle.schemas import clients
    from passerelle.schemas.errors import RegistryUnavailableError, SerializationError
    from passerelle.schemas.serde import AvroDecoder, SchemaCache, registry_fetcher

    clients.ensure_reachable(conn)
    watch = clients.ErrorWatch(conn)
    conf = {"enable.partition.eof": True, "isolation.level": "read_committed", "auto.offset.reset": "earliest"}
    consumer = clients.consumer(conn, GROUP_ID, conf, watch=watch)
    try:
        ends, total = _end_offsets(consumer, conn, topic)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        decoder = AvroDecoder(SchemaCache(registry_fetcher(clients.registry_client(conn))))
        current = CurrentProfiles()
        done = undecodable = 0
        last_news = time.monotonic()
        if progress is not None:
            progress.table(0, total)
        while ends:
            msgs = consumer.consume(5000, timeout=0.5)
            if not msgs and time.monotonic() - last_news > idle_s:
                raise watch.fatal() or CsvImportError(
                    f"reading {topic!r} stalled: nothing for {idle_s:.0f} s after {done} of {total} record(s)"
                )
            for msg in msgs:
                partition, err = msg.partition() or 0, msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:  # the end, when the last offsets were compacted
                        ends.pop(partition, None)
                    continue
                last_news = time.monotonic()
                done += 1
                if (msg.offset() or 0) + 1 >= ends.get(partition, 0):
                    ends.pop(partition, None)
                try:
                    key, raw = decoder.decode(msg.key()), msg.value()
                    current.apply(str(key), None if raw is None else decoder.decode(raw))
                except SerializationError:
                    undecodable += 1
                except RegistryUnavailableError as exc:
                    raise CsvImportError(f"schema registry at {conn.registry_url} did not answer: {exc}") from None
            if progress is not None and msgs and ends:
                progress.table(done, total)
        if progress is not None and total:
            progress.table(done, done)  # compacted or aborted offsets: fewer records than offsets
    finally:
        consumer.close()
    if undecodable:
        log.warning("%d record(s) of %s could not be decoded: their customers count as absent", undecodable, topic)
    return current


def _end_offsets(consumer: Consumer, conn: Connection, topic: str) -> tuple[dict[int, int], int]:
    """(partition -> end offset, for the partitions holding records; how many offsets in all), or why not."""
    from confluent_kafka import TopicPartition

    from passerelle.schemas.clients.kafka import classify

    tmeta = consumer.list_topics(topic, timeout=10).topics.get(topic)
    error = None if tmeta is None else tmeta.error
    if tmeta is None or error is not None:
        known = None if error is None else classify(error, conn, repr(topic))
        if known is not None:
            raise known
        raise CsvImportError(
            f"topic {topic!r} does not exist on {conn.describe()}: create it first "
            f"(`passerelle topics create {CRM_TOPIC}`), or name another with --topic"
        )
    ends: dict[int, int] = {}
    total = 0
    for partition in tmeta.partitions:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
        if high > low:
            ends[partition] = high
            total += high - low
    return ends, total


class KafkaSink:
    """Profiles to the topic with the client layer's producer (idempotent, ``acks=all``), deliveries counted."""

    def __init__(self, conn: Connection, topic: str, catalog_path: Path | None, timeout_s: float = 60.0) -> None:
        from passerelle.schemas import clients
        from passerelle.schemas.catalog import load_catalog
        from passerelle.schemas.serde import AvroEncoder

        catalog = load_catalog(catalog_path)
        spec = catalog.topic(CRM_TOPIC)  # crm.profiles' contracts, whichever topic is written (tests: unique)
        registry = clients.registry_client(conn)
        assert spec.value_schema is not None
        self.key_enc = AvroEncoder.for_subject(registry, f"{topic}-key", catalog.schema_text(spec.key_schema))
        self.value_enc = AvroEncoder.for_subject(registry, f"{topic}-value", catalog.schema_text(spec.value_schema))
        self.conn, self.topic, self.timeout_s = conn, topic, timeout_s
        self.watch = clients.ErrorWatch(conn)
        conf = {"linger.ms": 50, "message.timeout.ms": int(timeout_s * 1000)}
        self.producer = clients.producer(conn, conf, watch=self.watch)
        self._produce = clients.produce
        self.delivered = self.undelivered = 0
        self.first_error: Any = None

    @property
    def failed(self) -> bool:
        """A record was refused: reading more lines would only queue more of the same failure."""
        return self.undelivered > 0

    def _on_delivery(self, err: Any, _msg: Any) -> None:
        if err is None:
            self.delivered += 1
        else:
            self.undelivered += 1
            self.first_error = self.first_error or err

    def send(self, customer_id: str, profile: dict[str, Any]) -> None:
        """Queue one profile; its record time is the profile's ``updated_at``, the CRM's time of the change."""
        value, key = self.value_enc.encode(profile), self.key_enc.encode(customer_id)
        self._produce(self.producer, self.topic, value, key, on_delivery=self._on_delivery,
                      timestamp=profile["updated_at"])  # fmt: skip
        self.producer.poll(0)

    def finish(self) -> CsvImportError | None:
        """Flush; the error naming what was not acknowledged, if anything was not."""
        from passerelle.schemas.clients.kafka import classify

        remaining = self.producer.flush(self.timeout_s + 5)
        again = "; run the same command again to publish the rest (what was published is skipped)"
        if self.undelivered:
            known = classify(self.first_error, self.conn, repr(self.topic))
            detail = str(known) if known is not None else self.first_error.str()
            return CsvImportError(
                f"{self.undelivered} record(s) to {self.topic!r} not acknowledged by Kafka: {detail}{again}",
                EXIT_UNDELIVERED,
            )
        if remaining:
            fatal = self.watch.fatal()
            detail = str(fatal) if fatal is not None else f"is Kafka reachable at {self.conn.describe()}?"
            return CsvImportError(
                f"{remaining} record(s) to {self.topic!r} not acknowledged in time: {detail}{again}",
                EXIT_UNDELIVERED,
            )
        return None
