"""The retargeting stand-in against the real partner API on the real broker and registry: declarations on
``campaigns``, impressions on ``ads.impressions``, daily metrics on ``partners.metrics``, a re-run harmless."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from passerelle.commands.partners import write_key
from passerelle.connectors.generator import retargeting as rt
from passerelle.connectors.generator.shop import HOUR, Shop
from passerelle.connectors.partner_api.app import create_app
from passerelle.connectors.partner_api.config import ApiConfig, ApiTopics
from passerelle.connectors.partner_api.keys import new_key
from passerelle.schemas.clients import Connection
from passerelle.streams.enrichment.attribution import attribute
from tests.integration.kafka_helpers import TopicReader, create_topics

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def api(kafka_bootstrap: str, schema_registry_url: str) -> Iterator[tuple[TestClient, ApiTopics, str]]:
    run = uuid.uuid4().hex[:8]
    topics = ApiTopics(
        campaigns=f"campaigns.rt.{run}", undeclared=f"campaigns.undeclared.rt.{run}", keys=f"partners.keys.rt.{run}",
        impressions=f"ads.impressions.rt.{run}", metrics=f"partners.metrics.rt.{run}",
    )  # fmt: skip
    create_topics(kafka_bootstrap, {topics.campaigns: 1, topics.undeclared: 1, topics.keys: 1},
                  {"cleanup.policy": "compact"})  # fmt: skip
    create_topics(kafka_bootstrap, {topics.impressions: 3, topics.metrics: 1})
    made = new_key(rt.PARTNER, rt.SCOPES, int(time.time() * 1000), label="test", n=2**4)
    write_key(Connection.plain(kafka_bootstrap, schema_registry_url), topics.keys, None, made.record)
    config = ApiConfig(bootstrap_servers=kafka_bootstrap, schema_registry_url=schema_registry_url, topics=topics)
    with TestClient(create_app(config)) as client:
        yield client, topics, made.api_key


def records(bootstrap: str, registry: str, topic: str, count: int) -> list[tuple[Any, dict[str, Any]]]:
    reader = TopicReader(bootstrap, registry, topic)
    try:
        return reader.read(count, timeout=30, idle=3)
    finally:
        reader.consumer.close()


def test_the_stand_in_declares_reports_and_uploads_through_the_api(
    api: tuple[TestClient, ApiTopics, str], kafka_bootstrap: str, schema_registry_url: str
) -> None:
    client, topics, key = api
    shop = Shop(21, int(time.time() * 1000) - 22 * HOUR, span_ms=22 * HOUR, customers=60)
    partner = rt.PartnerClient(str(client.base_url), key, client=client)  # type: ignore[arg-type]
    assert partner.declare(rt.declarations(shop)) == 2
    assert partner.declare(rt.declarations(shop)) == 0  # a re-run replaces, never fails
    traffic = rt.simulate(shop, 120, partner.tagged_urls)
    assert traffic.clicks and partner.report.tagged_urls > 0
    clicked = {e["url"] for e in traffic.events() if "utm_source=retarget" in e["url"]}
    for url in clicked:  # what the API tagged, the enrichment reads back as the declared campaign
        found = attribute(url, None)
        assert found.campaign in rt.BY_KEY and found.medium == "display" and found.source == rt.PARTNER
    assert partner.report_impressions(traffic.impressions) == len(traffic.impressions)
    rows = traffic.metrics()
    assert partner.upload_metrics(rows) == len(rows)
    assert not partner.report.errors and not partner.report.undeclared

    declared = records(kafka_bootstrap, schema_registry_url, topics.campaigns, 4)
    latest = {msg.key(): value for msg, value in declared}
    assert len(latest) == 2 and all(v["partner"] == rt.PARTNER and v["medium"] == "display" for v in latest.values())

    shown = records(kafka_bootstrap, schema_registry_url, topics.impressions, len(traffic.impressions))
    assert sorted(v["impression_id"] for _, v in shown) == sorted(i["impression_id"] for i in traffic.impressions)
    assert all(v["ad_server"] == rt.PARTNER and v["campaign_key"] in rt.BY_KEY for _, v in shown)

    figures = records(kafka_bootstrap, schema_registry_url, topics.metrics, len(rows))
    assert len(figures) == len(rows)
    total = {m: sum(v["value"] for _, v in figures if v["metric"] == m) for m in ("impressions", "clicks")}
    assert total == {"impressions": len(traffic.impressions), "clicks": len(traffic.clicks)}
    assert {v["partner"] for _, v in figures} == {rt.PARTNER}
