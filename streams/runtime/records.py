"""The records a processor sees and returns: plain slotted objects, no Kafka types.

Processor logic must be testable without a broker, so the runner converts
confluent-kafka messages into ``InRecord`` and ``OutRecord`` into produce
calls. Slots keep the per-record cost near that of a tuple.
"""

from __future__ import annotations

from typing import Any

Headers = list[tuple[str, bytes]]


class InRecord:
    """One decoded input record with its coordinates (for dead letters and offsets)."""

    __slots__ = ("headers", "key", "offset", "partition", "raw_key", "raw_value", "timestamp", "topic", "value")

    def __init__(
        self,
        topic: str,
        partition: int,
        offset: int,
        timestamp: int,
        key: Any,
        value: Any,
        headers: Headers | None = None,
        raw_key: bytes | None = None,
        raw_value: bytes | None = None,
    ) -> None:
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.timestamp = timestamp
        self.key = key
        self.value = value
        self.headers = headers
        self.raw_key = raw_key
        self.raw_value = raw_value

    def __repr__(self) -> str:
        return f"InRecord({self.topic}[{self.partition}]@{self.offset} key={self.key!r})"


class OutRecord:
    """A record to emit: the runner encodes ``value`` with the output topic's schema.

    ``value=None`` is a tombstone. ``timestamp`` defaults to the time the
    record is produced (Kafka's CreateTime), which is what a reader's
    end-to-end latency is measured against; event time travels in the value.
    ``partition`` is left to the partitioner (murmur2 of the key).
    """

    __slots__ = ("encoded", "headers", "key", "partition", "timestamp", "topic", "value")

    def __init__(
        self,
        topic: str,
        key: Any,
        value: Any,
        timestamp: int | None = None,
        headers: Headers | None = None,
        partition: int | None = None,
    ) -> None:
        self.topic = topic
        self.key = key
        self.value = value
        self.timestamp = timestamp
        self.headers = headers
        self.partition = partition
        self.encoded: tuple[bytes | None, bytes | None] | None = None  # (key, value) once the runner sealed it

    def __repr__(self) -> str:
        return f"OutRecord({self.topic} key={self.key!r} value={self.value!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, OutRecord):
            return NotImplemented
        return (self.topic, self.key, self.value, self.timestamp, self.headers, self.partition) == (
            other.topic, other.key, other.value, other.timestamp, other.headers, other.partition,
        )  # fmt: skip

    __hash__ = None  # type: ignore[assignment]
