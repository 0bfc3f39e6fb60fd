"""The CRM web activity summary on the real broker and registry: exact summaries as Kafka Connect JSON, erasures.

Both processors run as the commands run them (``crm-activity`` and
``crm-activity-messages``) on topics of each test: enriched hits, abandoned
carts and remarketing messages are produced as Avro, and ``crm.web_activity``
is read as the JDBC sink reads it (UTF-8 key, JsonConverter envelope with its
schema). The first test runs them as ``Runner``s in threads; the second kills
the summary with SIGKILL mid-stream, so it runs as a subprocess, this module
being its entry point:

    python -m tests.integration.test_crm_activity --bootstrap B --registry R --app A --dlq Q --topics JSON
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from passerelle.schemas.catalog import load_catalog
from passerelle.streams.crm_activity.processor import CrmActivityProcessor, CrmActivityTopics, CrmMessagesProcessor
from passerelle.streams.crm_activity.rules import DAY_MS, HOUR_MS, MINUTE_MS, CrmActivityConfig
from passerelle.streams.runtime import Processor, Runner, RunnerConfig
from tests.integration.kafka_helpers import TopicReader, create_topics, produce_avro
from tests.records import enriched_hit

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
CATALOG = load_catalog()
PARTITIONS = 2  # hits, carts and deltas: co-partitioned
CONFIG = CrmActivityConfig(emit_interval_ms=200, recovery_window_ms=2 * DAY_MS)


def schema(name: str) -> str:
    return CATALOG.schema_text(name)


# --- traffic and what it must give ----------------------------------------------------------------------------


def enriched(visitor: str, n: int, visit: int, customer: str | None, at: int, campaign: str | None = None,
             order: tuple[str, float] | None = None) -> dict[str, Any]:  # fmt: skip
    """An ``EnrichedHit`` as the enrichment writes it."""
    return enriched_hit(visitor, at, event_id=f"{visitor}-{n}", visit=visit, customer=customer, campaign=campaign,
                        order=order)  # fmt: skip


def abandoned(visitor: str, customer: str | None, at: int) -> dict[str, Any]:
    return {"event_id": f"cart-{visitor}-{at}", "visitor_id": visitor, "site": "shop.example",
            "customer_id": customer, "email": None, "episode_id": f"{visitor}-{at}", "lines": [], "value": 20.0,
            "currency": "EUR", "viewed_products": [], "crm": None, "marketing_consent": True,
            "site_marketing_consent": True, "last_activity_at": at - 30 * MINUTE_MS, "detected_at": at}  # fmt: skip


def remarketing(customer: str, at: int) -> dict[str, Any]:
    return {"message_id": f"{customer}-{at}-1", "sequence_id": f"{customer}-{at}", "step": 1,
            "customer_id": customer, "email": f"{customer}@example.org", "site": "shop.example", "products": [],
            "lines": [], "promotion": None, "created_at": at}  # fmt: skip


@dataclass
class Traffic:
    """Inputs, and the summary they must give per customer, counted independently of the rules."""

    hits: list[dict[str, Any]] = field(default_factory=list)
    carts: list[dict[str, Any]] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    want: dict[str, dict[str, Any]] = field(default_factory=lambda: defaultdict(dict))


def traffic(customers: range, now: int, round_: int) -> Traffic:
    """Per customer ``c<i>`` (visitor ``v<i>``, visit numbers from ``10 * round_``): 1-3 visits of two hits;
    every third orders in its last visit and reloads the confirmation; every fourth got a message an hour
    before (its order, if any, is recovered); every fifth abandons a cart; every seventh has a visit 10 days
    ago (counted) and one 40 days ago (late). Anonymous visitors do all of it too, and count for no one."""
    t = Traffic()
    for i in customers:
        for visitor, customer in ((f"v{i}", f"c{i}"), (f"anon{i}-{round_}", None)):
            n, visits, orders, revenue = 0, 0, 0, 0.0
            if i % 7 == 0 and round_ == 0:
                for visit, ago in ((1, 40 * DAY_MS), (2, 10 * DAY_MS)):
                    t.hits.append(enriched(visitor, n := n + 1, visit, customer, now - ago))
                visits += 1  # the one 10 days ago
            for k in range(1 + i % 3):
                visit, at = 10 * round_ + 3 + k, now - 30 * MINUTE_MS + k * MINUTE_MS
                for _ in range(2):
                    t.hits.append(enriched(visitor, n := n + 1, visit, customer, at, campaign=f"EREC-{i % 2}"))
                visits += 1
            if i % 3 == 0:
                order = (f"O-{visitor}-{round_}", float(10 + i % 5))
                for _ in range(2):
                    t.hits.append(enriched(visitor, n := n + 1, visit, customer, at + 1, order=order))
                orders, revenue = 1, order[1]
            if i % 5 == 0:
                t.carts.append(abandoned(visitor, customer, now - 5 * MINUTE_MS))
            if customer is None:
                continue
            if i % 4 == 0:
                t.messages.append(remarketing(customer, now - HOUR_MS))
            t.want[customer] = {"visits_30d": visits, "orders_30d": orders, "revenue_30d": revenue,
                                "abandoned_carts_30d": int(i % 5 == 0), "remarketing_messages": int(i % 4 == 0),
                                "recovered_orders": int(i % 4 == 0 and i % 3 == 0), "last_visit_at": at,
                                "last_campaign": f"EREC-{i % 2}"}  # fmt: skip
    return t


def add(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Two rounds' expectations for the same customers: counts add up, the last visit is the second's."""
    out = {}
    for customer, first in a.items():
        second = b[customer]
        out[customer] = {k: first[k] + second[k] if k.endswith(("_30d", "_messages", "_orders")) else second[k]
                         for k in first}  # fmt: skip
    return out


