"""The collector against a real broker and the real registry: what the HTTP answer promises is on the topic."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka.admin import AdminClient

from passerelle.connectors.collector.app import PIXEL_GIF, create_app
from passerelle.connectors.collector.config import CollectorConfig
from tests.integration.kafka_helpers import TopicReader, create_topics

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SITE, KEY = "shop.example", "key-shop-0123456789"
OTHER_SITE, OTHER_KEY = "blog.example", "key-blog-9876543210"
PEER = "203.0.113.77"


def config_for(bootstrap: str, registry: str, topic: str, **overrides: Any) -> CollectorConfig:
    return CollectorConfig(
        bootstrap_servers=bootstrap,
        schema_registry_url=registry,
        sites={SITE: KEY, OTHER_SITE: OTHER_KEY},
        topic=topic,
        **overrides,
    )


@contextlib.asynccontextmanager
async def collector(config: CollectorConfig, peer: str = PEER) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan (real producer, real registry), called in-process from ``peer``."""
    app = create_app(config)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=(peer, 51234))
        async with httpx.AsyncClient(transport=transport, base_url="http://collector", timeout=30) as client:
            yield client


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


def read(bootstrap: str, registry: str, topic: str, until: int, idle: float | None = None) -> list[Any]:
    reader = TopicReader(bootstrap, registry, topic)
    try:
        return reader.read(until=until, timeout=30, idle=idle)
    finally:
        reader.close()


def decoded_key(bootstrap: str, registry: str, topic: str, raw: bytes) -> Any:
    reader = TopicReader(bootstrap, registry, topic)
    try:
        return reader.decoder.decode(raw)
    finally:
        reader.close()


def event(i: int, **extra: Any) -> dict[str, Any]:
    return {
        "event_id": f"evt-{i:03d}",
        "site": SITE,
        "visitor_id": f"visitor-{i % 3}",
        "type": "page_view",
        "url": f"https://shop.example/page/{i}?utm_source=newsletter&utm_medium=email&session=abc",
        "event_time": int(time.time() * 1000) - 1000,
        "consent": {"analytics": True, "marketing": i % 2 == 0},
        **extra,
    }


@pytest.fixture
def topic(kafka_bootstrap: str, unique: Callable[[str], str]) -> str:
    name = unique("hits.raw")
    create_topics(kafka_bootstrap, {name: 3})
    return name


def test_pixel_hit_lands_on_the_topic(kafka_bootstrap: str, schema_registry_url: str, topic: str) -> None:
    config = config_for(kafka_bootstrap, schema_registry_url, topic)
    params = {
        "site": SITE,
        "vid": "visitor-42",
        "type": "product_view",
        "eid": "pixel-evt-1",
        "url": "https://shop.example/p/sku-1?utm_source=google&utm_campaign=spring#xtor=SEC-12",
        "ref": "https://www.google.com/",
        "page": "product::sku-1",
        "pid": "sku-1",
        "pname": "Blue shirt",
        "price": "19.90",
        "currency": "eur",
        "category": "shirts",
        "ca": "1",
        "cm": "0",
        "_": "1712345678",  # cache buster: ignored
    }

    async def scenario() -> httpx.Response:
        async with collector(config) as client:
            return await client.get("/hit", params=params, headers={"User-Agent": "Mozilla/5.0 test"})

    resp = run(scenario())
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "image/gif"
    assert resp.content == PIXEL_GIF
    assert "no-store" in resp.headers["cache-control"]

    records = read(kafka_bootstrap, schema_registry_url, topic, until=1)
    assert len(records) == 1
    msg, value = records[0]
    assert decoded_key(kafka_bootstrap, schema_registry_url, topic, msg.key()) == "visitor-42"
    assert value["event_id"] == "pixel-evt-1"
    assert value["site"] == SITE
    assert value["visitor_id"] == "visitor-42"
    assert value["type"] == "product_view"
    assert value["referrer"] == "https://www.google.com/"
    assert value["page"] == "product::sku-1"
    assert value["campaign_params"] == {"utm_source": "google", "utm_campaign": "spring", "xtor": "SEC-12"}
    assert value["product"]["id"] == "sku-1"
    assert value["product"]["price"] == pytest.approx(19.9)
    assert value["product"]["currency"] == "EUR"
    assert value["consent"] == {"analytics": True, "marketing": False}
    assert value["user_agent"] == "Mozilla/5.0 test"
    assert value["ip_truncated"] == "203.0.113.0"
    assert PEER.encode() not in msg.value()
    # the record's timestamp is the hit's event time (server receive time here)
    assert msg.timestamp()[1] == int(value["event_time"].timestamp() * 1000)


