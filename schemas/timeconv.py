"""Event times as UTC milliseconds, whatever shape the decoder gave them.

fastavro decodes ``timestamp-millis`` into aware datetimes while producers and
tests hand over plain ints; every processor needs the same conversion, and a
float round-trip (``timestamp() * 1000``) must be rounded, not truncated, or a
millisecond is lost now and then.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any


def to_millis(value: Any) -> int:
    """UTC milliseconds from an int, or from a (naive = UTC, or aware) datetime."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return round(value.timestamp() * 1000)
    return int(value)


def parse_epoch_ms(value: Any) -> int:
    """Epoch milliseconds from what a client sends: int/float millis, a digit string, or ISO 8601 with a zone.

    The collector's tags and the partner API's uploads accept the same shapes; ``ValueError`` says what is wrong.
    """
    expected = "epoch milliseconds or an ISO 8601 time with a zone, e.g. 2026-11-29T10:00:00Z"
    if isinstance(value, bool) or value is None:
        raise ValueError(f"must be {expected}")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("must be a finite number of epoch milliseconds")
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return int(text)
        try:
            moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise ValueError(f"must be {expected}") from None
        if moment.tzinfo is None:
            raise ValueError("has no time zone; send UTC (...Z) or an offset such as +01:00")
        return int(moment.timestamp() * 1000)
    raise ValueError(f"must be {expected}")
