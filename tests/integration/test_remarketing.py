"""The remarketing sequencer as a real faust worker subprocess, on the real broker and registry."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from schemas.catalog import load_catalog
from tests.integration.kafka_helpers import TopicReader, create_topics, produce_avro

pytestmark = pytest.mark.integration
CATALOG = load_catalog()
ROOT = Path(__file__).resolve().parents[2]
FOLLOWUP_SECONDS = 8


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
        "app_id": unique("remarketing"),
    }  # fmt: skip
    create_topics(kafka_bootstrap, {t["carts"]: 3, t["hits"]: 3, t["privacy"]: 1, t["messages"]: 3, t["dlq"]: 1})
    create_topics(kafka_bootstrap, {t["crm"]: 2}, {"cleanup.policy": "compact"})
    return t


@pytest.fixture
def worker(
    names: dict[str, str], kafka_bootstrap: str, schema_registry_url: str, tmp_path: Path
) -> Iterator[Callable[[], float]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> float:
        """Start the worker; returns how long it took to say Ready (Python start-up and faust's)."""
        began = time.monotonic()
        log = tmp_path / f"remarketing-{len(procs)}.log"
        args = [
            sys.executable, "-m", "streams.remarketing.app", "--bootstrap", kafka_bootstrap,
            "--registry", schema_registry_url, "--app-id", names["app_id"], "--carts", names["carts"],
            "--hits", names["hits"], "--privacy", names["privacy"], "--crm", names["crm"],
            "--messages", names["messages"], "--dead-letters", names["dlq"],
            "--followup-seconds", str(FOLLOWUP_SECONDS), "--tick-seconds", "0.5", "--data-dir", str(tmp_path / "data"),
            "--session-timeout-seconds", "6",
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("PASSERELLE_")}
        with open(log, "ab") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        procs.append(proc)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"worker exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
            if "Ready" in log.read_text(errors="replace"):
                return time.monotonic() - began
            time.sleep(0.1)
        raise AssertionError(f"worker not ready after 60 s:\n{log.read_text()[-4000:]}")

    start.procs = procs  # type: ignore[attr-defined]
    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_step_1_then_step_2_and_an_order_stops_the_sequence(
    names: dict[str, str], worker: Callable[[], float], kafka_bootstrap: str, schema_registry_url: str
) -> None:
    def produce(stem: str, topic: str, records: list[tuple[str, Any]]) -> None:
        produce_avro(kafka_bootstrap, schema_registry_url, names[topic], CATALOG.schema_text(stem), records)

    produce("CrmProfile", "crm", [("C1", profile("C1")), ("C2", profile("C2"))])  # the email comes from the CRM
    startup = worker()
    print(f"faust worker ready in {startup:.1f} s")
    time.sleep(2)  # profiles are consumed before the carts arrive (they are different topics)
    produce("CartAbandoned", "carts", [("v1", cart("C1", "v1")), ("v2", cart("C2", "v2"))])

    messages = TopicReader(kafka_bootstrap, schema_registry_url, names["messages"])
    first = messages.read(until=2, timeout=30)
    steps_1 = {v["customer_id"]: v for _, v in first}
    assert set(steps_1) == {"C1", "C2"} and all(v["step"] == 1 for v in steps_1.values())
    assert steps_1["C1"]["email"] == "c1@example.com"  # from the CRM profile table
    assert [p["id"] for p in steps_1["C1"]["products"]] == [f"SKU-{n}" for n in range(1, 7)]
    assert steps_1["C1"]["promotion"] is None and steps_1["C1"]["lines"][0]["quantity"] == 3
    assert [m.key() for m, _ in first] != [None, None]
    sent_1 = time.monotonic()

    # C2 orders after step 1; a page view on the same topic is filtered out without consequence
    produce("EnrichedHit", "hits", [("v2", hit(1, "C2", "v2", "page_view")), ("v2", hit(2, "C2", "v2", "order"))])

    later = messages.read(until=3, timeout=FOLLOWUP_SECONDS + 20)
    assert len(later) == 3, [v for _, v in later]
    step_2 = later[2][1]
    assert time.monotonic() - sent_1 >= FOLLOWUP_SECONDS - 2  # not before the delay (less the reading slack)
    assert step_2["customer_id"] == "C1" and step_2["step"] == 2
    assert step_2["sequence_id"] == steps_1["C1"]["sequence_id"]
    assert step_2["message_id"] != steps_1["C1"]["message_id"]
    assert step_2["promotion"] is not None and step_2["promotion"]["code"]
    assert step_2["email"] == "c1@example.com"

    quiet = messages.read(until=4, timeout=4, idle=3)  # C2 ordered: no step 2 for C2, nothing repeated
    assert sorted((v["customer_id"], v["step"]) for _, v in quiet) == [("C1", 1), ("C1", 2), ("C2", 1)]
    messages.close()


def test_sequence_state_survives_a_crash_of_the_worker(
    names: dict[str, str], worker: Callable[[], float], kafka_bootstrap: str, schema_registry_url: str
) -> None:
    """Step 1, SIGKILL, restart: the table is restored from its changelog and step 2 still comes, once."""
    produce_avro(kafka_bootstrap, schema_registry_url, names["crm"], CATALOG.schema_text("CrmProfile"),
                 [("C3", profile("C3"))])  # fmt: skip
    worker()
    time.sleep(2)
    produce_avro(kafka_bootstrap, schema_registry_url, names["carts"], CATALOG.schema_text("CartAbandoned"),
                 [("v3", cart("C3", "v3"))])  # fmt: skip
    messages = TopicReader(kafka_bootstrap, schema_registry_url, names["messages"])
    [(_, step_1)] = messages.read(until=1, timeout=30)
    time.sleep(4)  # past faust's commit interval (2.8 s): offsets and changelog written
    worker.procs[-1].kill()  # type: ignore[attr-defined]
    worker.procs[-1].wait(10)  # type: ignore[attr-defined]
    restart = worker()
    print(f"faust worker ready again in {restart:.1f} s")
    received = messages.read(until=2, timeout=FOLLOWUP_SECONDS + 25)
    steps = [(v["step"], v["message_id"]) for _, v in received]
    assert steps[-1][0] == 2 and received[-1][1]["sequence_id"] == step_1["sequence_id"]
    # at least once: a replayed step 1 would carry the same message id (the bridge deduplicates on it)
    assert {m for s, m in steps if s == 1} == {step_1["message_id"]}
    quiet = messages.read(until=len(received) + 1, timeout=4, idle=3)
    assert [s for _, v in quiet for s in [v["step"]] if s == 2] == [2]  # step 2 once
    messages.close()
