"""How a processor's topics are read and written, by their wire format: Confluent Avro or Kafka Connect JSON.

Most topics are Confluent Avro (``schemas/serde.py``, through the registry).
Topics at the Kafka Connect edge are ``connect-json`` in the catalog: keys are
UTF-8 text, values JsonConverter envelopes (``schemas/connect_json.py``),
because no registry-speaking Avro converter exists for the Connect workers.
The runner and the test driver both pick their codecs here, once per topic at
start, so the per-record path is a dict lookup whatever the format, and the
driver fails a record exactly where the runner would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from passerelle.schemas import connect_json
from passerelle.schemas.catalog import CONFLUENT_AVRO, CONNECT_JSON

PROCESSOR_FORMATS = (CONFLUENT_AVRO, CONNECT_JSON)
"""Wire formats a processor reads and writes (``raw`` topics hold bytes nobody decodes)."""

Decode = Callable[[bytes], Any]
DecodeKey = Callable[[bytes | None], Any]


class Encoder(Protocol):
    """Turns a key or a value into the bytes of its topic."""

    def encode(self, value: Any) -> bytes: ...


class Utf8KeyEncoder:
    """Keys of Connect JSON topics: plain UTF-8 text, what ``StringConverter`` reads (and partitions on)."""

    def encode(self, value: Any) -> bytes:
        return connect_json.encode_key(value)


def wire_formats(declared: Mapping[str, str], topics: Iterable[str], processor: str) -> dict[str, str]:
    """The format of each topic (absent: ``confluent-avro``); one a processor cannot use raises ``ValueError``."""
    formats: dict[str, str] = {}
    for topic in topics:
        fmt = declared.get(topic, CONFLUENT_AVRO)
        if fmt not in PROCESSOR_FORMATS:
            raise ValueError(
                f"processor {processor}: topic '{topic}' has wire format {fmt!r}, which a processor cannot read or "
                f"write (one of {', '.join(PROCESSOR_FORMATS)})"
            )
        formats[topic] = fmt
    return formats


def connect_json_encoders(topic: str, value_schema: str | None) -> tuple[Encoder, Encoder]:
    """(key encoder, value encoder) of a Connect JSON output; its Avro contract is required to write the schema."""
    if value_schema is None:
        raise ValueError(f"no value schema configured for Connect JSON output topic '{topic}' (its contract)")
    return Utf8KeyEncoder(), connect_json.ConnectJsonEncoder(value_schema)


decode_connect_json: Decode = connect_json.decode
"""A Connect JSON input value: the envelope's payload (the document itself without one)."""
decode_utf8_key: DecodeKey = connect_json.decode_key
"""A Connect JSON input key: UTF-8 text."""
