"""The runtime's person index and erasures, and the partition lifecycle hooks, through the test driver."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import Counter

from passerelle.streams.runtime import Context, InRecord, KeyValueStore, OutRecord, Processor, StoreSpec, TableSpec
from passerelle.streams.runtime.testing import ProcessorDriver

PROFILES: StoreSpec[dict[str, Any]] = StoreSpec("profiles", person="customer_id")
NOTES: StoreSpec[str] = StoreSpec("notes")


class Linker(Processor):
    """Keeps one record per visitor naming its customer; a value ``boom`` fails after the state changed."""

    name = "linker"
    inputs = ("in",)
    outputs = ("out",)
    stores = (PROFILES, NOTES)
    tables = (TableSpec("crm", "crm.topic", erases=True), TableSpec("labels", "labels.topic"))

    def __init__(self) -> None:
        self.erased: list[tuple[str, str, Any]] = []
        self.revoked: list[int] = []
        self.restored: list[int] = []
        self.seen = Counter("linker_seen_total", "Records seen", registry=None)
        self.metrics = (self.seen,)

    def process_one(self, record: InRecord, ctx: Context) -> Iterable[OutRecord] | None:
        self.seen.inc()
        ctx.store(PROFILES).put(record.key, {"customer_id": record.value["customer"]})
        ctx.store(NOTES).put(record.key, "note")
        if record.value.get("boom"):
            raise ValueError("boom")
        return None

    def on_erased(self, store: StoreSpec[Any], key: str, value: Any, ctx: Context) -> Iterable[OutRecord]:
        self.erased.append((store.name, key, value))
        return [OutRecord("out", key, None)]

    def on_partition_restored(self, ctx: Context) -> Iterable[OutRecord] | None:
        self.restored.append(ctx.partition)
        return None

    def on_partition_revoked(self, ctx: Context) -> None:
        self.revoked.append(ctx.partition)


def test_store_index_follows_puts_deletes_rollbacks_and_restores() -> None:
    store: KeyValueStore[dict[str, Any]] = KeyValueStore(PROFILES, 0)
    store.put("phone", {"customer_id": "C1"})
    store.put("laptop", {"customer_id": "C1"})
    store.put("anon", {"customer_id": None})
    assert store.keys_of("C1") == ["laptop", "phone"] and store.persons() == ["C1"]
    store.put("laptop", {"customer_id": "C2"})  # the device changed hands
    assert store.keys_of("C1") == ["phone"] and store.keys_of("C2") == ["laptop"]
    store.begin()
    store.put("phone", {"customer_id": "C3"})
    store.delete("laptop")
    store.rollback()
    assert store.keys_of("C1") == ["phone"] and store.keys_of("C2") == ["laptop"] and store.keys_of("C3") == []
    restored: KeyValueStore[dict[str, Any]] = KeyValueStore(PROFILES, 0)
    for key, value in store.take_changes():
        restored.restore(key, value)
    assert restored.keys_of("C1") == ["phone"] and restored.keys_of("C2") == ["laptop"]
    restored.restore(b"phone", None)
    assert restored.persons() == ["C2"]
    kept: KeyValueStore[dict[str, Any]] = KeyValueStore(PROFILES, 0)
    kept.take_over(restored)
    assert kept.keys_of("C2") == ["laptop"] and restored.persons() == []


def test_a_tombstone_on_an_erasing_table_deletes_every_key_of_the_person() -> None:
    proc = Linker()
    driver = ProcessorDriver(proc)
    driver.feed(*(driver.record("in", key, {"customer": who}, 1) for key, who in
                  (("phone", "C1"), ("laptop", "C1"), ("other", "C2"))))  # fmt: skip
    step = driver.table_update("crm", "C1", None)
    assert sorted((o.key, o.value) for o in step.outputs) == [("laptop", None), ("phone", None)]
    assert sorted(proc.erased) == [("profiles", "laptop", {"customer_id": "C1"}),
                                   ("profiles", "phone", {"customer_id": "C1"})]  # fmt: skip
    assert list(driver.store(PROFILES)) == ["other"]
    assert sorted(driver.store(NOTES)) == ["laptop", "other", "phone"]  # a store without ``person`` is not touched
    assert driver.changelog(PROFILES) == {"other": {"customer_id": "C2"}}  # the erasure reaches the changelog
    assert driver.table_update("labels", "C2", None).outputs == []  # a table that does not erase


def test_a_failed_record_leaves_no_index_entry_to_erase() -> None:
    proc = Linker()
    driver = ProcessorDriver(proc)
    step = driver.send("in", "v1", {"customer": "C1", "boom": True}, 1)
    assert len(step.dead_letters) == 1 and driver.store(PROFILES).persons() == []
    assert driver.table_update("crm", "C1", None).outputs == [] and proc.erased == []


def test_an_erasure_while_the_partition_was_elsewhere_applies_at_restore() -> None:
    proc = Linker()
    driver = ProcessorDriver(proc, partitions=(0, 1))
    driver.send("in", "phone", {"customer": "C1"}, 1, partition=1)
    driver.revoke(1)
    assert proc.revoked == [1]
    driver.table_update("crm", "C1", None)
    assert proc.erased == []  # partition 1 is not here
    step = driver.restore(1)
    assert [(o.key, o.value) for o in step.outputs] == [("phone", None)]
    assert "phone" not in driver.store(PROFILES, 1) and proc.restored == [0, 1, 1]


def test_processor_metrics_exist_from_construction_and_the_driver_registers_them() -> None:
    proc = Linker()
    proc.seen.inc()  # usable before any runner: no ``None`` to check
    driver = ProcessorDriver(proc)
    driver.send("in", "v", {"customer": "C"}, 1)
    assert driver.metric("linker_seen_total") == 2
