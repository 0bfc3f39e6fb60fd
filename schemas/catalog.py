"""The topic catalog: which topics exist, with which contracts and settings.

Every topic is declared once in ``catalog.toml`` so that topic creation,
schema registration and the processors cannot disagree on a topic's name,
schemas, partition count or retention. Loading the catalog also parses every
``.avsc`` it names: a broken contract must stop a deploy at the first command,
with one line naming the file, not surface later as a serializer error.
"""

from __future__ import annotations

import functools
import json
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro
from fastavro.types import Schema as FastavroSchema

from passerelle.schemas.connect_json import ConnectJsonError, connect_schema
from passerelle.schemas.errors import ContractError

SCHEMAS_DIR = Path(__file__).resolve().parent
DEFAULT_CATALOG = SCHEMAS_DIR / "catalog.toml"
DEFAULT_SCHEMA_DIR = SCHEMAS_DIR / "avro"

CLEANUP_POLICIES = ("delete", "compact")
COMPATIBILITY_LEVELS = (
    "NONE",
    "BACKWARD",
    "BACKWARD_TRANSITIVE",
    "FORWARD",
    "FORWARD_TRANSITIVE",
    "FULL",
    "FULL_TRANSITIVE",
)
DEFAULT_KEY_SCHEMA = "StringKey"
DEFAULT_COMPATIBILITY = "BACKWARD"

_REQUIRED = ("name", "partitions", "cleanup_policy", "retention_ms", "doc")
_OPTIONAL = ("key_schema", "value_schema", "compatibility", "wire_format")
CONFLUENT_AVRO = "confluent-avro"
CONNECT_JSON = "connect-json"
RAW = "raw"
WIRE_FORMATS = (CONFLUENT_AVRO, RAW, CONNECT_JSON)
"""confluent-avro: registered Avro schemas, Confluent framing. raw: bytes the platform does not decode (dead
letters, Kafka Connect's own topics). connect-json: Kafka Connect's edge, UTF-8 keys and JsonConverter values
with their schema (``connect_json.py``); nothing registered, ``value_schema`` (optional) is the contract."""


def _one_line(exc: BaseException) -> str:
    """Exception text squeezed to one line: the CLI prints user errors as a single line."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


@dataclass(frozen=True)
class TopicSpec:
    """One topic as the catalog declares it; frozen so that nobody patches a spec at run time."""

    name: str
    key_schema: str
    value_schema: str | None
    """The value's .avsc stem; None for a raw or connect-json topic without an Avro contract."""
    partitions: int
    cleanup_policy: str
    retention_ms: int
    compatibility: str
    doc: str
    wire_format: str = CONFLUENT_AVRO

    @property
    def registered(self) -> bool:
        """Only Confluent Avro topics have registry subjects: raw and Connect JSON records carry no schema id."""
        return self.wire_format == CONFLUENT_AVRO

    @property
    def key_subject(self) -> str:
        """Registry subject of the key (TopicNameStrategy, what Confluent serializers look up)."""
        return f"{self.name}-key"

    @property
    def value_subject(self) -> str:
        """Registry subject of the value (TopicNameStrategy)."""
        return f"{self.name}-value"

    def configs(self) -> dict[str, str]:
        """Topic-level broker configs to create the topic with and to compare for drift."""
        return {"cleanup.policy": self.cleanup_policy, "retention.ms": str(self.retention_ms)}


@dataclass(frozen=True)
class Catalog:
    """All declared topics plus where their schema files live (a copied catalog brings its own schemas)."""

    path: Path
    schema_dir: Path
    specs: tuple[TopicSpec, ...]

    @property
    def topics(self) -> tuple[TopicSpec, ...]:
        """Topics in declaration order (the order commands print them in)."""
        return self.specs

    @property
    def names(self) -> list[str]:
        """Topic names in declaration order."""
        return [spec.name for spec in self.specs]

    def __iter__(self) -> Iterator[TopicSpec]:
        return iter(self.specs)

    def __len__(self) -> int:
        return len(self.specs)

    def __contains__(self, name: object) -> bool:
        return any(spec.name == name for spec in self.specs)

    def topic(self, name: str) -> TopicSpec:
        """The spec of ``name``; an unknown name is a user error listing the known ones (typos are common)."""
        for spec in self.specs:
            if spec.name == name:
                return spec
        raise ContractError(f"unknown topic {name!r} in the catalog {self.path}; known: {', '.join(self.names)}")

    def select(self, names: list[str] | None = None) -> list[TopicSpec]:
        """Specs of ``names`` (all when empty), checking every name before any work starts."""
        if not names:
            return list(self.specs)
        return [self.topic(name) for name in names]

    def schema_text(self, stem: str | None) -> str:
        """Schema text of ``stem`` from this catalog's own schema folder.

        ``None`` is the value schema of a raw or connect-json topic without a
        contract: a one-line ``ContractError`` for code that expects an Avro
        topic there, rather than a search for ``None.avsc``.
        """
        if stem is None:
            raise ContractError("no value schema: the topic is raw or connect-json without an Avro contract")
        return load_schema_text(stem, self.schema_dir)

    def parsed_schema(self, stem: str) -> FastavroSchema:
        """Parsed schema of ``stem`` from this catalog's own schema folder (cached)."""
        return parsed_schema(stem, self.schema_dir)


