"""The registry's state as a pure function of the ``_schemas`` records applied in order.

Every registry instance rebuilds the same state by replaying the topic, so the
topic stays the only source of truth: a restart, or another registry taking
over the topic, sees exactly what this one saw. Nothing here talks to Kafka.
Identity of a schema (to give it the same id under another subject) is its
normalized JSON (see ``compatibility.normalized``). Normalizing means parsing
the schema (a second for 10,000 fields), so ``apply`` does it before taking
the lock readers wait for, and not at all when the writer of the record said
what it is (``expecting``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from passerelle.schemas.registry import compatibility, records

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SchemaVersion:
    """One version of one subject, as the SCHEMA record last said."""

    subject: str
    version: int
    id: int
    schema: str
    deleted: bool = False
    schema_type: str = "AVRO"


class RegistryState:
    """Subjects, versions, ids and configs; ``apply`` is the only way to change them.

    ``lock`` guards readers against the consumer thread applying records
    concurrently; every public method takes it, so callers need not.
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.global_level: str = compatibility.DEFAULT_LEVEL
        self.subject_levels: dict[str, str] = {}
        self.subjects: dict[str, dict[int, SchemaVersion]] = {}
        self.max_id = 0
        self._id_schema: dict[int, str] = {}
        self._id_users: dict[int, set[tuple[str, int]]] = {}
        self._normalized_id: dict[str, int] = {}
        self._id_normalized: dict[int, str] = {}
        self._expected: dict[str, str] = {}  # schema text -> its normalized form, while its writer waits
        self._expected_lock = threading.Lock()

    # --- applying records -------------------------------------------------------

    @contextmanager
    def expecting(self, text: str, normalized: str) -> Iterator[None]:
        """While a record storing ``text`` is written, apply it with this normalized form instead of parsing it."""
        with self._expected_lock:
            self._expected[text] = normalized
        try:
            yield
        finally:
            with self._expected_lock:
                self._expected.pop(text, None)

    def apply(self, key: Mapping[str, Any], value: Mapping[str, Any] | None) -> None:
        """Apply one record; a record that makes no sense is logged and skipped, never fatal."""
        keytype = key.get("keytype")
        prepared = self._prepare_schema(value) if keytype == records.SCHEMA else None
        with self.lock:
            try:
                if keytype == records.SCHEMA:
                    self._apply_schema(key, value, prepared)
                elif keytype == records.CONFIG:
                    self._apply_config(key, value)
                elif keytype == records.DELETE_SUBJECT:
                    self._apply_delete_subject(value)
                elif keytype == records.NOOP:
                    pass
                else:
                    log.info("skipping _schemas record with unknown keytype %r", keytype)
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("skipping malformed _schemas record %r -> %r: %s", dict(key), value, exc)

    def _prepare_schema(self, value: Mapping[str, Any] | None) -> tuple[str, str | None] | None:
        """(text, normalized form) of a schema new to this state, worked out without holding the lock.

        Records are applied one at a time (the store's follower), so an id
        unknown here is still unknown once the lock is taken; if it were not,
        ``_apply_schema`` would only ignore or redo this.
        """
        try:
            if value is None or not isinstance(value["schema"], str):
                return None
            schema_id, text = int(value["id"]), value["schema"]
            schema_type = str(value.get("schemaType") or "AVRO")
        except (KeyError, TypeError, ValueError):
            return None  # malformed: _apply_schema says so
        with self.lock:
            if schema_id in self._id_schema:
                return None
        with self._expected_lock:
            expected = self._expected.get(text) if schema_type == "AVRO" else None
        return text, expected if expected is not None else self._normalize(text, schema_type)

    def _apply_schema(
        self, key: Mapping[str, Any], value: Mapping[str, Any] | None, prepared: tuple[str, str | None] | None = None
    ) -> None:
        subject, version = str(key["subject"]), int(key["version"])
        if value is None:
            self._hard_delete(subject, version)
            return
        schema_type = str(value.get("schemaType") or "AVRO")
        entry = SchemaVersion(
            subject=str(value["subject"]),
            version=int(value["version"]),
            id=int(value["id"]),
            schema=str(value["schema"]),
            deleted=bool(value.get("deleted", False)),
            schema_type=schema_type,
        )
        if (entry.subject, entry.version) != (subject, version):
            raise ValueError("key and value name different subject/version")
        previous = self.subjects.get(subject, {}).get(version)
        if previous is not None and previous.id != entry.id:
            self._release_id(previous)
        self.subjects.setdefault(subject, {})[version] = entry
        self.max_id = max(self.max_id, entry.id)
        self._id_users.setdefault(entry.id, set()).add((subject, version))
        if entry.id not in self._id_schema:
            self._id_schema[entry.id] = entry.schema
            if prepared is not None and prepared[0] == entry.schema:
                norm = prepared[1]
            else:
                norm = self._normalize(entry.schema, schema_type)
            if norm is not None:
                self._id_normalized[entry.id] = norm
                self._normalized_id.setdefault(norm, entry.id)

    @staticmethod
    def _normalize(text: str, schema_type: str) -> str | None:
        if schema_type != "AVRO":
            return None
        try:
            return compatibility.normalized(compatibility.parse(text))
        except (compatibility.InvalidSchemaError, RecursionError):
            log.warning("a stored schema does not parse as Avro; it keeps its id but cannot be matched")
            return None

    def _hard_delete(self, subject: str, version: int) -> None:
        versions = self.subjects.get(subject)
        entry = versions.pop(version, None) if versions is not None else None
        if entry is None:
            log.info("tombstone for unknown %s version %s", subject, version)
            return
        self._release_id(entry)
        if not versions:
            del self.subjects[subject]

    def _release_id(self, entry: SchemaVersion) -> None:
        users = self._id_users.get(entry.id, set())
        users.discard((entry.subject, entry.version))
        if users:
            return
        self._id_users.pop(entry.id, None)
        self._id_schema.pop(entry.id, None)
        norm = self._id_normalized.pop(entry.id, None)
        if norm is not None and self._normalized_id.get(norm) == entry.id:
            del self._normalized_id[norm]
            # another id may carry the same schema (written by another registry): let it take over
            for other, other_norm in self._id_normalized.items():
                if other_norm == norm:
                    self._normalized_id[norm] = other
                    break

    def _apply_config(self, key: Mapping[str, Any], value: Mapping[str, Any] | None) -> None:
        subject = key.get("subject")
        level = None if value is None else compatibility.normalize_level(value["compatibilityLevel"])
        if subject is None:
            self.global_level = level or compatibility.DEFAULT_LEVEL
        elif level is None:
            self.subject_levels.pop(str(subject), None)
        else:
            self.subject_levels[str(subject)] = level

    def _apply_delete_subject(self, value: Mapping[str, Any] | None) -> None:
        if value is None:
            return  # compaction may leave a tombstone for it; nothing to undo
        subject, upto = str(value["subject"]), int(value["version"])
        for version, entry in list(self.subjects.get(subject, {}).items()):
            if version <= upto and not entry.deleted:
                self.subjects[subject][version] = replace(entry, deleted=True)

    # --- reading ----------------------------------------------------------------

    def versions(self, subject: str, include_deleted: bool = False) -> list[SchemaVersion]:
        """Versions of a subject, oldest first."""
        with self.lock:
            entries = self.subjects.get(subject, {})
            return [entries[v] for v in sorted(entries) if include_deleted or not entries[v].deleted]

    def subject_names(self, include_deleted: bool = False) -> list[str]:
        with self.lock:
            return sorted(s for s in self.subjects if self.versions(s, include_deleted))

    def schema_by_id(self, schema_id: int) -> str | None:
        with self.lock:
            return self._id_schema.get(schema_id)

    def schema_type_by_id(self, schema_id: int) -> str:
        with self.lock:
            for subject, version in self._id_users.get(schema_id, ()):
                return self.subjects[subject][version].schema_type
            return "AVRO"

    def id_for(self, normalized: str) -> int | None:
        """The id already given to this schema under any subject, so registering it again reuses it."""
        with self.lock:
            return self._normalized_id.get(normalized)

    def normalized_of(self, schema_id: int) -> str | None:
        with self.lock:
            return self._id_normalized.get(schema_id)

    def users_of(self, schema_id: int, include_deleted: bool = False) -> list[SchemaVersion]:
        """Subject versions using an id, ordered by subject then version."""
        with self.lock:
            found = [self.subjects[s][v] for s, v in self._id_users.get(schema_id, ())]
            return sorted((e for e in found if include_deleted or not e.deleted), key=lambda e: (e.subject, e.version))

    def level_for(self, subject: str) -> str:
        """The subject's own level, else the global one."""
        with self.lock:
            return self.subject_levels.get(subject, self.global_level)
