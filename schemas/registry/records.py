"""The ``_schemas`` topic's record layout, as Confluent Schema Registry and Karapace write it.

Keys are compact JSON with the field order Confluent produces (keytype,
subject, version, magic): compaction compares key bytes, so a key written here
must be byte-identical to the one another registry would write for the same
entry, or both would survive compaction.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)

SCHEMA = "SCHEMA"
CONFIG = "CONFIG"
DELETE_SUBJECT = "DELETE_SUBJECT"
NOOP = "NOOP"

Key = dict[str, Any]
Value = dict[str, Any] | None
Record = tuple[Key, Value]


def schema_key(subject: str, version: int) -> Key:
    return {"keytype": SCHEMA, "subject": subject, "version": version, "magic": 1}


def schema_value(
    subject: str, version: int, schema_id: int, schema: str, deleted: bool = False, schema_type: str = "AVRO"
) -> dict[str, Any]:
    value: dict[str, Any] = {"subject": subject, "version": version, "id": schema_id, "schema": schema}
    if schema_type != "AVRO":  # Confluent omits the type for Avro; readers default to it
        value["schemaType"] = schema_type
    value["deleted"] = deleted
    return value


def config_key(subject: str | None) -> Key:
    return {"keytype": CONFIG, "subject": subject, "magic": 0}


def config_value(level: str | None) -> Value:
    return None if level is None else {"compatibilityLevel": level}


def delete_subject_key(subject: str) -> Key:
    return {"keytype": DELETE_SUBJECT, "subject": subject, "magic": 0}


def delete_subject_value(subject: str, version: int) -> dict[str, Any]:
    return {"subject": subject, "version": version}


def noop_key() -> Key:
    return {"keytype": NOOP, "magic": 0}


_KEY_ORDER = ("keytype", "subject", "version", "magic")


def encode_key(key: Mapping[str, Any]) -> bytes:
    """Compact JSON in Confluent's field order (see the module docstring)."""
    ordered = {name: key[name] for name in _KEY_ORDER if name in key}
    ordered.update({name: val for name, val in key.items() if name not in ordered})
    return json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def encode_value(value: Value) -> bytes | None:
    """None stays None: a tombstone is how hard deletes and config removals are written."""
    if value is None:
        return None
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def decode(key: bytes | None, value: bytes | None) -> Record | None:
    """A record as dicts, or None when it is not one of ours to understand (logged, then skipped).

    A registry that stops on a record it cannot read makes every schema
    unavailable; skipping keeps the rest of the topic usable.
    """
    if not key:
        log.warning("skipping a _schemas record without a key")
        return None
    try:
        decoded_key = json.loads(key)
        decoded_value = json.loads(value) if value else None
    except (ValueError, UnicodeDecodeError) as exc:
        log.warning("skipping a _schemas record that is not JSON: %s", exc)
        return None
    if not isinstance(decoded_key, dict) or (decoded_value is not None and not isinstance(decoded_value, dict)):
        log.warning("skipping a _schemas record whose key or value is not a JSON object: %r", decoded_key)
        return None
    return decoded_key, decoded_value
