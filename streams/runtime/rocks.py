"""A store on disk: RocksDB (``rocksdict``) behind the ``KeyValueStore`` interface, with a local checkpoint.

The changelog stays the source of truth; the database is a local copy of it
up to a checkpoint (the next changelog offset it reflects), so an instance
restarting on the same disk replays only the changelog's tail.

Exactly-once: the database holds committed state only. Writes go to an
overlay in memory (``_dirty``: since the last commit; ``_pending``: taken for
the changelog, in the open transaction) and reach the database in one
``WriteBatch`` with the new checkpoint once the runner's transaction committed
(``committed``). A transaction that aborts, or a process killed before its
commit, leaves the database as it was: its checkpoint still points before the
aborted changelog records, which a ``read_committed`` restore skips anyway.

A restore writes without the write-ahead log (the changelog is the source of
truth): ``restored`` flushes its writes to disk before it writes the
checkpoint with the log, so a crash never leaves a checkpoint ahead of the
data. Commits keep the log: their checkpoints survive a crash, and a restart
reads only the tail after them.

Layout (one database per store and partition, one column family, prefixes):
``d<key>`` -> 8-byte big-endian write time (ms), a format byte, the value;
``p<person>\\0<key>`` -> empty (the person index, stale entries filtered on
read); ``m<name>`` -> metadata (the checkpoint, the layout's version). A value
the runtime wrote at a commit is msgpack (format ``m``, a quarter smaller than
its JSON text); a value a restore wrote is the changelog record's bytes as
they came (format ``c``, decoded with the store's codec when read): a restore
then does no decode and re-encode per record, which was half of its time
(see ``restore``), and the key turns msgpack at its next write.
"""

from __future__ import annotations

import shutil
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import msgspec
from rocksdict import BlockBasedOptions, Cache, DBCompressionType, Options, Rdict, WriteBatch, WriteOptions

from passerelle.streams.runtime.state import (
    _ABSENT,
    _DELETED,
    ChangelogRecord,
    KeyValueStore,
    StoreSpec,
    json_loads,
)

V = TypeVar("V")

CHECKPOINT = b"mcheckpoint"
LAYOUT = b"mlayout"
LAYOUT_VERSION = b"2"
"""Written with every checkpoint; a database without it (an older layout) is restored anew from the changelog."""
_MSGPACK = ord("m")
_CHANGELOG = b"c"
SWEEP_SCAN = 256
"""Keys the expiry sweep reads per store and commit (a cursor goes round the database): at 10 commits/s, a
partition of 1.6M keys (10M over 6) is gone through in about 11 minutes, for well under 1 ms per commit."""
RESTORE_BATCH = 2_000
"""Changelog records written per ``WriteBatch`` during a restore: small enough to stay in the CPU's caches (at 20,000,
~11 MB a batch, a 1M-key restore took ~15% longer and 150 MB more RSS)."""
BULK_LOAD_AFTER = 100_000
"""A restore of at least this many records (changelog offsets) is a bulk load (``start_offset``)."""
COMPACT_L0_FILES = 20
"""After a restore, level 0 holding this many files or more is compacted before processing starts (RocksDB's own
threshold for slowing writes down); fewer are left to its background compaction.

Every read checks each level-0 file (its bloom filter at least): a random read took 3.4 us over 5 level-0 files,
3.5 us over 9, 3.1 us compacted (a 167,000-key partition of bench state's visitors, 94 MB), while compacting it took
0.2 s with the GIL held: 1.2 s of a 1M-key restore over 6 partitions, which leaves ~6 files per partition. The
enrichment over such a store ran as fast with that compaction left to the background as with it done in the
restore (22,740/23,525 against 22,246/24,125 hits/s). A restore of 10M keys leaves ~55 per partition: compacted."""
_STAMP = struct.Struct(">q")
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder()
_json = msgspec.json.Decoder()
_UNLOGGED = WriteOptions()
# A restore's writes, without the write-ahead log (the module's docstring says why that is safe). Measured: a
# 2,000-record batch cost 1.6 us a record with the log, 0.7 without. (The stub declares ``disable_wal`` a method;
# in the extension it is a property.)
setattr(_UNLOGGED, "disable_wal", True)  # noqa: B010


def _decode_changelog(spec: StoreSpec[Any], value: bytes) -> Any:
    """A changelog value: msgspec's JSON decoder for the default codec (about twice as fast), else the spec's."""
    if spec.decode is json_loads:
        try:
            return _json.decode(value)
        except (msgspec.DecodeError, ValueError):  # e.g. an integer beyond 64 bits: Python's json takes it
            pass
    return spec.decode(value)


