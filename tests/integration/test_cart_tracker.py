"""The cart tracker on the real broker and registry, with a compressed delay: abandonment, orders, crashes."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from passerelle.schemas.catalog import load_catalog
from passerelle.streams.carts.processor import CartTopics, CartTrackerProcessor
from passerelle.streams.carts.tracker import CartConfig
from passerelle.streams.runtime import Runner, RunnerConfig
from tests.integration.kafka_helpers import TopicReader, create_topics, produce_avro

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
CATALOG = load_catalog()
PARTITIONS = 2  # each empty partition costs ~1.5 s of changelog restore at start-up


def schema(stem: str) -> str:
    return CATALOG.schema_text(stem)


def product(pid: str, price: float) -> dict[str, Any]:
    return {"id": pid, "name": f"Product {pid}", "price": price, "currency": "EUR", "quantity": 1,
            "category": None, "url": f"https://shop.example/p/{pid}", "image_url": None}  # fmt: skip


def enriched(n: int, visitor: str, type_: str, prod: dict[str, Any] | None = None,
             customer: str | None = None) -> dict[str, Any]:  # fmt: skip
    """An ``EnrichedHit`` as the enrichment processor writes it; event time is now."""
    order = {"order_id": f"o{n}", "revenue": 10.0, "currency": "EUR", "lines": []} if type_ == "order" else None
    now = int(time.time() * 1000)
    return {
        "event_id": f"e{n}", "site": "shop.example", "visitor_id": visitor, "customer_id": customer,
        "event_time": now, "type": type_, "url": "https://shop.example/", "referrer": None, "page": None,
        "campaign_params": {}, "product": prod, "order": order,
        "consent": {"analytics": True, "marketing": True}, "user_agent": None, "ip_truncated": "203.0.113.0",
        "visit_id": f"{visitor}:1", "visit_number": 1,
        "traffic_source": {"medium": "direct", "source": None, "campaign": None, "term": None, "content": None,
                           "click_id": None, "network": None},
        "declared_campaign": None, "campaign_undeclared": False,
        "crm": {"gender": "F", "age_band": "25-34", "csp": "cadre", "loyalty_tier": None,
                "marketing_consent": True} if customer else None,
        "enriched_at": now,
    }  # fmt: skip


@pytest.fixture
def topics(unique: Callable[[str], str], kafka_bootstrap: str) -> CartTopics:
    t = CartTopics(
        hits_enriched=unique("hits.enriched"), carts_abandoned=unique("carts.abandoned"),
        crm_profiles=unique("crm.profiles"), privacy_requests=unique("privacy.requests"),
    )  # fmt: skip
    assert t.privacy_requests is not None
    create_topics(kafka_bootstrap, {t.hits_enriched: PARTITIONS, t.carts_abandoned: PARTITIONS,
                                    t.privacy_requests: 1, unique("dlq"): 1})  # fmt: skip
    create_topics(kafka_bootstrap, {t.crm_profiles: 1}, {"cleanup.policy": "compact"})
    return t


def produce_hits(bootstrap: str, registry: str, topic: str, hits: list[dict[str, Any]]) -> None:
    produce_avro(bootstrap, registry, topic, schema("EnrichedHit"), [(h["visitor_id"], h) for h in hits])


@pytest.fixture
def running(
    topics: CartTopics, kafka_bootstrap: str, schema_registry_url: str, unique: Callable[[str], str]
) -> Iterator[Callable[[int], Runner]]:
    started: list[tuple[Runner, threading.Thread]] = []

    def start(abandon_after_ms: int) -> Runner:
        processor = CartTrackerProcessor(topics, CartConfig(abandon_after_ms=abandon_after_ms))
        runner = Runner(processor, RunnerConfig(
            app_id=unique("carts"), bootstrap_servers=kafka_bootstrap, schema_registry_url=schema_registry_url,
            output_schemas={topics.carts_abandoned: schema("CartAbandoned")}, dead_letter_topic=unique("dlq"),
        ))  # fmt: skip
        thread = threading.Thread(target=runner.run, daemon=True)
        thread.start()
        started.append((runner, thread))
        return runner

    yield start
    for runner, thread in started:
        runner.stop()
        thread.join(30)


def test_one_abandonment_for_the_visitor_who_left_none_for_order_or_removal(
    topics: CartTopics, running: Callable[[int], Runner], kafka_bootstrap: str, schema_registry_url: str
) -> None:
    profile = {"customer_id": "C1", "email": "c1@example.com", "gender": "F", "birth_year": None,
               "age_band": "25-34", "csp": "cadre", "loyalty_tier": None, "marketing_consent": True,
               "updated_at": int(time.time() * 1000)}  # fmt: skip
    produce_avro(kafka_bootstrap, schema_registry_url, topics.crm_profiles, schema("CrmProfile"), [("C1", profile)])
    out = TopicReader(kafka_bootstrap, schema_registry_url, topics.carts_abandoned)
    running(2000)
    produce_hits(kafka_bootstrap, schema_registry_url, topics.hits_enriched, [
        enriched(1, "leaver", "product_view", product("A", 49.5), customer="C1"),
        enriched(2, "leaver", "cart_add", product("A", 49.5), customer="C1"),
        enriched(3, "buyer", "cart_add", product("B", 10.0)),
        enriched(4, "remover", "cart_add", product("C", 5.0)),
        enriched(5, "buyer", "order"),
        enriched(6, "remover", "cart_remove", product("C", 5.0)),
    ])  # fmt: skip
    first = out.read(until=1, timeout=30)
    assert len(first) == 1
    assert len(out.read(until=2, timeout=3)) == 1  # the others' deadlines have passed too: still only one
    msg, event = first[0]
    assert msg.key() is not None and event["visitor_id"] == "leaver"
    assert [(line["product_id"], line["quantity"]) for line in event["lines"]] == [("A", 1)]
    assert (event["value"], event["currency"]) == (49.5, "EUR")
    assert [p["id"] for p in event["viewed_products"]] == ["A"]
    assert (event["customer_id"], event["email"]) == ("C1", "c1@example.com")
    assert event["crm"]["csp"] == "cadre" and event["marketing_consent"] is True

    produce_hits(kafka_bootstrap, schema_registry_url, topics.hits_enriched, [enriched(7, "leaver", "page_view")])
    both = out.read(until=2, timeout=30)
    assert len(both) == 2
    second = both[1][1]
    assert second["visitor_id"] == "leaver" and second["episode_id"] != event["episode_id"]
    assert second["event_id"] != event["event_id"]
    assert len(out.read(until=3, timeout=3)) == 2
    out.close()


def committed(bootstrap: str, group: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        tps = consumer.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=10)
        return sum(max(tp.offset, 0) for tp in tps)
    finally:
        consumer.close()


def spawn(topics: CartTopics, app: str, dlq: str, bootstrap: str, registry: str, log: Path,
          delay_ms: int) -> subprocess.Popen[bytes]:  # fmt: skip
    cmd = [
        sys.executable, "-m", "tests.integration.carts_app", "--bootstrap", bootstrap, "--registry", registry,
        "--app", app, "--hits", topics.hits_enriched, "--out", topics.carts_abandoned,
        "--crm", topics.crm_profiles, "--dlq", dlq, "--abandon-after-ms", str(delay_ms),
    ]  # fmt: skip
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


def test_kill_9_between_commit_and_deadline_still_one_abandonment_per_cart(
    topics: CartTopics, kafka_bootstrap: str, schema_registry_url: str, unique: Callable[[str], str],
    tmp_path: Path,
) -> None:  # fmt: skip
    delay_ms = 6000
    app, dlq, log = unique("carts"), unique("dlq"), tmp_path / "carts.log"
    leavers = [f"leaver{i}" for i in range(6)]
    hits = [enriched(i, v, "cart_add", product(f"P{i}", 10.0 + i)) for i, v in enumerate(leavers)]
    hits += [enriched(10, "buyer", "cart_add", product("B", 10.0)), enriched(11, "buyer", "order")]
    produce_hits(kafka_bootstrap, schema_registry_url, topics.hits_enriched, hits)
    out = TopicReader(kafka_bootstrap, schema_registry_url, topics.carts_abandoned)
    out.read(until=1, timeout=1)  # join the group now, not after the kill
    proc = spawn(topics, app, dlq, kafka_bootstrap, schema_registry_url, log, delay_ms)
    try:
        deadline = time.monotonic() + 30
        while committed(kafka_bootstrap, app, topics.hits_enriched) < len(hits):  # carts and offsets committed
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.1)
        proc.kill()
        proc.wait(10)
        assert out.read(until=1, timeout=1) == []  # nothing was due before the crash
        proc = spawn(topics, app, dlq, kafka_bootstrap, schema_registry_url, log, delay_ms)
        out.read(until=len(leavers), timeout=40)  # the restored timers fire
        events = [v for _, v in out.read(until=len(leavers) + 1, timeout=4)]  # and nothing more
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        out.close()
    assert sorted(e["visitor_id"] for e in events) == leavers, log.read_text()[-3000:]
    assert len({e["event_id"] for e in events}) == len(leavers)
    assert "restored" in log.read_text()
