"""Lookup tables: compacted topics replicated whole into every instance.

Global-table style: each instance reads every partition of the table topic
from the beginning, without a consumer group, and keeps reading while it
processes, so a CRM profile published now enriches the next hits. A tombstone
deletes the key (erasure).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

from passerelle.schemas import clients
from passerelle.schemas.errors import RegistryUnavailableError

log = logging.getLogger(__name__)

KeyDecoder = Callable[[bytes | None], Any]
ValueDecoder = Callable[[bytes], Any]


class LookupTable:
    """One replicated table: a dict kept current from its topic."""

    def __init__(
        self,
        name: str,
        topic: str,
        conn: clients.Connection,
        decode_key: KeyDecoder,
        decode_value: ValueDecoder,
        on_error: Callable[[str, bytes | None, bytes | None, BaseException], None] | None = None,
    ) -> None:
        self.name = name
        self.topic = topic
        self.data: dict[Any, Any] = {}
        # Keys whose latest record is a tombstone: erasures must be enforced on state restored later.
        self.deleted: set[Any] = set()
        self.on_change: Callable[[Any, Any, Any], None] | None = None
        self._restored = False
        self._decode_key = decode_key
        self._decode_value = decode_value
        self._on_error = on_error
        self._consumer = clients.consumer(
            conn,
            f"passerelle-table-{topic}",  # required by librdkafka, never committed
            {"enable.partition.eof": True, "isolation.level": "read_committed", "log_level": 3},
        )
        meta = self._consumer.list_topics(topic, timeout=30)
        tmeta = meta.topics.get(topic)
        if tmeta is None or tmeta.error is not None or not tmeta.partitions:
            raise RuntimeError(f"lookup table topic '{topic}' does not exist")
        self._partitions = sorted(tmeta.partitions)
        self._consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in self._partitions])
        self._eof: set[int] = set()
        self._warned = 0.0

    def restore(self, timeout: float = 120.0) -> int:
        """Read to the end of every partition before processing starts; returns records applied."""
        deadline = time.monotonic() + timeout
        applied = 0
        while len(self._eof) < len(self._partitions):
            if time.monotonic() > deadline:
                raise TimeoutError(f"lookup table '{self.name}' not restored within {timeout:.0f}s")
            applied += self.poll(timeout=0.5, max_records=10_000)
        self._restored = True
        return applied

    def poll(self, timeout: float = 0.0, max_records: int = 2_000) -> int:
        """Apply whatever arrived since the last call; cheap when nothing did."""
        msgs: list[Any] = self._consumer.consume(max_records, timeout=timeout)
        applied = 0
        waiting: set[int] = set()
        for msg in msgs:
            if msg.partition() in waiting:
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    self._eof.add(msg.partition())
                else:
                    log.warning("lookup table %s: %s", self.name, err)
                continue
            raw_key, raw_value = msg.key(), msg.value()
            try:
                key = self._decode_key(raw_key)
                old = self.data.get(key)
                if raw_value is None:
                    self.data.pop(key, None)
                    self.deleted.add(key)
                    new = None
                else:
                    new = self.data[key] = self._decode_value(raw_value)
                    self.deleted.discard(key)
                if self._restored and self.on_change is not None:
                    self.on_change(key, old, new)
            except RegistryUnavailableError as exc:
                # Not poison: read this partition again from this record once the registry answers.
                waiting.add(msg.partition())
                self._consumer.seek(TopicPartition(self.topic, msg.partition(), msg.offset()))
                if time.monotonic() - self._warned >= 10:
                    self._warned = time.monotonic()
                    log.warning("lookup table %s: %s; retrying", self.name, exc)
                continue
            except Exception as exc:
                if self._on_error is not None:
                    self._on_error(self.topic, raw_key, raw_value, exc)
                else:
                    log.warning("lookup table %s: undecodable record at %s: %s", self.name, msg.offset(), exc)
                continue
            applied += 1
        return applied

    def close(self) -> None:
        self._consumer.close()