class _Record:
    """One changelog record given by its parts (``restore``), read like a consumed message."""

    __slots__ = ("_key", "_stamp", "_value")

    def __init__(self, key: bytes, value: bytes | None, stamp: int) -> None:
        self._key, self._value, self._stamp = key, value, stamp

    def key(self) -> bytes:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def timestamp(self) -> tuple[int, int]:
        return (0, self._stamp)


def _person_reader(spec: StoreSpec[Any]) -> Callable[[bytes], str | None] | None:
    """The person a changelog value names, read without decoding the rest of it (None: the store has no index).

    For the default JSON codec, msgspec decodes into a struct of that one field and skips the others, about a
    fifth of a full decode; other codecs, or a value msgspec refuses (not an object, a number beyond 64 bits),
    go through the spec's own decoder.
    """
    field = spec.person
    if field is None:
        return None

    def full(value: bytes) -> str | None:
        decoded = spec.decode(value)
        found = decoded.get(field) if isinstance(decoded, Mapping) else None
        return None if found is None else str(found)

    if spec.decode is not json_loads:
        return full
    one = msgspec.json.Decoder(msgspec.defstruct("Person", [("person", Any, None)], rename={"person": field}))

    def fast(value: bytes) -> str | None:
        try:
            found = getattr(one.decode(value), "person")  # noqa: B009  (a struct made at run time)
        except (msgspec.DecodeError, ValueError):
            return full(value)
        return None if found is None else str(found)

    return fast


def _options(cache: Cache | None) -> Options:
    """Small memtables (a database per store and partition) and one block cache shared by the process."""
    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.set_write_buffer_size(16 * 1024 * 1024)
    opts.set_max_write_buffer_number(2)
    opts.set_max_background_jobs(2)
    # A visitor read at random is mostly a block not in the cache: memory-mapped files spare the read call, and LZ4
    # decompresses faster than the default Snappy (a cold read measured 7.0 -> 4.9 us on a 167,000-key partition).
    opts.set_compression_type(DBCompressionType.lz4())
    opts.set_allow_mmap_reads(True)
    table = BlockBasedOptions()
    if cache is not None:
        table.set_block_cache(cache)
    table.set_bloom_filter(10, False)
    opts.set_block_based_table_factory(table)
    return opts


