"""Post-view on the real broker and registry: every post-view exactly once across a SIGKILL mid-stream.

The processor runs as a subprocess (this module is its entry point, so the
test can kill it with SIGKILL):

    python -m tests.integration.test_postview --bootstrap B --registry R --app A \
        --impressions I --hits H --postview P --crm C --dlq Q [--instance N]

Impressions are produced, and processed, before the hits: which of two
topics a consumer reads first is not defined, and an impression processed
after its visit is not credited to it (by design), so the expected set is
only deterministic when the impressions are in first.
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
from passerelle.streams.postview.processor import PostViewProcessor, PostViewTopics
from passerelle.streams.runtime import Runner, RunnerConfig
from tests.integration.kafka_helpers import TopicReader, create_topics, produce_avro
from tests.records import enriched_hit

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
CATALOG = load_catalog()
PARTITIONS = 2  # impressions, hits and the output: co-partitioned
HOUR = 3_600_000
WINDOW = 24 * HOUR
SITE = "shop.example"


# --- the processor as a subprocess ------------------------------------------------------------------------


def build(args: argparse.Namespace) -> Runner:
    topics = PostViewTopics(impressions=args.impressions, hits_enriched=args.hits, postview=args.postview,
                            crm_profiles=args.crm, privacy_requests=None)  # fmt: skip
    return Runner(
        PostViewProcessor(topics),
        RunnerConfig(
            app_id=args.app,
            bootstrap_servers=args.bootstrap,
            schema_registry_url=args.registry,
            input_schemas={
                topics.impressions: CATALOG.schema_text("AdImpression"),
                topics.hits_enriched: CATALOG.schema_text("EnrichedHit"),
            },
            output_schemas={topics.postview: CATALOG.schema_text("PostView")},
            instance_id=args.instance,
            dead_letter_topic=args.dlq,
            static_membership=True,
        ),
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("--bootstrap", "--registry", "--app", "--impressions", "--hits", "--postview", "--crm", "--dlq"):
        parser.add_argument(name, required=True)
    parser.add_argument("--instance", default="0")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    runner = build(args)
    runner.install_signal_handlers()
    runner.run()


# --- traffic and what it must credit ------------------------------------------------------------------------


def impression(visitor: str, imp_id: str, campaign: str, at: int, site: str = SITE) -> dict[str, Any]:
    return {"impression_id": imp_id, "visitor_id": visitor, "site": site, "campaign_key": campaign,
            "creative": None, "placement": None, "ad_server": "ads.example", "event_time": at}  # fmt: skip


def enriched(visitor: str, n: int, visit: int, at: int, order: str | None = None) -> dict[str, Any]:
    """An ``EnrichedHit`` as the enrichment writes it (a direct visit: post-view is credited whatever the source)."""
    return enriched_hit(visitor, at, event_id=f"{visitor}-{n}", visit=visit, site=SITE,
                        order=(order, 25.5) if order else None)  # fmt: skip


def traffic(first: int, visitors: int, now: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Impressions and hits of visitors ``first``..: one or two visits of three page views; every fifth
    visitor orders in their last visit and reloads the confirmation page (the same order id twice)."""
    imps, hits = [], []
    for i in range(first, first + visitors):
        v, kind = f"v{i}", i % 6
        if kind == 1:
            imps.append(impression(v, f"{v}-a", "DISP-A", now - 2 * HOUR))
        elif kind == 2:  # two campaigns: the latest wins
            imps += [impression(v, f"{v}-a", "DISP-A", now - 3 * HOUR), impression(v, f"{v}-b", "DISP-B", now - HOUR)]
        elif kind == 3:  # outside the window
            imps.append(impression(v, f"{v}-a", "DISP-A", now - WINDOW - 5 * 60_000))
        elif kind == 4:  # another site's banner; one served after the visit started, before its order (if any)
            imps += [impression(v, f"{v}-o", "DISP-A", now - HOUR, site="other.example"),
                     impression(v, f"{v}-c", "DISP-C", now + 2)]  # fmt: skip
        elif kind == 5:  # delivered twice by the ad server
            imps += [impression(v, f"{v}-b", "DISP-B", now - 5 * HOUR)] * 2
        n = 0
        for visit in range(1, 2 + i % 2):
            at = now + (visit - 1) * 60_000
            for _ in range(3):
                hits.append(enriched(v, n := n + 1, visit, at + n))
        if i % 5 == 0:
            for _ in range(2):
                hits.append(enriched(v, n := n + 1, visit, at + n, order=f"O-{i}"))
    return imps, hits


