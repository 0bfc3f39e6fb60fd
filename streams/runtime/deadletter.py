"""Dead letters: the original bytes plus headers saying where and why, Kafka Connect style.

A record that cannot be decoded or processed must not stop the processor nor
vanish: it goes to the dead-letter topic untouched, so it can be inspected and
replayed. ``ErrorBudget`` stops the processor when failures stop being
exceptions and become the rule (a systemic fault such as a wrong schema).
"""

from __future__ import annotations

import collections
import hashlib
import logging
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaException

from passerelle.schemas.clients import produce
from passerelle.streams.runtime.records import Headers

log = logging.getLogger(__name__)

DEAD_LETTER_PREFIX = "__passerelle.errors."
MAX_RECORD_BYTES = 999_000  # key + value + headers; librdkafka refuses more than message.max.bytes (1e6)
KEPT_BYTES = 64 * 1024  # of a record too large for the dead-letter topic: this much is kept, with size and digest


def dead_letter_headers(
    *,
    topic: str,
    partition: int,
    offset: int,
    stage: str,
    error: BaseException,
    processor: str,
    original: Headers | None = None,
) -> Headers:
    """Original headers first, then the error context (names mirror ``__connect.errors.*``)."""
    message = str(error) or type(error).__name__
    headers: Headers = list(original or [])
    headers += [
        (DEAD_LETTER_PREFIX + "topic", topic.encode()),
        (DEAD_LETTER_PREFIX + "partition", str(partition).encode()),
        (DEAD_LETTER_PREFIX + "offset", str(offset).encode()),
        (DEAD_LETTER_PREFIX + "stage", stage.encode()),
        (DEAD_LETTER_PREFIX + "exception.class", f"{type(error).__module__}.{type(error).__qualname__}".encode()),
        (DEAD_LETTER_PREFIX + "exception.message", message[:2000].encode(errors="replace")),
        (DEAD_LETTER_PREFIX + "processor", processor.encode()),
    ]
    return headers


@dataclass(frozen=True)
class DeadLetter:
    """One dead-letter record ready to produce, and the bare error headers to fall back on."""

    key: bytes | None
    value: bytes | None
    headers: Headers
    bare_headers: Headers  # the error context alone, for when the record itself is refused
    origin: str = ""  # topic[partition]@offset, for log lines
    truncated: bool = False


def dead_letter_record(
    *,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    headers: Headers | None,
    error: BaseException,
    stage: str,
    processor: str,
    max_record_bytes: int = MAX_RECORD_BYTES,
) -> DeadLetter:
    """The dead letter of one record: its bytes and headers, then the error context.

    A record too large for any topic keeps its first ``KEPT_BYTES`` of key
    and value, with ``original.size``, ``original.sha256`` and ``truncated``
    headers, so it can still be found and judged.
    """
    context: dict[str, Any] = {"topic": topic, "partition": partition, "offset": offset, "stage": stage,
                               "error": error, "processor": processor}  # fmt: skip
    hdrs = dead_letter_headers(**context, original=list(headers or []))
    size = len(key or b"") + len(value or b"") + sum(len(k) + len(v or b"") for k, v in hdrs)
    truncated = size > max_record_bytes
    if truncated:
        hdrs += [
            (DEAD_LETTER_PREFIX + "original.size", str(len(value or b"")).encode()),
            (DEAD_LETTER_PREFIX + "original.sha256", hashlib.sha256(value or b"").hexdigest().encode()),
            (DEAD_LETTER_PREFIX + "truncated", b"true"),
        ]
        key, value = (key[:KEPT_BYTES] if key else key), (value[:KEPT_BYTES] if value else value)
    return DeadLetter(key, value, hdrs, dead_letter_headers(**context), f"{topic}[{partition}]@{offset}", truncated)


class DeadLetterRefusedError(Exception):
    """Not even the error headers of a dead letter could be written: the process cannot go on safely."""

    user_error = True
    exit_code = 5
    fatal = True  # never turned into a dead letter itself


def write_dead_letter(producer: Any, dead_letter_topic: str, letter: DeadLetter) -> bool:
    """Produce ``letter`` with the client layer (``clients.produce``); False if only its headers went.

    A record the producer refuses (too large for the broker's limits after
    all, a topic that does not take it) is replaced by its error headers
    alone; if even those are refused, ``DeadLetterRefusedError``.
    """
    try:
        produce(producer, dead_letter_topic, letter.value, letter.key, headers=letter.headers)
        return True
    except KafkaException as exc:  # even that refused: the error alone, without the record's own bytes
        log.warning("dead letter of %s refused (%s): headers only", letter.origin, exc)
        try:
            produce(producer, dead_letter_topic, None, None, headers=letter.bare_headers)
        except KafkaException as again:
            raise DeadLetterRefusedError(
                f"cannot write to the dead-letter topic {dead_letter_topic}: {again}"
            ) from None
        return False


def header_dict(headers: Headers | None) -> dict[str, str]:
    """Decode the error headers of a dead letter (for tools and tests)."""
    prefix = DEAD_LETTER_PREFIX
    return {k[len(prefix) :]: v.decode() for k, v in headers or [] if k.startswith(prefix) and v is not None}


class ErrorBudgetExceeded(Exception):
    """Too many dead letters in the recent window: stop instead of draining everything."""

    user_error = True
    exit_code = 4


@dataclass
class ErrorBudget:
    """Allow at most ``max_ratio`` failures among the last ``window`` records (after ``min_records``)."""

    max_ratio: float = 0.5
    window: int = 10_000
    min_records: int = 1_000

    def __post_init__(self) -> None:
        # Buckets of (records, failures), one per batch, trimmed to about ``window`` records.
        self._buckets: collections.deque[tuple[int, int]] = collections.deque()
        self._records = 0
        self._failures = 0

    def record(self, records: int, failures: int) -> None:
        if records <= 0:
            return
        self._buckets.append((records, failures))
        self._records += records
        self._failures += failures
        while self._buckets and self._records - self._buckets[0][0] >= self.window:
            r, f = self._buckets.popleft()
            self._records -= r
            self._failures -= f
        if self.max_ratio < 1.0 and self._records >= self.min_records:
            ratio = self._failures / self._records
            if ratio > self.max_ratio:
                raise ErrorBudgetExceeded(
                    f"{self._failures} of the last {self._records} records failed ({ratio:.0%} > "
                    f"{self.max_ratio:.0%}): stopping, this looks systemic; see the dead-letter topic"
                )
