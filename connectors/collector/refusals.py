"""Why an event can never be stored, found while producing it: the client's error, not "retry later".

Validation bounds each field; only encoding knows the record's real size and
whether its text is valid UTF-8 (JSON lets a client send ``"\\ud800"``, a lone
surrogate no encoder accepts). Those verdicts are final for the event, so the
collector answers them 400 (pixel) or rejects the event in a 207 (batch): a
503 would make the client retry the same bytes forever. Broker answers stay
transient on purpose: a broker refuses a whole batch of records, valid ones
included, and a batch made later may pass.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException

_REFUSED_AT_PRODUCE = frozenset({KafkaError.MSG_SIZE_TOO_LARGE})
"""librdkafka's own verdicts on one record, raised by ``produce()`` before anything is sent."""


def too_large(size: int, limit: int) -> str:
    return f"event too large: {size} bytes once encoded, which exceeds the limit of {limit} bytes"


def refused_by_producer(exc: KafkaException, size: int) -> str | None:
    """The message when ``produce()`` refused this record for good, else None (a transient error)."""
    err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
    if err is None or err.code() not in _REFUSED_AT_PRODUCE:
        return None
    return f"event too large for the Kafka producer: {size} bytes once encoded ({err.str()})"


def unencodable(value: Mapping[str, Any], exc: Exception) -> str:
    """Which fields cannot be encoded (text that is not valid Unicode), without echoing their content.

    Only called once encoding failed, so the walk costs nothing on valid traffic.
    """
    paths = [path for path, text in _strings(value) if not _is_utf8_encodable(text)]
    if paths:
        return "; ".join(f"{path}: not valid Unicode text (lone surrogate), it cannot be stored" for path in paths)
    return f"the event cannot be encoded: {exc}"


def _is_utf8_encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _strings(node: Any, parts: tuple[str, ...] = ()) -> Iterator[tuple[str, str]]:
    """Every string of an Avro value (map keys included) with its dotted path."""
    if isinstance(node, str):
        yield ".".join(parts), node
    elif isinstance(node, Mapping):
        for key, child in node.items():
            name = str(key)
            if not _is_utf8_encodable(name):
                name = "<key>"
                yield ".".join((*parts, name)), str(key)
            yield from _strings(child, (*parts, name))
    elif isinstance(node, list | tuple):
        for index, child in enumerate(node):
            yield from _strings(child, (*parts, str(index)))
