"""`passerelle attribution markov` on the real broker: a period of transactional hits and exposures in, the
Markov credits printed and published on the output topic, read back equal."""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import Producer

from passerelle.cli import main
from passerelle.schemas.catalog import load_catalog
from passerelle.schemas.clients import Connection, registry_client
from passerelle.schemas.serde import AvroEncoder
from tests.integration.kafka_helpers import STRING_KEY, TopicReader, create_topics
from tests.records import enriched_hit

pytestmark = pytest.mark.integration

CATALOG = load_catalog()


@pytest.fixture
def env(kafka_bootstrap: str, schema_registry_url: str) -> Iterator[dict[str, str]]:
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith("PASSERELLE_"):
                mp.delenv(name)
        mp.setenv("PASSERELLE_BOOTSTRAP_SERVERS", kafka_bootstrap)
        mp.setenv("PASSERELLE_SCHEMA_REGISTRY_URL", schema_registry_url)
        yield {"bootstrap": kafka_bootstrap, "registry": schema_registry_url}


def produce_in_transactions(bootstrap: str, registry: str, topic: str, schema: str,
                            records: list[tuple[str, dict[str, Any]]]) -> None:  # fmt: skip
    """As the processors write: in transactions (their markers take offsets the reader must step over),
    and one aborted transaction whose records must not count."""
    client = registry_client(Connection.plain(bootstrap, registry))
    value, key = AvroEncoder.for_subject(client, f"{topic}-value", schema), AvroEncoder.for_subject(
        client, f"{topic}-key", STRING_KEY)  # fmt: skip
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"markov-test-{uuid.uuid4().hex}"})
    producer.init_transactions(30)
    for i in range(0, len(records), 3):
        producer.begin_transaction()
        for k, v in records[i : i + 3]:
            producer.produce(topic, value.encode(v), key.encode(k))
        producer.commit_transaction(30)
    producer.begin_transaction()
    k, v = records[-1]
    producer.produce(topic, value.encode({**v, "event_id": "aborted", "visit_id": "aborted:1"}), key.encode(k))
    producer.abort_transaction(30)


def test_markov_over_a_period_of_transactional_topics(env: dict[str, str]) -> None:
    run = uuid.uuid4().hex[:8]
    hits_topic, pv_topic, out = f"hits.enriched.mk.{run}", f"ads.postview.mk.{run}", f"attribution.markov.mk.{run}"
    create_topics(env["bootstrap"], {hits_topic: 3, pv_topic: 3})
    create_topics(env["bootstrap"], {out: 1}, {"cleanup.policy": "compact"})
    now = int(time.time() * 1000)
    hits = [  # two converting journeys (email then direct), two that do not convert (email alone; direct alone)
        enriched_hit("a", now - 5000, event_id="a1", visit=1, campaign="EREC-1"),
        enriched_hit("a", now - 4000, event_id="a2", visit=2, customer="c1"),
        enriched_hit("a", now - 3990, event_id="a3", visit=2, customer="c1", order=("o1", 20.0)),
        enriched_hit("b", now - 5000, event_id="b1", visit=1, campaign="EREC-1"),
        enriched_hit("d", now - 5000, event_id="d1", visit=1),
        enriched_hit("e", now - 5000, event_id="e1", visit=1, campaign="EREC-2"),
        enriched_hit("e", now - 4000, event_id="e2", visit=2),
        enriched_hit("e", now - 3990, event_id="e3", visit=2, order=("o2", 30.0)),
    ]
    produce_in_transactions(env["bootstrap"], env["registry"], hits_topic, CATALOG.schema_text("EnrichedHit"),
                            [(h["visitor_id"], h) for h in hits])  # fmt: skip
    exposure = {  # d saw a banner before its direct visit: it no longer converts, but its journey has two channels
        "postview_id": "pv1", "kind": "visit", "visitor_id": "d", "customer_id": None, "site": "shop.example",
        "campaign_key": "AD-7", "impression_id": "i1", "impression_time": now - 6000, "impressions": 1,
        "event_id": "d1", "visit_id": "d:1", "event_time": now - 5000, "delay_ms": 1000, "visit_medium": "direct",
        "visit_campaign": None, "order_id": None, "revenue": None, "currency": None,
    }  # fmt: skip
    produce_in_transactions(env["bootstrap"], env["registry"], pv_topic, CATALOG.schema_text("PostView"),
                            [("d", exposure)])  # fmt: skip

    out_text, err_text = io.StringIO(), io.StringIO()
    started = time.monotonic()
    with contextlib.redirect_stdout(out_text), contextlib.redirect_stderr(err_text):
        code = main(["attribution", "markov", "--days", "1", "--hits-topic", hits_topic, "--postview-topic",
                     pv_topic, "--topic", out, "--json", "--label", "today"])  # fmt: skip
    assert code == 0, err_text.getvalue()
    printed = json.loads(out_text.getvalue())
    print(f"markov job took {time.monotonic() - started:.1f}s")
    # Journeys: [email, direct] -> order twice (a via its login, e); [email] (b); [display (post-view), direct] (d).
    assert (printed["journeys"], printed["conversions"]) == (4, 2), printed
    # By hand: start->email 3, start->display 1; email->direct 2, email->null 1; display->direct 1;
    # direct->order 2, direct->null 1. P(direct) = 2/3, P(email) = 4/9, P(display) = 2/3, P = 3/4*4/9 + 1/4*2/3 = 1/2.
    # Without display P = 1/3 (effect 1/3), without email 1/6 (effect 2/3), without direct 0 (effect 1);
    # credits 1/6, 1/3, 1/2 of the 2 orders.
    effects = {c["channel"]: c["removal_effect"] for c in printed["channels"]}
    orders = {c["channel"]: c["conversions"] for c in printed["channels"]}
    assert effects == pytest.approx({"display (post-view)": 1 / 3, "email": 2 / 3, "direct": 1.0})
    assert orders == pytest.approx({"display (post-view)": 1 / 3, "email": 2 / 3, "direct": 1.0})
    assert [c["channel"] for c in printed["channels"]] == ["direct", "email", "display (post-view)"]
    assert "4 journeys, 2 ending in an order" in err_text.getvalue()

    reader = TopicReader(env["bootstrap"], env["registry"], out)
    try:
        (msg, published), *_ = reader.read(1, timeout=30)
    finally:
        reader.consumer.close()
    assert msg.key()[5:] and published["period"] == "today" and published["channels"] == printed["channels"]
