"""Processors with several inputs: co-partitioning checked at start, kept by the assignment while scaling.

Per-partition state is keyed by partition number, so partition N of every
input must be on one instance. The first tests need no broker (marked
``unit``); the others run on the real broker and registry: inputs with
different partition counts refuse to start with one error, and a two-input
counting processor scaled 1 -> 2 -> 1 while records flow keeps every key's
count on one instance at a time and outputs every input exactly once.
"""

from __future__ import annotations

import collections
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, TopicPartition

from passerelle.schemas.clients import Connection, produce, producer, registry_client
from passerelle.schemas.serde import AvroEncoder
from passerelle.streams.runtime import FatalRuntimeError, Runner, RunnerConfig
from tests.integration.kafka_helpers import STRING_KEY, TopicReader, create_topics
from tests.integration.runtime_app import COUNTS, IN_SCHEMA, OUT_SCHEMA, build

ROOT = Path(__file__).resolve().parents[2]

# --- no broker ------------------------------------------------------------------------------------------------------


@pytest.mark.unit
def test_range_is_the_default_and_the_only_strategy_for_several_inputs() -> None:
    cfg = RunnerConfig("app", "127.0.0.1:1", "http://127.0.0.1:1", {"out": OUT_SCHEMA})
    assert cfg.assignment_strategy == "range"
    two = build("join", ["left", "right"], "out")
    assert Runner(two, cfg)._assignment_strategy() == "range"
    for strategy in ("cooperative-sticky", "roundrobin", "range,roundrobin"):
        refused = RunnerConfig("app", "127.0.0.1:1", "http://127.0.0.1:1", {"out": OUT_SCHEMA},
                               assignment_strategy=strategy)  # fmt: skip
        with pytest.raises(FatalRuntimeError, match="needs the 'range' assignment strategy") as caught:
            Runner(two, refused).run()  # refused before connecting to anything
        assert "left, right" in str(caught.value) and "\n" not in str(caught.value)
    overridden = RunnerConfig("app", "b", "r", {}, consumer_overrides={"partition.assignment.strategy": "roundrobin"})
    with pytest.raises(FatalRuntimeError):
        Runner(two, overridden)._assignment_strategy()
    one = build("count", ["in"], "out")
    assert Runner(one, cfg)._assignment_strategy() == "range"
    coop = RunnerConfig("app", "b", "r", {}, assignment_strategy="cooperative-sticky")
    assert Runner(one, coop)._assignment_strategy() == "cooperative-sticky"  # a single input may choose it


@pytest.mark.unit
def test_an_assignment_splitting_a_partition_number_stops_the_instance() -> None:
    runner = Runner(build("join", ["left", "right"], "out"), RunnerConfig("app", "b", "r", {}))
    runner._assigned = {("left", 0), ("right", 0), ("left", 2), ("right", 2)}
    runner._check_copartitioned()  # partitions 0 and 2 of both: fine
    runner._assigned.add(("left", 1))
    with pytest.raises(FatalRuntimeError, match=r"left: \[0, 1, 2\]; right: \[0, 2\]"):
        runner._check_copartitioned()


class _Eof:
    def code(self) -> int:
        return KafkaError._PARTITION_EOF


class _Msg:
    def __init__(self, topic: str, partition: int, key: bytes | None = None, value: bytes | None = None,
                 eof: bool = False) -> None:  # fmt: skip
        self._where, self._kv, self._eof = (topic, partition), (key, value), eof

    def error(self) -> Any:
        return _Eof() if self._eof else None

    def topic(self) -> str:
        return self._where[0]

    def partition(self) -> int:
        return self._where[1]

    def timestamp(self) -> tuple[int, int]:
        return 1, 0  # TIMESTAMP_CREATE_TIME at the epoch: the restore reads it (idle time of expiring stores)

    def key(self) -> bytes | None:
        return self._kv[0]

    def value(self) -> bytes | None:
        return self._kv[1]


