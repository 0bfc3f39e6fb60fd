"""The API's Kafka side: compacted tables followed in memory, and records written with their acknowledgement.

:class:`TableFollower` reads a compacted topic whole from the beginning
(every partition assigned, no consumer group, nothing committed), decodes it
and keeps following it on a thread of its own, so a key revoked or a
campaign declared by anyone is seen within a poll interval. ``start`` returns
once the table is caught up with the end it had at start.

:class:`TopicWriter` produces one record (or tombstone) and waits for the
broker's acknowledgement: the API answers 2xx only for what Kafka has. The
acknowledged record is applied to the table at once (read-your-writes); the
follower applies it again when it reads it, and never applies an older
record of a key over a newer one (offsets are compared per key).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

from passerelle.connectors.partner_api.config import ApiStartupError
from passerelle.schemas import clients
from passerelle.schemas.catalog import load_catalog
from passerelle.schemas.errors import ContractError, SerializationError
from passerelle.schemas.serde import AvroDecoder, AvroEncoder, SchemaCache, registry_fetcher
from passerelle.schemas.timeconv import to_millis

log = logging.getLogger(__name__)

OnChange = Callable[[str, dict[str, Any] | None], None]


def _millis(record: dict[str, Any]) -> dict[str, Any]:
    """fastavro reads ``timestamp-millis`` as datetimes: back to the UTC milliseconds records are written with."""
    return {k: to_millis(v) if isinstance(v, datetime) else v for k, v in record.items()}


class TableFollower:
    """A compacted topic as a dict of its latest value per key, kept current by a background thread."""

    def __init__(
        self,
        conn: clients.Connection,
        topic: str,
        *,
        on_change: OnChange | None = None,
        poll_s: float = 0.2,
        group_id: str | None = None,
    ) -> None:
        self.conn = conn
        self.topic = topic
        self.group_id = group_id or f"passerelle-api-{topic}"
        self.on_change = on_change
        self.poll_s = poll_s
        self._data: dict[str, dict[str, Any]] = {}
        self._offsets: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._caught_up = threading.Event()
        self._thread: threading.Thread | None = None
        self._consumer: Any = None
        self._error: BaseException | None = None

    # --- reading ---------------------------------------------------------------------------------------------

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            return self._data.get(key)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return dict(self._data)

    @property
    def ready(self) -> bool:
        return self._caught_up.is_set() and (self._thread is not None and self._thread.is_alive())

    # --- writing into the view -------------------------------------------------------------------------------

    def apply(self, key: str, value: dict[str, Any] | None, offset: int) -> None:
        """Record ``value`` (None: tombstone) for ``key`` at ``offset`` unless a later record of it is known."""
        with self._lock:
            if offset < self._offsets.get(key, -1):
                return
            self._offsets[key] = offset
            if value is None:
                changed = self._data.pop(key, None) is not None
            else:
                changed = self._data.get(key) != value
                self._data[key] = value
        if changed and self.on_change is not None:
            self.on_change(key, value)

    # --- the thread ------------------------------------------------------------------------------------------

    def start(self, timeout_s: float = 30.0) -> None:
        """Read the table to its current end (blocking), then follow it in the background."""
        consumer = clients.consumer(
            self.conn,
            self.group_id,  # required by librdkafka; never joined nor committed (assign only)
            {
                "enable.partition.eof": True,
                "isolation.level": "read_committed",
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": 100,  # small tables, changes to see within a fraction of a second
            },
        )
        try:
            meta = consumer.list_topics(self.topic, timeout=10)
        except Exception as exc:
            consumer.close()
            raise ApiStartupError(f"cannot read topic '{self.topic}': {exc}") from exc
        tmeta = meta.topics.get(self.topic)
        if tmeta is None or tmeta.error is not None or not tmeta.partitions:
            consumer.close()
            reason = tmeta.error.str() if tmeta is not None and tmeta.error is not None else "does not exist"
            raise ApiStartupError(f"topic '{self.topic}': {reason} (run `passerelle topics create`)")
        partitions = sorted(tmeta.partitions)
        consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in partitions])
        self._consumer = consumer
        decoder = AvroDecoder(SchemaCache(registry_fetcher(clients.registry_client(self.conn))))
        self._thread = threading.Thread(
            target=self._run, args=(consumer, decoder, set(partitions)), name=f"table-{self.topic}", daemon=True
        )
        self._thread.start()
        if not self._caught_up.wait(timeout_s):
            self.close()
            detail = f": {self._error}" if self._error else ""
            raise ApiStartupError(f"table '{self.topic}' not read within {timeout_s:g}s{detail}")

    def _run(self, consumer: Any, decoder: AvroDecoder, partitions: set[int]) -> None:
        at_end: set[int] = set()
        while not self._stop.is_set():
            try:
                messages = consumer.consume(1000, timeout=self.poll_s)
            except Exception as exc:  # closed under us at shutdown, or a fatal client error
                if not self._stop.is_set():
                    self._error = exc
                    log.error("table %s: %s", self.topic, exc)
                return
            for msg in messages:
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        at_end.add(msg.partition())
                    else:
                        log.warning("table %s: %s", self.topic, err.str())
                    continue
                try:
                    key = decoder.decode(msg.key())
                    value = None if msg.value() is None else _millis(decoder.decode(msg.value()))
                except Exception as exc:
                    log.warning("table %s: undecodable record at offset %s skipped: %s", self.topic, msg.offset(), exc)
                    continue
                self.apply(str(key), value, msg.offset())
            if not self._caught_up.is_set() and at_end >= partitions:
                self._caught_up.set()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


class TopicWriter:
    """Writes records of one catalog value schema to one topic, each acknowledged before ``write`` returns."""

    def __init__(
        self,
        conn: clients.Connection,
        topic: str,
        value_schema: str,
        *,
        catalog_path: Any = None,
        auto_register: bool = True,
        timeout_s: float = 10.0,
        linger_ms: int = 0,
    ) -> None:
        self.conn = conn
        self.linger_ms = linger_ms
        self.topic = topic
        self.value_schema = value_schema
        self.catalog_path = catalog_path
        self.auto_register = auto_register
        self.timeout_s = timeout_s
        self._producer: Any = None
        self._key: AvroEncoder | None = None
        self._value: AvroEncoder | None = None

    def start(self) -> None:
        catalog = load_catalog(self.catalog_path)
        registry = clients.registry_client(self.conn)
        try:
            self._key = AvroEncoder.for_subject(
                registry, f"{self.topic}-key", catalog.schema_text("StringKey"), auto_register=self.auto_register
            )
            self._value = AvroEncoder.for_subject(
                registry,
                f"{self.topic}-value",
                catalog.schema_text(self.value_schema),
                auto_register=self.auto_register,
            )
        except ContractError as exc:
            raise ApiStartupError(f"{exc} (schema registry {self.conn.registry_url})") from exc
        ms = int(self.timeout_s * 1000)
        self._producer = clients.producer(
            self.conn, {"linger.ms": self.linger_ms, "message.timeout.ms": ms, "allow.auto.create.topics": False}
        )

    def write(self, key: str, value: dict[str, Any] | None) -> tuple[int, int]:
        """Produce and wait for the acknowledgement: (partition, offset); ``RuntimeError`` if Kafka did not take it."""
        if self._producer is None or self._key is None or self._value is None:
            raise RuntimeError("TopicWriter.write() before start()")
        done = threading.Event()
        outcome: dict[str, Any] = {}

        def delivered(err: KafkaError | None, msg: Any) -> None:
            outcome["error"] = err
            outcome["at"] = (msg.partition(), msg.offset()) if err is None else None
            done.set()

        encoded = None if value is None else self._value.encode(value)
        clients.produce(self._producer, self.topic, encoded, self._key.encode(key), on_delivery=delivered)
        deadline = time.monotonic() + self.timeout_s + 1
        while not done.is_set() and time.monotonic() < deadline:
            self._producer.poll(0.05)
        if not done.is_set():
            raise RuntimeError(f"no acknowledgement from Kafka for topic '{self.topic}' within {self.timeout_s:g}s")
        if outcome["error"] is not None:
            raise RuntimeError(f"Kafka refused the record for topic '{self.topic}': {outcome['error'].str()}")
        partition, offset = outcome["at"]
        return int(partition), int(offset)

    def write_many(self, records: Sequence[tuple[str, dict[str, Any], int | None]]) -> list[str | None]:
        """Produce (key, value, timestamp ms or None) records and wait for every acknowledgement.

        One entry per record, in order: None once Kafka acknowledged it, else
        why not. A record that cannot be encoded (``rejected:`` prefix) is
        never produced; any other error is transient (retry).
        """
        if self._producer is None or self._key is None or self._value is None:
            raise RuntimeError("TopicWriter.write_many() before start()")
        outcome: list[str | None] = ["not acknowledged by Kafka in time"] * len(records)
        pending = [0]
        lock = threading.Lock()

        def report(index: int) -> Callable[[KafkaError | None, Any], None]:
            def delivered(err: KafkaError | None, _msg: Any) -> None:
                with lock:
                    outcome[index] = None if err is None else f"Kafka refused it: {err.str()}"
                    pending[0] -= 1

            return delivered

        for index, (key, value, timestamp) in enumerate(records):
            try:
                encoded, encoded_key = self._value.encode(value), self._key.encode(key)
            except SerializationError as exc:
                outcome[index] = f"rejected: cannot be encoded ({exc})"
                continue
            with lock:
                pending[0] += 1
            extra = {"timestamp": timestamp} if timestamp is not None else {}
            clients.produce(self._producer, self.topic, encoded, encoded_key, on_delivery=report(index), **extra)
        deadline = time.monotonic() + self.timeout_s + 1
        while pending[0] > 0 and time.monotonic() < deadline:
            self._producer.poll(0.05)
        return outcome

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(5)
            self._producer = None
