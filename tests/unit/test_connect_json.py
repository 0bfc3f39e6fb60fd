"""Kafka Connect JSON (JsonConverter with schemas): reading change events, writing records of an Avro contract."""

from __future__ import annotations

import base64
import json
from datetime import UTC, date, datetime, time
from typing import Any

import pytest

from passerelle.schemas import connect_json
from passerelle.schemas.catalog import load_catalog
from passerelle.schemas.connect_json import ConnectJsonEncoder, ConnectJsonError, connect_schema, decode, encode
from passerelle.schemas.errors import SerializationError
from passerelle.streams.runtime import codecs

pytestmark = pytest.mark.unit

ALL_TYPES: dict[str, Any] = {
    "type": "record", "name": "Everything", "namespace": "passerelle.test", "fields": [
        {"name": "s", "type": "string"},
        {"name": "i", "type": "int", "default": 7},
        {"name": "l", "type": "long"},
        {"name": "f", "type": "float"},
        {"name": "d", "type": "double"},
        {"name": "b", "type": "boolean"},
        {"name": "raw", "type": "bytes"},
        {"name": "color", "type": {"type": "enum", "name": "Color", "symbols": ["RED", "BLUE"]}},
        {"name": "tags", "type": {"type": "array", "items": "string"}},
        {"name": "counts", "type": {"type": "map", "values": "long"}},
        {"name": "maybe", "type": ["null", "string"], "default": None},
        {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "day", "type": {"type": "int", "logicalType": "date"}},
        {"name": "clock", "type": {"type": "int", "logicalType": "time-millis"}},
        {"name": "id", "type": {"type": "string", "logicalType": "uuid"}},
        {"name": "inner", "type": {"type": "record", "name": "Inner", "fields": [
            {"name": "x", "type": ["null", {"type": "long", "logicalType": "timestamp-millis"}], "default": None},
            {"name": "shade", "type": "Color"},
        ]}},
        {"name": "again", "type": ["null", "Inner"], "default": None},
        {"name": "hash", "type": {"type": "fixed", "name": "Hash", "size": 2}},
    ],
}  # fmt: skip

VALUE: dict[str, Any] = {
    "s": "é", "l": 2**40, "f": 1.5, "d": 0.1, "b": True, "raw": b"\x00\xff", "color": "BLUE",
    "tags": ["a", "b"], "counts": {"x": 1}, "at": datetime(2026, 11, 30, 10, 15, 30, 123456, tzinfo=UTC),
    "day": date(1990, 5, 17), "clock": time(1, 2, 3, 4000), "id": "1b4e28ba-2fa1-11d2-883f-0016d3cca427",
    "inner": {"x": 1_000, "shade": "RED"}, "hash": b"ab",
}  # fmt: skip


def field(schema: dict[str, Any], name: str) -> dict[str, Any]:
    return next(f for f in schema["fields"] if f["field"] == name)


# --- reading ---------------------------------------------------------------------------------------------------


def test_decode_returns_the_payload_of_an_envelope_or_a_schemaless_document() -> None:
    assert decode(b'{"schema": {"type": "string", "optional": false}, "payload": "x"}') == "x"
    assert decode(b'{"schema": {"type": "struct", "fields": [], "optional": true}, "payload": null}') is None
    assert decode(b'{"op": "c", "after": {"a": 1}}') == {"op": "c", "after": {"a": 1}}  # schemas.enable=false
    assert decode(b'{"schema": 1, "payload": 2, "other": 3}') == {"schema": 1, "payload": 2, "other": 3}
    assert decode('{"payload": "caf\u00e9", "schema": null}'.encode()) == "café"


@pytest.mark.parametrize(
    "data", [b"", b"{not json", b'{"a": 1} trailing', b"\xff\xfe\x00", b'{"a": NaN}', b"\x00\x00\x00\x00\x01\x02"]
)
def test_bytes_that_are_not_json_raise_a_clear_value_error(data: bytes) -> None:
    with pytest.raises(ValueError, match=r"not Kafka Connect JSON \(\d+ bytes\)") as info:
        decode(data)
    assert isinstance(info.value, SerializationError) and info.value.stage == "deserialize"