def schema_path(stem: str, schema_dir: Path | None = None) -> Path:
    """Where the ``.avsc`` of ``stem`` lives; one record per file, named after the record."""
    return (schema_dir or DEFAULT_SCHEMA_DIR) / f"{stem}.avsc"


def _read_schema_json(stem: str, schema_dir: Path | None) -> tuple[Path, Any]:
    path = schema_path(stem, schema_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ContractError(f"schema file {path} not found (schema {stem!r})") from None
    except OSError as exc:
        raise ContractError(f"cannot read schema file {path}: {_one_line(exc)}") from exc
    try:
        return path, json.loads(text)
    except json.JSONDecodeError as exc:
        raise ContractError(f"malformed JSON in schema file {path}: {_one_line(exc)}") from exc


def _parse(path: Path, raw: Any) -> FastavroSchema:
    """Parse with fastavro, then check with Apache Avro too.

    fastavro is lenient (it accepts a record without fields, for one); the
    registry and Kafka Connect judge schemas with the Apache Avro library, so a
    schema only one of them accepts would fail late, at registration.
    """
    try:
        parsed = fastavro.parse_schema(raw)
    except Exception as exc:  # fastavro raises SchemaParseException, UnknownType, ValueError, …
        raise ContractError(f"invalid Avro schema in {path}: {type(exc).__name__}: {_one_line(exc)}") from exc
    import avro.schema

    try:
        avro.schema.parse(json.dumps(raw))
    except Exception as exc:
        raise ContractError(f"invalid Avro schema in {path}: {type(exc).__name__}: {_one_line(exc)}") from exc
    return parsed


def load_schema_text(stem: str, schema_dir: Path | None = None) -> str:
    """The schema text to register: the file's JSON re-serialised compactly.

    Compact and deterministic so that reformatting a file never creates a new
    schema version in the registry; the file is checked to be valid Avro first
    so that a broken contract is reported against its file, not by the registry.
    """
    path, raw = _read_schema_json(stem, schema_dir)
    _parse(path, raw)
    return json.dumps(raw, separators=(",", ":"), ensure_ascii=False)


@functools.lru_cache(maxsize=256)
def _parsed_cached(stem: str, schema_dir: Path) -> FastavroSchema:
    path, raw = _read_schema_json(stem, schema_dir)
    return _parse(path, raw)


def parsed_schema(stem: str, schema_dir: Path | None = None) -> FastavroSchema:
    """fastavro's parsed form of ``stem``, parsed once per process (parsing on every record is slow)."""
    return _parsed_cached(stem, (schema_dir or DEFAULT_SCHEMA_DIR).resolve())


def _spec_from(entry: Any, index: int, path: Path) -> TopicSpec:
    where = f"{path}: topic #{index + 1}"
    if not isinstance(entry, dict):
        raise ContractError(f"{where}: expected a [[topic]] table")
    if "name" in entry:
        where = f"{path}: topic {entry['name']!r}"
    unknown = sorted(set(entry) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        known = ", ".join(_REQUIRED + _OPTIONAL)
        raise ContractError(f"{where}: unknown field(s) {', '.join(unknown)}; known: {known}")
    missing = [key for key in _REQUIRED if key not in entry]
    if missing:
        raise ContractError(f"{where}: missing field(s) {', '.join(missing)}")
    values = {
        "key_schema": DEFAULT_KEY_SCHEMA,
        "value_schema": None,
        "compatibility": DEFAULT_COMPATIBILITY,
        "wire_format": CONFLUENT_AVRO,
        **entry,
    }
    if values["wire_format"] not in WIRE_FORMATS:
        raise ContractError(f"{where}: wire_format {values['wire_format']!r} is not one of {', '.join(WIRE_FORMATS)}")
    if values["value_schema"] is None and values["wire_format"] == CONFLUENT_AVRO:
        raise ContractError(f"{where}: missing field(s) value_schema (required for {CONFLUENT_AVRO} topics)")
    for key in ("name", "key_schema", "value_schema", "cleanup_policy", "compatibility", "doc"):
        if key == "value_schema" and values[key] is None:
            continue
        if not isinstance(values[key], str) or not values[key]:
            raise ContractError(f"{where}: {key} must be a non-empty string")
    for key in ("partitions", "retention_ms"):
        if not isinstance(values[key], int) or isinstance(values[key], bool):
            raise ContractError(f"{where}: {key} must be an integer")
    if values["partitions"] < 1:
        raise ContractError(f"{where}: partitions must be >= 1, got {values['partitions']}")
    if values["retention_ms"] < -1:
        raise ContractError(f"{where}: retention_ms must be -1 (infinite) or >= 0, got {values['retention_ms']}")
    if values["cleanup_policy"] not in CLEANUP_POLICIES:
        raise ContractError(
            f"{where}: cleanup_policy {values['cleanup_policy']!r} is not one of {', '.join(CLEANUP_POLICIES)}"
        )
    values["compatibility"] = values["compatibility"].upper()
    if values["compatibility"] not in COMPATIBILITY_LEVELS:
        raise ContractError(
            f"{where}: compatibility {values['compatibility']!r} is not one of {', '.join(COMPATIBILITY_LEVELS)}"
        )
    return TopicSpec(**values)


def load_catalog(path: Path | None = None) -> Catalog:
    """Read and check the catalog, and parse every schema it names, failing on the first problem.

    ``path`` defaults to the catalog shipped with the code. Schema files are
    looked up in the catalog's ``schema_dir`` (relative to the catalog file,
    default ``avro``), so a copied catalog is self-contained.
    """
    path = Path(path) if path is not None else DEFAULT_CATALOG
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ContractError(f"topic catalog {path} not found") from None
    except OSError as exc:
        raise ContractError(f"cannot read topic catalog {path}: {_one_line(exc)}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ContractError(f"malformed TOML in topic catalog {path}: {_one_line(exc)}") from exc

    unknown = sorted(set(data) - {"schema_dir", "topic"})
    if unknown:
        raise ContractError(f"{path}: unknown top-level key(s) {', '.join(unknown)}; known: schema_dir, topic")
    schema_dir_value = data.get("schema_dir", "avro")
    if not isinstance(schema_dir_value, str):
        raise ContractError(f"{path}: schema_dir must be a string")
    schema_dir = (path.parent / schema_dir_value).resolve()
    entries = data.get("topic", [])
    if not isinstance(entries, list) or not entries:
        raise ContractError(f"{path}: declares no [[topic]]")

    specs: list[TopicSpec] = []
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        spec = _spec_from(entry, index, path)
        if spec.name in seen:
            raise ContractError(f"{path}: topic {spec.name!r} is declared twice")
        seen.add(spec.name)
        specs.append(spec)

    for stem in sorted({s.key_schema for s in specs} | {s.value_schema for s in specs if s.value_schema}):
        parsed_schema(stem, schema_dir)
    for spec in specs:
        if spec.wire_format == CONNECT_JSON:
            _check_connect_json(spec, path, schema_dir)
    return Catalog(path=path, schema_dir=schema_dir, specs=tuple(specs))


def _check_connect_json(spec: TopicSpec, path: Path, schema_dir: Path) -> None:
    """A Connect JSON topic's key is UTF-8 text and its contract must have a Connect form: refused at load,
    not when a processor writes its first record."""
    where = f"{path}: topic {spec.name!r}"
    if _read_schema_json(spec.key_schema, schema_dir)[1] != "string":
        raise ContractError(f"{where}: a {CONNECT_JSON} key is UTF-8 text: key_schema must be a string schema")
    if spec.value_schema is not None:
        try:
            connect_schema(load_schema_text(spec.value_schema, schema_dir))
        except ConnectJsonError as exc:
            raise ContractError(f"{where}: value_schema {spec.value_schema}: {_one_line(exc)}") from exc
