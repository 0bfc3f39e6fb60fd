"""Kafka Connect's JSON wire format (``JsonConverter``, ``schemas.enable=true``), for the platform's Connect edge.

No Avro converter that speaks the Confluent registry API can be obtained for
the Connect workers (docs/connect.md, "Topics and converters"), so topics that a
connector reads or writes carry JSON: the key as plain UTF-8 text
(``StringConverter``), the value as ``{"schema": <Connect schema>, "payload":
<value>}``. Sources (Debezium) write it, sinks (the JDBC sink) need the schema
in every record to know the columns. This module reads such records and writes
them from a platform Avro contract: the ``.avsc`` stays the one description of
the data, and a record is checked against it before it leaves, so a sink never
receives a row the contract does not allow.

Avro → Connect: record → struct (named after the record's full name), string,
int → int32, long → int64, float → float, double → double (JsonConverter's type names), boolean, bytes
and fixed → bytes (base64 in the payload, as JsonConverter writes them), enum →
string, array, map (string keys → JSON object), ``["null", X]`` → X with
``optional``; logical types timestamp-millis → Connect ``Timestamp``, date →
``Date``, time-millis → ``Time``, uuid → string. Other unions and logical
types (decimal, micros) have no Connect JSON form here and are refused when
the encoder is built, not record by record.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import json
from collections.abc import Callable, Mapping
from typing import Any

import fastavro
import fastavro.validation

from passerelle.schemas.errors import SerializationError

TIMESTAMP = "org.apache.kafka.connect.data.Timestamp"
DATE = "org.apache.kafka.connect.data.Date"
TIME = "org.apache.kafka.connect.data.Time"

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_EPOCH_DAY = dt.date(1970, 1, 1)
_MS = dt.timedelta(milliseconds=1)
_PRIMITIVES = {
    "string": "string",
    "int": "int32",
    "long": "int64",
    "float": "float",
    "double": "double",
    "boolean": "boolean",
    "bytes": "bytes",
}
_JSON_SCALARS = frozenset({"string", "int32", "int64", "float", "double", "boolean"})

Convert = Callable[[Any], Any]
"""Turns one valid Avro datum into its Connect JSON payload value."""


class ConnectJsonError(SerializationError, ValueError):
    """A record that is not Kafka Connect JSON, or a value its Avro contract refuses.

    A ``SerializationError`` so the runtime dead-letters it with its stage
    (``deserialize`` when reading, ``serialize`` when writing); a ``ValueError``
    for callers outside the runtime.
    """


# --- reading ----------------------------------------------------------------------------------------------


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # Python accepts NaN/Infinity, JsonConverter (Jackson) does not


def decode(data: bytes) -> Any:
    """The value of a Connect JSON record: the ``payload`` of a ``{"schema", "payload"}`` envelope.

    A record written with ``schemas.enable=false`` has no envelope: the
    document itself is the value. What the payload means (a Debezium change
    event, a row) is the reader's business; bytes that are not JSON raise.
    """
    try:
        document = json.loads(data, parse_constant=_no_constant)
    except (ValueError, TypeError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ConnectJsonError(f"not Kafka Connect JSON ({len(data)} bytes): {exc}") from exc
    if isinstance(document, dict) and len(document) == 2 and "schema" in document and "payload" in document:
        return document["payload"]
    return document


def decode_key(data: bytes | None) -> str | None:
    """A key written by ``StringConverter``: UTF-8 text (invalid UTF-8 raises, never guessed)."""
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConnectJsonError(f"key is not UTF-8 text: {exc}") from exc


def encode_key(key: Any) -> bytes:
    """A key as ``StringConverter`` reads it: UTF-8 text; anything but a string is refused, not stringified."""
    if not isinstance(key, str):
        raise ConnectJsonError(f"a Connect JSON key must be a string, not {type(key).__name__}", stage="serialize")
    return key.encode("utf-8")


# --- Avro schema -> Connect schema ------------------------------------------------------------------------


def _full_name(name: str, namespace: str | None) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


def _timestamp(value: Any) -> int:
    if isinstance(value, dt.datetime):
        aware = value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
        return (aware - _EPOCH) // _MS  # exact: no float round trip
    return int(value)


def _date(value: Any) -> int:
    if isinstance(value, dt.datetime):
        value = value.date()
    if isinstance(value, dt.date):
        return (value - _EPOCH_DAY).days
    return int(value)


def _time(value: Any) -> int:
    if isinstance(value, dt.time):
        return ((value.hour * 60 + value.minute) * 60 + value.second) * 1000 + value.microsecond // 1000
    return int(value)


def _bytes(value: Any) -> str:
    return base64.b64encode(bytes(value)).decode("ascii")


def _enum(value: Any) -> Any:
    return getattr(value, "value", value)  # a str Enum member, or the symbol itself


def _same(value: Any) -> Any:
    return value


def _float(value: Any) -> float:
    return float(value)


_CONVERT: dict[str, Convert] = {"bytes": _bytes, "float": _float, "double": _float, "int32": int, "int64": int}
"""Payload forms that differ from the datum: base64 bytes, JSON numbers of the declared kind (a bool is no int)."""

_LOGICAL: dict[tuple[str, str], tuple[dict[str, Any], Convert]] = {
    ("long", "timestamp-millis"): ({"type": "int64", "name": TIMESTAMP, "version": 1}, _timestamp),
    ("int", "date"): ({"type": "int32", "name": DATE, "version": 1}, _date),
    ("int", "time-millis"): ({"type": "int32", "name": TIME, "version": 1}, _time),
    ("string", "uuid"): ({"type": "string"}, str),
}


class _Builder:
    """Walks an Avro schema once, building the Connect schema and the payload converter side by side."""

    def __init__(self) -> None:
        self.named: dict[str, tuple[dict[str, Any], Convert]] = {}
        self.open: set[str] = set()  # records whose fields are being built

    def build(self, avro: Any, namespace: str | None) -> tuple[dict[str, Any], Convert]:
        if isinstance(avro, str):
            if avro in _PRIMITIVES:
                connect_type = _PRIMITIVES[avro]
                return {"type": connect_type, "optional": False}, _CONVERT.get(connect_type, _same)
            if avro == "null":
                raise ValueError('a bare null type has no Connect JSON form (use a ["null", X] union)')
            name = _full_name(avro, namespace) if _full_name(avro, namespace) in self.named else avro
            if name in self.open:
                raise ValueError(f"record {name!r} contains itself: a Connect schema is a tree")
            found = self.named.get(name)
            if found is None:
                raise ValueError(f"unknown named type {avro!r}")
            return dict(found[0]), found[1]
        if isinstance(avro, list):
            return self._union(avro, namespace)
        if not isinstance(avro, Mapping):
            raise ValueError(f"not an Avro schema: {avro!r}")
        kind = avro.get("type")
        logical = avro.get("logicalType")
        if logical is not None and isinstance(kind, str):
            if (kind, logical) in _LOGICAL:
                schema, convert = _LOGICAL[(kind, logical)]
                return {**schema, "optional": False}, convert
            raise ValueError(f"logical type {logical!r} over {kind!r} has no Kafka Connect JSON form here")
        if kind == "record":
            return self._record(avro, namespace)
        if kind == "enum":
            return self._define(avro, namespace, {"type": "string", "optional": False}, _enum)
        if kind == "fixed":
            return self._define(avro, namespace, {"type": "bytes", "optional": False}, _bytes)
        if kind == "array":
            items, convert_item = self.build(avro["items"], namespace)
            return {"type": "array", "items": items, "optional": False}, lambda v: [convert_item(x) for x in v]
        if kind == "map":
            values, convert_value = self.build(avro["values"], namespace)
            keys = {"type": "string", "optional": False}
            return (
                {"type": "map", "keys": keys, "values": values, "optional": False},
                lambda v: {k: convert_value(x) for k, x in v.items()},
            )
        return self.build(kind, namespace)  # {"type": "string"} and other wrapped names

    def _define(
        self, avro: Mapping[str, Any], namespace: str | None, schema: dict[str, Any], convert: Convert
    ) -> tuple[dict[str, Any], Convert]:
        name = _full_name(str(avro["name"]), avro.get("namespace", namespace))
        self.named[name] = (schema, convert)
        return dict(schema), convert

    def _union(self, branches: list[Any], namespace: str | None) -> tuple[dict[str, Any], Convert]:
        others = [b for b in branches if b != "null"]
        if len(branches) != 2 or len(others) != 1:
            raise ValueError(f'union {branches!r} has no Connect JSON form (only ["null", X] is optional X)')
        schema, convert = self.build(others[0], namespace)
        return {**schema, "optional": True}, lambda v: None if v is None else convert(v)

    def _record(self, avro: Mapping[str, Any], namespace: str | None) -> tuple[dict[str, Any], Convert]:
        name = _full_name(str(avro["name"]), avro.get("namespace", namespace))
        inner = name.rpartition(".")[0] or None  # the namespace of the record's fields
        schema: dict[str, Any] = {"type": "struct", "fields": [], "optional": False, "name": name}
        plan: list[tuple[str, Any, Convert]] = []

        def convert(value: Mapping[str, Any]) -> dict[str, Any]:
            return {field: conv(value.get(field, default)) for field, default, conv in plan}

        self.named[name] = (schema, convert)
        self.open.add(name)
        for f in avro["fields"]:
            field_schema, field_convert = self.build(f["type"], inner)
            default = f.get("default")
            if default is not None and field_schema["type"] in _JSON_SCALARS and "name" not in field_schema:
                field_schema["default"] = default
            schema["fields"].append({**field_schema, "field": f["name"]})
            plan.append((f["name"], default, field_convert))
        self.open.discard(name)
        return schema, convert


def _raw(avro_schema: str | Mapping[str, Any]) -> Any:
    return json.loads(avro_schema) if isinstance(avro_schema, str) else avro_schema


def connect_schema(avro_schema: str | Mapping[str, Any]) -> dict[str, Any]:
    """The Kafka Connect schema (JsonConverter's JSON form) of an Avro record schema (text or parsed JSON)."""
    return ConnectJsonEncoder(avro_schema).schema


# --- writing ----------------------------------------------------------------------------------------------


class ConnectJsonEncoder:
    """Writes records of one Avro contract as Connect JSON envelopes; the schema part is built once."""

    def __init__(self, avro_schema: str | Mapping[str, Any]) -> None:
        raw = _raw(avro_schema)
        if not isinstance(raw, Mapping) or raw.get("type") != "record":
            raise ConnectJsonError("a Connect JSON value schema must be an Avro record (a Connect struct)")
        try:
            self.schema, self._convert = _Builder().build(raw, None)
            self.parsed = fastavro.parse_schema(dict(raw))
        except Exception as exc:
            reason = f"{exc}" if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
            raise ConnectJsonError(f"Avro schema {raw.get('name')!r} has no Connect JSON form: {reason}") from exc
        self._prefix = b'{"schema":' + json.dumps(self.schema, separators=(",", ":")).encode() + b',"payload":'

    def encode(self, value: Mapping[str, Any]) -> bytes:
        """The envelope of one record, checked against the Avro contract first (a bad record raises)."""
        try:
            fastavro.validation.validate(value, self.parsed, raise_errors=True)
        except Exception as exc:
            reason = "; ".join(str(e) for e in getattr(exc, "errors", None) or [" ".join(str(exc).split())])
            raise ConnectJsonError(f"record does not match {self.schema['name']}: {reason}", stage="serialize") from exc
        try:
            payload = json.dumps(self._convert(value), separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except (ValueError, TypeError) as exc:  # NaN and infinities: JSON has no form for them
            raise ConnectJsonError(f"record not writable as JSON: {exc}", stage="serialize") from exc
        return self._prefix + payload.encode() + b"}"


@functools.lru_cache(maxsize=64)
def _encoder(schema_text: str) -> ConnectJsonEncoder:
    return ConnectJsonEncoder(schema_text)


def encode(value: Mapping[str, Any], avro_schema: str | Mapping[str, Any]) -> bytes:
    """One record as a Connect JSON envelope (``ConnectJsonEncoder``, cached per schema text)."""
    text = avro_schema if isinstance(avro_schema, str) else json.dumps(avro_schema, sort_keys=True)
    return _encoder(text).encode(value)
