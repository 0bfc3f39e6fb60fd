"""The collector's HTTP answers that need no broker: hostile bodies and what the public port serves.

The producer is never started here: every request below is answered before
an event would be produced.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from passerelle.connectors.collector.app import create_app
from passerelle.connectors.collector.config import CollectorConfig

pytestmark = pytest.mark.unit

SITE, KEY = "shop.example", "key-shop-0123456789"


def config(**overrides: Any) -> CollectorConfig:
    return CollectorConfig(bootstrap_servers="127.0.0.1:1", schema_registry_url="http://127.0.0.1:1",
                           sites={SITE: KEY}, **overrides)  # fmt: skip


def call(cfg: CollectorConfig, method: str, path: str, **kwargs: Any) -> httpx.Response:
    async def scenario() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(cfg), client=("203.0.113.77", 51234))
        async with httpx.AsyncClient(transport=transport, base_url="http://collector") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(scenario())


def test_deep_json_is_400_not_500() -> None:
    """Issue 17 item 8: ``[`` x 100,000 then ``]`` x 100,000 made the JSON parser recurse out: a 500."""
    body = b"[" * 100_000 + b"]" * 100_000
    resp = call(config(), "POST", "/v1/events", content=body, headers={"X-Api-Key": KEY})
    assert resp.status_code == 400, resp.text
    assert "nested too deeply" in resp.json()["error"]
    deep_object = b'{"events": ' + b'{"a":' * 50_000 + b"1" + b"}" * 50_001
    resp = call(config(), "POST", "/v1/events", content=deep_object, headers={"X-Api-Key": KEY})
    assert resp.status_code == 400, resp.text


@pytest.mark.parametrize("path", ["/openapi.json", "/docs", "/redoc", "/docs/oauth2-redirect"])
def test_api_description_is_not_served_by_default(path: str) -> None:
    """Issue 17 item 11: the public port served ``/openapi.json`` to anyone."""
    assert call(config(), "GET", path).status_code == 404


def test_api_description_is_served_when_asked() -> None:
    resp = call(config(serve_openapi=True), "GET", "/openapi.json")
    assert resp.status_code == 200, resp.text
    assert set(resp.json()["paths"]) >= {"/hit", "/v1/events"}
    assert call(config(serve_openapi=True), "GET", "/docs").status_code == 404  # a UI would load scripts from a CDN


def test_the_hot_routes_answer_other_methods_405_as_fastapi_did() -> None:
    """Issue 18: ``GET /hit`` and ``POST /v1/events`` skip FastAPI's routing; other methods still reach it."""
    assert call(config(), "POST", "/hit").status_code == 405
    assert call(config(), "GET", "/v1/events").status_code == 405
    assert call(config(), "GET", "/nowhere").status_code == 404


def test_hot_routes_keep_their_refusals_and_count_them_in_the_metrics() -> None:
    async def scenario() -> tuple[list[int], str]:
        transport = httpx.ASGITransport(app=create_app(config()), client=("203.0.113.77", 51234))
        async with httpx.AsyncClient(transport=transport, base_url="http://collector") as client:
            statuses = [
                (await client.get("/hit", params={"site": SITE})).status_code,  # no vid
                (await client.post("/v1/events", json={"events": []})).status_code,  # no key
                (await client.post("/v1/events", content=b"[]", headers={"X-Api-Key": KEY})).status_code,
            ]
            return statuses, (await client.get("/metrics")).text

    statuses, metrics = asyncio.run(scenario())
    assert statuses == [400, 401, 400]
    assert 'passerelle_collector_events_total{endpoint="pixel",outcome="rejected"} 1.0' in metrics
    assert 'passerelle_collector_request_seconds_count{endpoint="pixel",status="400"} 1.0' in metrics
    assert 'passerelle_collector_request_seconds_count{endpoint="batch",status="401"} 1.0' in metrics
    assert 'passerelle_collector_request_seconds_count{endpoint="batch",status="400"} 1.0' in metrics


_QUERY_PARTS = [*"&=+%;a é", "%2", "%41", "%zz", "%C3%A9", "%ff", "site", "vid", "url", "https%3A%2F%2Fx%2F%3Fa%3D1"]


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.sampled_from(_QUERY_PARTS), max_size=16))
def test_the_pixel_query_is_read_as_parse_qsl_reads_it(parts: list[str]) -> None:
    """Issue 18: the pixel's own query parser answers what ``dict(parse_qsl(..., keep_blank_values=True))`` does."""
    from urllib.parse import parse_qsl

    from passerelle.connectors.collector.app import query_params

    raw = "".join(parts).encode("utf-8").decode("latin-1").encode("latin-1")  # bytes as a client sends them
    expected = dict(parse_qsl(raw.decode("latin-1"), keep_blank_values=True))
    assert query_params({"query_string": raw}) == expected
