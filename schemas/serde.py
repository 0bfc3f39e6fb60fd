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

from schemas.errors import ContractError, RegistryUnavailableError, SerializationError

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