# --- the processors, as the commands run them ----------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    topics: CrmActivityTopics
    app: str
    dlq: str
    bootstrap: str
    registry: str


@pytest.fixture
def setup(unique: Callable[[str], str], kafka_bootstrap: str, schema_registry_url: str) -> Setup:
    t = CrmActivityTopics(
        hits_enriched=unique("hits.enriched"), carts_abandoned=unique("carts.abandoned"),
        remarketing_messages=unique("remarketing.messages"), deltas=unique("crm.activity.deltas"),
        web_activity=unique("crm.web_activity"), crm_profiles=unique("crm.profiles"),
        privacy_requests=unique("privacy.requests"),
    )  # fmt: skip
    assert t.privacy_requests is not None
    dlq = unique("dlq")
    create_topics(kafka_bootstrap, {t.hits_enriched: PARTITIONS, t.carts_abandoned: PARTITIONS,
                                    t.deltas: PARTITIONS, t.remarketing_messages: 1, t.privacy_requests: 1,
                                    dlq: 1})  # fmt: skip
    create_topics(kafka_bootstrap, {t.web_activity: 1, t.crm_profiles: 1}, {"cleanup.policy": "compact"})
    return Setup(t, unique("crm-activity"), dlq, kafka_bootstrap, schema_registry_url)


def runner(s: Setup, processor: Processor, app: str, instance: str = "0") -> Runner:
    """A runner configured as ``ProcessorSettings.runner_config`` does from the catalog, on this test's topics."""
    t = s.topics
    names = {t.hits_enriched: "EnrichedHit", t.carts_abandoned: "CartAbandoned", t.deltas: "WebActivityDelta",
             t.remarketing_messages: "RemarketingMessage", t.web_activity: "WebActivity"}  # fmt: skip
    return Runner(processor, RunnerConfig(
        app_id=app, bootstrap_servers=s.bootstrap, schema_registry_url=s.registry,
        input_schemas={topic: schema(names[topic]) for topic in processor.inputs},
        output_schemas={topic: schema(names[topic]) for topic in processor.outputs},
        wire_formats={t.web_activity: "connect-json"}, dead_letter_topic=s.dlq, instance_id=instance,
        static_membership=True,
    ))  # fmt: skip


class Running:
    """Runners in threads, stopped (gracefully, as on SIGTERM) on demand or at the end."""

    def __init__(self) -> None:
        self.threads: dict[str, tuple[Runner, threading.Thread]] = {}
        self.errors: list[BaseException] = []

    def start(self, name: str, r: Runner) -> None:
        def run() -> None:
            try:
                r.run()
            except BaseException as exc:  # surfaced by ``check``
                self.errors.append(exc)

        thread = threading.Thread(target=run, daemon=True, name=name)
        thread.start()
        self.threads[name] = (r, thread)

    def stop(self, name: str) -> None:
        r, thread = self.threads.pop(name)
        r.stop()
        thread.join(30)
        assert not thread.is_alive()

    def check(self) -> None:
        assert not self.errors, self.errors


