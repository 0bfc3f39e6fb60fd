"""Randomized poison soak of the enrichment processor (issue 17, "Checked by"), on the real broker and registry.

Records on ``hits.raw`` (3 partitions, several visitors), about 1% of each
kind of poison interleaved with valid hits at seeded positions: no magic byte,
a truncated Avro body, a record written with another registered record schema
(``NotAHit``), a null value, a record of ~999,000 bytes with no magic byte (too
large for the dead-letter topic with its headers: kept truncated); plus 1% of
valid hits written with a compatible NEWER ``Hit`` schema registered just
before the test's private registry is stopped for a few seconds mid-run
(they must wait for it, never be dead-lettered).

The processor (``tests.integration.enrich_app``, exactly-once, static
membership) runs as a subprocess and is SIGKILLed twice at seeded moments
while it works, restarted each time. Then: every valid hit is enriched exactly
once (read_committed, by event id), in each visitor's order; every poison
record is in the dead-letter topic exactly once (by its original
topic/partition/offset headers) with its stage and reason; no valid record is
dead-lettered; the consumer group's committed offsets reach the end of every
partition; the processor never exited on its own, and it stops cleanly (exit
0) on SIGTERM.

Size: ``PASSERELLE_SOAK_RECORDS`` records, 20,000 by default. The issue asks
for 100,000, which does not fit this test's time bound on a shared 2-core
machine (1% of oversized records alone is 1 GB through the broker); run
``PASSERELLE_SOAK_RECORDS=100000 pytest tests/integration/test_poison_soak.py``
for the issue's size (the time bound grows with the count: 240 s per 20,000).
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition

from passerelle.deploy.local.stack import free_port
from passerelle.schemas.catalog import load_catalog
from passerelle.schemas.clients import Connection, admin_client, consumer, produce, producer, registry_client
from passerelle.schemas.serde import AvroEncoder
from passerelle.streams.runtime.deadletter import header_dict
from tests.conftest import start_registry_process, stop_process
from tests.integration.enrich_app import topics
from tests.integration.kafka_helpers import STRING_KEY, TopicReader, create_topics

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
CATALOG = load_catalog()

SEED = 17
RECORDS = int(os.environ.get("PASSERELLE_SOAK_RECORDS", "20000"))
PARTITIONS = 3
VISITORS = 60
OVERSIZED_BYTES = 999_000
TIMEOUT_S = int(240 * max(1.0, RECORDS / 20_000))
OUTAGE_S = 3.0  # the registry stays down this long after the processor first met a record it could not decode
POISON = {  # kind -> (stage, fragment of the dead letter's exception message)
    "no_magic": ("deserialize", "unknown magic byte"),
    "truncated": ("deserialize", "invalid Avro body"),
    "wrong_schema": ("deserialize", "invalid Avro body (SchemaResolutionError"),
    "null": ("deserialize", "null value"),
    "oversized": ("deserialize", "unknown magic byte"),
}
VALID = ("hit", "newer")  # "newer": a valid hit written with the newer Hit schema registered before the outage
NOT_A_HIT = json.dumps({"type": "record", "name": "NotAHit", "namespace": "probe", "fields": [
    {"name": "site", "type": "string"}, {"name": "visitor_id", "type": "string"},
    {"name": "event_time", "type": "long"}]})  # fmt: skip
T0 = int(time.time() * 1000)


def newer_hit_schema() -> str:
    schema = json.loads(CATALOG.schema_text("Hit"))
    schema["fields"].append({"name": "probe", "type": ["null", "string"], "default": None})
    return json.dumps(schema)


@dataclass
class Slot:
    """One record of the soak: what it is, where it goes, and (once delivered) its offset."""

    index: int
    kind: str
    visitor: str
    partition: int
    value: bytes | None = None  # as produced (oversized ones are regenerated instead of kept)
    offset: int = -1

    @property
    def event_id(self) -> str:
        return f"e{self.index}"

    @property
    def valid(self) -> bool:
        return self.kind in VALID


def plan(rng: random.Random) -> list[Slot]:
    """Seeded kinds and visitors; newer-schema hits only in the second half (after the registry outage starts)."""
    per_kind = max(1, RECORDS // 100)
    half = RECORDS // 2
    second = list(range(half, RECORDS))
    rng.shuffle(second)
    kinds = dict.fromkeys(second[:per_kind], "newer")
    rest = [i for i in range(RECORDS) if i not in kinds]
    rng.shuffle(rest)
    for n, kind in enumerate(POISON):
        kinds.update(dict.fromkeys(rest[n * per_kind : (n + 1) * per_kind], kind))
    slots = []
    for i in range(RECORDS):
        v = rng.randrange(VISITORS)
        slots.append(Slot(i, kinds.get(i, "hit"), f"v{v}", v % PARTITIONS))
    return slots


def hit_value(slot: Slot) -> dict[str, Any]:
    rng = random.Random(SEED * 1_000_003 + slot.index)
    product = None
    kind = rng.choices(["page_view", "product_view", "cart_add"], [80, 15, 5])[0]
    if kind != "page_view":
        sku = rng.randrange(50)
        product = {"id": f"SKU-{sku}", "name": f"Product {sku}", "price": 10.0 + sku, "currency": "EUR",
                   "quantity": 1, "category": None, "url": None, "image_url": None}  # fmt: skip
    campaign = {}
    if rng.random() < 0.03:
        campaign = {"utm_source": rng.choice(["news", "partner"]), "utm_campaign": f"c{rng.randrange(5)}"}
    customer = f"c-{slot.visitor}" if slot.visitor.endswith("0") and rng.random() < 0.2 else None
    return {
        "event_id": slot.event_id, "site": "shop.example", "visitor_id": slot.visitor, "customer_id": customer,
        "event_time": T0 + slot.index, "type": kind, "url": f"https://shop.example/p/{rng.randrange(100)}",
        "referrer": rng.choice([None, "https://www.google.com/", "https://www.facebook.com/", None]),
        "page": None, "campaign_params": campaign, "product": product, "order": None,
        "consent": {"analytics": True, "marketing": True}, "user_agent": None, "ip_truncated": "203.0.113.0",
    }  # fmt: skip


def oversized(index: int) -> bytes:
    head = f"oversized #{index}, no magic byte ".encode()
    return head + b"p" * (OVERSIZED_BYTES - len(head))


class Encoders:
    def __init__(self, client: Any, raw_topic: str) -> None:
        self.client = client
        self.key = AvroEncoder.for_subject(client, f"{raw_topic}-key", STRING_KEY)
        self.hit = AvroEncoder.for_subject(client, f"{raw_topic}-value", CATALOG.schema_text("Hit"))
        self.wrong = AvroEncoder.for_subject(client, f"{raw_topic}.probe-value", NOT_A_HIT)
        self.newer: AvroEncoder | None = None  # registered right before the outage

    def value(self, slot: Slot) -> bytes | None:
        rng = random.Random(SEED * 7_919 + slot.index)
        if slot.kind == "hit":
            return self.hit.encode(hit_value(slot))
        if slot.kind == "newer":
            assert self.newer is not None
            return self.newer.encode({**hit_value(slot), "probe": f"p{slot.index}"})
        if slot.kind == "no_magic":
            return bytes([rng.randrange(1, 256)]) + rng.randbytes(rng.randrange(8, 200))
        if slot.kind == "truncated":
            data = self.hit.encode(hit_value(slot))
            return data[: -rng.randrange(1, len(data) - 5)]  # the header and at least one byte of body
        if slot.kind == "wrong_schema":
            return self.wrong.encode({"site": "shop.example", "visitor_id": slot.visitor, "event_time": T0})
        if slot.kind == "null":
            return None
        assert slot.kind == "oversized"
        return oversized(slot.index)


def produce_slots(conn: Connection, topic: str, encoders: Encoders, slots: list[Slot]) -> None:
    """Each slot to its visitor's partition; offsets from the delivery reports (no registry call)."""
    target = producer(conn, {"linger.ms": 20})
    failed: list[str] = []

    def delivered(slot: Slot) -> Callable[[Any, Any], None]:
        def report(err: Any, msg: Any) -> None:
            if err is not None:
                failed.append(f"{slot.index}: {err}")
            else:
                slot.offset = msg.offset()

        return report

    for slot in slots:
        value = encoders.value(slot)
        if slot.kind != "oversized":
            slot.value = value
        produce(target, topic, value, encoders.key.encode(slot.visitor), partition=slot.partition,
                on_delivery=delivered(slot))  # fmt: skip
        target.poll(0)
    assert target.flush(120) == 0
    assert not failed, failed[:5]
    assert all(s.offset >= 0 for s in slots)