def expected(imps: list[dict[str, Any]], hits: list[dict[str, Any]]) -> dict[str, str]:
    """postview id -> impression id, computed independently of the rules: the latest impression of the same
    site at most the window before each visit's first hit and each order id's first hit."""
    by_visitor: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for m in imps:
        by_visitor[m["visitor_id"]][m["impression_id"]] = m
    visits, orders, want = set(), set(), {}
    for h in hits:
        events = []
        if h["visit_id"] not in visits:
            visits.add(h["visit_id"])
            events.append(f"visit:{h['visit_id']}")
        if h["order"] and h["order"]["order_id"] not in orders:
            orders.add(h["order"]["order_id"])
            events.append(f"order:{SITE}:{h['order']['order_id']}")
        candidates = [m for m in by_visitor[h["visitor_id"]].values()
                      if m["site"] == h["site"] and 0 < h["event_time"] - m["event_time"] <= WINDOW]  # fmt: skip
        if candidates:
            best = max(candidates, key=lambda m: m["event_time"])
            for event in events:
                want[f"{event}:{best['campaign_key']}"] = best["impression_id"]
    return want


def committed(bootstrap: str, group: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        tps = consumer.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=10)
        return sum(max(tp.offset, 0) for tp in tps)
    finally:
        consumer.close()


# --- the test ------------------------------------------------------------------------------------------------


def test_every_postview_exactly_once_across_a_kill_9_mid_stream(
    unique: Callable[[str], str], kafka_bootstrap: str, schema_registry_url: str, tmp_path: Path
) -> None:
    topics = PostViewTopics(impressions=unique("ads.impressions"), hits_enriched=unique("hits.enriched"),
                            postview=unique("ads.postview"), crm_profiles=unique("crm.profiles"),
                            privacy_requests=None)  # fmt: skip
    app, dlq = unique("postview"), unique("dlq")
    create_topics(kafka_bootstrap, {topics.impressions: PARTITIONS, topics.hits_enriched: PARTITIONS,
                                    topics.postview: PARTITIONS, dlq: 1})  # fmt: skip
    assert topics.crm_profiles is not None
    create_topics(kafka_bootstrap, {topics.crm_profiles: 1}, {"cleanup.policy": "compact"})

    def produce(topic: str, schema: str, records: list[dict[str, Any]]) -> None:
        produce_avro(kafka_bootstrap, schema_registry_url, topic, CATALOG.schema_text(schema),
                     [(r["visitor_id"], r) for r in records])  # fmt: skip

    def spawn(instance: str) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "tests.integration.test_postview", "--bootstrap", kafka_bootstrap,
               "--registry", schema_registry_url, "--app", app, "--impressions", topics.impressions,
               "--hits", topics.hits_enriched, "--postview", topics.postview, "--crm", topics.crm_profiles or "",
               "--dlq", dlq, "--instance", instance]  # fmt: skip
        with open(tmp_path / f"postview-{instance}.log", "ab") as log:
            return subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)

    def logs() -> str:
        return "\n".join(p.read_text()[-3000:] for p in sorted(tmp_path.glob("postview-*.log")))

    def wait_committed(topic: str, count: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while (done := committed(kafka_bootstrap, app, topic)) < count:
            assert time.monotonic() < deadline and proc.poll() is None, logs()
            time.sleep(0.02)
        return done

    now = int(time.time() * 1000)
    imps1, first = traffic(0, 4000, now)
    imps2, second = traffic(4000, 1500, now)
    produce(topics.impressions, "AdImpression", imps1 + imps2)
    output = TopicReader(kafka_bootstrap, schema_registry_url, topics.postview)
    output.read(until=1, timeout=1)  # join now, not after the kill
    proc = spawn("a")
    try:
        wait_committed(topics.impressions, len(imps1 + imps2), proc)  # every impression in before any hit
        produce(topics.hits_enriched, "EnrichedHit", first)
        done = wait_committed(topics.hits_enriched, len(first) // 4, proc)
        proc.kill()  # SIGKILL mid-stream: its open transaction (post-views, visitor state, offsets) is aborted
        proc.wait(10)
        assert done < len(first), "the instance read everything before the kill: make the traffic bigger"
        proc = spawn("a")  # the same instance id: fences the dead one's transactional id
        produce(topics.hits_enriched, "EnrichedHit", second)
        want = expected(imps1 + imps2, first + second)
        deadline = time.monotonic() + 60
        while len(output.records) < len(want) and time.monotonic() < deadline:
            assert proc.poll() is None, logs()
            output.read(until=len(want), timeout=1)
        output.read(until=10**9, timeout=3, idle=2)  # and nothing more comes
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        output.close()
    ids = Counter(value["postview_id"] for _, value in output.records)
    assert [i for i, n in ids.items() if n > 1] == []  # no duplicate
    got = {value["postview_id"]: value["impression_id"] for _, value in output.records}
    assert sorted(set(want) - set(got)) == [] and sorted(set(got) - set(want)) == [], logs()  # none missing, none extra
    assert got == want  # and each credited to the right impression
    kinds = Counter(value["kind"] for _, value in output.records)
    assert kinds["visit"] > 0 and kinds["order"] > 0
    assert {value["campaign_key"] for _, value in output.records} == {"DISP-A", "DISP-B", "DISP-C"}
    assert "restored" in logs()


if __name__ == "__main__":
    main()
