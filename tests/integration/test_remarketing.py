"""The remarketing sequencer as a real faust worker subprocess, on the real broker and registry.

The worker is ``passerelle remarketing``'s code path (settings from ``PASSERELLE_*`` variables, through
``remarketing_config``) on topics unique to each test (``tests/integration/remarketing_app.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import OffsetSpec

from passerelle.deploy.local.stack import free_port
from passerelle.schemas.catalog import load_catalog
from passerelle.schemas.clients import Connection, admin_client
from passerelle.streams.runtime.deadletter import header_dict
from tests.integration.kafka_helpers import TopicReader, create_topics, produce_avro

pytestmark = pytest.mark.integration
CATALOG = load_catalog()
ROOT = Path(__file__).resolve().parents[2]
FOLLOWUP_SECONDS = 8
READY_LINE = "crm.profiles read to where it ended at start"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def profile(customer: str) -> dict[str, Any]:
    return {
        "customer_id": customer, "email": f"{customer.lower()}@example.com", "gender": None, "birth_year": None,
        "age_band": None, "csp": None, "loyalty_tier": None, "marketing_consent": True, "updated_at": now_ms(),
    }  # fmt: skip


def cart(customer: str, visitor: str) -> dict[str, Any]:
    products = [{"id": f"SKU-{n}", "name": f"P{n}", "price": float(n), "currency": "EUR", "quantity": 1,
                 "category": None, "url": None, "image_url": None} for n in range(1, 9)]  # fmt: skip
    return {
        "event_id": f"cart-{customer}", "visitor_id": visitor, "site": "shop.example", "customer_id": customer,
        "email": None, "episode_id": f"ep-{customer}",
        "lines": [{"product_id": "SKU-1", "name": "P1", "price": 1.0, "quantity": 3, "currency": "EUR"}],
        "value": 3.0, "currency": "EUR", "viewed_products": products, "crm": None, "marketing_consent": False,
        "site_marketing_consent": True,  # the site said yes; the CRM's yes comes from the profile, not the hits
        "last_activity_at": now_ms() - 60_000, "detected_at": now_ms(),
    }  # fmt: skip


def hit(n: int, customer: str, visitor: str, type_: str) -> dict[str, Any]:
    order = {"order_id": f"O-{n}", "revenue": 3.0, "currency": "EUR", "lines": []} if type_ == "order" else None
    return {
        "event_id": f"h{n}", "site": "shop.example", "visitor_id": visitor, "customer_id": customer,
        "event_time": now_ms(), "type": type_, "url": "https://shop.example/", "referrer": None, "page": None,
        "campaign_params": {}, "product": None, "order": order, "consent": {"analytics": True, "marketing": True},
        "user_agent": None, "ip_truncated": None, "visit_id": "visit-1", "visit_number": 1,
        "traffic_source": {"medium": "email", "source": None, "campaign": None, "term": None, "content": None,
                           "click_id": None, "network": None},
        "declared_campaign": None, "campaign_undeclared": False, "crm": None, "enriched_at": now_ms(),
    }  # fmt: skip


@pytest.fixture
def names(unique: Callable[[str], str], kafka_bootstrap: str) -> dict[str, str]:
    t = {
        "carts": unique("carts.abandoned"), "hits": unique("hits.enriched"), "privacy": unique("privacy.requests"),
        "crm": unique("crm.profiles"), "messages": unique("remarketing.messages"), "dlq": unique("dlq"),
        "links": unique("identity.links"), "app_id": unique("remarketing"),
    }  # fmt: skip
    create_topics(kafka_bootstrap, {t["carts"]: 3, t["hits"]: 3, t["privacy"]: 1, t["messages"]: 3, t["dlq"]: 1})
    create_topics(kafka_bootstrap, {t["crm"]: 2, t["links"]: 3}, {"cleanup.policy": "compact"})
    return t


class Worker:
    """Starts the sequencer as a subprocess; ``procs`` are killed at the end of the test."""

    def __init__(self, names: dict[str, str], bootstrap: str, registry: str, tmp_path: Path) -> None:
        self.names, self.tmp_path = names, tmp_path
        self.procs: list[subprocess.Popen[bytes]] = []
        self.metrics_port = free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PASSERELLE_")}
        self.env.update(
            PASSERELLE_BOOTSTRAP_SERVERS=bootstrap, PASSERELLE_SCHEMA_REGISTRY_URL=registry,
            PASSERELLE_STATE_DIR=str(tmp_path / "state"), PASSERELLE_DEAD_LETTER_TOPIC=names["dlq"],
            PASSERELLE_REMARKETING_FOLLOWUP_HOURS=str(FOLLOWUP_SECONDS / 3600),
            PASSERELLE_REMARKETING_TICK_SECONDS="0.5", PASSERELLE_METRICS_PORT=str(self.metrics_port),
            PASSERELLE_PROCESSING_GUARANTEE="at_least_once", PASSERELLE_INSTANCE_ID="it",
        )  # fmt: skip

    def start(self) -> float:
        """Start a worker; returns how long it took until the CRM profiles present at start were read."""
        began = time.monotonic()
        log = self.tmp_path / f"remarketing-{len(self.procs)}.log"
        n = self.names
        topics = {"carts_abandoned": n["carts"], "hits_enriched": n["hits"], "privacy_requests": n["privacy"],
                  "crm_profiles": n["crm"], "remarketing_messages": n["messages"],
                  "identity_links": n["links"]}  # fmt: skip
        args = [sys.executable, "-m", "tests.integration.remarketing_app", "--app-id", n["app_id"],
                "--topics", json.dumps(topics), "--session-timeout-ms", "6000"]  # fmt: skip
        with open(log, "ab") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=self.env)
        self.procs.append(proc)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"worker exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
            if READY_LINE in log.read_text(errors="replace"):
                return time.monotonic() - began
            time.sleep(0.1)
        raise AssertionError(f"worker not ready after 90 s:\n{log.read_text()[-4000:]}")

    def metrics(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


@pytest.fixture
def worker(names: dict[str, str], kafka_bootstrap: str, schema_registry_url: str, tmp_path: Path) -> Iterator[Worker]:
    w = Worker(names, kafka_bootstrap, schema_registry_url, tmp_path)
    yield w
    w.stop()


def wait_committed(bootstrap: str, group: str, topics: list[str], timeout: float = 30) -> None:
    """Until the group has committed every record of ``topics``: the state those records wrote is flushed."""
    admin = admin_client(Connection.plain(bootstrap))
    meta = admin.list_topics(timeout=10)
    tps = [TopicPartition(t, p) for t in topics for p in meta.topics[t].partitions]
    highs = {(tp.topic, tp.partition): f.result(10).offset
             for tp, f in admin.list_offsets({tp: OffsetSpec.latest() for tp in tps}).items()}  # fmt: skip
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group, tps)])[group].result(10)
        committed = {(tp.topic, tp.partition): tp.offset for tp in result.topic_partitions}
        if all(committed.get(w, -1) >= high for w, high in highs.items() if high > 0):
            return
        time.sleep(0.2)
    raise AssertionError(f"group {group} did not commit {topics} within {timeout} s: {committed} < {highs}")


def test_step_1_then_step_2_and_an_order_stops_the_sequence(
    names: dict[str, str], worker: Worker, kafka_bootstrap: str, schema_registry_url: str
) -> None:
    def produce(stem: str, topic: str, records: list[tuple[str, Any]], raw: Any = ()) -> None:
        produce_avro(kafka_bootstrap, schema_registry_url, names[topic], CATALOG.schema_text(stem), records, raw)

    # The carts are on their topic before the worker starts, beside the profiles they need (the email comes from
    # the CRM): the worker must read the profiles first, whatever order the two topics are fetched in.
    produce("CrmProfile", "crm", [("C1", profile("C1")), ("C2", profile("C2")), ("C4", profile("C4"))])
    produce("CartAbandoned", "carts", [("v1", cart("C1", "v1")), ("v2", cart("C2", "v2")), ("v4", cart("C4", "v4"))],
            raw=[(b"v9", b"\x00\x00\x00\x00\x01 not an abandoned cart")])  # fmt: skip
    produce("IdentityLink", "links", [("v4", {"visitor_id": "v4", "customer_id": "C4", "site": "shop.example",
                                              "linked_at": now_ms(), "source": "identify"})])  # fmt: skip
    startup = worker.start()
    print(f"sequencer ready (profiles read) in {startup:.1f} s")

    messages = TopicReader(kafka_bootstrap, schema_registry_url, names["messages"])
    first = messages.read(until=3, timeout=30)
    steps_1 = {v["customer_id"]: v for _, v in first}
    assert set(steps_1) == {"C1", "C2", "C4"} and all(v["step"] == 1 for v in steps_1.values())
    assert steps_1["C1"]["email"] == "c1@example.com"  # from the CRM profile table
    assert [p["id"] for p in steps_1["C1"]["products"]] == [f"SKU-{n}" for n in range(1, 7)]
    assert steps_1["C1"]["promotion"] is None and steps_1["C1"]["lines"][0]["quantity"] == 3
    assert [m.key() for m, _ in first] != [None, None]
    sent_1 = time.monotonic()

    # C2 orders after step 1; a page view on the same topic is filtered out without consequence
    produce("EnrichedHit", "hits", [("v2", hit(1, "C2", "v2", "page_view")), ("v2", hit(2, "C2", "v2", "order"))])
    # C4 asks for erasure naming only a visitor id: found through identity.links, C4's sequence is gone
    produce("PrivacyRequest", "privacy", [("v4", {"request_id": "r-4", "kind": "erasure", "customer_id": None,
                                                  "visitor_id": "v4", "marketing_consent": None,
                                                  "requested_at": now_ms()})])  # fmt: skip

    later = messages.read(until=4, timeout=FOLLOWUP_SECONDS + 20)
    assert len(later) == 4, [v for _, v in later]
    step_2 = later[3][1]
    assert time.monotonic() - sent_1 >= FOLLOWUP_SECONDS - 2  # not before the delay (less the reading slack)
    assert step_2["customer_id"] == "C1" and step_2["step"] == 2
    assert step_2["sequence_id"] == steps_1["C1"]["sequence_id"]
    assert step_2["message_id"] != steps_1["C1"]["message_id"]
    assert step_2["promotion"] is not None and step_2["promotion"]["code"]
    assert step_2["email"] == "c1@example.com"

    quiet = messages.read(until=5, timeout=4, idle=3)  # C2 ordered, C4 erased: no step 2 for them, nothing repeated
    assert sorted((v["customer_id"], v["step"]) for _, v in quiet) == [("C1", 1), ("C1", 2), ("C2", 1), ("C4", 1)]
    messages.close()

    # The poison cart: in PASSERELLE_DEAD_LETTER_TOPIC, in the runtime's format, counted under the runtime's name.
    dlq = TopicReader(kafka_bootstrap, schema_registry_url, names["dlq"], decode=False)
    [(letter, value)] = dlq.read(until=1, timeout=10)
    dlq.close()
    errors = header_dict(letter.headers())
    assert value == b"\x00\x00\x00\x00\x01 not an abandoned cart" and letter.key() == b"v9"
    assert (errors["topic"], errors["stage"], errors["processor"]) == (names["carts"], "deserialize", "remarketing")
    metrics = worker.metrics()
    assert 'passerelle_dead_letters_total{processor="remarketing",stage="deserialize"} 1.0' in metrics
    assert "passerelle_remarketing_dead_letters" not in metrics
    assert f'passerelle_records_out_total{{processor="remarketing",topic="{names["messages"]}"}} 4.0' in metrics
    assert 'passerelle_remarketing_inputs_total{kind="visitor_privacy",outcome="routed"} 1.0' in metrics


def test_sequence_state_survives_a_crash_of_the_worker(
    names: dict[str, str], worker: Worker, kafka_bootstrap: str, schema_registry_url: str
) -> None:
    """Step 1, state committed, SIGKILL, restart: the table is restored from its changelog and step 2 comes once."""
    produce_avro(kafka_bootstrap, schema_registry_url, names["crm"], CATALOG.schema_text("CrmProfile"),
                 [("C3", profile("C3"))])  # fmt: skip
    produce_avro(kafka_bootstrap, schema_registry_url, names["carts"], CATALOG.schema_text("CartAbandoned"),
                 [("v3", cart("C3", "v3"))])  # fmt: skip
    worker.start()
    messages = TopicReader(kafka_bootstrap, schema_registry_url, names["messages"])
    [(_, step_1)] = messages.read(until=1, timeout=30)
    # Every input and command committed: the state that recorded step 1 is on its changelog (faust flushes first).
    wait_committed(kafka_bootstrap, names["app_id"], [names["carts"], names["crm"], f"{names['app_id']}-commands"])
    worker.procs[-1].kill()
    worker.procs[-1].wait(10)
    restart = worker.start()
    print(f"sequencer ready again in {restart:.1f} s")
    deadline = time.monotonic() + FOLLOWUP_SECONDS + 30
    while time.monotonic() < deadline and not any(v["step"] == 2 for _, v in messages.records):
        messages.read(until=len(messages.records) + 1, timeout=deadline - time.monotonic())
    quiet = messages.read(until=len(messages.records) + 1, timeout=4, idle=3)
    steps = [(v["step"], v["message_id"], v["sequence_id"]) for _, v in quiet]
    assert steps == [(1, step_1["message_id"], step_1["sequence_id"]), (2, steps[-1][1], step_1["sequence_id"])]
    messages.close()
