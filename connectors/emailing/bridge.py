"""The emailing bridge: ``remarketing.messages`` → the partner's HTTP API → ``remarketing.deliveries``.

At-least-once to the partner, exactly-once in the partner's view: each
message is sent with its id as ``Idempotency-Key``; its outcome (and, when it
failed for good, its dead letter) is produced and acknowledged by the broker
*before* the input offset is committed. A crash between the partner's answer
and the commit sends the message again after the restart, with the same key
and body, so the partner keeps one.

The loop is batch-synchronous on purpose: one ``consume`` gives a batch,
each partition's messages of the batch go in order on one worker thread
(``concurrency`` partitions at a time), and the batch's outputs are flushed
and its offsets committed before the next ``consume``. So nothing is in
flight when the group rebalances (callbacks run inside ``consume``), and no
offset is committed ahead of an undecided message.
"""

from __future__ import annotations

import collections
import logging
import signal
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from pydantic import ValidationError

from passerelle.connectors.emailing.client import DeliveryResult, Interrupted, PartnerClient
from passerelle.connectors.emailing.config import (
    CATALOG_DELIVERIES_TOPIC,
    CATALOG_INPUT_TOPIC,
    EmailingConfig,
    EmailingStartupError,
)
from passerelle.connectors.emailing.deadletters import produce_dead_letter
from passerelle.connectors.emailing.mapping import build_payload, report_unsafe_urls
from passerelle.connectors.emailing.metrics import EmailingMetrics
from passerelle.schemas import clients
from passerelle.schemas.catalog import load_catalog
from passerelle.schemas.errors import ContractError, SerializationError
from passerelle.schemas.models import RemarketingDelivery, RemarketingMessage
from passerelle.schemas.serde import AvroDecoder, AvroEncoder, RegistryLike, SchemaCache, registry_fetcher
from passerelle.streams.runtime.deadletter import DEAD_LETTER_PREFIX

log = logging.getLogger(__name__)

PROCESSOR = "emailing"
STAGE_DESERIALIZE = "deserialize"
STAGE_DELIVER = "deliver"
MAX_POLL_INTERVAL_MS = 86_400_000
"""librdkafka's upper bound for ``max.poll.interval.ms``."""


class BridgeError(Exception):
    """The bridge cannot go on without risking a commit ahead of its outputs (broker unreachable, fatal error)."""

    user_error = True
    exit_code = 4


class PartnerDeliveryError(Exception):
    """A message the partner did not take: the dead letter's exception, its message says what the partner said."""


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def failure_message(result: DeliveryResult, partner: str) -> str:
    """One line for the dead letter: what the partner answered, after how many attempts and how long."""
    tried = f"after {result.attempts} attempt(s) in {result.latency_s:.1f}s"
    if result.reason == "rejected":
        return f"{partner} rejected the message with {result.last_status} {tried}: {result.last_answer}"
    if result.last_status is None:
        return f"no answer from {partner} {tried}, retry budget spent: {result.last_answer}"
    return f"{partner} answered {result.last_status} {tried}, retry budget spent: {result.last_answer}"


def partner_headers(result: DeliveryResult, partner: str) -> list[tuple[str, bytes]]:
    """Extra dead-letter headers carrying the partner's last answer, machine-readable."""
    headers = [
        (DEAD_LETTER_PREFIX + "partner.name", partner.encode()),
        (DEAD_LETTER_PREFIX + "partner.reason", result.reason.encode()),
        (DEAD_LETTER_PREFIX + "partner.attempts", str(result.attempts).encode()),
        (DEAD_LETTER_PREFIX + "partner.answer", result.last_answer.encode(errors="replace")),
    ]
    if result.last_status is not None:
        headers.append((DEAD_LETTER_PREFIX + "partner.status", str(result.last_status).encode()))
    return headers


def delivery_record(
    message: dict[str, Any], result: DeliveryResult, partner: str, partition: int, offset: int, decided_at_ms: int
) -> RemarketingDelivery:
    """The outcome record of one decided message."""
    return RemarketingDelivery(
        message_id=message["message_id"],
        sequence_id=message["sequence_id"],
        step=message["step"],
        customer_id=message["customer_id"],
        partner=partner,
        outcome="delivered" if result.delivered else "dead_lettered",
        reason=result.reason,
        attempts=result.attempts,
        last_status=result.last_status,
        last_answer=result.last_answer or None,
        latency_ms=int(result.latency_s * 1000),
        source_partition=partition,
        source_offset=offset,
        first_attempt_at=result.first_attempt_at_ms,
        decided_at=decided_at_ms,
    )


