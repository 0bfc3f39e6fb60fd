"""The RocksDB store: committed writes only on disk, a checkpoint to read on from, expiry, the person index."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from passerelle.streams.runtime import StoreSpec
from passerelle.streams.runtime.rocks import RocksStore
from passerelle.streams.runtime.stores import StateConfig

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]

VISITS: StoreSpec[Any] = StoreSpec("visits", person="customer_id", ttl_ms=1_000)


def open_store(path: Path, spec: StoreSpec[Any] = VISITS) -> RocksStore[Any]:
    return RocksStore(spec, 0, path / "visits" / "0")


def stored(store: RocksStore[Any], key: bytes) -> bytes:
    """The database's bytes for a key: write time (8 bytes), format, value."""
    data = store.db.get(b"d" + key)
    assert isinstance(data, bytes), f"{key!r} is not in the database"
    return data


def test_writes_reach_the_disk_only_when_committed(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    assert store.start_offset(0, 0) is None  # a new database: restore from the beginning
    store.restored(0)
    store.put("v1", {"hits": 1, "customer_id": "c1"})
    assert store.get("v1") == {"hits": 1, "customer_id": "c1"}  # read back from the overlay
    changes = store.take_changes()
    assert changes == [(b"v1", b'{"hits":1,"customer_id":"c1"}')]  # the changelog keeps its JSON
    store.committed(checkpoint=1)
    store.put("v2", {"hits": 7})
    store.take_changes()  # written to the changelog of a transaction that will not commit
    store.close()  # killed before the commit
    again = open_store(tmp_path)
    assert again.start_offset(0, 5) == 1  # read on from the checkpoint
    assert again.items() == [("v1", {"hits": 1, "customer_id": "c1"})]
    assert "v2" not in again


def test_an_aborted_transaction_leaves_the_committed_state(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.put("v1", {"hits": 1})
    store.take_changes()
    store.committed(checkpoint=1)
    store.put("v1", {"hits": 2})
    store.delete("v9")
    store.take_changes()
    store.discard()  # the runner aborted the transaction
    assert store.get("v1") == {"hits": 1}


def test_rollback_of_one_record_undoes_only_its_writes(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.put("v1", 1)
    store.begin()
    store.put("v1", 2)
    store.delete("v1")
    store.put("v2", 3)
    store.rollback()
    assert store.get("v1") == 1 and "v2" not in store
    assert dict(store.take_changes()) == {b"v1": b"1"}


def test_checkpoint_outside_the_changelog_means_a_full_restore_on_an_empty_database(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.put("v1", 1)
    store.take_changes()
    store.committed(checkpoint=50)
    assert store.start_offset(0, 10) is None  # the changelog was recreated: the local copy is worthless
    assert len(store.items()) == 0


def test_restore_writes_values_and_the_person_index(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.start_offset(0, 3)
    store.restore(b"v1", b'{"customer_id":"c1","n":1}', 100)
    store.restore(b"v2", b'{"customer_id":"c1","n":2}', 100)
    store.restore(b"v2", b'{"customer_id":"c2","n":3}', 100)  # moved to another person
    store.restore(b"v3", b'{"customer_id":"c1"}', 100)
    store.restore(b"v3", None, 100)
    store.restored(5)
    assert store.keys_of("c1") == ["v1"]
    assert store.keys_of("c2") == ["v2"]
    store.put("v4", {"customer_id": "c1"})  # not committed yet: the index sees it too
    assert store.keys_of("c1") == ["v1", "v4"]
    assert store.persons() == ["c1", "c2"]


def test_restored_values_are_the_changelog_bytes_until_their_next_write(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.start_offset(0, 2)
    store.restore(b"v1", b'{"customer_id":"c1","n":1}', 100)
    store.restore(b"v2", b'{"n":2,"big":123456789012345678901234567890}', 100)  # beyond msgspec's 64 bits
    store.restored(2)
    assert stored(store, b"v1")[8:] == b'c{"customer_id":"c1","n":1}'  # as the changelog holds it: no re-encoding
    assert store.get("v1") == {"customer_id": "c1", "n": 1}
    assert store.get("v2") == {"n": 2, "big": 123456789012345678901234567890}
    store.put("v1", {"customer_id": "c1", "n": 2})
    store.take_changes()
    store.committed(checkpoint=3)
    assert stored(store, b"v1")[8:9] == b"m"  # written by a commit: msgpack
    assert store.get("v1") == {"customer_id": "c1", "n": 2} and store.keys_of("c1") == ["v1"]


def test_a_database_of_an_older_layout_is_restored_anew(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.put("v1", 1)
    store.take_changes()
    store.committed(checkpoint=1)
    del store.db[b"mlayout"]  # what a database written before the layout version looks like
    store.close()
    again = open_store(tmp_path)
    assert again.start_offset(0, 5) is None and again.items() == []


def test_a_restore_killed_after_its_checkpoint_finds_every_record_on_disk(tmp_path: Path) -> None:
    """A restore writes without the write-ahead log: its checkpoint must never reach the disk before its records."""
    script = f"""
import os, signal
from pathlib import Path
from tests.unit.test_rocks_store import open_store
store = open_store(Path({str(tmp_path)!r}))
store.start_offset(0, 5000)
for i in range(5000):
    store.restore(b"v%d" % i, b'{{"customer_id":"c%d","n":%d}}' % (i % 7, i), 100)
store.restored(5000)
os.kill(os.getpid(), signal.SIGKILL)  # no close, no flush at exit
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    store = open_store(tmp_path)
    assert store.start_offset(0, 5000) == 5000
    assert len(store.items()) == 5000 and store.get("v4999") == {"customer_id": "c1", "n": 4999}
    assert len(store.keys_of("c3")) == len(range(3, 5000, 7))


def test_idle_keys_expire_with_tombstones(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.start_offset(0, 0)
    store.restore(b"old", b"1", 0)
    store.restore(b"new", b"2", 900)
    store.restored(2)
    store.now = 1_500
    assert store.expire() == 1
    assert dict(store.take_changes()) == {b"old": None}
    store.committed(checkpoint=3)
    assert sorted(store) == ["new"]


def test_state_config_chooses_a_backend_per_store(tmp_path: Path) -> None:
    config = StateConfig("memory,visits=rocksdb", tmp_path)
    assert config.backend_of(VISITS) == "rocksdb"
    assert config.backend_of(StoreSpec("other")) == "memory"
    opened = config.opener("app", "0")(VISITS, 3)
    assert isinstance(opened, RocksStore) and opened.path == tmp_path / "app" / "0" / "visits" / "3"
    opened.close()
    with pytest.raises(ValueError, match="'lmdb' is not one of memory, rocksdb"):
        StateConfig("lmdb")
