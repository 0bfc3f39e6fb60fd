"""When to retry a partner request, and how long to wait: pure functions, tested without a network.

A 5xx, a timeout or a refused connection says "not now": retry with
exponential backoff and jitter. A 4xx says "never like this": retrying the
same body with the same idempotency key cannot help, so it is a dead letter
at once, except 429 (the partner asks us to slow down, and says for how long
in ``Retry-After``). Redirects are a configuration mistake (wrong URL) and
treated like a 4xx rather than followed with the credentials.
"""

from __future__ import annotations

import enum
import random
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from passerelle.connectors.emailing.config import RetryPolicy


class Verdict(enum.Enum):
    """What one answer means for the message."""

    DELIVERED = "delivered"
    RETRY = "retry"
    REJECTED = "rejected"


def classify(status: int | None, already_delivered: frozenset[int] = frozenset()) -> Verdict:
    """Verdict of an HTTP status; ``None`` means no answer at all (timeout, connection error)."""
    if status is None:
        return Verdict.RETRY
    if 200 <= status < 300 or status in already_delivered:
        return Verdict.DELIVERED
    if status == 429 or status >= 500:
        return Verdict.RETRY
    return Verdict.REJECTED


def request_outcome(status: int | None, already_delivered: frozenset[int] = frozenset()) -> str:
    """Bounded label of one request for ``passerelle_emailing_requests_total{outcome}``."""
    if status is None:
        return "transport_error"
    if 200 <= status < 300:
        return "delivered"
    if status in already_delivered:
        return "duplicate"
    if status == 429:
        return "throttled"
    if status >= 500:
        return "server_error"
    return "client_error"


def backoff_delay(attempt: int, policy: RetryPolicy, rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based).

    The ceiling is ``base * multiplier ** (attempt - 1)`` capped at
    ``max_delay_s``; jitter takes a random share of up to ``jitter`` off it, so
    the delay is always within ``[ceiling * (1 - jitter), ceiling]``.
    """
    if attempt < 1:
        raise ValueError(f"attempt numbers start at 1, got {attempt}")
    exponent = min(attempt - 1, 64)  # large attempt numbers must not overflow
    ceiling = min(policy.max_delay_s, policy.base_delay_s * policy.multiplier**exponent)
    draw = (rng or random).random()
    return ceiling * (1.0 - policy.jitter * draw)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date; None when absent or garbled.

    A date in the past means "now" (0). Garbage is ignored rather than trusted:
    the normal backoff then applies.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text.isdigit():
        return float(int(text))
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    now = now or datetime.now(UTC)
    return max(0.0, (when - now).total_seconds())


def next_delay(
    attempt: int,
    elapsed_s: float,
    policy: RetryPolicy,
    retry_after_s: float | None = None,
    rng: random.Random | None = None,
) -> float | None:
    """Seconds to wait before attempt ``attempt + 1``, or None when the budget is spent.

    The budget is spent when ``max_attempts`` attempts were made, or when the
    wait would end past ``max_total_s`` from the first attempt. ``Retry-After``
    replaces the backoff (the partner knows best) but never stretches the budget.
    """
    if attempt >= policy.max_attempts:
        return None
    if retry_after_s is not None:
        if retry_after_s > policy.max_retry_after_s:
            return None
        delay = retry_after_s
    else:
        delay = backoff_delay(attempt, policy, rng)
    if elapsed_s + delay > policy.max_total_s:
        return None
    return delay
