"""Event times as UTC milliseconds, whatever shape the decoder gave them.

fastavro decodes ``timestamp-millis`` into aware datetimes while producers and
tests hand over plain ints; every processor needs the same conversion, and a
float round-trip (``timestamp() * 1000``) must be rounded, not truncated, or a
millisecond is lost now and then.
"""

from __future__ import annotations

import datetime as dt
from typing import Any


def to_millis(value: Any) -> int:
    """UTC milliseconds from an int, or from a (naive = UTC, or aware) datetime."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return round(value.timestamp() * 1000)
    return int(value)
