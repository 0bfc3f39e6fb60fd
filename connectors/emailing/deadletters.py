"""Dead letters of the emailing connector, in the runtime's format (original bytes, ``__passerelle.errors.*``).

Shared by the bridge and the export so that a message that could not be read
or could not be delivered looks the same on ``errors.deadletters`` whoever
gave up on it, and the same as the stream processors' dead letters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from passerelle.schemas.clients import produce
from passerelle.streams.runtime.deadletter import dead_letter_headers
from passerelle.streams.runtime.records import Headers


def original_headers(msg: Message) -> Headers:
    """The record's own headers as (name, bytes) pairs; a header without value keeps an empty one."""
    raw = msg.headers() or []
    pairs = raw.items() if isinstance(raw, dict) else raw
    return [(k, v.encode() if isinstance(v, str) else (v or b"")) for k, v in pairs]


def produce_dead_letter(
    producer: Producer,
    topic: str,
    msg: Message,
    error: BaseException,
    *,
    stage: str,
    processor: str,
    extra: Headers | None = None,
    on_delivery: Callable[[KafkaError | None, Message], None] | None = None,
) -> None:
    """Produce ``msg``'s original key and value to ``topic`` with the error headers (and ``extra`` ones)."""
    headers = dead_letter_headers(
        topic=msg.topic() or "",
        partition=msg.partition() or 0,
        offset=msg.offset() or 0,
        stage=stage,
        error=error,
        processor=processor,
        original=original_headers(msg),
    )
    kwargs: dict[str, Any] = {"headers": headers + list(extra or [])}
    if on_delivery is not None:
        kwargs["on_delivery"] = on_delivery
    produce(producer, topic, msg.value(), msg.key(), **kwargs)