def test_batch_with_invalid_events_delivers_the_valid_ones(
    kafka_bootstrap: str, schema_registry_url: str, topic: str
) -> None:
    config = config_for(kafka_bootstrap, schema_registry_url, topic)
    events = [event(i) for i in range(10)]
    del events[3]["visitor_id"]
    events[7]["product"] = {"id": "sku-7", "price": "not a number"}
    events[7]["type"] = "cart_add"

    async def scenario() -> httpx.Response:
        async with collector(config) as client:
            return await client.post("/v1/events", json={"events": events}, headers={"X-Api-Key": KEY})

    resp = run(scenario())
    assert resp.status_code == 207, resp.text
    body = resp.json()
    assert body["accepted"] == 8
    assert body["rejected"] == 2
    by_index = {r["index"]: r for r in body["results"]}
    assert by_index[3]["status"] == "rejected"
    assert any(e.startswith("visitor_id:") for e in by_index[3]["errors"]), by_index[3]
    assert by_index[7]["status"] == "rejected"
    assert any(e.startswith("product.price:") for e in by_index[7]["errors"]), by_index[7]
    accepted = {r["event_id"] for r in body["results"] if r["status"] == "accepted"}
    assert accepted == {f"evt-{i:03d}" for i in range(10) if i not in (3, 7)}

    records = read(kafka_bootstrap, schema_registry_url, topic, until=9, idle=3)
    assert len(records) == 8
    assert {value["event_id"] for _, value in records} == accepted
    for msg, value in records:
        assert decoded_key(kafka_bootstrap, schema_registry_url, topic, msg.key()) == value["visitor_id"]
        assert value["campaign_params"] == {"utm_source": "newsletter", "utm_medium": "email"}
    # a visitor's hits share a partition (keyed by visitor id)
    partitions: dict[str, set[int]] = {}
    for msg, value in records:
        partitions.setdefault(value["visitor_id"], set()).add(msg.partition())
    assert all(len(p) == 1 for p in partitions.values())


def test_all_valid_batch_is_200_and_all_invalid_is_400(
    kafka_bootstrap: str, schema_registry_url: str, topic: str
) -> None:
    config = config_for(kafka_bootstrap, schema_registry_url, topic)

    async def scenario() -> tuple[httpx.Response, httpx.Response]:
        async with collector(config) as client:
            ok = await client.post("/v1/events", json=[event(1), event(2)], headers={"Authorization": f"Bearer {KEY}"})
            bad = await client.post("/v1/events", json=[{"site": SITE}], headers={"X-Api-Key": KEY})
            return ok, bad

    ok, bad = run(scenario())
    assert ok.status_code == 200, ok.text
    assert ok.json()["accepted"] == 2
    assert bad.status_code == 400, bad.text
    assert bad.json()["rejected"] == 1
    assert len(read(kafka_bootstrap, schema_registry_url, topic, until=3, idle=3)) == 2