class Processor:
    """The enrichment subprocess: spawn, SIGKILL, SIGTERM; every check first asserts it did not exit."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.args, self.log = args, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.metrics_port = 0
        self._out: BinaryIO | None = None

    def spawn(self) -> None:
        self.metrics_port = free_port()
        self._out = open(self.log, "ab")  # noqa: SIM115
        cmd = [sys.executable, "-m", "tests.integration.enrich_app", *self.args,
               "--metrics-port", str(self.metrics_port)]  # fmt: skip
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self._out, stderr=subprocess.STDOUT)

    def assert_alive(self) -> None:
        assert self.proc is not None
        code = self.proc.poll()
        assert code is None, f"the processor exited on its own ({code}): {self.log.read_text()[-4000:]}"

    def kill9(self) -> None:
        self.assert_alive()
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self._close()

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        finally:
            self._close()

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._close()

    def _close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None

    def registry_retries(self) -> float:
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        except OSError:
            return 0.0
        for line in text.splitlines():
            if line.startswith("passerelle_schema_registry_retries_total{"):
                return float(line.rsplit(" ", 1)[1])
        return 0.0


class Progress:
    """Counts committed (read_committed) records on a topic, to time the kills and the outage."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.consumer = consumer(Connection.plain(bootstrap), f"soak-progress-{time.monotonic_ns()}",
                                 {"auto.offset.reset": "earliest", "isolation.level": "read_committed"})  # fmt: skip
        self.consumer.subscribe([topic])
        self.count = 0

    def wait(self, at_least: int, timeout: float, processor: Processor) -> int:
        deadline = time.monotonic() + timeout
        while self.count < at_least:
            processor.assert_alive()
            assert time.monotonic() < deadline, f"{self.count} of {at_least} records after {timeout} s"
            self.count += sum(1 for m in self.consumer.consume(10_000, timeout=0.2) if not m.error())
        return self.count

    def drain(self, seconds: float, processor: Processor) -> int:
        """What has been committed so far (reads for ``seconds``)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            processor.assert_alive()
            self.count += sum(1 for m in self.consumer.consume(10_000, timeout=0.2) if not m.error())
        return self.count

    def close(self) -> None:
        self.consumer.close()


def committed_offsets(admin: Any, group: str, topic: str) -> dict[int, int]:
    request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in range(PARTITIONS)])
    result = admin.list_consumer_group_offsets([request])[group].result(30)
    return {tp.partition: tp.offset for tp in result.topic_partitions}


@pytest.mark.timeout(TIMEOUT_S)
def test_poison_soak_with_two_kill_9_and_a_registry_outage(
    kafka_bootstrap: str, unique: Callable[[str], str], tmp_path: Path
) -> None:
    started = time.monotonic()
    rng = random.Random(SEED)
    prefix, dlq, app = unique("soak"), unique("soak.dlq"), unique("soak-enrich")
    t = topics(prefix)
    create_topics(kafka_bootstrap, {t.hits_raw: PARTITIONS, t.hits_enriched: PARTITIONS, dlq: 1})
    create_topics(kafka_bootstrap, {t.identity_links: 1, t.campaigns: 1, t.undeclared: 1, t.crm_profiles: 1},
                  {"cleanup.policy": "compact"})  # fmt: skip
    slots = plan(rng)
    half = RECORDS // 2
    valid = [s for s in slots if s.valid]
    valid_first = sum(1 for s in slots[:half] if s.valid)
    poison = [s for s in slots if not s.valid]

    port, schemas_topic = free_port(), f"_schemas-soak-{os.getpid()}-{time.monotonic_ns()}"
    registry_log = tmp_path / "registry.log"
    registry = start_registry_process(kafka_bootstrap, port, schemas_topic, registry_log)
    url = f"http://127.0.0.1:{port}"
    conn = Connection.plain(kafka_bootstrap, url)
    processor = Processor(
        ["--bootstrap", kafka_bootstrap, "--registry", url, "--app", app, "--prefix", prefix, "--dlq", dlq,
         "--instance", "0", "--registry-retry-max-s", "0.5"],
        tmp_path / "enrich.log",
    )  # fmt: skip
    progress = Progress(kafka_bootstrap, t.hits_enriched)
    timeline: list[str] = []

    def note(what: str) -> None:
        timeline.append(f"{time.monotonic() - started:6.1f}s {what}")

    try:
        encoders = Encoders(registry_client(conn), t.hits_raw)
        produce_slots(conn, t.hits_raw, encoders, slots[:half])
        note(f"first half produced ({half} records)")
        processor.spawn()

        # Kill 1, in the middle of the first half.
        target = int(valid_first * rng.uniform(0.25, 0.6))
        at_kill = progress.wait(target, 120, processor)
        processor.kill9()
        note(f"kill -9 #1 at {at_kill} enriched (target {target} of {valid_first})")
        assert at_kill < valid_first, "the first kill came after the processor had finished its work"
        processor.spawn()
        progress.wait(valid_first, 120, processor)  # the new incarnation is set up and has caught up
        note("first half enriched after restart")

        # A compatible newer Hit, then the registry goes down while the second half arrives.
        encoders.newer = AvroEncoder.for_subject(encoders.client, f"{t.hits_raw}-value", newer_hit_schema())
        assert encoders.newer.schema_id != encoders.hit.schema_id
        stop_process(registry)
        note("registry stopped")
        produce_slots(Connection.plain(kafka_bootstrap), t.hits_raw, encoders, slots[half:])
        note(f"second half produced ({RECORDS - half} records)")
        deadline = time.monotonic() + 60
        while processor.registry_retries() < 1:
            processor.assert_alive()
            assert time.monotonic() < deadline, "the processor never waited for the registry"
            time.sleep(0.2)
        time.sleep(OUTAGE_S)
        processor.assert_alive()
        retries = processor.registry_retries()
        during = progress.drain(1.0, processor)
        assert during < len(valid), "every hit enriched while the newer schema could not be fetched"
        registry = start_registry_process(kafka_bootstrap, port, schemas_topic, registry_log)
        note(f"registry back ({retries:.0f} retries, {during} enriched during the outage)")

        # Kill 2, while the waiting records go through.
        target = during + int((len(valid) - during) * rng.uniform(0.2, 0.5))
        at_kill = progress.wait(target, 120, processor)
        processor.kill9()
        note(f"kill -9 #2 at {at_kill} enriched (target {target} of {len(valid)})")
        assert at_kill < len(valid), "the second kill came after the processor had finished its work"
        processor.spawn()
        progress.wait(len(valid), 180, processor)
        note("all valid hits enriched")

        # No partition stuck: the group's committed offsets reach the end of each partition.
        ends = {p: max(s.offset for s in slots if s.partition == p) + 1 for p in range(PARTITIONS)}
        admin, deadline = admin_client(conn), time.monotonic() + 60
        while (committed := committed_offsets(admin, app, t.hits_raw)) != ends:
            processor.assert_alive()
            assert time.monotonic() < deadline, f"committed {committed}, partition ends {ends}"
            time.sleep(0.5)
        note("committed offsets at the end of every partition")

        enriched_reader = TopicReader(kafka_bootstrap, url, t.hits_enriched)
        outputs = enriched_reader.read(until=len(valid) + 1, timeout=120, idle=3)
        enriched = [v["event_id"] for _, v in outputs]
        per_visitor = collections.defaultdict(list)
        for _, v in outputs:
            per_visitor[v["visitor_id"]].append(int(v["event_id"][1:]))
        enriched_reader.close()
        dlq_reader = TopicReader(kafka_bootstrap, url, dlq, decode=False)
        dead = [m for m, _ in dlq_reader.read(until=len(poison) + 1, timeout=120, idle=3)]
        dlq_reader.close()
        note(f"read {len(enriched)} enriched, {len(dead)} dead letters")
        processor.assert_alive()
        assert processor.terminate() == 0, processor.log.read_text()[-4000:]
        note("stopped on SIGTERM, exit 0")
    finally:
        progress.close()
        processor.cleanup()
        stop_process(registry)
        print("\n".join(timeline))

    # Every valid hit enriched exactly once.
    counts = collections.Counter(enriched)
    assert [e for e, n in counts.items() if n > 1] == [], "hits enriched more than once"
    assert set(counts) == {s.event_id for s in valid}
    assert len(enriched) == len(valid)
    # In each visitor's order (waiting for the registry never let a partition skip ahead).
    assert [v for v, seq in per_visitor.items() if seq != sorted(seq)] == []

    # Every poison record dead-lettered exactly once, with its reason; nothing valid dead-lettered.
    by_offset = {(s.partition, s.offset): s for s in slots}
    seen: collections.Counter[tuple[int, int]] = collections.Counter()
    wrong: list[str] = []
    for msg in dead:
        h = header_dict(msg.headers())
        where = (int(h["partition"]), int(h["offset"]))
        seen[where] += 1
        slot = by_offset.get(where)
        assert h["topic"] == t.hits_raw and slot is not None, h
        assert not slot.valid, f"valid {slot.kind} record {slot.event_id} dead-lettered: {h}"
        stage, fragment = POISON[slot.kind]
        if h["stage"] != stage or fragment not in h["exception.message"] or h["processor"] != "enrichment":
            wrong.append(f"{slot.kind}@{where}: {h['stage']} {h['exception.message'][:200]}")
        if slot.kind == "oversized":
            original = oversized(slot.index)
            assert h["truncated"] == "true" and h["original.size"] == str(len(original))
            assert h["original.sha256"] == hashlib.sha256(original).hexdigest()
            assert 0 < len(msg.value()) < 100_000 and original.startswith(msg.value())
        else:
            assert msg.value() == slot.value, f"{slot.kind}@{where}: the dead letter is not the original bytes"
            assert "truncated" not in h
    assert wrong == [], wrong[:5]
    assert [w for w, n in seen.items() if n > 1] == [], "poison dead-lettered more than once"
    assert set(seen) == {(s.partition, s.offset) for s in poison}
    kinds = collections.Counter(s.kind for s in slots)
    print(f"soak: {RECORDS} records {dict(kinds)}; {len(enriched)} enriched, {len(dead)} dead letters, "
          f"{time.monotonic() - started:.1f} s")  # fmt: skip