def test_keys_are_utf8_text() -> None:
    assert connect_json.decode_key("C-1é".encode()) == "C-1é"
    assert connect_json.decode_key(None) is None
    assert connect_json.encode_key("C-1é") == "C-1é".encode()
    with pytest.raises(ValueError, match="key is not UTF-8"):
        connect_json.decode_key(b"\xff")
    with pytest.raises(ValueError, match="must be a string, not int"):
        connect_json.encode_key(42)


# --- Avro -> Connect schema -----------------------------------------------------------------------------------


def test_every_avro_type_has_its_connect_schema() -> None:
    schema = connect_schema(ALL_TYPES)
    assert (schema["type"], schema["name"], schema["optional"]) == ("struct", "passerelle.test.Everything", False)
    assert field(schema, "s") == {"type": "string", "optional": False, "field": "s"}
    assert field(schema, "i") == {"type": "int32", "optional": False, "default": 7, "field": "i"}
    assert [field(schema, n)["type"] for n in ("l", "f", "d", "b", "raw", "color", "id", "hash")] == [
        "int64", "float", "double", "boolean", "bytes", "string", "string", "bytes",
    ]  # fmt: skip
    assert field(schema, "tags") == {
        "type": "array", "items": {"type": "string", "optional": False}, "optional": False, "field": "tags",
    }  # fmt: skip
    assert field(schema, "counts") == {
        "type": "map", "keys": {"type": "string", "optional": False}, "values": {"type": "int64", "optional": False},
        "optional": False, "field": "counts",
    }  # fmt: skip
    assert field(schema, "maybe") == {"type": "string", "optional": True, "field": "maybe"}
    assert field(schema, "at") == {
        "type": "int64", "name": "org.apache.kafka.connect.data.Timestamp", "version": 1, "optional": False,
        "field": "at",
    }  # fmt: skip
    assert (
        field(schema, "day")["name"] == "org.apache.kafka.connect.data.Date" and field(schema, "day")["type"] == "int32"
    )
    assert field(schema, "clock")["name"] == "org.apache.kafka.connect.data.Time"
    inner = field(schema, "inner")
    assert (inner["type"], inner["name"], inner["optional"]) == ("struct", "passerelle.test.Inner", False)
    assert field(inner, "x") == {
        "type": "int64", "name": "org.apache.kafka.connect.data.Timestamp", "version": 1, "optional": True,
        "field": "x",
    }  # fmt: skip
    again = field(schema, "again")
    assert again["optional"] is True and again["name"] == "passerelle.test.Inner"  # a named type used again
    assert again["fields"] == inner["fields"]


def test_the_catalog_contracts_have_their_connect_schemas() -> None:
    catalog = load_catalog()
    profile = connect_schema(catalog.schema_text("CrmProfile"))
    assert profile["name"] == "passerelle.CrmProfile"
    assert field(profile, "updated_at")["name"] == "org.apache.kafka.connect.data.Timestamp"
    assert field(profile, "birth_year") == {"type": "int32", "optional": True, "field": "birth_year"}
    connect_schema(json.loads(catalog.schema_text("WebActivity")))  # the JDBC sink's contract: text or parsed JSON