def test_refused_requests_produce_nothing(kafka_bootstrap: str, schema_registry_url: str, topic: str) -> None:
    config = config_for(kafka_bootstrap, schema_registry_url, topic, max_batch_events=5, max_body_bytes=4096)

    async def chunks() -> AsyncIterator[bytes]:
        payload = json.dumps({"events": [event(i, page="x" * 1000) for i in range(5)]}).encode()
        for start in range(0, len(payload), 1000):
            yield payload[start : start + 1000]

    async def scenario() -> dict[str, httpx.Response]:
        async with collector(config) as client:
            post = client.post
            return {
                "missing key": await post("/v1/events", json=[event(1)]),
                "wrong key": await post("/v1/events", json=[event(1)], headers={"X-Api-Key": "nope"}),
                "other site's key": await post("/v1/events", json=[event(1)], headers={"X-Api-Key": OTHER_KEY}),
                "unknown site": await post(
                    "/v1/events", json=[event(1, site="evil.example")], headers={"X-Api-Key": KEY}
                ),
                "too many events": await post(
                    "/v1/events", json=[event(i) for i in range(6)], headers={"X-Api-Key": KEY}
                ),
                "oversized body": await post(
                    "/v1/events", json=[event(i, page="x" * 2000) for i in range(3)], headers={"X-Api-Key": KEY}
                ),
                "oversized chunked body": await post(
                    "/v1/events", content=chunks(), headers={"X-Api-Key": KEY, "Content-Type": "application/json"}
                ),
                "not json": await post("/v1/events", content=b"{nope", headers={"X-Api-Key": KEY}),
                "pixel unknown site": await client.get("/hit", params={"site": "evil.example", "vid": "v", "url": "u"}),
                "pixel no visitor": await client.get("/hit", params={"site": SITE, "url": "https://shop.example/"}),
            }

    answers = run(scenario())
    expected = {
        "missing key": 401,
        "wrong key": 403,
        "other site's key": 403,
        "unknown site": 403,
        "too many events": 413,
        "oversized body": 413,
        "oversized chunked body": 413,
        "not json": 400,
        "pixel unknown site": 400,
        "pixel no visitor": 400,
    }
    assert {name: r.status_code for name, r in answers.items()} == expected, {
        name: r.text for name, r in answers.items()
    }
    assert answers["missing key"].headers["www-authenticate"] == "Bearer"
    assert "at most 5" in answers["too many events"].json()["error"]
    assert "exceeds the limit of 4096 bytes" in answers["oversized body"].json()["error"]
    assert "evil.example" in answers["unknown site"].json()["error"]
    assert any("unknown site" in e for e in answers["pixel unknown site"].json()["errors"])
    assert any(e.startswith("vid:") for e in answers["pixel no visitor"].json()["errors"])
    assert read(kafka_bootstrap, schema_registry_url, topic, until=1, idle=3) == []


def test_ip_is_truncated_before_kafka(kafka_bootstrap: str, schema_registry_url: str, topic: str) -> None:
    trusting = config_for(
        kafka_bootstrap, schema_registry_url, topic, trust_forwarded=True, trusted_proxies=("10.0.0.1",)
    )
    not_trusting = config_for(kafka_bootstrap, schema_registry_url, topic)
    forwarded = {"X-Forwarded-For": "2001:db8:1234:5678:9abc::1, 10.0.0.1"}

    async def scenario() -> list[int]:
        statuses = []
        async with collector(trusting, peer="10.0.0.1") as client:
            resp = await client.get(
                "/hit", params={"site": SITE, "vid": "v-fwd", "url": "https://s/"}, headers=forwarded
            )
            statuses.append(resp.status_code)
            resp = await client.post(
                "/v1/events", json=[event(1, visitor_id="v-json", ip="198.51.100.23")], headers={"X-Api-Key": KEY}
            )
            statuses.append(resp.status_code)
        async with collector(not_trusting, peer="192.0.2.200") as client:
            resp = await client.get(
                "/hit", params={"site": SITE, "vid": "v-peer", "url": "https://s/"}, headers=forwarded
            )
            statuses.append(resp.status_code)
        return statuses

    assert run(scenario()) == [200, 200, 200]
    records = read(kafka_bootstrap, schema_registry_url, topic, until=3)
    ips = {value["visitor_id"]: value["ip_truncated"] for _, value in records}
    assert ips == {"v-fwd": "2001:db8:1234::", "v-json": "198.51.100.0", "v-peer": "192.0.2.0"}
    for msg, _ in records:
        for full in (b"2001:db8:1234:5678", b"198.51.100.23", b"192.0.2.200"):
            assert full not in msg.value()


