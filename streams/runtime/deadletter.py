"""Dead letters: the original bytes plus headers saying where and why, Kafka Connect style.

A record that cannot be decoded or processed must not stop the processor nor
vanish: it goes to the dead-letter topic untouched, so it can be inspected and
replayed. ``ErrorBudget`` stops the processor when failures stop being
exceptions and become the rule (a systemic fault such as a wrong schema).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

from streams.runtime.records import Headers

DEAD_LETTER_PREFIX = "__passerelle.errors."


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