class RocksStore(KeyValueStore[V]):
    """One partition of a store in RocksDB at ``path``; the overlay holds what is not committed yet."""

    __slots__ = ("_batch", "_bulk", "_cache", "_cursor", "_db", "_pending", "_person_of", "_read", "_restored",
                 "_restoring", "path")  # fmt: skip

    def __init__(self, spec: StoreSpec[V], partition: int, path: Path, cache: Cache | None = None) -> None:
        super().__init__(spec, partition)
        self._touched = None  # write times live in the database values
        self.path = path
        self._cache = cache
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db: Rdict | None = Rdict(str(path), _options(cache))
        self._pending: dict[str, Any] = {}
        # Values read from the database since the last commit, decoded: a processor reading a key several
        # times per record (or per batch) pays one read. Cleared at each commit, so bounded by what one reads.
        self._read: dict[str, Any] = {}
        self._batch: WriteBatch | None = None  # a restore's records not written yet
        self._restoring = 0
        self._restored = 0  # records the current restore wrote
        self._bulk = False  # a large restore: automatic compactions off until it is done (``start_offset``)
        self._person_of = _person_reader(spec)
        self._cursor = b"d"

    @property
    def db(self) -> Rdict:
        if self._db is None:
            raise RuntimeError(f"store {self.name}[{self.partition}] is closed (the partition was revoked)")
        return self._db

    # --- reads: the overlay, then the database -----------------------------------------

    def _lookup(self, key: str) -> Any:
        value = self._dirty.get(key, _ABSENT)
        if value is _ABSENT:
            value = self._pending.get(key, _ABSENT)
        if value is _DELETED:
            return _ABSENT
        if value is not _ABSENT:
            return value
        value = self._read.get(key, _ABSENT)
        if value is _ABSENT:
            data = self.db.get(b"d" + key.encode())
            self._read[key] = value = _ABSENT if data is None else self._load(data)
        return value

    def _load(self, data: bytes) -> Any:
        """A database value: msgpack if the runtime wrote it, else the changelog's bytes a restore wrote."""
        if data[8] == _MSGPACK:
            return _decoder.decode(data[9:])
        return _decode_changelog(self.spec, data[9:])

    def get(self, key: str, default: Any = None) -> Any:
        value = self._lookup(key)
        return default if value is _ABSENT else value

    def __getitem__(self, key: str) -> V:
        value = self._lookup(key)
        if value is _ABSENT:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._lookup(key) is not _ABSENT

    def __len__(self) -> int:
        """RocksDB's estimate of its entries (person-index entries included): for the ``state_keys`` gauge.

        An exact count would read the whole database at every commit.
        """
        return int(self.db.property_int_value("rocksdb.estimate-num-keys") or 0)

    def _scan(self) -> Iterator[tuple[str, Any]]:
        overlay = {**self._pending, **self._dirty}
        it = self.db.iter()
        it.seek(b"d")
        while it.valid():
            raw = it.key()
            if not raw.startswith(b"d"):
                break
            key = raw[1:].decode()
            if key not in overlay:
                yield key, self._load(it.value())
            it.next()
        for key, value in overlay.items():
            if value is not _DELETED:
                yield key, value

    def __iter__(self) -> Iterator[str]:
        return iter([k for k, _ in self._scan()])

    def items(self) -> list[tuple[str, V]]:
        return list(self._scan())

    # --- writes: to the overlay only -------------------------------------------------

    def put(self, key: str, value: V) -> None:
        if self._undo is not None:
            self._undo.append((key, _ABSENT, self._dirty.get(key, _ABSENT)))
        self._dirty[key] = value

    __setitem__ = put

    def delete(self, key: str) -> None:
        if self._undo is not None:
            self._undo.append((key, _ABSENT, self._dirty.get(key, _ABSENT)))
        self._dirty[key] = _DELETED

    def rollback(self) -> None:
        undo, self._undo = self._undo, None
        for key, _, dirty in reversed(undo or ()):
            if dirty is _ABSENT:
                self._dirty.pop(key, None)
            else:
                self._dirty[key] = dirty

    def forget(self, key: str) -> None:
        """A value too large for the changelog: the database must not keep it either (its tombstone is written)."""
        self._pending[key] = _DELETED
        self._dirty.pop(key, None)

    def take_changes(self) -> list[tuple[bytes, bytes | None]]:
        """The changelog records (JSON, as in memory); the changes wait in ``_pending`` for the commit."""
        dirty = dict(self._dirty)
        changes = super().take_changes()
        self._pending.update(dirty)
        return changes

    # --- the person index ------------------------------------------------------------

    def keys_of(self, person: str) -> list[str]:
        found: set[str] = set()
        prefix = b"p" + person.encode() + b"\0"
        it = self.db.iter()
        it.seek(prefix)
        stale: list[bytes] = []
        while it.valid():
            raw = it.key()
            if not raw.startswith(prefix):
                break
            key = raw[len(prefix) :].decode()
            if self._person(self._committed(key)) == person:
                found.add(key)
            else:
                stale.append(raw)
            it.next()
        for raw in stale:  # the key was deleted or moved to another person since: not state, just cleanup
            self.db.delete(raw)
        for key, value in {**self._pending, **self._dirty}.items():
            if value is _DELETED or self._person(value) != person:
                found.discard(key)
            else:
                found.add(key)
        return sorted(found)

    def persons(self) -> list[str]:
        persons: set[str] = set()
        it = self.db.iter()
        it.seek(b"p")
        while it.valid():
            raw = it.key()
            if not raw.startswith(b"p"):
                break
            persons.add(raw[1:].split(b"\0", 1)[0].decode())
            it.next()
        return sorted(p for p in persons if self.keys_of(p))

    def _committed(self, key: str) -> Any:
        data = self.db.get(b"d" + key.encode())
        return _ABSENT if data is None else self._load(data)

    # --- expiry: a bounded sweep over the database ---------------------------------------

    def expire(self, budget: int = SWEEP_SCAN) -> int:
        """Read up to ``SWEEP_SCAN`` keys from the cursor on; delete those not written for ``ttl_ms``."""
        ttl = self.spec.ttl_ms
        if ttl is None or self._db is None:
            return 0
        limit = self.now - ttl
        it = self.db.iter()
        it.seek(self._cursor)
        expired: list[str] = []
        scanned = 0
        while scanned < SWEEP_SCAN and len(expired) < budget:
            if not it.valid() or not it.key().startswith(b"d"):
                self._cursor = b"d"  # round again from the start at the next commit
                break
            scanned += 1
            if _STAMP.unpack_from(it.value())[0] < limit:
                expired.append(it.key()[1:].decode())
            it.next()
        else:
            self._cursor = it.key() if it.valid() else b"d"
        count = 0
        for key in expired:
            if key not in self._dirty and key not in self._pending:  # written since the last commit: alive
                self.delete(key)
                count += 1
        return count

    # --- runner side: restore, commit, close --------------------------------------------

    def start_offset(self, low: int, high: int) -> int | None:
        """Where the restore of this partition starts: the checkpoint, or None (from the start, database wiped).

        A restore of ``BULK_LOAD_AFTER`` records or more (offsets, an upper bound) is a bulk load: automatic
        compactions stay off while it writes (they would merge level-0 files again and again as they pile up,
        on the cores the restore runs on), and come back on after it (``restored``).
        """
        data = self.db.get(CHECKPOINT)
        at: int | None = None
        if data is not None and self.db.get(LAYOUT) == LAYOUT_VERSION:
            at = _STAMP.unpack(data)[0]
            if not low <= at <= high:
                at = None
        if at is None and not self._empty():
            self._wipe()
        if high - (low if at is None else at) >= BULK_LOAD_AFTER:
            self.db.set_options({"disable_auto_compactions": "true"})
            self._bulk = True
        return at

    def _empty(self) -> bool:
        it = self.db.iter()
        it.seek_to_first()
        return not it.valid()

    def restore(self, key: bytes, value: bytes | None, timestamp: int | None = None) -> None:
        self.restore_records((_Record(key, value, -1 if timestamp is None else timestamp),))

    def restore_records(self, records: Iterable[ChangelogRecord]) -> None:
        """Write changelog records as they came (format ``c``): no decode, no re-encode, no write-ahead log.

        Only the person a value names is read from it (``_person_reader``), for the index. One loop over the
        run of records the runner consumed, its names local: at ~200,000 records/s, each call and attribute
        lookup per record shows.
        """
        batch = self._batch
        if batch is None:
            batch = self._batch = WriteBatch(raw_mode=True)
        person_of, pack, now, count = self._person_of, _STAMP.pack, self.now, self._restoring
        put, delete = batch.put, batch.delete
        restored = 0
        for record in records:
            key, value = record.key(), record.value()
            restored += 1
            if value is None:
                delete(b"d" + key)
            else:
                stamp = record.timestamp()[1]
                put(b"d" + key, pack(now if stamp < 0 else stamp) + _CHANGELOG + value)
                if person_of is not None and (person := person_of(value)) is not None:
                    put(b"p" + person.encode() + b"\0" + key, b"")
            count += 1
            if count >= RESTORE_BATCH:
                self.db.write(batch, _UNLOGGED)
                batch = self._batch = WriteBatch(raw_mode=True)
                put, delete = batch.put, batch.delete
                count = 0
        self._restoring = count
        self._restored += restored

    def restored(self, end: int) -> None:
        """The restore read the changelog up to ``end`` (its next offset): write what is left, checkpoint there.

        What the restore wrote bypassed the write-ahead log: it is flushed to disk (and compacted if it left
        ``COMPACT_L0_FILES``) before the checkpoint is written, with the log, so a crash never leaves a checkpoint
        ahead of the data.
        """
        db = self.db
        if self._batch is not None:
            db.write(self._batch, _UNLOGGED)
        self._batch, self._restoring = None, 0
        if self._restored:
            db.flush(True)
            if (db.property_int_value("rocksdb.num-files-at-level0") or 0) >= COMPACT_L0_FILES:
                db.compact_range(None, None)
        if self._bulk:
            db.set_options({"disable_auto_compactions": "false"})
            self._bulk = False
        batch = WriteBatch(raw_mode=True)
        batch.put(CHECKPOINT, _STAMP.pack(end))
        batch.put(LAYOUT, LAYOUT_VERSION)
        db.write(batch)
        self._read.clear()
        self._restored = 0

    def committed(self, checkpoint: int | None = None) -> None:
        """The transaction holding the pending changes committed: write them, with the checkpoint, in one batch."""
        if not self._pending and checkpoint is None:
            return
        batch = WriteBatch(raw_mode=True)
        stamp = _STAMP.pack(self.now) + b"m"
        for key, value in self._pending.items():
            raw = key.encode()
            if value is _DELETED:
                batch.delete(b"d" + raw)
            else:
                batch.put(b"d" + raw, stamp + _encoder.encode(value))
                person = self._person(value)
                if person is not None:
                    batch.put(b"p" + person.encode() + b"\0" + raw, b"")
        if checkpoint is not None:
            batch.put(CHECKPOINT, _STAMP.pack(checkpoint))
            batch.put(LAYOUT, LAYOUT_VERSION)
        self.db.write(batch)
        self._pending.clear()
        self._read.clear()

    def discard(self) -> None:
        """The transaction aborted: what it wrote is dropped (the database never saw it)."""
        self._pending.clear()
        self._dirty.clear()
        self._read.clear()

    def take_over(self, other: KeyValueStore[V]) -> None:
        assert isinstance(other, RocksStore)
        if self._db is not None and self._db is not other._db:
            self._db.close()
        self._db, other._db = other._db, None

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _wipe(self) -> None:
        """Start from an empty database (no checkpoint, or one the changelog no longer matches)."""
        self.close()
        shutil.rmtree(self.path, ignore_errors=True)
        self._db = Rdict(str(self.path), _options(self._cache))