def test_broker_down_is_503_never_2xx(schema_registry_url: str, unique: Callable[[str], str]) -> None:
    config = config_for("127.0.0.1:1", schema_registry_url, unique("hits.raw"), produce_timeout_s=2, retry_after_s=7)

    async def scenario() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        async with collector(config) as client:
            pixel = await client.get("/hit", params={"site": SITE, "vid": "v", "url": "https://shop.example/"})
            batch = await client.post("/v1/events", json=[event(1), {"bad": 1}], headers={"X-Api-Key": KEY})
            health = await client.get("/healthz")
            return pixel, batch, health

    started = time.monotonic()
    pixel, batch, health = run(scenario())
    assert time.monotonic() - started < 30
    assert pixel.status_code == 503, pixel.text
    assert pixel.headers["retry-after"] == "7"
    assert batch.status_code == 503, batch.text
    assert batch.headers["retry-after"] == "7"
    body = batch.json()
    assert body["accepted"] == 0 and body["failed"] == 1 and body["rejected"] == 1
    assert [r["status"] for r in body["results"]] == ["failed", "rejected"]
    assert health.status_code == 503


def test_missing_topic_is_unhealthy_and_503(
    schema_registry_url: str, kafka_bootstrap: str, unique: Callable[[str], str]
) -> None:
    missing = unique("hits.raw")
    config = config_for(kafka_bootstrap, schema_registry_url, missing, produce_timeout_s=2)

    async def scenario() -> tuple[httpx.Response, httpx.Response]:
        async with collector(config) as client:
            health = await client.get("/healthz")
            pixel = await client.get("/hit", params={"site": SITE, "vid": "v", "url": "https://shop.example/"})
            return health, pixel

    health, pixel = run(scenario())
    assert health.status_code == 503
    assert missing in health.json()["detail"]
    assert pixel.status_code == 503
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    assert missing not in admin.list_topics(timeout=10).topics  # the collector never creates topics


