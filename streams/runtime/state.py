"""Keyed state per input partition, with coalesced changelog writes.

A store is a dict that remembers which keys changed since the last commit.
At commit the runner writes one changelog record per changed key (the last
value, or a tombstone), inside the same transaction as the outputs: state that
changes on every hit costs one changelog record per key per commit interval,
not one per hit.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

_DELETED = object()
_ABSENT = object()

EXPIRY_BUDGET = 10_000
"""Most keys one store expires per commit: a backlog of expired keys is spread over commits, not one long pause."""

V = TypeVar("V")


def json_dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def json_loads(data: bytes) -> Any:
    return json.loads(data)


class ChangelogRecord(Protocol):
    """What a restore reads of a changelog message (``confluent_kafka.Message`` has these)."""

    def key(self) -> bytes: ...

    def value(self) -> bytes | None: ...

    def timestamp(self) -> tuple[int, int]: ...


@dataclass(frozen=True)
class StoreSpec(Generic[V]):
    """A state store a processor declares; its changelog is ``<app>-<name>-changelog``.

    The spec is also the handle a processor reads the store with
    (``ctx.store(VISITORS)``): typed by the values it holds, so a misspelt
    store is an import error and a wrong value type a mypy error, not a
    ``KeyError`` in production.
    """

    name: str
    encode: Callable[[Any], bytes] = json_dumps
    decode: Callable[[bytes], Any] = json_loads
    person: str | None = None
    """Field of each value naming the person (customer id) it belongs to, if any.

    The runtime then keeps a person -> keys index of the partition (rebuilt on
    restore, never written to a changelog) and, when a table declared with
    ``erases=True`` deletes that person, deletes their keys and calls
    ``Processor.on_erased`` for each: an erasure reaches every key of the
    person without each processor keeping its own index.
    """
    ttl_ms: int | None = None
    """How long a key lives without being written (wall-clock ms); None: until deleted.

    State that grows with every new visitor must say when it may forget one:
    the runtime deletes keys idle longer than this at commit (a bounded sweep,
    ``EXPIRY_BUDGET`` keys per store and commit), writing their tombstones to
    the changelog like any delete, so a restore does not bring them back. A key's
    idle time counts from its last ``put``; after a restore, from its changelog
    record's timestamp. ``None`` is a decision, not a default to leave: say
    next to the declaration why the store never needs it (a sweep of its own,
    a bounded key space).
    """
    backend: str | None = None
    """``memory`` or ``rocksdb``; None: the process's ``StateConfig`` default (``PASSERELLE_STATE_STORE``)."""

    def changelog_topic(self, app_id: str) -> str:
        return f"{app_id}-{self.name}-changelog"


