"""The registry's records in a compacted Kafka topic, read back into the in-memory state.

One partition keeps a total order of every change, so replaying the topic
from the beginning rebuilds exactly the state every other reader has. Writes
are acknowledged only once this process has consumed and applied them
(read-your-writes, like Confluent): an answer never refers to an id that a
restart could not find again.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import NewTopic

from passerelle.schemas import clients
from passerelle.schemas.clients import Connection, KafkaUnreachableError, redact
from passerelle.schemas.clients.kafka import classify, topic_error
from passerelle.schemas.registry import errors, records
from passerelle.schemas.registry.state import RegistryState

log = logging.getLogger(__name__)

CLIENT_ID = "passerelle-registry"


class KafkaUnavailableError(errors.RegistryStartupError, KafkaUnreachableError):
    """The broker does not answer at the configured bootstrap servers (or the TLS handshake fails)."""


class SchemasTopicError(errors.RegistryStartupError):
    """The ``_schemas`` topic exists but cannot hold a registry (e.g. more than one partition)."""


class KafkaStore:
    """Feeds ``state`` from ``topic`` and writes records to it, acknowledging only what was read back.

    Every Kafka client comes from the client layer (:mod:`passerelle.schemas.clients`), so
    the registry connects with the same security properties as every process.
    """

    def __init__(
        self,
        conn: Connection,
        topic: str,
        state: RegistryState,
        connect_timeout: float = 10.0,
        write_timeout: float = 30.0,
    ) -> None:
        self.conn = conn
        self.topic = topic
        self.state = state
        self.connect_timeout = connect_timeout
        self.write_timeout = write_timeout
        self._applied = -1  # offset of the last record applied to the state
        self._applied_cond = threading.Condition()
        self._write_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._consumer_error: str | None = None

    # --- lifecycle --------------------------------------------------------------------

    def start(self, load_timeout: float = 60.0) -> None:
        """Create the topic if needed, replay it to its end, then keep following it in the background."""
        self._ensure_topic()
        self._producer = clients.producer(self.conn, {"linger.ms": 0, "client.id": CLIENT_ID})
        self._consumer = clients.consumer(
            self.conn,
            f"{CLIENT_ID}-{uuid.uuid4().hex}",  # assigned, never joined nor committed: we always replay
            {"auto.offset.reset": "earliest", "client.id": CLIENT_ID},
        )
        self._consumer.assign([TopicPartition(self.topic, 0, OFFSET_BEGINNING)])
        end = self._end_offset()
        self._thread = threading.Thread(target=self._follow, name="registry-store", daemon=True)
        self._thread.start()
        if end > 0 and not self._wait_applied(end - 1, load_timeout):
            raise errors.RegistryStartupError(
                f"could not read topic {self.topic} to its end (offset {end}) within {load_timeout:.0f}s "
                f"from Kafka at {self.conn.describe()}"
            )
        log.info("loaded %d record(s) from %s", end, self.topic)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        if self._producer is not None:
            self._producer.flush(5)
        if self._consumer is not None:
            self._consumer.close()

    @property
    def bootstrap_servers(self) -> str:
        return self.conn.bootstrap_servers

    def _ensure_topic(self) -> None:
        try:
            metadata = clients.ensure_reachable(self.conn, self.connect_timeout)
        except KafkaUnreachableError as exc:  # unreachable or TLS failure: the message names the servers
            raise KafkaUnavailableError(str(exc)) from None
        denied = topic_error(metadata, self.topic, self.conn)
        if denied is not None:
            raise denied
        existing = metadata.topics.get(self.topic)
        if existing is not None and existing.error is None:
            if len(existing.partitions) != 1:
                raise SchemasTopicError(
                    f"topic {self.topic} has {len(existing.partitions)} partitions; a schema registry topic "
                    "needs exactly 1 (use another PASSERELLE_SCHEMAS_TOPIC)"
                )
            return
        replication = max(1, min(3, len(metadata.brokers)))
        new = NewTopic(self.topic, 1, replication, config={"cleanup.policy": "compact"})
        admin = clients.admin_client(self.conn)
        try:
            admin.create_topics([new], operation_timeout=self.connect_timeout)[self.topic].result(
                self.connect_timeout + 5
            )
            log.info("created topic %s (compacted, 1 partition, replication %d)", self.topic, replication)
        except KafkaException as exc:
            error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
            if error is not None and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                return
            refused = classify(error, self.conn, f"'{self.topic}'") if error is not None else None
            if refused is not None:
                raise refused from None
            raise errors.RegistryStartupError(f"cannot create topic {self.topic}: {_reason(exc)}") from None

    def _end_offset(self) -> int:
        assert self._consumer is not None
        deadline = time.monotonic() + self.connect_timeout
        while True:
            try:
                _, high = self._consumer.get_watermark_offsets(TopicPartition(self.topic, 0), timeout=5)
                return int(high)
            except KafkaException as exc:  # a fresh topic may take a moment to have a leader
                if time.monotonic() > deadline:
                    raise KafkaUnavailableError(
                        f"cannot read the end of topic {self.topic} at {self.conn.describe()}: {_reason(exc)}"
                    ) from exc
                time.sleep(0.2)

    # --- reading ------------------------------------------------------------------------

    def _follow(self) -> None:
        assert self._consumer is not None
        while not self._stop.is_set():
            try:
                messages = self._consumer.consume(500, timeout=0.2)
            except KafkaException as exc:
                log.warning("error consuming %s: %s", self.topic, _reason(exc))
                time.sleep(0.5)
                continue
            last = None
            for msg in messages:
                error = msg.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        log.warning("error consuming %s: %s", self.topic, error)
                        self._consumer_error = str(error)
                    continue
                decoded = records.decode(msg.key(), msg.value())
                try:
                    if decoded is not None:
                        self.state.apply(*decoded)
                except Exception:  # one bad record must not stop the follower, or every write would hang
                    log.exception("could not apply the record at offset %s of %s", msg.offset(), self.topic)
                last = msg.offset()
            if last is not None:
                with self._applied_cond:
                    self._applied = max(self._applied, last)
                    self._applied_cond.notify_all()

    def _wait_applied(self, offset: int, timeout: float) -> bool:
        with self._applied_cond:
            return self._applied_cond.wait_for(lambda: self._applied >= offset, timeout)

    # --- writing ------------------------------------------------------------------------

    def write(self, batch: Sequence[records.Record]) -> None:
        """Produce the records in order, then wait until the state has applied the last of them."""
        if self._producer is None:
            raise errors.store_error("the store is not started")
        with self._write_lock:
            offsets: list[int] = []
            failures: list[str] = []

            def delivered(err: KafkaError | None, msg: Any) -> None:
                if err is not None:
                    failures.append(redact(str(err)))
                else:
                    offsets.append(int(msg.offset()))

            for key, value in batch:
                self._producer.produce(
                    self.topic,
                    key=records.encode_key(key),
                    value=records.encode_value(value),
                    on_delivery=delivered,
                )
            remaining = self._producer.flush(self.write_timeout)
            if failures or remaining:
                raise errors.store_error(
                    failures[0] if failures else f"{remaining} record(s) not acknowledged by the broker"
                )
            if offsets and not self._wait_applied(max(offsets), self.write_timeout):
                raise errors.store_timeout(
                    f"the registry did not read back its own record at offset {max(offsets)} of {self.topic}"
                )


def _reason(exc: BaseException) -> str:
    arg = exc.args[0] if exc.args else exc
    text = redact(str(arg.str() if hasattr(arg, "str") else arg))
    return text.splitlines()[0] if text else type(exc).__name__
