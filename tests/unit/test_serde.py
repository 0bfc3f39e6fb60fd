"""Confluent framing and fastavro body handling, without a broker."""

from __future__ import annotations

import json
import struct

import pytest
from confluent_kafka.schema_registry.error import SchemaRegistryError

from passerelle.schemas.errors import RegistryUnavailableError, SerializationError
from passerelle.schemas.serde import AvroDecoder, AvroEncoder, SchemaCache, frame, split

pytestmark = pytest.mark.unit

V1 = json.dumps(
    {
        "type": "record",
        "name": "Thing",
        "namespace": "t",
        "fields": [{"name": "id", "type": "string"}, {"name": "n", "type": "long"}],
    }
)
V2 = json.dumps(
    {
        "type": "record",
        "name": "Thing",
        "namespace": "t",
        "fields": [
            {"name": "id", "type": "string"},
            {"name": "n", "type": "long"},
            {"name": "label", "type": ["null", "string"], "default": None},
        ],
    }
)


def cache_of(schemas: dict[int, str]) -> tuple[SchemaCache, list[int]]:
    calls: list[int] = []

    def fetch(schema_id: int) -> str:
        calls.append(schema_id)
        if schema_id not in schemas:
            raise SchemaRegistryError(404, 40403, f"Schema {schema_id} not found")
        return schemas[schema_id]

    return SchemaCache(fetch), calls


def test_header_is_magic_zero_and_big_endian_id() -> None:
    data = AvroEncoder(258, V1).encode({"id": "a", "n": 1})
    assert data[:5] == b"\x00\x00\x00\x01\x02"
    assert split(data)[0] == 258
    assert frame(7, b"xyz") == b"\x00" + struct.pack(">I", 7) + b"xyz"


def test_round_trip_fetches_each_schema_once() -> None:
    cache, calls = cache_of({1: V1})
    enc, dec = AvroEncoder(1, V1), AvroDecoder(cache)
    for i in range(5):
        assert dec.decode(enc.encode({"id": f"x{i}", "n": i})) == {"id": f"x{i}", "n": i}
    assert calls == [1]


def test_reader_schema_resolves_old_records_into_new_shape() -> None:
    cache, _ = cache_of({1: V1, 2: V2})
    dec = AvroDecoder(cache, reader_schema=V2)
    assert dec.decode(AvroEncoder(1, V1).encode({"id": "a", "n": 1})) == {"id": "a", "n": 1, "label": None}
    assert dec.decode(AvroEncoder(2, V2).encode({"id": "b", "n": 2, "label": "x"}))["label"] == "x"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "shorter than the 5-byte"),
        (b"\x01\x00\x00\x00\x01\x02a\x02", "magic byte 1"),
        (b"\x00\x00\x00\x00\x09\x02a\x02", "unknown schema id 9"),
        (b"\x00\x00\x00\x00\x01\x0aab", "invalid Avro body"),  # string of 5 chars, 2 given
        (b"\x00\x00\x00\x00\x01\x02a\x02\xff\xff", "trailing bytes"),
        (None, "tombstone"),
    ],
)
def test_poison_records_raise_a_serialization_error_naming_the_cause(data: bytes | None, reason: str) -> None:
    cache, _ = cache_of({1: V1})
    with pytest.raises(SerializationError, match=reason) as info:
        AvroDecoder(cache).decode(data)
    assert info.value.stage == "deserialize"


def test_a_registry_outage_is_not_poison() -> None:
    """Connection refused or a 5xx: retry later; only the registry's own "not found" is poison."""
    for failure in (ConnectionRefusedError("Connection refused"), SchemaRegistryError(503, 50003, "busy")):

        def fetch(schema_id: int, failure: Exception = failure) -> str:
            raise failure

        with pytest.raises(RegistryUnavailableError, match="schema id 1 could not be fetched"):
            AvroDecoder(SchemaCache(fetch)).decode(AvroEncoder(1, V1).encode({"id": "a", "n": 1}))


def test_a_writer_schema_of_another_record_is_poison_for_a_reader() -> None:
    """A record written with another record type (another name) is not resolved into the topic's shape."""
    other = json.dumps({"type": "record", "name": "NotAHit", "fields": [{"name": "id", "type": "string"},
                                                                       {"name": "n", "type": "long"}]})  # fmt: skip
    cache, _ = cache_of({1: V1, 3: other})
    with pytest.raises(SerializationError, match="invalid Avro body"):
        AvroDecoder(cache, reader_schema=V1).decode(AvroEncoder(3, other).encode({"id": "a", "n": 1}))


def test_unencodable_record_is_a_serialize_stage_error() -> None:
    with pytest.raises(SerializationError) as info:
        AvroEncoder(1, V1).encode({"id": "a", "n": "not a number"})
    assert info.value.stage == "serialize"


@pytest.mark.parametrize("value", [0, 1, -1, 63, -64, 64, 1_795_000_000_123, -(2**40), 2**62])
def test_long_reader_and_writer_match_fastavro(value: int) -> None:
    import io

    import fastavro

    from passerelle.schemas.serde import read_long, write_long

    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, "long", value)
    assert write_long(value) == buf.getvalue()
    assert read_long(b"\x00" + buf.getvalue(), 1) == (value, 1 + len(buf.getvalue()))