class EmailingBridge:
    """Consumes remarketing messages, calls the partner, produces outcomes and dead letters, commits."""

    def __init__(
        self,
        config: EmailingConfig,
        *,
        registry: RegistryLike | None = None,
        metrics: EmailingMetrics | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics or EmailingMetrics()
        self._stop = threading.Event()
        self._registry = registry
        self._transport = transport
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._client: PartnerClient | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._decoder: AvroDecoder | None = None
        self._key_encoder: AvroEncoder | None = None
        self._value_encoder: AvroEncoder | None = None
        self._produce_errors: list[str] = []
        self._errors_lock = threading.Lock()

    # --- lifecycle ------------------------------------------------------------------------------

    def stop(self, *_: Any) -> None:
        """Finish the messages being decided, commit, leave the group (signal-safe: only sets an event)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def start(self) -> None:
        """Schemas, consumer, producer, HTTP client, worker pool (blocking)."""
        cfg = self.config
        conn = cfg.conn
        clients.ensure_reachable(conn)
        try:
            catalog = load_catalog(cfg.catalog_path)
            registry = self._registry or clients.registry_client(conn)
            reader = catalog.schema_text(catalog.topic(CATALOG_INPUT_TOPIC).value_schema)
            self._decoder = AvroDecoder(SchemaCache(registry_fetcher(registry)), reader_schema=reader)
            out = catalog.topic(CATALOG_DELIVERIES_TOPIC)
            auto = cfg.auto_register_schemas
            self._key_encoder = AvroEncoder.for_subject(
                registry, f"{cfg.deliveries_topic}-key", catalog.schema_text(out.key_schema), auto_register=auto
            )
            self._value_encoder = AvroEncoder.for_subject(
                registry, f"{cfg.deliveries_topic}-value", catalog.schema_text(out.value_schema), auto_register=auto
            )
        except ContractError as exc:
            raise EmailingStartupError(f"{exc} (schema registry {cfg.schema_registry_url})") from exc
        self._producer = clients.producer(
            conn,
            {
                "client.id": f"passerelle-{PROCESSOR}",
                "linger.ms": 5,
                "message.timeout.ms": max(1000, int(cfg.produce_timeout_s * 1000)),
            },
        )
        # Worst case between two polls: one partition's whole batch, each message spending its retry budget.
        batch_budget_s = (cfg.retry.max_total_s + cfg.request_timeout_s + 5) * cfg.batch_size
        self._consumer = clients.consumer(
            conn,
            cfg.group_id,
            {
                "client.id": f"passerelle-{PROCESSOR}",
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                "partition.assignment.strategy": "cooperative-sticky",
                # A batch may wait out retry budgets: the member must not be evicted meanwhile.
                "max.poll.interval.ms": min(MAX_POLL_INTERVAL_MS, max(300_000, int(batch_budget_s * 1000))),
                **({"group.instance.id": cfg.instance_id} if cfg.instance_id else {}),
                **cfg.consumer_overrides,
            },
        )
        self._consumer.subscribe([cfg.topic])
        self._client = PartnerClient(cfg, self.metrics, stop=self._stop, transport=self._transport)
        self._pool = ThreadPoolExecutor(max_workers=cfg.concurrency, thread_name_prefix="emailing")
        log.info(
            "emailing bridge: %s → %s (%s), outcomes on %s",
            cfg.topic,
            cfg.partner_name,
            cfg.partner_url,
            cfg.deliveries_topic,
        )

    def run(self) -> None:
        """Start, loop until stopped, close; a ``BridgeError`` leaves the batch uncommitted."""
        self.start()
        try:
            while not self._stop.is_set():
                self.run_once()
        finally:
            self.close()

    def close(self) -> None:
        """Leave the group and release everything (offsets were committed batch by batch)."""
        self._stop.set()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._producer is not None:
            left = self._producer.flush(self.config.produce_timeout_s)
            if left:
                log.warning("%d outcome record(s) not acknowledged at shutdown (their offsets are not committed)", left)
            self._producer = None
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
        if self._client is not None:
            self._client.close()
            self._client = None

    # --- the loop -------------------------------------------------------------------------------

    def run_once(self) -> int:
        """One batch: consume, decide every message (partitions in parallel), flush, commit. Returns decided count."""
        consumer = self._consumer
        if consumer is None or self._pool is None:
            raise RuntimeError("EmailingBridge.run_once() before start()")
        messages = consumer.consume(self.config.batch_size, timeout=self.config.poll_timeout_s)
        by_partition: dict[tuple[str, int], list[Message]] = collections.defaultdict(list)
        for msg in messages:
            err = msg.error()
            if err is not None:
                if err.fatal():
                    raise BridgeError(f"fatal consumer error: {err.str()}")
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer: %s", err.str())
                continue
            by_partition[(msg.topic() or "", msg.partition() or 0)].append(msg)
        if not by_partition:
            return 0
        futures = {tp: self._pool.submit(self._decide_partition, msgs) for tp, msgs in by_partition.items()}
        decided: dict[tuple[str, int], int] = {}
        count = 0
        for tp, future in futures.items():
            last_offset, done = future.result()  # a bug in a worker propagates: nothing gets committed
            count += done
            if last_offset is not None:
                decided[tp] = last_offset
        self._flush_or_fail()
        if decided:
            offsets = [TopicPartition(t, p, off + 1) for (t, p), off in decided.items()]
            try:
                consumer.commit(offsets=offsets, asynchronous=False)
            except KafkaException as exc:
                # The outcomes are out; the next owner sends these messages again, with the same keys.
                log.warning("offset commit failed (messages will be sent again after a rebalance): %s", exc)
        return count

    def _flush_or_fail(self) -> None:
        producer = self._producer
        assert producer is not None
        left = producer.flush(self.config.produce_timeout_s)
        with self._errors_lock:
            errors, self._produce_errors = self._produce_errors, []
        if left or errors:
            detail = errors[0] if errors else f"{left} record(s) not acknowledged in {self.config.produce_timeout_s}s"
            raise BridgeError(f"outcomes not stored, offsets not committed: {detail}")

    def _decide_partition(self, messages: Sequence[Message]) -> tuple[int | None, int]:
        """Decide the messages of one partition in order; stop at the first one interrupted by shutdown."""
        last: int | None = None
        done = 0
        for msg in messages:
            if self._stop.is_set():
                break
            try:
                self._decide(msg)
            except Interrupted:
                break
            last = msg.offset()
            done += 1
        return last, done

    def _decide(self, msg: Message) -> None:
        assert self._decoder is not None and self._client is not None
        try:
            value = self._decoder.decode(msg.value())
            message = RemarketingMessage.from_avro(value).to_avro()
            payload = build_payload(message, self.config.mapping)
        except (SerializationError, ValidationError, ValueError) as exc:
            log.warning("message at %s[%s]@%s cannot be read: %s", msg.topic(), msg.partition(), msg.offset(), exc)
            self._dead_letter(msg, exc, STAGE_DESERIALIZE)
            return
        # Null in the body (see mapping); said once per message, not once per attempt.
        self.metrics.unsafe_urls.inc(report_unsafe_urls(message, log))
        result = self._client.deliver(payload, message["message_id"])
        partner = self.config.partner_name
        if not result.delivered:
            self._dead_letter(
                msg,
                PartnerDeliveryError(failure_message(result, partner)),
                STAGE_DELIVER,
                partner_headers(result, partner),
            )
        record = delivery_record(message, result, partner, msg.partition() or 0, msg.offset() or 0, _now_ms())
        self._produce(
            self.config.deliveries_topic,
            self._encode_value(record),
            self._encode_key(record.message_id),
            timestamp=record.decided_at,
        )
        self.metrics.messages.labels(record.outcome).inc()
        self.metrics.delivery_seconds.observe(result.latency_s)

    # --- outputs --------------------------------------------------------------------------------

    def _encode_key(self, key: str) -> bytes:
        assert self._key_encoder is not None
        return self._key_encoder.encode(key)

    def _encode_value(self, record: RemarketingDelivery) -> bytes:
        assert self._value_encoder is not None
        return self._value_encoder.encode(record.to_avro())

    def _dead_letter(
        self, msg: Message, error: BaseException, stage: str, extra: list[tuple[str, bytes]] | None = None
    ) -> None:
        assert self._producer is not None
        produce_dead_letter(
            self._producer,
            self.config.dead_letter_topic,
            msg,
            error,
            stage=stage,
            processor=PROCESSOR,
            extra=extra,
            on_delivery=self._on_delivery,
        )
        self.metrics.dead_letters.inc()
        if stage != STAGE_DELIVER:
            self.metrics.messages.labels("dead_lettered").inc()

    def _on_delivery(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            with self._errors_lock:
                self._produce_errors.append(err.str())

    def _produce(self, topic: str, value: bytes | None, key: bytes | None, **kwargs: Any) -> None:
        assert self._producer is not None
        clients.produce(self._producer, topic, value, key, on_delivery=self._on_delivery, **kwargs)


def run_bridge(config: EmailingConfig, install_signals: bool = True) -> None:
    """Run a bridge in the foreground until SIGTERM/SIGINT; serve ``/metrics`` when ``metrics_port`` is set."""
    bridge = EmailingBridge(config)
    if config.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(config.metrics_port, registry=bridge.metrics.registry)
    if install_signals:
        bridge.install_signal_handlers()
    bridge.run()
