"""Confluent wire format with fastavro: magic byte 0, 4-byte big-endian schema id, Avro binary.

Records written here must be readable by any Confluent-compatible consumer
(Kafka Connect's AvroConverter, confluent-kafka's ``AvroDeserializer``) and
the other way round, so the framing is byte-for-byte Confluent's. fastavro
does the Avro part: each schema is parsed once per id and reused, and reader
schema resolution runs only when the reader schema differs from the writer's
(resolution is several times slower than a plain read).
"""

from __future__ import annotations

import io
import json
import struct
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import fastavro
from fastavro.types import Schema as FastavroSchema

from passerelle.schemas.errors import ContractError, RegistryUnavailableError, SerializationError

MAGIC_BYTE = 0
HEADER = struct.Struct(">bI")
HEADER_SIZE = HEADER.size  # 5

SchemaFetcher = Callable[[int], str]


class RegistryLike(Protocol):
    """The part of confluent-kafka's ``SchemaRegistryClient`` the serde needs."""

    def get_schema(self, schema_id: int) -> Any: ...

    def register_schema(self, subject_name: str, schema: Any) -> int: ...


def parse(schema_text: str | Mapping[str, Any] | list[Any]) -> FastavroSchema:
    """Parse a schema once; names resolve inside the one text (files are self-contained)."""
    raw = json.loads(schema_text) if isinstance(schema_text, str) else schema_text
    try:
        return fastavro.parse_schema(raw)  # type: ignore[arg-type]
    except Exception as exc:
        raise ContractError(f"invalid Avro schema: {exc}") from exc


def frame(schema_id: int, payload: bytes) -> bytes:
    """Prefix an Avro body with the Confluent header."""
    return HEADER.pack(MAGIC_BYTE, schema_id) + payload


def split(data: bytes | None) -> tuple[int, memoryview]:
    """Return (schema id, Avro body) or raise ``SerializationError`` naming what is wrong."""
    if data is None:
        raise SerializationError("record value is null (tombstone), nothing to decode")
    if len(data) < HEADER_SIZE:
        raise SerializationError(f"record of {len(data)} bytes is shorter than the 5-byte Confluent header")
    magic, schema_id = HEADER.unpack_from(data, 0)
    if magic != MAGIC_BYTE:
        raise SerializationError(f"unknown magic byte {magic} (expected 0, Confluent wire format)")
    return schema_id, memoryview(data)[HEADER_SIZE:]