class FakeRestoreConsumer:
    """Changelog partitions as lists of (key, value), None for a transaction marker; ``stable`` caps the end seen."""

    def __init__(self, logs: dict[tuple[str, int], list[tuple[bytes, bytes | None] | None]]) -> None:
        self.logs = logs
        self.stable: dict[tuple[str, int], int] = {}
        self.queue: list[_Msg] = []
        self.assigned: list[tuple[str, int, int]] = []

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float = 0, cached: bool = False) -> tuple[int, int]:
        where = (tp.topic, tp.partition)
        return 0, self.stable.get(where, len(self.logs.get(where, [])))

    def assign(self, tps: list[TopicPartition]) -> None:
        for tp in tps:
            start = max(0, tp.offset)  # OFFSET_BEGINNING is negative
            self.assigned.append((tp.topic, tp.partition, start))
            entries = self.logs.get((tp.topic, tp.partition), [])[start:]
            self.queue += [_Msg(tp.topic, tp.partition, *kv) for kv in entries if kv is not None]
            self.queue.append(_Msg(tp.topic, tp.partition, eof=True))

    def consume(self, n: int, timeout: float = 0) -> list[_Msg]:
        out, self.queue = self.queue, []
        return out

    def unassign(self) -> None:
        pass


@pytest.mark.unit
def test_an_eager_rebalance_keeps_state_and_reads_on_only_what_was_written_since() -> None:
    runner = Runner(build("join", ["left", "right"], "out"), RunnerConfig("app", "b", "r", {}))
    counts = "app-counts-changelog"
    logs: dict[tuple[str, int], list[tuple[bytes, bytes | None] | None]] = {
        (counts, 0): [(b"k", b"5"), None], (counts, 1): [(b"k", b"3"), None], (counts, 2): [(b"j", b"1"), None],
    }  # fmt: skip
    fake = FakeRestoreConsumer(logs)
    runner._restore_consumer = fake  # type: ignore[assignment]
    runner._table_data, runner._table_deleted = {}, {}
    runner._restore_partitions([0, 1, 2])
    assert fake.assigned == [(counts, 0, 0), (counts, 1, 0), (counts, 2, 0)]  # empty timer changelogs skipped
    first = dict(runner._contexts)
    assert first[0].store(COUNTS).get("k") == 5
    # The revoke's commit: k counted to 6 in partition 0, its transaction's markers not written yet, so a
    # read_committed client sees the end before it.
    first[0].store(COUNTS).put("k", 6)
    first[0].store(COUNTS).take_changes()
    logs[(counts, 0)].append((b"k", b"6"))
    fake.stable[(counts, 0)] = 2
    parked = runner._drop([TopicPartition(t, p) for t in ("left", "right") for p in (0, 1, 2)])
    assert parked == first and runner._contexts == {}
    runner._park(parked)
    assert {p: ends[counts] for p, (_, ends) in runner._parked.items()} == {0: 2, 1: 2, 2: 2}
    # Meanwhile the marker lands; another member owned partition 1 and counted k to 7; 2 is untouched.
    logs[(counts, 0)].append(None)
    fake.stable.clear()
    logs[(counts, 1)] += [(b"k", b"7"), None]
    fake.assigned = []
    runner._restore_partitions([0, 1, 2])
    assert fake.assigned == [(counts, 0, 2), (counts, 1, 2)]  # read on from where each was committed
    assert [runner._contexts[p].store(COUNTS).get(k) for p, k in ((0, "k"), (1, "k"), (2, "j"))] == [6, 7, 1]
    assert all(runner._contexts[p] is not first[p] for p in (0, 1, 2))  # new contexts, as after any restore
    assert runner._parked == {}
    assert not any(store.has_changes() for ctx in runner._contexts.values() for store in ctx.stores.values())
    # A partition whose changelog no longer holds the offset it was kept at is read from the beginning.
    runner._park(runner._drop([TopicPartition(t, 2) for t in ("left", "right")]))
    runner._parked[2][1][counts] = 99
    fake.assigned = []
    runner._restore_partitions([2])
    assert fake.assigned == [(counts, 2, 0)] and runner._contexts[2].store(COUNTS).get("j") == 1


