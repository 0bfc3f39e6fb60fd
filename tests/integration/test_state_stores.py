"""State at scale against a real broker: idle keys expire through the changelog; the RocksDB store keeps
exactly-once across a SIGKILL between a store write and its commit, and restarts from its checkpoint."""

from __future__ import annotations

import collections
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from passerelle.streams.runtime import Runner, StoreSpec
from passerelle.streams.runtime.config import wall_clock_ms
from passerelle.streams.runtime.stores import StateConfig
from tests.integration.kafka_helpers import TopicReader, create_topics, produce_avro
from tests.integration.runtime_app import IN_SCHEMA, CountingJoin, build, config
from tests.integration.test_runtime import Names, args_for, hits, names, spawn  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration

TTL_MS = 60_000
EXPIRING: StoreSpec[Any] = StoreSpec("counts", ttl_ms=TTL_MS)


class ExpiringCount(CountingJoin):
    """The runtime tests' counting processor, its counts forgotten after a minute without a hit."""

    stores = (EXPIRING,)


@pytest.fixture
def runners() -> Iterator[Callable[[Runner], threading.Thread]]:
    started: list[tuple[Runner, threading.Thread]] = []

    def start(runner: Runner) -> threading.Thread:
        thread = threading.Thread(target=runner.run, daemon=True)
        thread.start()
        started.append((runner, thread))
        return thread

    yield start
    for runner, thread in started:
        runner.stop()
        thread.join(30)


def changelog(bootstrap: str, registry: str, topic: str, until: int) -> dict[str, bytes | None]:
    reader = TopicReader(bootstrap, registry, topic, decode=False)
    try:
        return {m.key().decode(): m.value() for m, _ in reader.read(until=until, timeout=30)}
    finally:
        reader.close()


@pytest.mark.parametrize("store", ["memory", "rocksdb"])
def test_idle_keys_expire_are_tombstoned_and_stay_gone_after_restore(
    kafka_bootstrap: str, schema_registry_url: str, names: Names, tmp_path: Path, store: str,  # noqa: F811
    runners: Callable[[Runner], threading.Thread],
) -> None:  # fmt: skip
    ahead = [0]  # the runner's clock runs with the wall clock (it commits per interval), moved on by hand
    cfg = config(args_for(names, kafka_bootstrap, schema_registry_url))
    cfg.clock = lambda: wall_clock_ms() + ahead[0]
    state = StateConfig(store, tmp_path / "state")
    processor = build("count", [names.input], names.output)
    expiring = type("ExpiringConfigured", (ExpiringCount,), {"inputs": processor.inputs, "outputs": processor.outputs})
    produce_avro(kafka_bootstrap, schema_registry_url, names.input, IN_SCHEMA, hits(40, visitors=20))
    first = Runner(expiring(), cfg, state=state)
    thread = runners(first)
    reader = TopicReader(kafka_bootstrap, schema_registry_url, names.output)
    assert len(reader.read(until=40, timeout=60)) == 40
    topic = EXPIRING.changelog_topic(names.app)
    assert sum(v is not None for v in changelog(kafka_bootstrap, schema_registry_url, topic, 20).values()) == 20
    ahead[0] += TTL_MS + 1_000  # a minute and a bit without a hit: every visitor's count is idle too long
    deadline = time.monotonic() + 30
    expired = {"processor": "counting-join", "store": "counts"}
    while (first.metrics.registry.get_sample_value("passerelle_state_expired_keys_total", expired) or 0) < 20:
        assert time.monotonic() < deadline, "the idle keys did not expire"
        time.sleep(0.1)
    first.stop()
    thread.join(30)
    assert changelog(kafka_bootstrap, schema_registry_url, topic, 40) == {f"v{i}": None for i in range(20)}
    # A new process restores the changelog: the visitors start counting again from 1.
    produce_avro(kafka_bootstrap, schema_registry_url, names.input, IN_SCHEMA, hits(20, visitors=20, start=40))
    second = Runner(expiring(), cfg, state=state)
    runners(second)
    again = [v for _, v in reader.read(until=60, timeout=60)[40:]]
    reader.close()
    assert len(again) == 20 and {v["count"] for v in again} == {1}
    assert second.metrics.registry.get_sample_value(
        "passerelle_state_keys", {"processor": "counting-join", "store": "counts"}
    ) is not None  # fmt: skip


