"""What each registry operation means, on top of the state and a record writer.

Operations decide which ``_schemas`` records to write, hand them to the writer,
and answer from the state once the writer says they were applied (the Kafka
store waits until it has read its own records back).

Locking. Operations on one subject (register, delete, its config) run one at
a time under that subject's lock, so two registrations on a subject never
check against the same versions. Allocating an id or a version and writing
the record happen under one global lock, held only for that, so two
concurrent registrations can never receive the same id. The compatibility
check, which takes seconds for a schema of thousands of fields, runs under the
subject's lock only: other subjects go on meanwhile. If the global level
changed while it ran, the check runs again before anything is written.

Size. A schema may take at most ``MAX_SCHEMA_BYTES`` (900 KiB, 921,600
bytes) as stored in its ``_schemas`` record: its compact JSON text (no
whitespace), UTF-8, escaped as a JSON string (each ``"`` and ``\\`` counts
twice; a typical schema takes 10-25% more than its compact text). That keeps
the whole record (schema, subject name twice, version, id) under
``MAX_RECORD_BYTES``, below the 1,000,000 bytes a Kafka producer sends by
default (librdkafka ``message.max.bytes``; the broker's default limit is 1 MiB).
Over either limit, registering answers 413 (``error_code`` 41302) and writes nothing.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Protocol

import avro.schema

from passerelle.schemas.registry import compatibility, errors, records
from passerelle.schemas.registry.state import RegistryState, SchemaVersion

MAX_VERSION = 2**31 - 1
MAX_SCHEMA_BYTES = 900 * 1024
MAX_RECORD_BYTES = 999_000  # key + value of one _schemas record; librdkafka refuses over 1,000,000


class RecordWriter(Protocol):
    """Writes records and returns once they are applied to the state it was built with."""

    def write(self, batch: Sequence[records.Record]) -> None: ...


class MemoryWriter:
    """Applies records straight to the state, through the same byte encoding the topic uses.

    For tests and tools that want the registry's rules without a broker.
    """

    def __init__(self, state: RegistryState) -> None:
        self.state = state
        self.log: list[tuple[bytes, bytes | None]] = []

    def write(self, batch: Sequence[records.Record]) -> None:
        for key, value in batch:
            raw = (records.encode_key(key), records.encode_value(value))
            self.log.append(raw)
            decoded = records.decode(*raw)
            if decoded is not None:
                self.state.apply(*decoded)


@lru_cache(maxsize=4096)
def _parse_stored(text: str) -> avro.schema.Schema:
    return compatibility.parse(text)


def parse_version(text: str | int) -> int | None:
    """A version path segment: None means latest (``latest`` or ``-1``, as Confluent accepts)."""
    raw = str(text).strip()
    if raw.lower() == "latest" or raw == "-1":
        return None
    try:
        number = int(raw)
    except ValueError:
        raise errors.invalid_version(raw) from None
    if not 1 <= number <= MAX_VERSION:
        raise errors.invalid_version(raw)
    return number


def _compact(text: str) -> str | None:
    """The text to store (compact JSON), or None when it is not JSON (the Avro parser then says why)."""
    try:
        return json.dumps(json.loads(text), separators=(",", ":"), ensure_ascii=False)
    except (ValueError, RecursionError):
        return None


def stored_size(text: str) -> int:
    """Bytes ``text`` takes in a ``_schemas`` record value: UTF-8, escaped as a JSON string (without its quotes)."""
    return len(json.dumps(text, ensure_ascii=False).encode("utf-8")) - 2


def _parse_new(text: object, schema_type: str | None, max_bytes: int | None = None) -> tuple[avro.schema.Schema, str]:
    """Parse a schema from a request; returns the parsed schema and the text to store.

    With ``max_bytes``, a schema taking more than that as stored is refused
    before the (slow) Avro parse.
    """
    kind = (schema_type or "AVRO").upper()
    if kind != "AVRO":
        raise errors.invalid_schema(f"schema type {kind} is not supported by the embedded registry (AVRO only)")
    if not isinstance(text, str):
        raise errors.invalid_schema("the request has no 'schema' string")
    compact = _compact(text)
    if compact is not None and max_bytes is not None and stored_size(compact) > max_bytes:
        raise errors.schema_too_large(stored_size(compact), max_bytes)
    try:
        parsed = compatibility.parse(text)
    except compatibility.InvalidSchemaError as exc:
        raise errors.invalid_schema(str(exc)) from exc
    if compact is None:  # the Avro parser read what json could not: should not happen, refuse it all the same
        raise errors.invalid_schema("the schema is not JSON")
    return parsed, compact


def _record_size(subject: str, text: str) -> int:
    """The largest the schema's record can take under ``subject`` (version and id at their widest)."""
    key = records.encode_key(records.schema_key(subject, MAX_VERSION))
    value = records.encode_value(records.schema_value(subject, MAX_VERSION, MAX_VERSION, text))
    return len(key) + len(value or b"")


