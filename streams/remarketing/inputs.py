"""The sequencer's inputs, decoded and dead-lettered by the runtime's rules.

- each input topic is read into the catalog's schema for it (the reader
  schema): a record of another shape is poison, not misread;
- keys are Confluent-framed Avro, or else plain UTF-8 (other tools' keys);
- a null value is a tombstone only on ``crm.profiles`` (an erasure); on any
  other input it is poison;
- the registry not answering is not poison: the record waits, with a
  back-off doubling up to ``registry_retry_max_ms``, and goes on in order;
- poison goes to the dead-letter topic in the runtime's format
  (``passerelle.streams.runtime.deadletter``), written with the client layer's
  producer and acknowledged before the input record is;
- the error budget (``PASSERELLE_MAX_ERROR_RATIO``) stops the worker when
  failures become the rule.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Mapping
from typing import Any, cast

from passerelle.schemas import clients
from passerelle.schemas.serde import AvroDecoder, SchemaCache
from passerelle.streams.remarketing.config import PROCESSOR
from passerelle.streams.remarketing.metrics import RemarketingMetrics
from passerelle.streams.runtime.deadletter import DeadLetterRefusedError, dead_letter_record, write_dead_letter
from passerelle.streams.runtime.records import Headers
from passerelle.streams.runtime.runner import NullValueError

log = logging.getLogger("passerelle.remarketing")

DEAD_LETTER_ACK_TIMEOUT_MS = 30_000


class InputDecoder:
    """Keys and values of the input topics, as the runtime's runner decodes a processor's."""

    def __init__(
        self, cache: SchemaCache, reader_schemas: Mapping[str, str], tombstone_topics: Collection[str]
    ) -> None:
        self._values = {topic: AvroDecoder(cache, reader_schema=text).decode for topic, text in reader_schemas.items()}
        self._key = AvroDecoder(cache).decode
        self._tombstones = frozenset(tombstone_topics)

    def value(self, topic: str, raw: bytes | None) -> Any:
        if raw is None:
            if topic in self._tombstones:
                return None
            raise NullValueError("null value (a tombstone) on a topic whose records must carry one")
        return self._values[topic](raw)

    def key(self, raw: bytes | None) -> Any:
        if raw is None:
            return None
        if len(raw) >= 5 and raw[0] == 0:
            return self._key(raw)
        return raw.decode()


class RegistryWait:
    """The back-off while the registry does not answer: 100 ms, doubling, at most ``max_ms``."""

    def __init__(self, metrics: RemarketingMetrics, max_ms: int) -> None:
        self.metrics = metrics
        self.max_ms = max_ms
        self.backoff_ms = 0

    async def pause(self, error: BaseException) -> None:
        self.backoff_ms = min(self.max_ms, max(100, self.backoff_ms * 2))
        self.metrics.registry_retry()
        log.warning("remarketing: schema registry unavailable (%s): the record waits %d ms", error, self.backoff_ms)
        await asyncio.sleep(self.backoff_ms / 1000)

    def answered(self) -> None:
        self.backoff_ms = 0


def message_headers(headers: Any) -> Headers:
    """A faust message's headers (a list of pairs, or a mapping) as the runtime's list of pairs."""
    if not headers:
        return []
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    # A header value may be null in Kafka; the producer takes it as it came.
    return cast(Headers, [(str(k), v if isinstance(v, bytes) or v is None else str(v).encode()) for k, v in pairs])


class DeadLetters:
    """Writes the dead letters of one worker: runtime format, client-layer producer, acknowledged before going on."""

    def __init__(
        self, conn: clients.Connection, topic: str, metrics: RemarketingMetrics, max_record_bytes: int, client_id: str
    ) -> None:
        self.topic = topic
        self.metrics = metrics
        self.max_record_bytes = max_record_bytes
        self._producer = clients.producer(conn, {"client.id": f"{client_id}-dead-letters", "linger.ms": 0})

    async def write(self, message: Any, stage: str, error: BaseException) -> None:
        """Dead-letter one faust message (``topic``, ``partition``, ``offset``, ``key``, ``value``, ``headers``)."""
        letter = dead_letter_record(
            topic=message.topic, partition=message.partition, offset=message.offset, key=message.key,
            value=message.value, headers=message_headers(message.headers), error=error, stage=stage,
            processor=PROCESSOR, max_record_bytes=self.max_record_bytes,
        )  # fmt: skip
        await asyncio.to_thread(self._write, letter)
        self.metrics.dead_letter(stage)
        log.warning("remarketing: dead letter from %s (%s): %s", letter.origin, stage, error)

    def _write(self, letter: Any) -> None:
        write_dead_letter(self._producer, self.topic, letter)
        if self._producer.flush(DEAD_LETTER_ACK_TIMEOUT_MS / 1000) > 0:
            raise DeadLetterRefusedError(
                f"dead letter of {letter.origin} not acknowledged by {self.topic} within "
                f"{DEAD_LETTER_ACK_TIMEOUT_MS} ms"
            )

    def close(self) -> None:
        self._producer.flush(DEAD_LETTER_ACK_TIMEOUT_MS / 1000)