@pytest.fixture
def running() -> Iterator[Running]:
    r = Running()
    yield r
    for name in list(r.threads):
        r.stop(name)


class WebActivityReader:
    """``crm.web_activity`` read as the JDBC sink reads it: UTF-8 keys, JsonConverter envelopes (or tombstones)."""

    def __init__(self, s: Setup) -> None:
        self.reader = TopicReader(s.bootstrap, s.registry, s.topics.web_activity, decode=False)
        self.envelopes: list[dict[str, Any]] = []

    def read(self, timeout: float = 1.0) -> None:
        self.reader.read(until=len(self.reader.records) + 1, timeout=timeout)

    def latest(self) -> dict[str, dict[str, Any] | None]:
        view: dict[str, dict[str, Any] | None] = {}
        for msg, value in self.reader.records:
            key = msg.key().decode()
            if value is None:
                view[key] = None
            else:
                envelope = json.loads(value)
                self.envelopes.append(envelope)
                view[key] = envelope["payload"]
        return view

    def wait(self, want: Callable[[dict[str, dict[str, Any] | None]], bool], running: Running, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not want(self.latest()) and time.monotonic() < deadline:
            running.check()
            self.read()
        assert want(self.latest()), self.latest()

    def close(self) -> None:
        self.reader.close()


def summary(payload: dict[str, Any] | None) -> dict[str, Any] | None:
    """A summary without ``customer_id`` and ``updated_at`` (they are what they are), to compare."""
    if payload is None:
        return None
    return {k: v for k, v in payload.items() if k not in ("customer_id", "updated_at")}


def produce(s: Setup, t: Traffic) -> None:
    topics = s.topics
    produce_avro(s.bootstrap, s.registry, topics.hits_enriched, schema("EnrichedHit"),
                 [(h["visitor_id"], h) for h in t.hits])  # fmt: skip
    produce_avro(s.bootstrap, s.registry, topics.carts_abandoned, schema("CartAbandoned"),
                 [(c["visitor_id"], c) for c in t.carts])  # fmt: skip
    produce_avro(s.bootstrap, s.registry, topics.remarketing_messages, schema("RemarketingMessage"),
                 [(m["customer_id"], m) for m in t.messages])  # fmt: skip


# --- the test ------------------------------------------------------------------------------------------------


def test_summaries_are_exact_connect_json_across_a_restart_and_erasures_publish_tombstones(
    setup: Setup, running: Running
) -> None:
    s, t = setup, setup.topics
    now = int(time.time() * 1000)
    first, second = traffic(range(24), now, 0), traffic(range(24), now + 1, 1)
    out = WebActivityReader(s)
    try:
        produce(s, first)
        running.start("summary", runner(s, CrmActivityProcessor(t, CONFIG), s.app))
        running.start("messages", runner(s, CrmMessagesProcessor(t), s.app + "-messages"))
        want = dict(first.want)
        out.wait(lambda view: {k: summary(v) for k, v in view.items()} == want, running, 90)

        # The contract the sink reads: the schema derived from WebActivity.avsc travels in every record.
        envelope = out.envelopes[-1]
        assert envelope["schema"]["type"] == "struct" and envelope["schema"]["optional"] is False
        fields = {f["field"]: f for f in envelope["schema"]["fields"]}
        assert fields["updated_at"]["name"] == "org.apache.kafka.connect.data.Timestamp"
        assert fields["revenue_30d"]["type"] == "double" and fields["visits_30d"]["type"] == "int32"
        assert all(v is not None and v["updated_at"] >= now for v in out.latest().values())

        # A graceful restart of the summary (state from its changelogs), then more of everything: exact totals.
        running.stop("summary")
        produce(s, second)
        running.start("summary", runner(s, CrmActivityProcessor(t, CONFIG), s.app))
        want = add(first.want, second.want)
        out.wait(lambda view: {k: summary(v) for k, v in view.items()} == want, running, 90)

        # Erasures: a CRM tombstone (c0) and an erasure request (c1) delete the rows: tombstones.
        produce_avro(s.bootstrap, s.registry, t.crm_profiles, schema("CrmProfile"), [("c0", None)])
        request = {"request_id": "r1", "kind": "erasure", "customer_id": "c1", "visitor_id": None,
                   "marketing_consent": None, "requested_at": now}  # fmt: skip
        assert t.privacy_requests is not None
        produce_avro(s.bootstrap, s.registry, t.privacy_requests, schema("PrivacyRequest"), [("c1", request)])
        out.wait(lambda view: view.get("c0", {}) is None and view.get("c1", {}) is None, running, 60)
        # Late records of erased customers do not bring them back; the others still count.
        late = traffic(range(3), now + 2, 2)
        produce(s, late)
        want["c2"] = add({"c2": want["c2"]}, {"c2": late.want["c2"]})["c2"]
        out.wait(lambda view: summary(view["c2"]) == want["c2"], running, 60)
        out.reader.read(until=10**9, timeout=3, idle=2)
        view = out.latest()
        assert view["c0"] is None and view["c1"] is None
        running.check()
    finally:
        out.close()
    dead = TopicReader(s.bootstrap, s.registry, s.dlq, decode=False)
    try:
        assert dead.read(until=1, timeout=2) == []
    finally:
        dead.close()


# --- exactly-once: a SIGKILL mid-stream --------------------------------------------------------------------


def main() -> None:
    """Run the summary processor (the subprocess the second test kills)."""
    parser = argparse.ArgumentParser()
    for name in ("--bootstrap", "--registry", "--app", "--dlq", "--topics"):
        parser.add_argument(name, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    s = Setup(CrmActivityTopics(**json.loads(args.topics)), args.app, args.dlq, args.bootstrap, args.registry)
    r = runner(s, CrmActivityProcessor(s.topics, CONFIG), s.app)
    r.install_signal_handlers()
    r.run()


def committed(bootstrap: str, group: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        tps = consumer.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=10)
        return sum(max(tp.offset, 0) for tp in tps)
    finally:
        consumer.close()


def test_summaries_are_exact_across_a_kill_9_mid_stream(setup: Setup, running: Running, tmp_path: Path) -> None:
    s, t = setup, setup.topics
    log = tmp_path / "summary.log"

    def spawn() -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "tests.integration.test_crm_activity", "--bootstrap", s.bootstrap,
               "--registry", s.registry, "--app", s.app, "--dlq", s.dlq,
               "--topics", json.dumps(dataclasses.asdict(t))]  # fmt: skip
        with open(log, "ab") as out:
            return subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)

    now = int(time.time() * 1000)
    traffic_ = traffic(range(1500), now, 0)
    produce(s, traffic_)
    out = WebActivityReader(s)
    out.read()  # join now, not after the kill
    running.start("messages", runner(s, CrmMessagesProcessor(t), s.app + "-messages"))
    proc = spawn()
    try:
        deadline = time.monotonic() + 60
        while (done := committed(s.bootstrap, s.app, t.hits_enriched)) < len(traffic_.hits) // 4:
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.02)
        proc.kill()  # its open transaction (hits, deltas, state, summaries) is aborted
        proc.wait(10)
        assert done < len(traffic_.hits), "the instance read everything before the kill: make the traffic bigger"
        proc = spawn()  # the same instance id: fences the dead one's transactional id
        want = dict(traffic_.want)
        out.wait(lambda view: {k: summary(v) for k, v in view.items()} == want, running, 120)
        out.reader.read(until=10**9, timeout=3, idle=2)  # and nothing more comes
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        out.close()
    assert {k: summary(v) for k, v in out.latest().items()} == want  # neither lost nor counted twice
    for customer in want:  # read_committed: a summary seen is never taken back (the aborted ones never seen)
        seen = [json.loads(v)["payload"] for m, v in out.reader.records if m.key().decode() == customer]
        visits = [p["visits_30d"] for p in seen]
        assert visits == sorted(visits), customer
    assert "restored" in log.read_text()


if __name__ == "__main__":
    main()