# --- real broker ----------------------------------------------------------------------------------------------------


class Names:
    def __init__(self, unique: Callable[[str], str]) -> None:
        self.left = unique("cp.left")
        self.right = unique("cp.right")
        self.output = unique("cp.out")
        self.dlq = unique("cp.dlq")
        self.app = unique("cp-app")


def spawn(names: Names, bootstrap: str, registry: str, instance: str, log: Path) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable, "-m", "tests.integration.runtime_app", "join", "--bootstrap", bootstrap,
        "--registry", registry, "--app", names.app, "--input", names.left, "--input", names.right,
        "--output", names.output, "--dlq", names.dlq, "--instance", instance,
    ]  # fmt: skip
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


@pytest.mark.integration
def test_inputs_with_different_partition_counts_refuse_to_start_with_one_error(
    kafka_bootstrap: str, schema_registry_url: str, unique: Callable[[str], str], tmp_path: Path
) -> None:
    names = Names(unique)
    create_topics(kafka_bootstrap, {names.left: 3, names.right: 2, names.output: 3, names.dlq: 1})
    cfg = RunnerConfig(names.app, kafka_bootstrap, schema_registry_url, {names.output: OUT_SCHEMA},
                       dead_letter_topic=names.dlq)  # fmt: skip
    with pytest.raises(FatalRuntimeError) as caught:
        Runner(build("join", [names.left, names.right], names.output), cfg).run()
    message = str(caught.value)
    assert f"'{names.left}' has 3, '{names.right}' has 2 partitions" in message
    assert "not co-partitioned" in message and "\n" not in message
    # As a process: one `error:` line and the runtime's exit status, as the passerelle CLI prints it.
    log = tmp_path / "refused.log"
    proc = spawn(names, kafka_bootstrap, schema_registry_url, "x", log)
    assert proc.wait(60) == FatalRuntimeError.exit_code
    errors = [line for line in log.read_text().splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"'{names.left}' has 3, '{names.right}' has 2 partitions" in errors[0], errors
    assert "Traceback" not in log.read_text()
    meta = producer(Connection.plain(kafka_bootstrap)).list_topics(timeout=10)
    assert not any(t.startswith(names.app) for t in meta.topics)  # no changelog created for a refused start


class Feeder(threading.Thread):
    """Produces to both inputs at ``rate`` records/s each until stopped; the same visitors on both."""

    def __init__(self, bootstrap: str, registry: str, topics: tuple[str, str], rate: int, visitors: int) -> None:
        super().__init__(daemon=True)
        self.conn = Connection.plain(bootstrap, registry)
        self.topics, self.rate, self.visitors = topics, rate, visitors
        self.halt = threading.Event()
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            client = registry_client(self.conn)
            values = {t: AvroEncoder.for_subject(client, f"{t}-value", IN_SCHEMA) for t in self.topics}
            keys = {t: AvroEncoder.for_subject(client, f"{t}-key", STRING_KEY) for t in self.topics}
            target = producer(self.conn, {"linger.ms": 5})
            started, i = time.monotonic(), 0
            while not self.halt.is_set():
                for topic, prefix in zip(self.topics, ("l", "r"), strict=True):
                    visitor = f"v{i % self.visitors}"
                    value = {"event_id": f"{prefix}{i}", "visitor_id": visitor, "n": i}
                    produce(target, topic, values[topic].encode(value), keys[topic].encode(visitor))
                i += 1
                self.sent = 2 * i
                ahead = i / self.rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
            assert target.flush(60) == 0
        except BaseException as exc:
            self.error = exc


def assigned_partitions(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if " assigned [" in line]


@pytest.mark.integration
def test_two_inputs_scaled_1_2_1_keep_each_key_on_one_instance_and_output_exactly_once(
    kafka_bootstrap: str, schema_registry_url: str, unique: Callable[[str], str], tmp_path: Path
) -> None:
    names = Names(unique)
    create_topics(kafka_bootstrap, {names.left: 3, names.right: 3, names.output: 3, names.dlq: 1})
    a_log, b_log = tmp_path / "a.log", tmp_path / "b.log"
    feeder = Feeder(kafka_bootstrap, schema_registry_url, (names.left, names.right), rate=150, visitors=40)
    reader = TopicReader(kafka_bootstrap, schema_registry_url, names.output)
    a = spawn(names, kafka_bootstrap, schema_registry_url, "a", a_log)
    b: subprocess.Popen[bytes] | None = None
    feeder.start()

    def labels() -> set[str]:
        return {v["label"].split(":")[0] for _, v in reader.records}

    try:
        assert len(reader.read(until=600, timeout=90)) >= 600, a_log.read_text()[-3000:]
        b = spawn(names, kafka_bootstrap, schema_registry_url, "b", b_log)  # 1 -> 2
        deadline = time.monotonic() + 90
        while "b" not in labels() and time.monotonic() < deadline:
            reader.read(until=len(reader.records) + 1, timeout=1)
        assert "b" in labels(), b_log.read_text()[-3000:]
        reader.read(until=len(reader.records) + 600, timeout=30)  # both instances at work for a while
        in_two = len(reader.records)
        a.send_signal(signal.SIGTERM)  # 2 -> 1: a commits, hands over and exits
        assert a.wait(60) == 0, a_log.read_text()[-3000:]
        # b takes a's partitions once the group notices (static members: after the session timeout).
        reader.read(until=len(reader.records) + 1500, timeout=90)
        feeder.halt.set()
        feeder.join(60)
        assert feeder.error is None, feeder.error
        total = feeder.sent
        reader.read(until=total, timeout=120)
        values = [v for _, v in reader.read(until=total + 1, timeout=5, idle=3)]  # a duplicate would show here
    finally:
        feeder.halt.set()
        for proc in (a, b):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
        reader.close()
    assert b is not None and b.returncode == 0, b_log.read_text()[-3000:]
    # Every input exactly once.
    ids = [v["event_id"] for v in values]
    expected = {f"{side}{i}" for i in range(total // 2) for side in "lr"}
    assert len(ids) == total and set(ids) == expected, (len(ids), total, len(set(ids)))
    # Each visitor's count went 1..N over both inputs, with no gap nor repeat: its state was on one
    # instance at a time, and handed over with everything it had counted.
    by_visitor: dict[str, list[int]] = collections.defaultdict(list)
    runs: dict[str, list[str]] = collections.defaultdict(list)
    partitions: dict[str, set[str]] = collections.defaultdict(set)
    for value in values:
        visitor = value["visitor_id"]
        by_visitor[visitor].append(value["count"])
        instance, _topic, partition = value["label"].split(":")
        partitions[visitor].add(partition)
        if not runs[visitor] or runs[visitor][-1] != instance:
            runs[visitor].append(instance)
    assert all(counts == list(range(1, len(counts) + 1)) for counts in by_visitor.values())
    # Both inputs of a visitor are in the same partition number, and each visitor moved at most once (a -> b).
    assert all(len(ps) == 1 for ps in partitions.values()), partitions
    assert all(r in (["a"], ["b"], ["a", "b"]) for r in runs.values()), runs
    assert {"a", "b"} <= {v["label"].split(":")[0] for v in values[:in_two]}
    # At 1 -> 2, a kept the state of the partitions it was assigned again instead of reading it back.
    assert "state kept in memory" in a_log.read_text()
    # Each instance was assigned the same partition numbers of both inputs every time (range).
    for line in assigned_partitions(a_log) + assigned_partitions(b_log):
        listed = line.split(" assigned ", 1)[1]
        left = sorted(int(p) for t, p in _pairs(listed) if t == names.left)
        right = sorted(int(p) for t, p in _pairs(listed) if t == names.right)
        assert left == right, line


def _pairs(listed: str) -> list[tuple[str, str]]:
    """``[('t', 0), ('u', 0)]`` as logged by the runner -> [(topic, partition)]."""
    import ast

    parsed: Any = ast.literal_eval(listed.strip())
    return [(str(t), str(p)) for t, p in parsed]