def test_health_and_metrics(kafka_bootstrap: str, schema_registry_url: str, topic: str) -> None:
    config = config_for(kafka_bootstrap, schema_registry_url, topic)

    async def scenario() -> tuple[httpx.Response, httpx.Response]:
        async with collector(config) as client:
            await client.get("/hit", params={"site": SITE, "vid": "v", "url": "https://shop.example/"})
            await client.get("/hit", params={"site": SITE})
            await client.post("/v1/events", json=[event(1), {}], headers={"X-Api-Key": KEY})
            return await client.get("/healthz"), await client.get("/metrics")

    health, metrics = run(scenario())
    assert health.status_code == 200, health.text
    text = metrics.text
    assert 'passerelle_collector_events_total{endpoint="pixel",outcome="accepted"} 1.0' in text
    assert 'passerelle_collector_events_total{endpoint="pixel",outcome="rejected"} 1.0' in text
    assert 'passerelle_collector_events_total{endpoint="batch",outcome="accepted"} 1.0' in text
    assert 'passerelle_collector_events_total{endpoint="batch",outcome="rejected"} 1.0' in text
    assert 'passerelle_collector_request_seconds_count{endpoint="batch",status="207"} 1.0' in text
    assert "passerelle_collector_produce_seconds_bucket" in text
    assert "visitor" not in text


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_cli_serves_hits_and_refuses_a_taken_port(
    kafka_bootstrap: str, schema_registry_url: str, topic: str, tmp_path: Path
) -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PASSERELLE_")}
    env.update(
        PASSERELLE_BOOTSTRAP_SERVERS=kafka_bootstrap,
        PASSERELLE_SCHEMA_REGISTRY_URL=schema_registry_url,
        PASSERELLE_COLLECTOR_PORT=str(port),
        PASSERELLE_COLLECTOR_SITES=json.dumps({SITE: KEY}),
    )
    command = [sys.executable, "-m", "passerelle", "collector", "--topic", topic]
    log = tmp_path / "collector.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while "collector listening" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        resp = httpx.get(f"http://127.0.0.1:{port}/hit", params={"site": SITE, "vid": "cli", "url": "https://s/"})
        assert resp.status_code == 200, resp.text
        second = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
        assert second.returncode == 1
        errors = [line for line in second.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and "already in use" in errors[0], second.stderr
        assert "Traceback" not in second.stderr
    finally:
        proc.terminate()
        assert proc.wait(30) == 0, log.read_text()
    records = read(kafka_bootstrap, schema_registry_url, topic, until=1)
    assert [value["visitor_id"] for _, value in records] == ["cli"]


# --- GET /imp: the ad impression pixel -------------------------------------------------------------------------


def test_impression_pixel_lands_on_ads_impressions_keyed_by_visitor(
    kafka_bootstrap: str, schema_registry_url: str, topic: str, unique: Callable[[str], str]
) -> None:
    impressions = unique("ads.impressions")
    create_topics(kafka_bootstrap, {impressions: 6})
    config = config_for(kafka_bootstrap, schema_registry_url, topic, impressions_topic=impressions)
    sent_at = int(time.time() * 1000) - 2000
    good = {"site": SITE, "vid": "visitor-imp", "c": "RT-1", "cr": "banner-300x250", "pl": "news/top",
            "as": "retargeter", "iid": "imp-0001", "ts": str(sent_at), "_": "cachebuster"}  # fmt: skip
    bad = [({"vid": "v", "as": "rt"}, "site"), ({"site": "nope.example", "vid": "v", "as": "rt"}, "site"),
           ({"site": SITE, "as": "rt"}, "vid"), ({"site": SITE, "vid": "v"}, "as"),
           ({"site": SITE, "vid": "v", "as": "rt", "ts": "later"}, "ts")]  # fmt: skip

    async def scenario() -> tuple[httpx.Response, httpx.Response, list[httpx.Response], httpx.Response]:
        async with collector(config) as client:
            ok = await client.get("/imp", params=good)
            drawn = await client.get("/imp", params={"site": SITE, "visitor_id": "visitor-2", "ad_server": "rt"})
            refused = [await client.get("/imp", params=params) for params, _ in bad]
            return ok, drawn, refused, await client.get("/metrics")

    ok, drawn, refused, metrics = run(scenario())
    assert ok.status_code == 200 and ok.content == PIXEL_GIF and ok.headers["content-type"] == "image/gif"
    assert drawn.status_code == 200
    assert "no-store" in ok.headers["cache-control"]
    for answer, (_, field) in zip(refused, bad, strict=True):
        assert answer.status_code == 400, answer.text
        assert any(e.startswith(f"{field}:") for e in answer.json()["errors"]), answer.json()
    records = read(kafka_bootstrap, schema_registry_url, impressions, until=2)
    assert len(records) == 2
    by_visitor = {value["visitor_id"]: (msg, value) for msg, value in records}
    msg, value = by_visitor["visitor-imp"]
    assert decoded_key(kafka_bootstrap, schema_registry_url, impressions, msg.key()) == "visitor-imp"
    assert value["impression_id"] == "imp-0001" and value["ad_server"] == "retargeter"
    assert (value["campaign_key"], value["creative"], value["placement"]) == ("RT-1", "banner-300x250", "news/top")
    assert int(value["event_time"].timestamp() * 1000) == sent_at and msg.timestamp()[1] == sent_at
    assert len(by_visitor["visitor-2"][1]["impression_id"]) == 36  # a UUID4 drawn by the collector
    assert read(kafka_bootstrap, schema_registry_url, topic, until=1, idle=1) == []  # no hit written
    text = metrics.text
    assert 'passerelle_collector_events_total{endpoint="impression",outcome="accepted"} 2.0' in text
    assert 'passerelle_collector_events_total{endpoint="impression",outcome="rejected"} 5.0' in text
    assert 'passerelle_collector_request_seconds_count{endpoint="impression",status="400"} 5.0' in text


def test_impression_not_acknowledged_is_503_with_retry_after(
    kafka_bootstrap: str, schema_registry_url: str, topic: str, unique: Callable[[str], str]
) -> None:
    missing = unique("ads.impressions")  # never created: the broker never acknowledges
    config = config_for(kafka_bootstrap, schema_registry_url, topic, impressions_topic=missing, produce_timeout_s=2,
                        retry_after_s=7)  # fmt: skip

    async def scenario() -> tuple[httpx.Response, httpx.Response]:
        async with collector(config) as client:
            imp = await client.get("/imp", params={"site": SITE, "vid": "v", "as": "rt", "iid": "imp-503"})
            hit = await client.get("/hit", params={"site": SITE, "vid": "v", "url": "https://shop.example/"})
            return imp, hit

    imp, hit = run(scenario())
    assert imp.status_code == 503 and imp.headers["retry-after"] == "7", imp.text
    assert imp.json()["impression_id"] == "imp-503"
    assert hit.status_code == 200  # the hits do not depend on the impressions topic