def read_long(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    """One Avro long (zigzag varint) at ``pos``: (value, next position).

    For readers that need one leading field of a record without decoding the
    rest (the hit type of every hit, the event time of a benchmark output).
    """
    shift = result = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (result >> 1) ^ -(result & 1), pos
        shift += 7


def write_long(value: int) -> bytes:
    """The Avro encoding (zigzag varint) of one long."""
    z = (value << 1) ^ (value >> 63)
    out = bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def encode_body(schema: FastavroSchema, record: Any) -> bytes:
    """Avro binary body of one record (no header)."""
    buf = io.BytesIO()
    try:
        fastavro.schemaless_writer(buf, schema, record)
    except Exception as exc:
        raise SerializationError(f"cannot encode record: {exc}", stage="serialize") from exc
    return buf.getvalue()


def decode_body(body: bytes | memoryview, writer: FastavroSchema, reader: FastavroSchema | None = None) -> Any:
    """Decode an Avro body; a truncated body or trailing garbage is an error, not a half record."""
    buf = io.BytesIO(body)
    try:
        record = fastavro.schemaless_reader(buf, writer, reader)
    except Exception as exc:
        raise SerializationError(f"invalid Avro body ({type(exc).__name__}: {exc})") from exc
    if buf.tell() != len(body):
        raise SerializationError(
            f"invalid Avro body: {len(body) - buf.tell()} trailing bytes after the record (wrong schema?)"
        )
    return record


class SchemaCache:
    """Writer schemas by id, fetched from the registry once and parsed once.

    Thread-safe because the registry HTTP call may happen from a delivery
    callback thread as well as from the processing loop.
    """

    def __init__(self, fetch: SchemaFetcher, retry_after_s: float = 1.0) -> None:
        self._fetch = fetch
        self._parsed: dict[int, FastavroSchema] = {}
        self._texts: dict[int, str] = {}
        self._lock = threading.Lock()
        self._retry_after_s = retry_after_s
        self._down_until = 0.0
        self._down_reason = ""

    def get(self, schema_id: int) -> FastavroSchema:
        parsed = self._parsed.get(schema_id)
        if parsed is not None:
            return parsed
        with self._lock:
            if schema_id not in self._parsed:
                if time.monotonic() < self._down_until:
                    # The registry just failed: do not wait on it again for every partition of the batch.
                    raise RegistryUnavailableError(f"schema id {schema_id} not fetched yet: {self._down_reason}")
                try:
                    text = self._fetch(schema_id)
                except Exception as exc:
                    if _definitely_missing(exc):
                        raise SerializationError(f"unknown schema id {schema_id}: {exc}") from exc
                    self._down_until = time.monotonic() + self._retry_after_s
                    self._down_reason = f"registry unavailable ({exc})"
                    raise RegistryUnavailableError(
                        f"schema id {schema_id} could not be fetched (registry unavailable?): {exc}"
                    ) from exc
                self._texts[schema_id] = text
                self._parsed[schema_id] = parse(text)
            return self._parsed[schema_id]

    def put(self, schema_id: int, text: str) -> None:
        """Seed the cache with a schema we registered ourselves (no round trip needed)."""
        with self._lock:
            self._texts[schema_id] = text
            self._parsed[schema_id] = parse(text)

    def text(self, schema_id: int) -> str:
        self.get(schema_id)
        return self._texts[schema_id]


def _definitely_missing(exc: BaseException) -> bool:
    """A registry's own "no such schema" (HTTP 404, Confluent 40403), not an outage or a timeout."""
    status = getattr(exc, "http_status_code", None)
    return status == 404 or getattr(exc, "error_code", None) in (40403, 40401)


def registry_fetcher(client: RegistryLike) -> SchemaFetcher:
    """Adapt confluent-kafka's ``SchemaRegistryClient`` to a fetch-by-id function."""

    def fetch(schema_id: int) -> str:
        return str(client.get_schema(schema_id).schema_str)

    return fetch


class AvroEncoder:
    """Encode records for one subject: the schema id is resolved once, at construction."""

    def __init__(self, schema_id: int, schema_text: str) -> None:
        self.schema_id = schema_id
        self.schema_text = schema_text
        self.schema = parse(schema_text)
        self._header = HEADER.pack(MAGIC_BYTE, schema_id)

    @property
    def header(self) -> bytes:
        """The 5-byte Confluent prefix of every record this encoder writes."""
        return self._header

    @classmethod
    def for_subject(
        cls, client: RegistryLike, subject: str, schema_text: str, auto_register: bool = True
    ) -> AvroEncoder:
        """Register (idempotent: same schema, same id) or look up the schema under ``subject``.

        A registry that refuses the registration to this user (403: a read-only
        principal, as processors are on a secured registry) still lets it use
        the schema the deployment pipeline registered: look it up instead.
        """
        from confluent_kafka.schema_registry import Schema

        schema = Schema(schema_text, "AVRO")
        try:
            if auto_register:
                try:
                    schema_id = client.register_schema(subject, schema)
                except Exception as exc:
                    if getattr(exc, "http_status_code", None) != 403:
                        raise
                    schema_id = client.lookup_schema(subject, schema).schema_id  # type: ignore[attr-defined]
            else:
                schema_id = client.lookup_schema(subject, schema).schema_id  # type: ignore[attr-defined]
        except Exception as exc:
            raise ContractError(f"schema for subject '{subject}' not usable: {exc}") from exc
        return cls(int(schema_id), schema_text)

    def encode(self, record: Any) -> bytes:
        buf = io.BytesIO()
        buf.write(self._header)
        try:
            fastavro.schemaless_writer(buf, self.schema, record)
        except Exception as exc:
            raise SerializationError(f"cannot encode record: {exc}", stage="serialize") from exc
        return buf.getvalue()


class AvroDecoder:
    """Decode Confluent-framed records written with any registered schema.

    With a ``reader_schema`` the record is resolved into that shape, but only
    when the writer schema is not the reader schema itself.
    """

    def __init__(self, cache: SchemaCache, reader_schema: str | None = None) -> None:
        self.cache = cache
        self._reader = parse(reader_schema) if reader_schema else None
        self._reader_canonical = _canonical(reader_schema) if reader_schema else None
        self._needs_resolution: dict[int, bool] = {}

    def decode(self, data: bytes | None) -> Any:
        schema_id, body = split(data)
        writer = self.cache.get(schema_id)
        reader = None
        if self._reader is not None:
            needs = self._needs_resolution.get(schema_id)
            if needs is None:
                needs = _canonical(self.cache.text(schema_id)) != self._reader_canonical
                self._needs_resolution[schema_id] = needs
            if needs:
                reader = self._reader
        return decode_body(body, writer, reader)


def _canonical(schema_text: str | None) -> str:
    if schema_text is None:
        return ""
    return str(fastavro.schema.to_parsing_canonical_form(json.loads(schema_text)))


# --- one leading field without decoding the record ---------------------------------------------------------

_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "string", "bytes"})
_FLOAT = struct.Struct("<f")
_DOUBLE = struct.Struct("<d")

