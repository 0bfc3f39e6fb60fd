"""Issue 17, collector side, real broker and registry: oversized or unencodable events are the client's error.

A record the collector accepted must be one every processor can carry, and
an event that can never be stored must be answered 400 (pixel) or rejected
in a 207 (batch), never 503 "retry later", which a client retries forever.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.integration.kafka_helpers import create_topics
from tests.integration.test_collector import KEY, SITE, collector, config_for, event, read, run

pytestmark = pytest.mark.integration

HEADERS = {"X-Api-Key": KEY, "Content-Type": "application/json"}


@pytest.fixture
def topic(kafka_bootstrap: str, unique: Callable[[str], str]) -> str:
    name = unique("hits.raw")
    create_topics(kafka_bootstrap, {name: 3})
    return name


def post_all(config: Any, *bodies: bytes) -> list[httpx.Response]:
    async def scenario() -> list[httpx.Response]:
        async with collector(config) as client:
            return [await client.post("/v1/events", content=body, headers=HEADERS) for body in bodies]

    return list(run(scenario()))


def rejected_errors(resp: httpx.Response) -> dict[int, list[str]]:
    return {r["index"]: r["errors"] for r in resp.json()["results"] if r["status"] == "rejected"}


def test_the_900k_campaign_param_probe_is_400_and_its_batch_mates_are_delivered(
    kafka_bootstrap: str, schema_registry_url: str, topic: str
) -> None:
    """Item 1, the exact probe: it was answered 200, then the enrichment died on it."""
    probe = {"visitor_id": "v", "url": "https://shop.example/", "campaign_params": {"utm_source": "x" * 900_000}}
    alone = json.dumps({"events": [probe]}).encode()
    mixed = json.dumps({"events": [event(1), probe, event(2)]}).encode()
    only, both = post_all(config_for(kafka_bootstrap, schema_registry_url, topic), alone, mixed)

    assert only.status_code == 400, only.text[:500]
    assert len(only.content) < 2000  # the answer names the field, it does not echo 900 KB back
    assert [e.split(":")[0] for e in rejected_errors(only)[0]] == ["campaign_params.utm_source"]
    assert both.status_code == 207, both.text[:500]
    assert list(rejected_errors(both)) == [1]
    records = read(kafka_bootstrap, schema_registry_url, topic, until=3, idle=3)
    assert sorted(value["event_id"] for _, value in records) == ["evt-001", "evt-002"]


def max_order_line(i: int) -> dict[str, Any]:
    return {"id": f"{i:04d}".ljust(128, "i"), "name": "n" * 1024, "category": "c" * 1024, "price": 1.0,
            "currency": "EUR", "quantity": 1, "url": "https://shop.example/" + "u" * 8171,
            "image_url": "https://shop.example/" + "m" * 8171}  # fmt: skip


def test_the_56_line_order_of_maximum_fields_is_400_not_503(
    kafka_bootstrap: str, schema_registry_url: str, topic: str
) -> None:
    """Item 6: a body under the 1 MiB limit whose record librdkafka refuses was answered 503 "retry later"."""
    order = {"order_id": "o-max", "revenue": 56.0, "currency": "EUR", "lines": [max_order_line(i) for i in range(56)]}
    big = event(3, type="order", visitor_id="v-big", order=order)
    config = config_for(kafka_bootstrap, schema_registry_url, topic)
    body = json.dumps({"events": [big]}).encode()
    assert 1_000_000 < len(body) < config.max_body_bytes
    mixed = json.dumps({"events": [event(1), big]}).encode()
    alone, both = post_all(config, body, mixed)

    assert alone.status_code == 400, alone.text
    assert "retry-after" not in alone.headers
    (errors,) = rejected_errors(alone).values()
    assert "exceeds the limit of 65536 bytes" in errors[0], errors
    assert both.status_code == 207, both.text
    assert list(rejected_errors(both)) == [1]
    records = read(kafka_bootstrap, schema_registry_url, topic, until=2, idle=3)
    assert [value["event_id"] for _, value in records] == ["evt-001"]


def test_the_encoded_record_is_bounded_for_pixels_and_batches_alike(
    kafka_bootstrap: str, schema_registry_url: str, topic: str
) -> None:
    """Item 1: every field within its own bound, the whole record still has one (here set to 4 KiB)."""
    config = config_for(kafka_bootstrap, schema_registry_url, topic, max_record_bytes=4096)
    long_url = "https://shop.example/" + "p" * 3000
    pixel = {"site": SITE, "vid": "v-pixel", "url": long_url, "ref": long_url}

    async def scenario() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        async with collector(config) as client:
            small = await client.get("/hit", params={"site": SITE, "vid": "v-small", "url": "https://shop.example/"})
            large = await client.get("/hit", params=pixel)
            batch = await client.post("/v1/events", json=[event(1, referrer=long_url, url=long_url), event(2)],
                                      headers={"X-Api-Key": KEY})  # fmt: skip
            return small, large, batch

    small, large, batch = run(scenario())
    assert small.status_code == 200, small.text
    assert large.status_code == 400, large.text
    assert "retry-after" not in large.headers
    assert any("exceeds the limit of 4096 bytes" in e for e in large.json()["errors"]), large.text
    assert batch.status_code == 207, batch.text
    assert list(rejected_errors(batch)) == [0]
    records = read(kafka_bootstrap, schema_registry_url, topic, until=3, idle=3)
    assert sorted(value["visitor_id"] for _, value in records) == ["v-small", "visitor-2"]


def test_a_record_librdkafka_refuses_as_too_large_is_rejected_not_retried(
    kafka_bootstrap: str, schema_registry_url: str, topic: str
) -> None:
    """Item 6: ``produce()`` raising MSG_SIZE_TOO_LARGE is a property of the record, not an outage."""
    config = config_for(kafka_bootstrap, schema_registry_url, topic, producer_overrides={"message.max.bytes": 8000})
    noise = os.urandom(4000).hex()  # within every field bound and the record bound, over librdkafka's 8000 bytes
    body = json.dumps([event(1, referrer="https://r.example/" + noise), event(2)]).encode()
    (resp,) = post_all(config, body)
    assert resp.status_code == 207, resp.text
    (errors,) = rejected_errors(resp).values()
    assert "too large" in errors[0].lower(), errors
    records = read(kafka_bootstrap, schema_registry_url, topic, until=2, idle=3)
    assert [value["event_id"] for _, value in records] == ["evt-002"]


def test_a_lone_surrogate_is_400_not_503(kafka_bootstrap: str, schema_registry_url: str, topic: str) -> None:
    """Item 6, the exact probe: ``"\\ud800"`` parses as JSON but cannot be encoded as UTF-8 Avro."""
    probe = b'{"events":[{"visitor_id":"v","url":"https://shop.example/","campaign_params":{"utm_source":"\\ud800"}}]}'
    mixed = (
        b'{"events":['
        + json.dumps(event(1)).encode()
        + b',{"visitor_id":"v","url":"https://shop.example/\\udfff"},'
        + json.dumps(event(2)).encode()
        + b"]}"
    )
    started = time.monotonic()
    alone, both = post_all(config_for(kafka_bootstrap, schema_registry_url, topic), probe, mixed)
    assert time.monotonic() - started < 20  # answered at once, not after the produce timeout

    assert alone.status_code == 400, alone.text
    assert "retry-after" not in alone.headers
    (errors,) = rejected_errors(alone).values()
    assert errors[0].startswith("campaign_params.utm_source:"), errors
    assert both.status_code == 207, both.text
    assert rejected_errors(both)[1][0].startswith("url:"), both.text
    records = read(kafka_bootstrap, schema_registry_url, topic, until=3, idle=3)
    assert sorted(value["event_id"] for _, value in records) == ["evt-001", "evt-002"]


def test_metrics_count_late_rejections_as_rejected(kafka_bootstrap: str, schema_registry_url: str, topic: str) -> None:
    config = config_for(kafka_bootstrap, schema_registry_url, topic, max_record_bytes=2048)

    async def scenario() -> str:
        async with collector(config) as client:
            await client.post("/v1/events", json=[event(1, referrer="https://r/" + "r" * 3000), event(2)],
                              headers={"X-Api-Key": KEY})  # fmt: skip
            return (await client.get("/metrics")).text

    text = run(scenario())
    assert 'passerelle_collector_events_total{endpoint="batch",outcome="rejected"} 1.0' in text
    assert 'passerelle_collector_events_total{endpoint="batch",outcome="accepted"} 1.0' in text
    assert 'passerelle_collector_events_total{endpoint="batch",outcome="failed"} 0.0' in text