class KeyValueStore(Generic[V]):
    """In-memory store for one partition; string keys, JSON-able values by default.

    ``begin``/``rollback``/``release`` bracket one input record: when the record
    turns out to be a dead letter (its processing raised, or an output cannot
    be written), what it did to the state is undone. The journal keeps the
    values ``put``/``delete`` replaced, so a processor that mutates a stored
    object in place before failing is not undone: build new values, as the
    processors here do.
    """

    __slots__ = ("_data", "_dirty", "_persons", "_touched", "_undo", "name", "now", "partition", "spec")

    def __init__(self, spec: StoreSpec[V], partition: int) -> None:
        self.spec = spec
        self.name = spec.name
        self.partition = partition
        self.now = 0
        """Wall clock (ms) the runner sets per batch: when a ``put`` happens, for expiry."""
        self._data: dict[str, V] = {}
        self._dirty: dict[str, Any] = {}
        self._undo: list[tuple[str, Any, Any]] | None = None
        self._persons: dict[str, set[str]] | None = {} if spec.person else None
        # key -> last write, oldest first (a put moves the key to the end): the sweep reads only the front.
        self._touched: dict[str, int] | None = {} if spec.ttl_ms is not None else None

    def get(self, key: str, default: Any = None) -> Any:
        return self._data.get(key, default)

    def __getitem__(self, key: str) -> V:
        return self._data[key]

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._data))

    def items(self) -> list[tuple[str, V]]:
        return list(self._data.items())

    def put(self, key: str, value: V) -> None:
        """Set a value; the store keeps the object, so mutate then ``put`` again to mark it changed."""
        old = self._data.get(key, _ABSENT)
        if self._undo is not None:
            self._undo.append((key, old, self._dirty.get(key, _ABSENT)))
        self._data[key] = value
        self._dirty[key] = value
        if self._persons is not None:
            self._reindex(key, old, value)
        if self._touched is not None:
            self._touched.pop(key, None)
            self._touched[key] = self.now

    __setitem__ = put

    def delete(self, key: str) -> None:
        old = self._data.pop(key, _ABSENT)
        if self._undo is not None:
            self._undo.append((key, old, self._dirty.get(key, _ABSENT)))
        self._dirty[key] = _DELETED
        if self._persons is not None:
            self._reindex(key, old, _ABSENT)
        if self._touched is not None:
            self._touched.pop(key, None)

    # --- expiry ----------------------------------------------------------------------

    def expire(self, budget: int = EXPIRY_BUDGET) -> int:
        """Delete up to ``budget`` keys not written for ``spec.ttl_ms`` (tombstones at the next commit).

        The oldest writes come first, so the sweep stops at the first key
        still alive: its cost is the number of keys it expires.
        """
        ttl, touched = self.spec.ttl_ms, self._touched
        if ttl is None or not touched:
            return 0
        limit = self.now - ttl
        expired: list[str] = []
        for key, at in touched.items():
            if at >= limit or len(expired) >= budget:
                break
            expired.append(key)
        for key in expired:
            self.delete(key)
        return len(expired)

    # --- the person index ----------------------------------------------------------

    def persons(self) -> list[str]:
        """The persons (``spec.person`` values) that own keys in this partition."""
        return list(self._persons or ())

    def keys_of(self, person: str) -> list[str]:
        """This partition's keys whose value names ``person``."""
        return sorted((self._persons or {}).get(person, ()))

    def _person(self, value: Any) -> str | None:
        if isinstance(value, Mapping):
            person = value.get(self.spec.person)
            return None if person is None else str(person)
        return None

    def _reindex(self, key: str, old: Any, new: Any) -> None:
        assert self._persons is not None
        before, after = self._person(old), self._person(new)
        if before == after:
            return
        if before is not None and (keys := self._persons.get(before)) is not None:
            keys.discard(key)
            if not keys:
                del self._persons[before]
        if after is not None:
            self._persons.setdefault(after, set()).add(key)

    # --- one record at a time ----------------------------------------------------

    def begin(self) -> None:
        """Start journaling: what follows can be undone by ``rollback``."""
        self._undo = []

    def rollback(self) -> None:
        """Undo every ``put``/``delete`` since ``begin`` (newest first), then stop journaling."""
        undo, self._undo = self._undo, None
        for key, value, dirty in reversed(undo or ()):
            current = self._data.get(key, _ABSENT)
            if value is _ABSENT:
                self._data.pop(key, None)
                if self._touched is not None:
                    self._touched.pop(key, None)
            else:
                self._data[key] = value
                if self._touched is not None and key not in self._touched:
                    self._touched[key] = self.now  # a deleted key back: its idle time starts over
            if self._persons is not None:
                self._reindex(key, current, value)
            if dirty is _ABSENT:
                self._dirty.pop(key, None)
            else:
                self._dirty[key] = dirty

    def release(self) -> None:
        """Keep what happened since ``begin``; stop journaling."""
        self._undo = None

    def __delitem__(self, key: str) -> None:
        self.delete(key)

    # --- runner side ---------------------------------------------------------

    def take_changes(self) -> list[tuple[bytes, bytes | None]]:
        """Changelog records for keys changed since the last call (last value wins)."""
        if not self._dirty:
            return []
        encode = self.spec.encode
        out = [(key.encode(), None if value is _DELETED else encode(value)) for key, value in self._dirty.items()]
        self._dirty.clear()
        return out

    def has_changes(self) -> bool:
        return bool(self._dirty)

    def restore_records(self, records: Iterable[ChangelogRecord]) -> None:
        """Apply changelog messages of this store's partition, in order (the runner hands over consumed runs)."""
        restore = self.restore
        for record in records:
            restore(record.key(), record.value(), record.timestamp()[1])

    def restore(self, key: bytes, value: bytes | None, timestamp: int | None = None) -> None:
        """Apply one changelog record (restore does not mark keys dirty); ``timestamp``: when it was written."""
        k = key.decode()
        old = self._data.pop(k, _ABSENT) if self._persons is not None else _ABSENT
        if value is not None:
            self._data[k] = new = self.spec.decode(value)
            if self._touched is not None:
                self._touched.pop(k, None)
                self._touched[k] = self.now if timestamp is None or timestamp < 0 else timestamp
        else:
            self._data.pop(k, None)
            new = _ABSENT
            if self._touched is not None:
                self._touched.pop(k, None)
        if self._persons is not None:
            self._reindex(k, old, new)

    # --- what a persistent store does more (``rocks.RocksStore``); nothing to do in memory ---------

    def start_offset(self, low: int, high: int) -> int | None:
        """Where to start restoring a changelog partition spanning ``[low, high)``; None: from its beginning."""
        return None

    def restored(self, end: int) -> None:
        """The restore read the changelog up to ``end`` (the next offset)."""

    def committed(self, checkpoint: int | None = None) -> None:
        """The changes last taken (``take_changes``) are committed; ``checkpoint``: the changelog's next offset."""

    def discard(self) -> None:
        """The transaction aborted: forget the uncommitted changes (the runner restores the partition anew)."""

    def close(self) -> None:
        """The partition is no longer held here."""

    def take_over(self, other: KeyValueStore[V]) -> None:
        """Adopt the data of ``other`` (same store, same partition), leaving it empty: no copy, no changes marked."""
        self._data, other._data = other._data, {}
        self._persons, other._persons = other._persons, ({} if other._persons is not None else None)
        self._touched, other._touched = other._touched, ({} if other._touched is not None else None)

    def forget(self, key: str) -> None:
        """Drop a key whose value cannot be written to the changelog (the caller writes its tombstone)."""
        old = self._data.pop(key, _ABSENT)
        if self._persons is not None:
            self._reindex(key, old, _ABSENT)
        if self._touched is not None:
            self._touched.pop(key, None)