class _SubjectLocks:
    """One lock per subject, existing only while someone holds or waits for it (subjects are unbounded)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, list[int]]] = {}

    @contextmanager
    def hold(self, subject: str) -> Iterator[None]:
        with self._guard:
            lock, users = self._locks.setdefault(subject, (threading.Lock(), [0]))
            users[0] += 1
        try:
            with lock:
                yield
        finally:
            with self._guard:
                users[0] -= 1
                if users[0] == 0:
                    del self._locks[subject]


class SchemaRegistry:
    """The Confluent registry semantics the REST layer exposes."""

    def __init__(self, state: RegistryState, writer: RecordWriter, max_schema_bytes: int = MAX_SCHEMA_BYTES) -> None:
        self.state = state
        self.max_schema_bytes = max_schema_bytes
        self._writer = writer
        self._lock = threading.Lock()  # ids, versions and writes: held briefly, never across a compatibility check
        self._subjects = _SubjectLocks()  # everything that changes one subject, one at a time

    # --- subjects and versions ---------------------------------------------------

    def subjects(self, deleted: bool = False, deleted_only: bool = False, prefix: str = "") -> list[str]:
        if deleted_only:
            live = set(self.state.subject_names())
            names = [s for s in self.state.subject_names(include_deleted=True) if s not in live]
        else:
            names = self.state.subject_names(include_deleted=deleted)
        return [s for s in names if s.startswith(prefix)]

    def _entries(self, subject: str, include_deleted: bool) -> list[SchemaVersion]:
        entries = self.state.versions(subject, include_deleted=include_deleted)
        if not entries:
            raise errors.subject_not_found(subject)
        return entries

    def versions(self, subject: str, deleted: bool = False, deleted_only: bool = False) -> list[int]:
        if deleted_only:
            return [e.version for e in self._entries(subject, True) if e.deleted]
        return [e.version for e in self._entries(subject, deleted)]

    def version(self, subject: str, version: str | int, deleted: bool = False) -> SchemaVersion:
        number = parse_version(version)
        entries = self._entries(subject, deleted)
        if number is None:
            return entries[-1]
        for entry in entries:
            if entry.version == number:
                return entry
        raise errors.version_not_found(subject, number)

    def register(self, subject: str, schema: object, schema_type: str | None = None, references: object = None) -> int:
        """The id of ``schema`` under ``subject``, registering a new version if it is not there yet.

        The compatibility check runs under the subject's lock only (see the
        module docstring); if the subject's versions or level changed while it
        ran (the global level, or another registry writing the topic), it runs again.
        """
        if references:
            raise errors.invalid_schema("schema references are not supported by the embedded registry")
        parsed, text = _parse_new(schema, schema_type, self.max_schema_bytes)
        size = _record_size(subject, text)
        if size > MAX_RECORD_BYTES:
            raise errors.record_too_large(subject, size, MAX_RECORD_BYTES)
        try:
            norm = compatibility.normalized(parsed)
        except RecursionError:
            raise errors.invalid_schema("the schema is nested too deeply") from None
        known = self._registered_id(norm, self.state.versions(subject))
        if known is not None:  # already there: no need to wait for a check running on this subject
            return known
        with self._subjects.hold(subject):
            while True:
                with self.state.lock:
                    live, level = self.state.versions(subject), self.state.level_for(subject)
                known = self._registered_id(norm, live)
                if known is not None:
                    return known
                problems = _check(parsed, live, level)
                if problems:
                    raise errors.incompatible(subject, problems)
                with self._lock:
                    with self.state.lock:
                        unchanged = self.state.versions(subject) == live and self.state.level_for(subject) == level
                    if unchanged:
                        return self._write_version(subject, norm, text)

    def _registered_id(self, norm: str, live: list[SchemaVersion]) -> int | None:
        for entry in reversed(live):
            if self.state.normalized_of(entry.id) == norm:
                return entry.id
        return None

    def _write_version(self, subject: str, norm: str, text: str) -> int:
        """Under the global lock: the schema's id (its existing one, else the next), the next version, the record."""
        schema_id = self.state.id_for(norm)
        if schema_id is None:
            schema_id = self.state.max_id + 1
        else:
            text = self.state.schema_by_id(schema_id) or text
        every = self.state.versions(subject, include_deleted=True)
        version = (every[-1].version if every else 0) + 1
        with self.state.expecting(text, norm):  # spares the store from parsing the schema again
            self._writer.write(
                [(records.schema_key(subject, version), records.schema_value(subject, version, schema_id, text))]
            )
        return schema_id

    def lookup(
        self, subject: str, schema: object, schema_type: str | None = None, deleted: bool = False
    ) -> SchemaVersion:
        """The version of ``subject`` holding this schema (its latest such version)."""
        entries = self._entries(subject, deleted)
        norm = compatibility.normalized(_parse_new(schema, schema_type)[0])
        for entry in reversed(entries):
            if self.state.normalized_of(entry.id) == norm:
                return entry
        raise errors.schema_not_found("Schema not found")

    def delete_subject(self, subject: str, permanent: bool = False) -> list[int]:
        """Soft delete hides the versions; permanent delete (only after a soft one) erases them."""
        with self._subjects.hold(subject), self._lock:
            every = self._entries(subject, True)
            live = [e for e in every if not e.deleted]
            batch: list[records.Record] = []
            if permanent:
                if live:
                    raise errors.subject_not_soft_deleted(subject)
                batch += [(records.schema_key(subject, e.version), None) for e in every]
                deleted = [e.version for e in every]
            else:
                if not live:
                    raise errors.subject_soft_deleted(subject)
                batch.append(
                    (records.delete_subject_key(subject), records.delete_subject_value(subject, every[-1].version))
                )
                batch += [_soft_deleted(e) for e in live]
                deleted = [e.version for e in live]
            if subject in self.state.subject_levels:  # Confluent drops the subject's config with it
                batch.append((records.config_key(subject), None))
            self._writer.write(batch)
            return deleted

    def delete_version(self, subject: str, version: str | int, permanent: bool = False) -> int:
        number = parse_version(version)
        with self._subjects.hold(subject), self._lock:
            every = self._entries(subject, True)
            if number is None:
                live = [e for e in every if not e.deleted]
                if not live:
                    raise errors.subject_not_found(subject)
                number = live[-1].version
            entry = next((e for e in every if e.version == number), None)
            if entry is None:
                raise errors.version_not_found(subject, number)
            if permanent:
                if not entry.deleted:
                    raise errors.version_not_soft_deleted(subject, number)
                self._writer.write([(records.schema_key(subject, number), None)])
            else:
                if entry.deleted:
                    raise errors.version_soft_deleted(subject, number)
                self._writer.write([_soft_deleted(entry)])
            return number

    # --- ids ----------------------------------------------------------------------

    def schema_by_id(self, schema_id: int) -> tuple[str, str]:
        """Text and type of a schema id; soft-deleted versions still resolve, as in Confluent."""
        text = self.state.schema_by_id(schema_id)
        if text is None:
            raise errors.schema_not_found(f"Schema {schema_id} not found")
        return text, self.state.schema_type_by_id(schema_id)

    def id_users(self, schema_id: int, deleted: bool = False, subject: str | None = None) -> list[SchemaVersion]:
        self.schema_by_id(schema_id)
        users = self.state.users_of(schema_id, include_deleted=deleted)
        return [u for u in users if subject is None or u.subject == subject]

    # --- compatibility configuration --------------------------------------------------

    def global_level(self) -> str:
        return self.state.global_level

    def set_global_level(self, level: object) -> str:
        level = _level(level)
        with self._lock:
            self._writer.write([(records.config_key(None), records.config_value(level))])
        return level

    def delete_global_level(self) -> str:
        with self._lock:
            old = self.state.global_level
            self._writer.write([(records.config_key(None), None)])
        return old

    def subject_level(self, subject: str, default_to_global: bool = False) -> str:
        level = self.state.subject_levels.get(subject)
        if level is not None:
            return level
        if default_to_global:
            return self.state.global_level
        raise errors.subject_config_not_found(subject)

    def set_subject_level(self, subject: str, level: object) -> str:
        level = _level(level)
        with self._subjects.hold(subject), self._lock:
            self._writer.write([(records.config_key(subject), records.config_value(level))])
        return level

    def delete_subject_level(self, subject: str) -> str:
        """The level the subject had; when it had none of its own, the global one and nothing is written."""
        with self._subjects.hold(subject), self._lock:
            old = self.state.subject_levels.get(subject)
            if old is None:
                return self.state.global_level
            self._writer.write([(records.config_key(subject), None)])
            return old

    # --- compatibility tests ----------------------------------------------------------

    def test_compatibility(
        self, subject: str, schema: object, version: str | int | None = None, schema_type: str | None = None
    ) -> list[str]:
        """Reasons the schema is not compatible (empty when it is).

        With a version: against that version only, in the direction of the
        subject's level. Without: against what the level says (latest, or every
        live version when transitive); a subject with no versions accepts anything.
        """
        parsed, _ = _parse_new(schema, schema_type)
        level = self.state.level_for(subject)
        live = self.state.versions(subject) if version is None else [self.version(subject, version)]
        return _check(parsed, live, level)


def _check(parsed: avro.schema.Schema, live: Sequence[SchemaVersion], level: str) -> list[str]:
    try:
        return compatibility.check(parsed, [(e.version, _parse_stored(e.schema)) for e in live], level)
    except RecursionError:
        raise errors.invalid_schema("the schema is nested too deeply to be checked") from None


def _soft_deleted(entry: SchemaVersion) -> records.Record:
    return (
        records.schema_key(entry.subject, entry.version),
        records.schema_value(entry.subject, entry.version, entry.id, entry.schema, True, entry.schema_type),
    )


def _level(level: object) -> str:
    try:
        return compatibility.normalize_level(level)
    except ValueError:
        raise errors.invalid_compatibility_level(level) from None
