"""Compatibility levels and checks, with the Apache Avro library's reader/writer checker.

Pure: no Kafka, no HTTP. The registry asks "may this new schema follow these
versions under this level?" and gets back the reasons it may not, so the same
words reach the 409 message and the verbose compatibility answer.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import avro.schema
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType

NONE = "NONE"
BACKWARD = "BACKWARD"
BACKWARD_TRANSITIVE = "BACKWARD_TRANSITIVE"
FORWARD = "FORWARD"
FORWARD_TRANSITIVE = "FORWARD_TRANSITIVE"
FULL = "FULL"
FULL_TRANSITIVE = "FULL_TRANSITIVE"

LEVELS: tuple[str, ...] = (NONE, BACKWARD, BACKWARD_TRANSITIVE, FORWARD, FORWARD_TRANSITIVE, FULL, FULL_TRANSITIVE)
DEFAULT_LEVEL = BACKWARD


class InvalidSchemaError(ValueError):
    """The text is not an Avro schema the Apache library accepts."""


def parse(text: str) -> avro.schema.Schema:
    """Parse with the same library that checks compatibility, so both agree on what is valid."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidSchemaError("empty schema")
    try:
        return avro.schema.parse(text)
    except RecursionError:
        raise InvalidSchemaError("the schema is nested too deeply") from None
    except Exception as exc:  # SchemaParseException, JSON errors, AvroException...
        raise InvalidSchemaError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc


def normalized(schema: avro.schema.Schema) -> str:
    """Identity of a schema: formatting and attribute order do not make a new schema, defaults and docs do.

    The Parsing Canonical Form would also drop defaults, so two schemas that
    resolve differently would share an id; the full JSON, re-serialised with
    sorted keys, keeps everything that matters and nothing that does not.
    """
    return json.dumps(schema.to_json(), sort_keys=True, separators=(",", ":"))


def normalize_level(level: object) -> str:
    """Accept any case, answer upper case, refuse anything that is not one of the seven levels."""
    if isinstance(level, str) and level.upper() in LEVELS:
        return level.upper()
    raise ValueError(f"invalid compatibility level {level!r}")


def can_read(reader: avro.schema.Schema, writer: avro.schema.Schema) -> list[str]:
    """Why data written with ``writer`` cannot be read with ``reader`` (empty when it can)."""
    result = ReaderWriterCompatibilityChecker().get_compatibility(reader, writer)
    if result.compatibility is SchemaCompatibilityType.compatible:
        return []
    kinds = ", ".join(sorted({kind.name.upper() for kind in result.incompatibilities})) or "INCOMPATIBLE"
    where = ", ".join(sorted(result.locations))
    messages = "; ".join(sorted(result.messages)) or "schemas are incompatible"
    return [f"{kinds} at {where} ({messages})"]


def check(new: avro.schema.Schema, previous: Sequence[tuple[int, avro.schema.Schema]], level: str) -> list[str]:
    """Reasons ``new`` may not follow ``previous`` (live versions, oldest first) under ``level``.

    BACKWARD: the new schema reads data written with the old one(s) (consumers
    upgrade first). FORWARD: the old schema(s) read data written with the new one
    (producers upgrade first). FULL: both. Non-transitive levels compare with the
    latest version only, transitive ones with every live version.
    """
    level = normalize_level(level)
    if level == NONE or not previous:
        return []
    against = previous if level.endswith("_TRANSITIVE") else previous[-1:]
    backward = level.startswith(("BACKWARD", "FULL"))
    forward = level.startswith(("FORWARD", "FULL"))
    problems: list[str] = []
    for version, old in reversed(against):
        found: list[str] = []
        if backward:
            found += [f"new schema cannot read data written by version {version}: {p}" for p in can_read(new, old)]
        if forward:
            found += [f"version {version} cannot read data written by the new schema: {p}" for p in can_read(old, new)]
        problems += [f"{p} (compatibility {level})" for p in found]
    return problems