@pytest.mark.parametrize(
    ("avro_type", "cause"),
    [
        (["string", "int"], "union"),
        (["null", "string", "int"], "union"),
        ({"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 2}, "decimal"),
        ({"type": "long", "logicalType": "timestamp-micros"}, "timestamp-micros"),
        ("null", "null"),
        ("Nowhere", "unknown named type"),
        ({"type": "record", "name": "Node", "fields": [{"name": "next", "type": ["null", "Node"]}]}, "contains itself"),
    ],
)
def test_types_without_a_connect_json_form_are_refused_when_the_encoder_is_built(avro_type: Any, cause: str) -> None:
    schema = {"type": "record", "name": "R", "fields": [{"name": "x", "type": avro_type}]}
    with pytest.raises(ConnectJsonError, match=cause):
        ConnectJsonEncoder(schema)


def test_the_value_schema_must_be_a_record() -> None:
    with pytest.raises(ConnectJsonError, match="must be an Avro record"):
        ConnectJsonEncoder('"string"')


# --- writing ---------------------------------------------------------------------------------------------------


def test_encode_writes_the_envelope_in_connects_json_representation() -> None:
    data = encode(VALUE, ALL_TYPES)
    document = json.loads(data)
    assert set(document) == {"schema", "payload"}
    assert document["schema"] == connect_schema(ALL_TYPES)
    payload = document["payload"]
    assert payload == decode(data)
    assert payload["s"] == "é" and "é".encode() in data  # UTF-8, not \\u escapes
    assert payload["i"] == 7  # the Avro default of a missing field
    assert payload["maybe"] is None and payload["again"] is None
    assert payload["raw"] == base64.b64encode(b"\x00\xff").decode()
    assert payload["at"] == 1796033730123  # ms, exact (no float round trip)
    assert payload["day"] == (date(1990, 5, 17) - date(1970, 1, 1)).days
    assert payload["clock"] == 3_723_004
    assert payload["inner"] == {"x": 1_000, "shade": "RED"}
    assert payload["f"] == 1.5 and payload["l"] == 2**40
    assert payload["hash"] == base64.b64encode(b"ab").decode()


def test_ints_and_days_pass_through_and_extra_fields_are_not_written() -> None:
    value = {**VALUE, "at": 5, "day": -7, "clock": 9, "not_in_schema": "x"}
    payload = decode(encode(value, json.dumps(ALL_TYPES)))
    assert (payload["at"], payload["day"], payload["clock"]) == (5, -7, 9)
    assert "not_in_schema" not in payload


@pytest.mark.parametrize(
    ("changes", "cause"),
    [
        ({"s": 1}, r"passerelle\.test\.Everything\.s is <1>"),
        ({"color": "GREEN"}, "color"),
        ({"l": None}, "l"),
        ({"tags": "a"}, "tags"),
        ({"inner": {"x": "soon", "shade": "RED"}}, "x"),
    ],
)
def test_a_record_the_contract_refuses_fails_loudly(changes: dict[str, Any], cause: str) -> None:
    with pytest.raises(ConnectJsonError, match=f"record does not match passerelle.test.Everything: .*{cause}") as info:
        encode({**VALUE, **changes}, ALL_TYPES)
    assert info.value.stage == "serialize" and isinstance(info.value, ValueError)


def test_nan_has_no_json_form() -> None:
    with pytest.raises(ConnectJsonError, match="not writable as JSON"):
        encode({**VALUE, "d": float("nan")}, ALL_TYPES)


# --- the runtime's choice of codec ----------------------------------------------------------------------------


def test_the_runtime_reads_and_writes_avro_and_connect_json_only() -> None:
    assert codecs.wire_formats({"a": "connect-json"}, ["a", "b"], "p") == {"a": "connect-json", "b": "confluent-avro"}
    with pytest.raises(ValueError, match="topic 'dlq' has wire format 'raw'"):
        codecs.wire_formats({"dlq": "raw"}, ["dlq"], "p")
    with pytest.raises(ValueError, match="no value schema configured for Connect JSON output topic 'out'"):
        codecs.connect_json_encoders("out", None)
    keys, values = codecs.connect_json_encoders("out", load_catalog().schema_text("CrmProfile"))
    assert keys.encode("C1") == b"C1"
    profile = {"customer_id": "C1", "marketing_consent": False, "updated_at": 0}
    assert decode(values.encode(profile))["customer_id"] == "C1"