def changelog_to_end(bootstrap: str, topic: str) -> dict[str, list[bytes | None]]:
    """Every committed record of a changelog from its start to its end, per key, in order."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{topic}-reader", "enable.auto.commit": False,
                         "enable.partition.eof": True, "isolation.level": "read_committed"})  # fmt: skip
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        records: dict[str, list[bytes | None]] = collections.defaultdict(list)
        pending, deadline = set(partitions), time.monotonic() + 15
        while pending and time.monotonic() < deadline:
            for msg in consumer.consume(1000, timeout=0.2):
                if msg.error() is not None:
                    pending.discard(msg.partition())
                else:
                    records[bytes(msg.key() or b"").decode()].append(msg.value())
        assert not pending, f"{topic}: partitions {sorted(pending)} not read to their end"
        return dict(records)
    finally:
        consumer.close()


def test_expired_keys_leave_the_changelog_once_compacted_and_a_restore_does_not_bring_them_back(
    kafka_bootstrap: str, schema_registry_url: str, names: Names, tmp_path: Path,  # noqa: F811
    runners: Callable[[Runner], threading.Thread],
) -> None:  # fmt: skip
    # The changelog as the runner creates it (compacted), with a cleaner quick enough for a test: segments roll
    # after 100 ms, any dirty share is worth cleaning, tombstones go at the pass after the one that saw them.
    topic = EXPIRING.changelog_topic(names.app)
    create_topics(kafka_bootstrap, {topic: 3}, {"cleanup.policy": "compact", "min.compaction.lag.ms": "0",
                                                "segment.ms": "100", "min.cleanable.dirty.ratio": "0.01",
                                                "delete.retention.ms": "0"})  # fmt: skip
    ahead = [0]
    cfg = config(args_for(names, kafka_bootstrap, schema_registry_url))
    cfg.clock = lambda: wall_clock_ms() + ahead[0]
    processor = build("count", [names.input], names.output)
    expiring = type("ExpiringConfigured", (ExpiringCount,), {"inputs": processor.inputs, "outputs": processor.outputs})
    produce_avro(kafka_bootstrap, schema_registry_url, names.input, IN_SCHEMA, hits(20, visitors=10))
    first = Runner(expiring(), cfg, state=StateConfig("rocksdb", tmp_path / "first"))
    thread = runners(first)
    reader = TopicReader(kafka_bootstrap, schema_registry_url, names.output)
    assert len(reader.read(until=20, timeout=60)) == 20
    ahead[0] += TTL_MS + 1_000
    expired = {"processor": "counting-join", "store": "counts"}
    deadline = time.monotonic() + 30
    while (first.metrics.registry.get_sample_value("passerelle_state_expired_keys_total", expired) or 0) < 10:
        assert time.monotonic() < deadline, "the idle keys did not expire"
        time.sleep(0.1)
    # Other visitors keep the changelog growing, so segments roll and the cleaner has something to clean; the
    # expired visitors' values and then their tombstones leave it.
    idle = {f"v{i}" for i in range(10)}
    deadline, i, left = time.monotonic() + 30, 0, idle
    while left:
        assert time.monotonic() < deadline, f"{topic} still holds records of expired keys {sorted(left)}"
        produce_avro(kafka_bootstrap, schema_registry_url, names.input, IN_SCHEMA,
                     [(f"w{i}", {"event_id": f"w{i}", "visitor_id": f"w{i}", "n": 100 + i})])  # fmt: skip
        i += 1
        time.sleep(0.5)
        left = idle & set(changelog_to_end(kafka_bootstrap, topic))
    first.stop()
    thread.join(30)
    # A new instance on an empty disk restores the compacted changelog: the expired visitors count from 1 again.
    produce_avro(kafka_bootstrap, schema_registry_url, names.input, IN_SCHEMA, hits(10, visitors=10, start=20))
    runners(Runner(expiring(), cfg, state=StateConfig("rocksdb", tmp_path / "second")))
    again = [v for _, v in reader.read(until=20 + i + 10, timeout=60)[20 + i :]]
    reader.close()
    assert {v["visitor_id"]: v["count"] for v in again} == {f"v{k}": 1 for k in range(10)}


def test_sigkill_between_a_store_write_and_its_commit_leaves_no_aborted_write_on_disk(
    kafka_bootstrap: str, schema_registry_url: str, names: Names, tmp_path: Path,  # noqa: F811
) -> None:  # fmt: skip
    total = 6000
    produce_avro(kafka_bootstrap, schema_registry_url, names.input, IN_SCHEMA, hits(total, visitors=20))
    log = tmp_path / "crash.log"
    extra = ["--state", "rocksdb", "--state-dir", str(tmp_path / "state"),
             "--crash-at", "4000", "--crash-marker", str(tmp_path / "crashed")]  # fmt: skip
    first = spawn("crash-count", names, kafka_bootstrap, schema_registry_url, log=log, extra=extra)
    assert first.wait(120) == -signal.SIGKILL, log.read_text()[-3000:]
    assert (tmp_path / "crashed").exists()
    second = spawn("crash-count", names, kafka_bootstrap, schema_registry_url, log=log, extra=extra)
    reader = TopicReader(kafka_bootstrap, schema_registry_url, names.output)
    try:
        values = [v for _, v in reader.read(until=total + 1, timeout=120, idle=5)]
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(30)
        reader.close()
    assert sorted(v["event_id"] for v in values) == sorted(f"e{i}" for i in range(total))
    by_visitor = collections.defaultdict(list)
    for value in values:
        by_visitor[value["visitor_id"]].append(value["count"])
    # Had the counts written before the kill survived on disk, the restarted process would count on from them.
    assert all(counts == list(range(1, total // 20 + 1)) for counts in by_visitor.values())
    text = log.read_text()
    assert "read on from the local checkpoint" in text, text[-3000:]
