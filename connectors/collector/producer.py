"""The collector's Kafka producer: idempotent, ``acks=all``, and awaitable per request.

The HTTP answer is the collector's promise to the tag: a 2xx must mean the
broker has every record of the request. So ``send`` resolves only once the
delivery report of each record has come back (or the timeout passed). One
asyncio future per request (not per record) is resolved when the last report
of that request lands.

The delivery reports are served on the event loop's own thread
(``_LoopPoller``: ``poll(0)`` every millisecond while records are in flight,
every 50 ms otherwise), not on a thread of their own. confluent-kafka takes
the GIL back once per report: a poll thread had to wait for it behind a busy
event loop (up to the interpreter's 5 ms switch interval), and each report
forced a switch of threads. Under load the profile showed the poll thread
waiting for the GIL 45% of the time, running callbacks 1%. Served on the
loop, the reports that arrived since the last poll cost one call and no
thread switch (the collector's CPU per event fell by 15-20%).

Records are keyed by visitor id (Avro ``string`` key, ``<topic>-key``) with
the ``murmur2_random`` partitioner, the Java client's hashing, so that every
client writing ``hits.raw`` sends a visitor to the same partition and a
visitor's hits stay in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from passerelle.connectors.collector import refusals
from passerelle.connectors.collector.avro_writer import compile_row_writer, compile_writer
from passerelle.connectors.collector.config import (
    CATALOG_TOPIC,
    IMPRESSIONS_CATALOG_TOPIC,
    CollectorConfig,
    CollectorStartupError,
)
from passerelle.connectors.collector.validation import HIT_FIELDS, ROW_EVENT_TIME, ROW_VISITOR_ID
from passerelle.schemas import clients
from passerelle.schemas.catalog import load_catalog
from passerelle.schemas.errors import ContractError, SerializationError
from passerelle.schemas.serde import AvroEncoder, RegistryLike

log = logging.getLogger(__name__)

_FIXED = {"enable.idempotence": True, "acks": "all"}
"""Settings no override may weaken: without them a 2xx would not mean the hit is safely stored."""


class DeliveryResult(NamedTuple):
    """What became of one record: acknowledged, or an error (a tuple; every acknowledged record shares ``ACKED``).

    ``rejected`` errors are final for the event (too large once encoded, not
    encodable): the client must not send it again. Any other error is
    transient (no acknowledgement): the client retries.
    """

    error: str | None = None
    rejected: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


ACKED = DeliveryResult()
"""The result of every acknowledged record: nothing to tell apart, so nothing made per record."""

POLL_INTERVAL_S = 0.001
"""How often the event loop serves delivery reports while records are in flight (librdkafka's timers are in ms)."""
IDLE_POLL_INTERVAL_S = 0.05
"""And when none are: error callbacks, reports of requests already answered 503."""


class OutRecord(NamedTuple):
    """One record to produce: the visitor id key, the Avro value dict and its timestamp (event time)."""

    key: str
    value: Mapping[str, Any]
    timestamp_ms: int


class CompiledEncoder:
    """An ``AvroEncoder``'s schema id and schema, its writer compiled once (``avro_writer``): same bytes, less CPU.

    For a record schema whose fields are ``HIT_FIELDS``, in that order, ``encode_row`` writes a row of their
    values (``send_rows``); otherwise it is None.
    """

    __slots__ = ("encode", "encode_row", "schema_id")

    def __init__(self, encoder: AvroEncoder) -> None:
        self.schema_id = encoder.schema_id
        self.encode: Callable[[Any], bytes] = compile_writer(encoder.schema_text, prefix=encoder.header)
        self.encode_row: Callable[[Any], bytes] | None = None
        try:
            fields, encode_row = compile_row_writer(encoder.schema_text, prefix=encoder.header)
        except ValueError:  # not a record with fields: no rows for it
            return
        if fields == HIT_FIELDS:
            self.encode_row = encode_row


class _Pending:
    """Delivery reports of one request, awaited on the event loop that made it.

    Reports are served on that loop's thread (``_LoopPoller``), so no lock:
    a report served on another thread (``flush`` at shutdown, a poller moved
    to another loop) is handed over with ``call_soon_threadsafe``.
    """

    __slots__ = ("future", "loop", "remaining", "results", "thread")

    def __init__(self, size: int, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.thread = threading.get_ident()
        self.future: asyncio.Future[None] = loop.create_future()
        self.results: list[DeliveryResult | None] = [None] * size
        self.remaining = size
        if size == 0:
            self.future.set_result(None)

    def settle(self, index: int, result: DeliveryResult) -> None:
        if threading.get_ident() != self.thread:
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                self.loop.call_soon_threadsafe(self.settle, index, result)
            return
        if self.results[index] is not None:
            return
        self.results[index] = result
        self.remaining -= 1
        if self.remaining == 0:
            _resolve(self.future)

    def delivered(self, index: int, err: KafkaError | None, msg: Message) -> None:
        self.settle(index, ACKED if err is None else DeliveryResult(err.str()))

    def snapshot(self, missing: str) -> list[DeliveryResult]:
        return [r if r is not None else DeliveryResult(missing) for r in self.results]


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _LoopPoller:
    """Serves the producer's delivery reports on one event loop: every ``POLL_INTERVAL_S`` while records are in
    flight, every ``IDLE_POLL_INTERVAL_S`` otherwise; ``wake`` switches to the short interval at once.

    It stops by itself once the producer is closed or polls on another loop.
    """

    __slots__ = ("busy", "handle", "loop", "owner")

    def __init__(self, owner: HitProducer, loop: asyncio.AbstractEventLoop) -> None:
        self.owner, self.loop, self.busy = owner, loop, True
        self.handle: asyncio.Handle = loop.call_soon(self.tick)

    def tick(self) -> None:
        producer = self.owner._producer
        if producer is None or self.owner._poller is not self:
            return
        producer.poll(0)
        self.busy = len(producer) > 0  # records queued or in flight, reports not served yet
        self.handle = self.loop.call_later(POLL_INTERVAL_S if self.busy else IDLE_POLL_INTERVAL_S, self.tick)

    def wake(self) -> None:
        if not self.busy:
            self.busy = True
            self.handle.cancel()
            self.handle = self.loop.call_later(POLL_INTERVAL_S, self.tick)


def producer_config(config: CollectorConfig, error_cb: Any = None) -> dict[str, Any]:
    """librdkafka settings: durable by construction, overrides may tune but not weaken them.

    ``message.timeout.ms`` matches the request timeout so that a record the
    collector answered 503 for is not silently delivered much later (it may
    still be, right at the edge: the client's retry then carries the same
    event id if it sent one, and consumers deduplicate).
    """
    for key, required in _FIXED.items():
        value = config.producer_overrides.get(key)
        if value is not None and str(value).lower() not in {str(required).lower(), "-1" if key == "acks" else "true"}:
            raise CollectorStartupError(f"producer override {key}={value!r} is not allowed: the collector needs {key}")
    conf: dict[str, Any] = {
        "client.id": "passerelle-collector",
        "linger.ms": 5,
        "compression.type": "lz4",
        "message.timeout.ms": max(1000, int(config.produce_timeout_s * 1000)),
        # A missing topic is a deployment error to report (503, /healthz), not one to paper over with a
        # broker-default topic of the wrong partition count and retention.
        "allow.auto.create.topics": False,
        **config.producer_overrides,
        **_FIXED,
    }
    if error_cb is not None:
        conf["error_cb"] = error_cb
    return conf


HITS, IMPRESSIONS = "hits", "impressions"
"""The streams a collector writes: hits (``topic``, ``Hit``) and ad impressions (``impressions_topic``)."""


class HitProducer:
    """Encodes hits (and ad impressions) in the Confluent wire format and produces them, one awaitable call per request.

    One librdkafka producer serves both streams. The impressions' schemas are
    looked up at start too, but a problem with them (subject not registered,
    topic refused) only makes ``GET /imp`` answer 503: it never stops the hits.
    """

    def __init__(self, config: CollectorConfig, registry: RegistryLike | None = None) -> None:
        self.config = config
        self.topic = config.topic
        self.impressions_topic = config.impressions_topic
        self._registry = registry
        self._producer: Producer | None = None
        self._key_encoder: CompiledEncoder | None = None
        self._value_encoder: CompiledEncoder | None = None
        self._impression_encoders: tuple[CompiledEncoder, CompiledEncoder] | None = None
        self._impressions_problem: str | None = None
        self._poller: _LoopPoller | None = None
        self._fatal: str | None = None
        self._lock = threading.Lock()

    @property
    def started(self) -> bool:
        return self._producer is not None

    @property
    def fatal_error(self) -> str | None:
        """Set when librdkafka reported a fatal error: this producer will never deliver again."""
        return self._fatal

    def start(self) -> None:
        """Register/look up the schemas and create the producer (blocking, idempotent).

        Its delivery reports are served on the event loop that sends (``serve_on``, or the first ``send``).
        """
        with self._lock:
            if self._producer is not None:
                return
            conn = self.config.conn
            try:
                meta = clients.ensure_reachable(conn, timeout_s=5)
            except clients.KafkaUnreachableError as exc:
                if isinstance(exc, clients.KafkaTlsError):
                    raise
                # A broker that is down is no reason not to serve: requests answer 503 until it is back.
                log.warning("%s; answering 503 until it is", exc)
            else:
                admin = clients.admin_client(conn)
                denied = clients.kafka.topic_error(meta, self.topic, conn, admin)
                if denied is not None:
                    raise denied
                refused = clients.kafka.topic_error(meta, self.impressions_topic, conn, admin)
                if refused is not None:
                    log.warning("GET /imp will fail: %s", refused)
            self._key_encoder, self._value_encoder = self._encoders(CATALOG_TOPIC, self.topic)
            try:
                self._impression_encoders = self._encoders(IMPRESSIONS_CATALOG_TOPIC, self.impressions_topic)
            except CollectorStartupError as exc:
                self._impressions_problem = str(exc)
                log.error("impressions cannot be encoded, GET /imp answers 503: %s", exc)
            self._producer = clients.producer(conn, producer_config(self.config, error_cb=self._on_error))

    def serve_on(self, loop: asyncio.AbstractEventLoop) -> None:
        """Serve delivery reports and error callbacks on ``loop`` from now on (called from that loop's thread)."""
        if self._producer is not None and (self._poller is None or self._poller.loop is not loop):
            self._poller = _LoopPoller(self, loop)

    def _encoders(self, catalog_topic: str, topic: str) -> tuple[CompiledEncoder, CompiledEncoder]:
        try:
            catalog = load_catalog(self.config.catalog_path)
            spec = catalog.topic(catalog_topic)
            key_text = catalog.schema_text(spec.key_schema)
            value_text = catalog.schema_text(spec.value_schema)
            registry = self._registry or clients.registry_client(self.config.conn)
            auto = self.config.auto_register_schemas
            key = AvroEncoder.for_subject(registry, f"{topic}-key", key_text, auto_register=auto)
            value = AvroEncoder.for_subject(registry, f"{topic}-value", value_text, auto_register=auto)
        except ContractError as exc:
            raise CollectorStartupError(f"{exc} (schema registry {self.config.schema_registry_url})") from exc
        return CompiledEncoder(key), CompiledEncoder(value)

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self._fatal = err.str()
            log.error("fatal Kafka producer error, the collector cannot deliver any more: %s", err.str())
        else:
            log.debug("Kafka producer: %s", err.str())

    async def send(self, records: Sequence[OutRecord], stream: str = HITS) -> list[DeliveryResult]:
        """Produce ``records`` (hits, or ``IMPRESSIONS``); return once each one is acknowledged, failed, or timed out.

        Results are in the order of ``records``.

        A record over ``max_record_bytes`` once encoded (key and value, the
        bytes already made for Kafka: no second serialization to measure it),
        or one that cannot be encoded, is rejected without being produced.
        """
        return await self._send(records, stream, rows=False)

    async def send_rows(self, rows: Sequence[tuple[Any, ...]]) -> list[DeliveryResult]:
        """``send`` of hits given as rows (``validation.events_to_rows``): keyed by visitor id, at their event time.

        The rows are written as they are, without a record dict in between,
        when the topic's schema has the fields of ``HIT_FIELDS`` in that
        order (the bundled ``Hit``); through their dicts otherwise.
        """
        value_enc = self._value_encoder
        if value_enc is not None and value_enc.encode_row is None:
            records = [
                OutRecord(r[ROW_VISITOR_ID], dict(zip(HIT_FIELDS, r, strict=True)), r[ROW_EVENT_TIME]) for r in rows
            ]
            return await self._send(records, HITS, rows=False)
        return await self._send(rows, HITS, rows=True)

    async def _send(self, records: Sequence[Any], stream: str, rows: bool) -> list[DeliveryResult]:
        if self._producer is None or self._key_encoder is None or self._value_encoder is None:
            raise RuntimeError("HitProducer.send() before start()")
        loop = asyncio.get_running_loop()
        poller = self._poller
        if poller is None or poller.loop is not loop:
            self.serve_on(loop)
            poller = self._poller
            assert poller is not None
        pending = _Pending(len(records), loop)
        if self._fatal is not None:
            return [DeliveryResult(f"producer unusable: {self._fatal}")] * len(records)
        deadline = loop.time() + self.config.produce_timeout_s
        producer, topic, limit = self._producer, self.topic, self.config.max_record_bytes
        key_enc, value_enc = self._key_encoder, self._value_encoder
        encode_row = value_enc.encode_row
        if stream == IMPRESSIONS:
            if self._impression_encoders is None:
                return [DeliveryResult(f"impressions unavailable: {self._impressions_problem}")] * len(records)
            topic, (key_enc, value_enc) = self.impressions_topic, self._impression_encoders
        for index, record in enumerate(records):
            try:
                if rows:
                    key = key_enc.encode(record[ROW_VISITOR_ID])
                    value = encode_row(record)  # type: ignore[misc]  # not None: checked by send_rows
                    timestamp = record[ROW_EVENT_TIME]
                else:
                    key = key_enc.encode(record.key)
                    value = value_enc.encode(record.value)
                    timestamp = record.timestamp_ms
            except SerializationError as exc:
                shown = dict(zip(HIT_FIELDS, record, strict=False)) if rows else record.value
                pending.settle(index, DeliveryResult(refusals.unencodable(shown, exc), rejected=True))
                continue
            size = len(key) + len(value)
            if size > limit:
                pending.settle(index, DeliveryResult(refusals.too_large(size, limit), rejected=True))
                continue
            callback = functools.partial(pending.delivered, index)
            while True:
                try:
                    # Positional: (topic, value, key, partition, callback, on_delivery, timestamp); keywords cost a
                    # quarter of the call (0.88 against 0.60 us). -1: librdkafka's partitioner (UA) chooses.
                    producer.produce(topic, value, key, -1, callback, None, timestamp)
                    break
                except BufferError:  # local queue full: serve reports, let the broker catch up
                    if loop.time() >= deadline:
                        pending.settle(index, DeliveryResult("producer queue full"))
                        break
                    producer.poll(0)
                    await asyncio.sleep(0.005)
                except KafkaException as exc:
                    refused = refusals.refused_by_producer(exc, size)
                    pending.settle(index, DeliveryResult(refused or str(exc), rejected=refused is not None))
                    break
        poller.wake()
        # The deadline resolves the future too (one timer, not wait_for's task and shield per request);
        # the records still missing then are reported not acknowledged.
        timer = loop.call_at(deadline, _resolve, pending.future)
        try:
            await pending.future
        finally:
            timer.cancel()
        return pending.snapshot(f"not acknowledged by the broker within {self.config.produce_timeout_s:g}s")

    def reachable(self) -> tuple[bool, str]:
        """Whether the broker answers metadata for the topic (blocking; run it off the event loop)."""
        producer = self._producer
        if producer is None:
            return False, "producer not started"
        if self._fatal is not None:
            return False, f"fatal producer error: {self._fatal}"
        try:
            meta = producer.list_topics(self.topic, timeout=self.config.health_timeout_s)
        except KafkaException as exc:
            return False, f"broker metadata unavailable: {exc}"
        topic = meta.topics.get(self.topic)
        if topic is None or topic.error is not None or not topic.partitions:
            reason = topic.error.str() if topic is not None and topic.error is not None else "no partitions"
            return False, f"topic {self.topic}: {reason}"
        return True, f"{len(meta.brokers)} broker(s), topic {self.topic} with {len(topic.partitions)} partition(s)"

    def close(self, timeout: float = 5.0) -> None:
        """Flush what is still queued (its reports go to nobody if the loop is gone); the poller stops by itself."""
        with self._lock:
            producer, self._producer = self._producer, None
            self._poller = None
            if producer is not None:
                started = time.monotonic()
                left = producer.flush(timeout)
                if left:
                    log.warning("%d record(s) not delivered after %.1fs at shutdown", left, time.monotonic() - started)
