"""Stores that forget idle keys: ``StoreSpec.ttl_ms`` enforced at commit, tombstoned, not restored."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

from passerelle.streams.enrichment.enricher import EnrichmentConfig
from passerelle.streams.enrichment.processor import VISITORS, EnrichmentProcessor
from passerelle.streams.runtime import Context, InRecord, KeyValueStore, OutRecord, Processor, StoreSpec
from passerelle.streams.runtime.testing import ProcessorDriver

pytestmark = pytest.mark.unit

MINUTE = 60_000
LAST_SEEN: StoreSpec[Any] = StoreSpec("last_seen", ttl_ms=10 * MINUTE)
FOREVER: StoreSpec[Any] = StoreSpec("forever", ttl_ms=None)


class Remember(Processor):
    """Keeps the last event of each visitor, in a store that expires and one that does not."""

    name = "remember"
    inputs = ("events",)
    stores = (LAST_SEEN, FOREVER)

    def process_one(self, record: InRecord, ctx: Context) -> Iterable[OutRecord] | None:
        ctx.store(LAST_SEEN).put(record.key, record.value)
        ctx.store(FOREVER).put(record.key, record.value)
        return None


def test_idle_key_expires_with_a_tombstone_and_is_not_restored() -> None:
    driver = ProcessorDriver(Remember(), now=0)
    driver.send("events", "v1", {"n": 1}, timestamp=0, now=0)
    driver.send("events", "v2", {"n": 1}, timestamp=0, now=5 * MINUTE)
    # v1 idle for exactly its lifetime: still there; v2 written since: untouched.
    step = driver.advance(10 * MINUTE)
    assert step.expired == {}
    step = driver.advance(10 * MINUTE + 1)
    assert step.expired == {"last_seen": 1}
    assert step.changelog[("last_seen", 0)] == {"v1": None}
    assert "v1" not in driver.store(LAST_SEEN) and "v2" in driver.store(LAST_SEEN)
    assert "v1" in driver.store(FOREVER)  # a store without ttl_ms keeps every key
    driver.revoke()
    driver.restore()
    assert sorted(driver.store(LAST_SEEN)) == ["v2"]
    assert sorted(driver.store(FOREVER)) == ["v1", "v2"]


def test_a_write_keeps_the_key_alive() -> None:
    driver = ProcessorDriver(Remember(), now=0)
    for minute in range(0, 60, 9):  # written every 9 minutes, lifetime 10
        driver.send("events", "v1", {"n": minute}, timestamp=minute * MINUTE, now=minute * MINUTE)
    assert driver.store(LAST_SEEN)["v1"] == {"n": 54}
    assert driver.advance(64 * MINUTE).expired == {}  # idle for exactly its lifetime
    assert driver.advance(64 * MINUTE + 1).expired == {"last_seen": 1}


def test_restore_counts_idle_time_from_the_changelog_records_timestamp() -> None:
    driver = ProcessorDriver(Remember(), now=0)
    driver.send("events", "old", {"n": 1}, timestamp=0, now=0)
    driver.send("events", "new", {"n": 1}, timestamp=0, now=8 * MINUTE)
    driver.revoke()
    driver.now = 12 * MINUTE  # the restore happens after "old" outlived its lifetime
    step = driver.restore()
    assert step.expired == {"last_seen": 1}
    assert sorted(driver.store(LAST_SEEN)) == ["new"]
    assert driver.changelog(LAST_SEEN) == {"new": {"n": 1}}


def test_expiry_is_bounded_per_commit_and_oldest_first() -> None:
    store: KeyValueStore[Any] = KeyValueStore(LAST_SEEN, 0)
    for i in range(10):
        store.now = i
        store.put(f"k{i}", i)
    store.now = 20
    store.put("k0", "rewritten")  # now the most recent write
    store.now = 9 + 10 * MINUTE + 1  # every key but k0 idle past its lifetime
    assert store.expire(budget=4) == 4
    assert sorted(store) == ["k0", "k5", "k6", "k7", "k8", "k9"]
    assert store.expire(budget=100) == 5
    assert sorted(store) == ["k0"]
    assert dict(store.take_changes()) == {f"k{i}".encode(): None for i in range(1, 10)} | {b"k0": b'"rewritten"'}


def test_rolled_back_put_of_a_new_key_leaves_nothing_to_expire() -> None:
    store: KeyValueStore[Any] = KeyValueStore(LAST_SEEN, 0)
    store.begin()
    store.put("ghost", 1)
    store.rollback()
    store.now = 100 * MINUTE
    assert store.expire() == 0
    assert store.take_changes() == []


def test_enrichment_visitors_live_for_the_campaign_lifetime_plus_the_visit_timeout() -> None:
    config = EnrichmentConfig(visit_timeout_ms=30 * MINUTE, campaign_lifetime_ms=24 * 60 * MINUTE)
    processor = EnrichmentProcessor(config=config)
    spec = next(s for s in processor.stores if s.name == VISITORS.name)
    assert spec.ttl_ms == 24 * 60 * MINUTE + 30 * MINUTE
    assert {s.name: s.ttl_ms for s in processor.stores}["undeclared"] is None