# A field's type as the peek reads it: ("long",), ("enum", symbols), ("fixed", size), ("union", branches)...
_Kind = tuple[Any, ...]


def _kind(avro_type: Any) -> _Kind | None:
    """The layout of a type the peek can step over, or None (records, arrays, maps, named references)."""
    if isinstance(avro_type, str):
        return (avro_type,) if avro_type in _PRIMITIVES else None
    if isinstance(avro_type, list):
        branches = [_kind(branch) for branch in avro_type]
        return None if any(b is None for b in branches) else ("union", tuple(branches))
    if isinstance(avro_type, dict):
        inner = avro_type.get("type")
        if inner == "enum":
            return ("enum", tuple(avro_type.get("symbols", ())))
        if inner == "fixed":
            return ("fixed", int(avro_type["size"]))
        if isinstance(inner, str) and inner in _PRIMITIVES:  # a logical type over a primitive
            return (inner,)
    return None


def _step(kind: _Kind, data: bytes | memoryview, pos: int, want: bool) -> tuple[Any, int]:
    """Read (``want``) or skip one value of ``kind`` at ``pos``: (value or None, next position)."""
    name = kind[0]
    if name == "null":
        return None, pos
    if name in ("int", "long"):
        return read_long(data, pos)
    if name in ("string", "bytes"):
        length, pos = read_long(data, pos)
        end = pos + length
        if length < 0 or end > len(data):
            raise IndexError("truncated")
        if not want:
            return None, end
        raw = bytes(data[pos:end])
        return (raw.decode() if name == "string" else raw), end
    if name == "boolean":
        return data[pos] != 0, pos + 1
    if name in ("enum", "union"):
        index, pos = read_long(data, pos)
        if not 0 <= index < len(kind[1]):
            raise IndexError(f"{name} index {index} out of range")
        return (kind[1][index], pos) if name == "enum" else _step(kind[1][index], data, pos, want)
    size = {"float": 4, "double": 8}.get(name) or kind[1]  # float, double, fixed
    if pos + size > len(data):
        raise IndexError("truncated")
    if not want:
        return None, pos + size
    if name == "fixed":
        return bytes(data[pos : pos + size]), pos + size
    return (_FLOAT if name == "float" else _DOUBLE).unpack_from(data, pos)[0], pos + size


class LeadingField:
    """One field of Confluent-framed records, read without decoding the rest of the record.

    For a reader that looks at one field of every record of a busy topic and
    decodes only the few it wants (the remarketing sequencer reads the type of
    every enriched hit and decodes the orders only). The fields before it must
    have fixed layouts (primitives, logical types over them, enums, fixed,
    unions of those): the steps are worked out once per writer schema id, and
    a schema laid out otherwise, an unframed or a truncated record give
    ``(False, None)``: decode that one in full (which reports what is wrong).
    """

    def __init__(self, schema_text_of: Callable[[int], str], field: str) -> None:
        self._schema_text_of = schema_text_of
        self.field = field
        self._plans: dict[int, tuple[list[_Kind], _Kind] | None] = {}

    def read(self, data: bytes | None) -> tuple[bool, Any]:
        """(True, the field's value: an enum's symbol, a string, a number...) or (False, None) when not read."""
        if data is None or len(data) < HEADER_SIZE or data[0] != MAGIC_BYTE:
            return False, None
        schema_id = int.from_bytes(data[1:HEADER_SIZE], "big")
        if schema_id not in self._plans:
            try:
                text = self._schema_text_of(schema_id)
            except RegistryUnavailableError:
                return False, None  # not known yet: this one in full, the next ones may be peeked
            except Exception:
                text = ""  # an unknown id: the full decode reports it
            self._plans[schema_id] = self._plan(text)
        plan = self._plans[schema_id]
        if plan is None:
            return False, None
        skips, target = plan
        try:
            pos = HEADER_SIZE
            for kind in skips:
                _, pos = _step(kind, data, pos, False)
            value, _ = _step(target, data, pos, True)
        except (IndexError, UnicodeDecodeError):
            return False, None
        return True, value

    def _plan(self, schema_text: str) -> tuple[list[_Kind], _Kind] | None:
        """The kinds to step over, then the field's own; None when the layout is not one the peek reads."""
        skips: list[_Kind] = []
        try:
            for f in json.loads(schema_text)["fields"]:
                kind = _kind(f.get("type"))
                if kind is None:
                    return None
                if f.get("name") == self.field:
                    return skips, kind
                skips.append(kind)
        except Exception:  # not a record schema: decode in full
            return None
        return None
