"""Enrichment on the real broker and registry: attribution, identity, CRM joins, erasure, inbox."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from passerelle.schemas.catalog import load_catalog
from passerelle.streams.enrichment.processor import EnrichmentProcessor, EnrichmentTopics
from passerelle.streams.runtime import Runner, RunnerConfig
from tests.integration.kafka_helpers import TopicReader, create_topics, produce_avro

pytestmark = pytest.mark.integration
CATALOG = load_catalog()
T0 = int(time.time() * 1000)


def schema(stem: str) -> str:
    return CATALOG.schema_text(stem)


def hit(n: int, visitor: str, params: dict[str, str] | None = None, customer: str | None = None,
        type_: str = "page_view") -> dict[str, Any]:  # fmt: skip
    return {
        "event_id": f"e{n}", "site": "shop.example", "visitor_id": visitor, "customer_id": customer,
        "event_time": T0 + n * 1000, "type": type_, "url": "https://shop.example/", "referrer": None, "page": None,
        "campaign_params": params or {}, "product": None, "order": None,
        "consent": {"analytics": True, "marketing": True}, "user_agent": None, "ip_truncated": "203.0.113.0",
    }  # fmt: skip


@pytest.fixture
def topics(unique: Callable[[str], str], kafka_bootstrap: str) -> EnrichmentTopics:
    t = EnrichmentTopics(
        hits_raw=unique("hits.raw"), hits_enriched=unique("hits.enriched"), identity_links=unique("identity.links"),
        campaigns=unique("campaigns"), undeclared=unique("campaigns.undeclared"), crm_profiles=unique("crm.profiles"),
        privacy_requests=unique("privacy.requests"),
    )  # fmt: skip
    assert t.privacy_requests is not None
    create_topics(kafka_bootstrap, {t.hits_raw: 3, t.hits_enriched: 3, t.privacy_requests: 1, unique("dlq"): 1})
    create_topics(
        kafka_bootstrap, {t.identity_links: 3, t.campaigns: 1, t.undeclared: 1, t.crm_profiles: 2},
        {"cleanup.policy": "compact"},
    )  # fmt: skip
    return t


@pytest.fixture
def running(
    topics: EnrichmentTopics, kafka_bootstrap: str, schema_registry_url: str, unique: Callable[[str], str]
) -> Iterator[Callable[[], Runner]]:
    started: list[tuple[Runner, threading.Thread]] = []

    def start() -> Runner:
        processor = EnrichmentProcessor(topics)
        outputs = {
            topics.hits_enriched: schema("EnrichedHit"),
            topics.identity_links: schema("IdentityLink"),
            topics.undeclared: schema("Campaign"),
        }
        dlq = unique("dlq")
        runner = Runner(processor, RunnerConfig(
            app_id=unique("enrich"), bootstrap_servers=kafka_bootstrap, schema_registry_url=schema_registry_url,
            output_schemas=outputs, dead_letter_topic=dlq,
        ))  # fmt: skip
        thread = threading.Thread(target=runner.run, daemon=True)
        thread.start()
        started.append((runner, thread))
        return runner

    yield start
    for runner, thread in started:
        runner.stop()
        thread.join(30)


def test_hits_are_attributed_stitched_and_enriched_and_erasure_purges(
    topics: EnrichmentTopics, running: Callable[[], Runner], kafka_bootstrap: str, schema_registry_url: str
) -> None:
    def produce(stem: str, topic: str, records: list[tuple[str, Any]]) -> None:
        produce_avro(kafka_bootstrap, schema_registry_url, topic, schema(stem), records)

    produce("Campaign", topics.campaigns, [("EREC-123", {
        "key": "EREC-123", "name": "Black Friday", "partner": "mailer", "channel": "email", "medium": "email",
        "tagged_url_template": "https://shop.example/?xtor=EREC-123", "valid_from": None, "valid_to": None,
        "cost_model": "CPC", "cost_amount": 0.2, "currency": "EUR", "declared_at": T0})])  # fmt: skip
    running()
    enriched = TopicReader(kafka_bootstrap, schema_registry_url, topics.hits_enriched)
    links = TopicReader(kafka_bootstrap, schema_registry_url, topics.identity_links)

    produce("Hit", topics.hits_raw, [
        ("v1", hit(1, "v1", {"xtor": "EREC-123-[bf]-20261128-[]-contact@list"})),
        ("v1", hit(2, "v1", customer="C1", type_="identify")),
        ("v2", hit(3, "v2", {"utm_source": "partner", "utm_medium": "affiliate", "utm_campaign": "nobody-declared"})),
    ])  # fmt: skip
    first = {v["event_id"]: v for _, v in enriched.read(until=3, timeout=60)}
    assert first["e1"]["traffic_source"]["campaign"] == "EREC-123"
    assert first["e1"]["declared_campaign"]["name"] == "Black Friday"
    assert first["e2"]["customer_id"] == "C1" and first["e2"]["crm"] is None  # CRM profile not published yet
    assert first["e2"]["visit_id"] == first["e1"]["visit_id"]
    assert first["e3"]["campaign_undeclared"] is True
    inbox = TopicReader(kafka_bootstrap, schema_registry_url, topics.undeclared).read(until=1, timeout=30)
    assert [v["key"] for _, v in inbox] == ["nobody-declared"]
    assert [v["customer_id"] for _, v in links.read(until=1, timeout=30)] == ["C1"]

    produce("CrmProfile", topics.crm_profiles, [("C1", {
        "customer_id": "C1", "email": "c1@example.com", "gender": "F", "birth_year": None, "age_band": "25-34",
        "csp": "cadre", "loyalty_tier": "gold", "marketing_consent": True, "updated_at": T0})])  # fmt: skip
    time.sleep(1.5)  # the lookup table picks the profile up while the processor runs
    produce("Hit", topics.hits_raw, [("v1", hit(4, "v1"))])
    later = enriched.read(until=4, timeout=60)[-1][1]
    assert later["event_id"] == "e4" and later["customer_id"] == "C1"
    assert later["crm"]["csp"] == "cadre" and later["crm"]["marketing_consent"] is True

    produce("CrmProfile", topics.crm_profiles, [("C1", None)])  # erasure
    retracted = links.read(until=2, timeout=30)
    assert retracted[-1][1] is None  # identity link tombstone for v1
    produce("Hit", topics.hits_raw, [("v1", hit(5, "v1"))])
    after = enriched.read(until=5, timeout=60)[-1][1]
    assert after["event_id"] == "e5" and after["customer_id"] is None and after["crm"] is None
    assert after["visit_number"] == 1  # the visitor's history is gone too

    # A privacy request naming only a visitor id: that visitor is purged and its identity link retracted.
    produce("Hit", topics.hits_raw, [("v2", hit(6, "v2", customer="C2", type_="identify"))])
    assert [v["customer_id"] for _, v in links.read(until=3, timeout=30) if v is not None] == ["C1", "C2"]
    assert topics.privacy_requests is not None
    produce("PrivacyRequest", topics.privacy_requests, [("v2", {
        "request_id": "r-1", "kind": "erasure", "customer_id": None, "visitor_id": "v2", "marketing_consent": None,
        "requested_at": T0})])  # fmt: skip
    assert [v for _, v in links.read(until=4, timeout=30)].count(None) == 2  # v1's (CRM erasure) and v2's
