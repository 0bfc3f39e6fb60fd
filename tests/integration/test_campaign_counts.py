"""The live campaign counter on the real broker and registry: exact counts across a SIGKILL and a second instance.

The processor runs as a subprocess (this module is its entry point, so the
test can kill it with SIGKILL):

    python -m tests.integration.test_campaign_counts --bootstrap B --registry R --app A \
        --hits H --deltas D --live L --dlq Q [--instance I]
"""

from __future__ import annotations

import argparse
import logging
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from passerelle.schemas.catalog import load_catalog
from passerelle.streams.campaign_counts.processor import CampaignCountsProcessor, CampaignCountsTopics
from passerelle.streams.campaign_counts.rules import CampaignCounter, CampaignCountsConfig
from passerelle.streams.runtime import Runner, RunnerConfig
from tests.integration.kafka_helpers import TopicReader, create_topics, produce_avro
from tests.records import enriched_hit

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
CATALOG = load_catalog()
PARTITIONS = 2  # hits and deltas: co-partitioned
CONFIG = CampaignCountsConfig(emit_interval_ms=200)
CAMPAIGNS = ("EREC-1", "DISP-9", "AFF-3", None)  # None: a visit from no declared campaign


# --- the processor as a subprocess ------------------------------------------------------------------------


def build(args: argparse.Namespace) -> Runner:
    topics = CampaignCountsTopics(hits_enriched=args.hits, deltas=args.deltas, live=args.live)
    counts = CATALOG.schema_text("CampaignCounts")
    return Runner(
        CampaignCountsProcessor(topics, CONFIG),
        RunnerConfig(
            app_id=args.app,
            bootstrap_servers=args.bootstrap,
            schema_registry_url=args.registry,
            input_schemas={topics.hits_enriched: CATALOG.schema_text("EnrichedHit"), topics.deltas: counts},
            output_schemas={topics.deltas: counts, topics.live: counts},
            instance_id=args.instance,
            dead_letter_topic=args.dlq,
            static_membership=True,
        ),
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("--bootstrap", "--registry", "--app", "--hits", "--deltas", "--live", "--dlq"):
        parser.add_argument(name, required=True)
    parser.add_argument("--instance", default="0")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    runner = build(args)
    runner.install_signal_handlers()
    runner.run()


# --- traffic and what it must count -----------------------------------------------------------------------


def enriched(visitor: str, n: int, visit: int, campaign: str | None, at: int,
             order: tuple[str, float] | None = None) -> dict[str, Any]:  # fmt: skip
    """An ``EnrichedHit`` as the enrichment writes it."""
    return enriched_hit(visitor, at, event_id=f"{visitor}-{n}", visit=visit, campaign=campaign, order=order)


def traffic(first: int, visitors: int, at: int) -> list[dict[str, Any]]:
    """Visitors ``first``.. ``first + visitors``: one or two visits of three page views each; every fifth
    visitor orders in their last visit, and reloads the confirmation page (the same order id twice)."""
    hits = []
    for i in range(first, first + visitors):
        visitor, campaign, n = f"v{i}", CAMPAIGNS[i % len(CAMPAIGNS)], 0
        for visit in range(1, 2 + i % 2):
            for _ in range(3):
                hits.append(enriched(visitor, n := n + 1, visit, campaign, at + n))
        if i % 5 == 0:
            for _ in range(2):
                hits.append(enriched(visitor, n := n + 1, visit, campaign, at + n, (f"O-{i}", float(10 + i % 7))))
    return hits


def expected(hits: list[dict[str, Any]]) -> dict[str, tuple[int, int, float]]:
    """Counted independently of the rules: distinct visits and order ids per campaign and day."""
    rules = CampaignCounter(CONFIG)
    visits: dict[str, set[str]] = defaultdict(set)
    orders: dict[str, dict[str, float]] = defaultdict(dict)
    for h in hits:
        campaign = h["declared_campaign"]
        if campaign is None:
            continue
        key = rules.key(campaign["key"], rules.window(h["event_time"])[0])
        visits[key].add(h["visit_id"])
        if h["order"]:
            orders[key][h["order"]["order_id"]] = h["order"]["revenue"]
    return {k: (len(visits[k]), len(orders[k]), round(sum(orders[k].values()), 4)) for k in visits}


def committed(bootstrap: str, group: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        tps = consumer.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=10)
        return sum(max(tp.offset, 0) for tp in tps)
    finally:
        consumer.close()


def keyed(reader: TopicReader) -> list[tuple[str, dict[str, Any]]]:
    """What the reader read, keys decoded (they are Avro strings, in the registry's wire format)."""
    return [(reader.decoder.decode(msg.key()), value) for msg, value in reader.records]


def latest(reader: TopicReader) -> dict[str, tuple[int, int, float]]:
    """The compacted view: the last record per key, as (visits, orders, EUR revenue)."""
    view = dict(keyed(reader))
    return {key: (v["visits"], v["orders"], v["revenue"].get("EUR", 0.0)) for key, v in view.items()}


# --- the test ------------------------------------------------------------------------------------------------


def test_counts_are_exact_across_a_kill_9_mid_stream_and_a_second_instance(
    unique: Callable[[str], str], kafka_bootstrap: str, schema_registry_url: str, tmp_path: Path
) -> None:
    topics = CampaignCountsTopics(hits_enriched=unique("hits.enriched"), deltas=unique("campaigns.live.deltas"),
                                  live=unique("campaigns.live"))  # fmt: skip
    app, dlq = unique("campaign-counts"), unique("dlq")
    create_topics(kafka_bootstrap, {topics.hits_enriched: PARTITIONS, topics.deltas: PARTITIONS, dlq: 1})
    create_topics(kafka_bootstrap, {topics.live: 1}, {"cleanup.policy": "compact"})
    schema = CATALOG.schema_text("EnrichedHit")

    def produce(hits: list[dict[str, Any]]) -> None:
        produce_avro(kafka_bootstrap, schema_registry_url, topics.hits_enriched, schema,
                     [(h["visitor_id"], h) for h in hits])  # fmt: skip

    def spawn(instance: str) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "tests.integration.test_campaign_counts", "--bootstrap", kafka_bootstrap,
               "--registry", schema_registry_url, "--app", app, "--hits", topics.hits_enriched,
               "--deltas", topics.deltas, "--live", topics.live, "--dlq", dlq, "--instance", instance]  # fmt: skip
        with open(tmp_path / f"counts-{instance}.log", "ab") as log:
            return subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)

    def logs() -> str:
        return "\n".join(p.read_text()[-3000:] for p in sorted(tmp_path.glob("counts-*.log")))

    now = int(time.time() * 1000)
    first, second = traffic(0, 4000, now), traffic(4000, 2000, now)
    produce(first)
    live = TopicReader(kafka_bootstrap, schema_registry_url, topics.live)
    live.read(until=1, timeout=1)  # join now, not after the kill
    procs = {"a": spawn("a")}
    try:
        deadline = time.monotonic() + 60
        while (done := committed(kafka_bootstrap, app, topics.hits_enriched)) < len(first) // 4:
            assert time.monotonic() < deadline and procs["a"].poll() is None, logs()
            time.sleep(0.02)
        procs["a"].kill()  # SIGKILL mid-stream: its open transaction (hits, deltas, counters) is aborted
        procs["a"].wait(10)
        assert done < len(first), "the instance read everything before the kill: make the traffic bigger"
        procs["a"] = spawn("a")  # the same instance id: fences the dead one's transactional id
        procs["b"] = spawn("b")  # and a second instance: the counters of a campaign move between them
        produce(second)
        want = expected(first + second)
        assert {key.split("@")[0] for key in want} == {"EREC-1", "DISP-9", "AFF-3"}
        deadline = time.monotonic() + 90
        while latest(live) != want and time.monotonic() < deadline:
            assert all(p.poll() is None for p in procs.values()), logs()
            live.read(until=len(live.records) + 1, timeout=1)
        live.read(until=10**9, timeout=3, idle=2)  # and nothing more comes
    finally:
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            proc.wait(30)
        live.close()
    assert latest(live) == want, logs()  # neither lost nor counted twice
    for key in want:  # read_committed: a count seen is never taken back (the aborted one was never seen)
        sequence = [(v["visits"], v["orders"]) for k, v in keyed(live) if k == key]
        assert sequence == sorted(sequence), key
    assert not any(v["final"] for _, v in keyed(live))
    deltas = TopicReader(kafka_bootstrap, schema_registry_url, topics.deltas)
    try:
        deltas.read(until=10**9, timeout=30, idle=3)
    finally:
        deltas.close()
    summed: Counter[str] = Counter()
    for key, value in keyed(deltas):
        summed[key] += value["visits"]
    assert dict(summed) == {key: visits for key, (visits, _, _) in want.items()}  # one delta per visit, no repeat
    assert "restored" in logs()


if __name__ == "__main__":
    main()
