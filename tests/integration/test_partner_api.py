"""The partner API as a partner meets it, on the real broker and registry: keys, declarations, tagged URLs,
and the enrichment using (then forgetting) a campaign declared over REST."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient

from passerelle.connectors.partner_api.app import create_app
from passerelle.connectors.partner_api.config import ApiConfig, ApiTopics
from passerelle.schemas.catalog import load_catalog
from passerelle.streams.enrichment.attribution import attribute
from passerelle.streams.enrichment.processor import EnrichmentProcessor, EnrichmentTopics
from passerelle.streams.runtime import Runner, RunnerConfig
from tests.integration.api_helpers import cli, isolate_env, make_keys
from tests.integration.kafka_helpers import TopicReader, create_topics, produce_avro

pytestmark = pytest.mark.integration
CATALOG = load_catalog()
MAX_URLS = 5
MAX_BODY = 16 * 1024


@dataclass
class Env:
    client: TestClient
    topics: EnrichmentTopics
    keys_topic: str
    bootstrap: str
    registry: str
    keys: dict[str, str]  # name -> API key

    def h(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[who]}"}


def until(check: Callable[[], Any], timeout: float = 10.0, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(every)


@pytest.fixture(scope="module")
def env(kafka_bootstrap: str, schema_registry_url: str) -> Iterator[Env]:
    run = uuid.uuid4().hex[:8]
    t = EnrichmentTopics(
        hits_raw=f"hits.raw.api.{run}", hits_enriched=f"hits.enriched.api.{run}",
        identity_links=f"identity.links.api.{run}", campaigns=f"campaigns.api.{run}",
        undeclared=f"campaigns.undeclared.api.{run}", crm_profiles=f"crm.profiles.api.{run}", privacy_requests=None,
    )  # fmt: skip
    keys_topic = f"partners.keys.api.{run}"
    create_topics(kafka_bootstrap, {t.hits_raw: 1, t.hits_enriched: 1, f"dlq.api.{run}": 1})
    create_topics(
        kafka_bootstrap, {t.identity_links: 1, t.campaigns: 1, t.undeclared: 1, t.crm_profiles: 1, keys_topic: 1},
        {"cleanup.policy": "compact"},
    )  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        isolate_env(mp, kafka_bootstrap, schema_registry_url)
        keys = make_keys(keys_topic, [
            ("mailer", "mailer", ["campaigns:write", "campaigns:read"]),
            ("rival", "rival", ["campaigns:write", "campaigns:read"]),
            ("reader", "mailer", ["campaigns:read"]),
        ])  # fmt: skip
        config = ApiConfig(
            bootstrap_servers=kafka_bootstrap, schema_registry_url=schema_registry_url,
            topics=ApiTopics(campaigns=t.campaigns, undeclared=t.undeclared, keys=keys_topic),
            max_batch_urls=MAX_URLS, max_body_bytes=MAX_BODY,
        )  # fmt: skip
        started = time.monotonic()
        with TestClient(create_app(config)) as client:
            print(f"API started in {time.monotonic() - started:.1f}s")
            yield Env(client, t, keys_topic, kafka_bootstrap, schema_registry_url, keys)


def declaration(key: str = "EREC-123", **changes: Any) -> dict[str, Any]:
    body = {
        "key": key,
        "name": "Black Friday newsletter",
        "landing_url": "https://shop.example/black-friday?color=red#top",
        "channel": "email",
        "valid_from": "2026-11-20T00:00:00Z",
        "valid_to": "2026-12-01T00:00:00",
        "cost_model": "flat",
        "cost_amount": 1500,
        "currency": "EUR",
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


def errors(response: Any) -> dict[str, str]:
    return {e["field"]: e["reason"] for e in response.json()["errors"]}


# --- keys ----------------------------------------------------------------------------------------------------


def test_no_key_a_wrong_key_or_a_missing_scope_is_refused(env: Env) -> None:
    c = env.client
    answer = c.get("/v1/campaigns")
    assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer"
    assert "authorization" in errors(answer)
    key_id, secret = env.keys["mailer"].split(".")
    for wrong in ("nonsense", f"{key_id}.{secret[::-1]}", f"{'0' * 16}.{secret}", f"{key_id}"):
        assert c.get("/v1/campaigns", headers={"Authorization": f"Bearer {wrong}"}).status_code == 401, wrong
    assert c.get("/v1/campaigns", headers={"X-Api-Key": env.keys["mailer"]}).status_code == 200
    refused = c.post("/v1/campaigns", json=declaration("EREC-1"), headers=env.h("reader"))
    assert refused.status_code == 403 and "campaigns:write" in errors(refused)["authorization"]


def test_a_revoked_key_is_refused_within_seconds(env: Env) -> None:
    code, out = cli("partners", "add", "temp", "--scope", "campaigns:read", "--topic", env.keys_topic)
    assert code == 0
    key = out.strip()
    headers = {"Authorization": f"Bearer {key}"}
    assert until(lambda: env.client.get("/v1/campaigns", headers=headers).status_code == 200), "new key not picked up"
    code, listing = cli("partners", "list", "--topic", env.keys_topic)
    assert code == 0 and key.split(".")[0] in listing and key.split(".")[1] not in listing
    started = time.monotonic()
    assert cli("partners", "revoke", key.split(".")[0], "--topic", env.keys_topic)[0] == 0
    refused = until(lambda: env.client.get("/v1/campaigns", headers=headers).status_code == 401, timeout=5)
    assert refused, "revoked key still accepted after 5 s"
    print(f"revoked key refused {time.monotonic() - started:.2f}s after `partners revoke` returned")
    listed = [line for line in cli("partners", "list", "--topic", env.keys_topic)[1].splitlines() if key[:16] in line]
    assert len(listed) == 1 and "Z" in listed[0].split()[-2]  # its REVOKED column holds a time
    assert env.client.get("/v1/campaigns", headers=env.h("mailer")).status_code == 200  # the others still work


# --- declarations --------------------------------------------------------------------------------------------


def test_declare_read_change_and_delete_a_campaign(env: Env) -> None:
    c, mailer = env.client, env.h("mailer")
    created = c.post("/v1/campaigns", json=declaration("EREC-501"), headers=mailer)
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["partner"] == "mailer" and body["family"] == "xtor" and body["medium"] == "email"
    assert body["tagged_url"] == "https://shop.example/black-friday?color=red&xtor=EREC-501#top"
    assert body["valid_from"] == "2026-11-20T00:00:00Z" and body["valid_to"] == "2026-12-01T00:00:00Z"
    assert c.get("/v1/campaigns/EREC-501", headers=mailer).json() == body
    assert "EREC-501" in [x["key"] for x in c.get("/v1/campaigns", headers=env.h("reader")).json()["campaigns"]]

    again = c.post("/v1/campaigns", json=declaration("EREC-501"), headers=mailer)
    assert again.status_code == 409 and "PUT" in errors(again)["key"]
    changed = c.put("/v1/campaigns/EREC-501", json=declaration(None, name="Black Friday, week 2"), headers=mailer)
    assert changed.status_code == 200 and changed.json()["name"] == "Black Friday, week 2"
    utm = c.put("/v1/campaigns/spring_sale", json=declaration(None, channel="social", source="tiktok"), headers=mailer)
    assert utm.status_code == 201, utm.text
    assert utm.json()["tagged_url"] == (
        "https://shop.example/black-friday?color=red&utm_source=tiktok&utm_medium=social&utm_campaign=spring_sale#top"
    )

    assert c.delete("/v1/campaigns/EREC-501", headers=mailer).status_code == 204
    gone = c.get("/v1/campaigns/EREC-501", headers=mailer)
    assert gone.status_code == 404 and "key" in errors(gone)
    assert "EREC-501" not in [x["key"] for x in c.get("/v1/campaigns", headers=mailer).json()["campaigns"]]
    assert c.delete("/v1/campaigns/EREC-501", headers=mailer).status_code == 404


def test_another_partners_campaign_is_never_read_changed_nor_deleted(env: Env) -> None:
    c = env.client
    rival = c.post("/v1/campaigns", json=declaration("AL-610", channel="affiliation"), headers=env.h("rival"))
    assert rival.status_code == 201, rival.text
    for answer in (
        c.get("/v1/campaigns/AL-610", headers=env.h("mailer")),
        c.put("/v1/campaigns/AL-610", json=declaration(None, channel="affiliation"), headers=env.h("mailer")),
        c.delete("/v1/campaigns/AL-610", headers=env.h("mailer")),
        c.get("/v1/campaigns/AL-610/url", headers=env.h("mailer")),
        c.post("/v1/campaigns/urls", json={"urls": [{"campaign": "AL-610"}]}, headers=env.h("mailer")),
    ):
        assert answer.status_code == 403, answer.text
    clash = c.post("/v1/campaigns", json=declaration("AL-610", channel="affiliation"), headers=env.h("mailer"))
    assert clash.status_code == 409 and "another partner" in errors(clash)["key"]
    assert "AL-610" not in [x["key"] for x in c.get("/v1/campaigns", headers=env.h("mailer")).json()["campaigns"]]
    assert c.get("/v1/campaigns/AL-610", headers=env.h("rival")).json()["partner"] == "rival"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (declaration(name=None), "name"),
        (declaration("EREC 12"), "key"),
        (declaration("XYZ-12", family="xtor"), "key"),
        (declaration("bad key", family="utm"), "key"),
        (declaration("EREC-12", landing_url="shop.example/bf"), "landing_url"),
        (declaration("EREC-12", medium="display"), "medium"),
        (declaration("sale", medium="telepathy", channel=None), "medium"),
        (declaration("EREC-12", channel="tv"), "channel"),
        (declaration("EREC-12", valid_from="2026-12-02T00:00:00Z"), "valid_to"),
        (declaration("EREC-12", valid_from="not a date"), "valid_from"),
        (declaration("EREC-12", cost_amount=-3), "cost_amount"),
        (declaration("EREC-12", cost_amount="a lot"), "cost_amount"),
        (declaration("EREC-12", currency="euro"), "currency"),
        (declaration("EREC-12", currency=None), "currency"),
        (declaration("EREC-12", cost_model="per view"), "cost_model"),
        (declaration("EREC-12", family="pk"), "family"),
        (declaration("EREC-12", partner="rival"), "partner"),
        (declaration("EREC-12", source="newsletter"), "source"),
        (declaration(None), "key"),
        ({"key": "EREC-12"}, "name"),
    ],
)
def test_each_invalid_declaration_names_its_field(env: Env, body: dict[str, Any], field: str) -> None:
    answer = env.client.post("/v1/campaigns", json=body, headers=env.h("mailer"))
    assert answer.status_code == 422, answer.text
    assert field in errors(answer), answer.json()
    assert env.client.get("/v1/campaigns/EREC-12", headers=env.h("mailer")).status_code == 404


def test_invalid_bodies_and_paths(env: Env) -> None:
    c, mailer = env.client, env.h("mailer")
    mismatch = c.put("/v1/campaigns/EREC-700", json=declaration("EREC-701"), headers=mailer)
    assert mismatch.status_code == 422 and "key" in errors(mismatch)
    not_json = c.post("/v1/campaigns", content=b"{nope", headers={**mailer, "Content-Type": "application/json"})
    assert not_json.status_code == 422 and not_json.json()["errors"]
    huge = c.post("/v1/campaigns", json=declaration(name="x" * (MAX_BODY + 1)), headers=mailer)
    assert huge.status_code == 413 and "body" in errors(huge)


# --- tagged URLs ---------------------------------------------------------------------------------------------


def test_tagged_urls_one_and_in_batches(env: Env) -> None:
    c, mailer = env.client, env.h("mailer")
    assert c.put("/v1/campaigns/SEC-77", json=declaration(None, channel="search"), headers=mailer).status_code == 201
    body = declaration("mtm_winter", family="mtm", channel="display", source="news.example")
    assert c.post("/v1/campaigns", json=body, headers=mailer).status_code == 201

    landing = "https://shop.example/p/42?size=44&utm_campaign=stale#reviews"
    one = c.get("/v1/campaigns/SEC-77/url", params={"landing": landing}, headers=env.h("reader"))
    assert one.status_code == 200, one.text
    assert one.json() == {"campaign": "SEC-77", "landing": landing,
                          "url": "https://shop.example/p/42?size=44&xtor=SEC-77#reviews"}  # fmt: skip
    default = c.get("/v1/campaigns/mtm_winter/url", headers=mailer).json()["url"]
    assert default == (
        "https://shop.example/black-friday?color=red&mtm_source=news.example&mtm_medium=display&mtm_campaign=mtm_winter#top"
    )
    bad = c.get("/v1/campaigns/SEC-77/url", params={"landing": "javascript:alert(1)"}, headers=mailer)
    assert bad.status_code == 422 and "landing" in errors(bad)
    assert c.get("/v1/campaigns/SEC-404/url", headers=mailer).status_code == 404

    batch = [{"campaign": "SEC-77", "landing": f"https://shop.example/c/{i}?xtor=AD-1"} for i in range(3)]
    batch.append({"campaign": "mtm_winter"})
    answer = c.post("/v1/campaigns/urls", json={"urls": batch}, headers=mailer)
    assert answer.status_code == 200, answer.text
    urls = answer.json()["urls"]
    assert [attribute(u["url"], None).campaign for u in urls] == ["SEC-77", "SEC-77", "SEC-77", "mtm_winter"]
    assert urls[0]["url"] == "https://shop.example/c/0?xtor=SEC-77"

    too_many = c.post("/v1/campaigns/urls", json={"urls": [{"campaign": "SEC-77"}] * (MAX_URLS + 1)}, headers=mailer)
    assert too_many.status_code == 413 and "urls" in errors(too_many)
    unknown = c.post("/v1/campaigns/urls", json={"urls": [{"campaign": "SEC-77", "landing": "ftp://x"},
                                                          {"campaign": "nope"}]}, headers=mailer)  # fmt: skip
    assert unknown.status_code == 422
    assert set(errors(unknown)) == {"urls[0].landing", "urls[1].campaign"}
    missing = c.post("/v1/campaigns/urls", json={"urls": [{"landing": "https://shop.example/"}]}, headers=mailer)
    assert missing.status_code == 422 and "urls[0].campaign" in errors(missing)


def test_the_openapi_document_lists_every_endpoint(env: Env) -> None:
    doc = env.client.get("/openapi.json").json()
    paths = {(path, method) for path, methods in doc["paths"].items() for method in methods}
    assert paths >= {
        ("/v1/campaigns", "post"), ("/v1/campaigns", "get"), ("/v1/campaigns/{key}", "get"),
        ("/v1/campaigns/{key}", "put"), ("/v1/campaigns/{key}", "delete"), ("/v1/campaigns/undeclared", "get"),
        ("/v1/campaigns/undeclared/{key}/declare", "post"), ("/v1/campaigns/{key}/url", "get"),
        ("/v1/campaigns/urls", "post"), ("/healthz", "get"),
    }  # fmt: skip
    assert {"HTTPBearer", "APIKeyHeader"} <= set(doc["components"]["securitySchemes"])
    page = env.client.get("/docs")
    assert page.status_code == 200 and "//cdn" not in page.text and "https://" not in page.text  # nothing from a CDN
    assert env.client.get("/docs/static/swagger-ui-bundle.js").status_code == 200
    assert env.client.get("/healthz").json() == {"status": "ok"}


def test_metrics_count_requests_by_route_template_never_by_key(env: Env) -> None:
    """A scraper sees each route once whatever the keys asked for: no campaign key becomes a series."""
    for key in ("NO-SUCH-1", "NO-SUCH-2"):
        assert env.client.get(f"/v1/campaigns/{key}", headers=env.h("reader")).status_code == 404
    assert env.client.get("/v1/nothing-here").status_code == 404
    text = env.client.get("/metrics").text
    counts = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
              if line.startswith("passerelle_api_request_seconds_count")}  # fmt: skip
    assert counts['passerelle_api_request_seconds_count{method="GET",route="/v1/campaigns/{key}",status="404"}'] >= 2
    assert counts['passerelle_api_request_seconds_count{method="GET",route="unmatched",status="404"}'] >= 1
    assert "NO-SUCH" not in text and "nothing-here" not in text
    assert "passerelle_api_ready 1.0" in text


# --- the enrichment uses what is declared --------------------------------------------------------------------


def _hit(n: int, visitor: str, params: dict[str, str]) -> dict[str, Any]:
    return {
        "event_id": f"api-{n}", "site": "shop.example", "visitor_id": visitor, "customer_id": None,
        "event_time": int(time.time() * 1000), "type": "page_view",
        "url": "https://shop.example/p/1?" + "&".join(f"{k}={v}" for k, v in params.items()), "referrer": None,
        "page": None, "campaign_params": params, "product": None, "order": None,
        "consent": {"analytics": True, "marketing": True}, "user_agent": None, "ip_truncated": "203.0.113.0",
    }  # fmt: skip


def test_a_campaign_declared_over_rest_is_used_by_the_enrichment_and_forgotten_once_deleted(env: Env) -> None:
    t = env.topics
    schema = CATALOG.schema_text
    runner = Runner(
        EnrichmentProcessor(t),
        RunnerConfig(
            app_id=f"enrich-api-{uuid.uuid4().hex[:8]}", bootstrap_servers=env.bootstrap,
            schema_registry_url=env.registry, dead_letter_topic=t.hits_raw.replace("hits.raw", "dlq"),
            output_schemas={t.hits_enriched: schema("EnrichedHit"), t.identity_links: schema("IdentityLink"),
                            t.undeclared: schema("Campaign")},
            commit_interval_ms=50,
        ),
    )  # fmt: skip
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    enriched = TopicReader(env.bootstrap, env.registry, t.hits_enriched)
    tag = {"xtor": "EREC-4567-[cart_reminder]-20261130-[link]-c1@clients"}
    try:

        def send(n: int, visitor: str) -> dict[str, Any]:
            produce_avro(env.bootstrap, env.registry, t.hits_raw, schema("Hit"), [(visitor, _hit(n, visitor, tag))])
            records = enriched.read(until=n, timeout=60)
            assert len(records) >= n, f"hit {n} not enriched"
            return dict(records[n - 1][1])

        first = send(1, "va")
        assert first["campaign_undeclared"] is True and first["declared_campaign"] is None
        c, mailer = env.client, env.h("mailer")
        listed = until(lambda: [u for u in c.get("/v1/campaigns/undeclared", headers=mailer).json()["undeclared"]
                                if u["key"] == "EREC-4567"], timeout=15)  # fmt: skip
        assert listed and listed[0]["medium"] == "email" and listed[0]["seen_url"].startswith("https://shop.example/p/1")
        code, out = cli("campaigns", "undeclared", "--topic", t.undeclared, "--campaigns-topic", t.campaigns)
        assert code == 0 and "EREC-4567" in out

        started = time.monotonic()
        declared = c.post("/v1/campaigns/undeclared/EREC-4567/declare", json={"name": "Cart reminder"}, headers=mailer)
        assert declared.status_code == 201, declared.text
        assert declared.json()["tagged_url"] == "https://shop.example/p/1?xtor=EREC-4567"
        still = c.get("/v1/campaigns/undeclared", headers=mailer).json()["undeclared"]
        assert "EREC-4567" not in [u["key"] for u in still]
        assert c.post("/v1/campaigns/undeclared/EREC-4567/declare", headers=mailer).status_code == 409
        assert c.post("/v1/campaigns/undeclared/EREC-9/declare", headers=mailer).status_code == 404

        def declared_hit(n: int) -> bool:
            return send(n, f"vb{n}")["campaign_undeclared"] is False

        n = 2
        while not declared_hit(n):  # the enrichment's table follows `campaigns`: the next hits use the declaration
            assert time.monotonic() - started < 10, "declared campaign not used within 10 s"
            n += 1
            time.sleep(0.3)
        hit = dict(enriched.records[n - 1][1])
        assert hit["declared_campaign"]["name"] == "Cart reminder" and hit["declared_campaign"]["partner"] == "mailer"
        print(f"declared campaign used by the enrichment {time.monotonic() - started:.2f}s after the POST")

        started = time.monotonic()
        assert c.delete("/v1/campaigns/EREC-4567", headers=mailer).status_code == 204
        n += 1
        while send(n, f"vc{n}")["campaign_undeclared"] is not True:
            assert time.monotonic() - started < 10, "deleted campaign still declared after 10 s"
            n += 1
            time.sleep(0.3)
        print(f"deleted campaign undeclared again {time.monotonic() - started:.2f}s after the DELETE")
    finally:
        runner.stop()
        thread.join(30)
        enriched.close()


def test_served_by_uvicorn_on_a_port(env: Env) -> None:
    import httpx

    from passerelle.connectors.partner_api.server import bind, server
    from passerelle.deploy.local.stack import free_port

    port = free_port()
    config = ApiConfig(
        bootstrap_servers=env.bootstrap, schema_registry_url=env.registry,
        topics=ApiTopics(campaigns=env.topics.campaigns, undeclared=env.topics.undeclared, keys=env.keys_topic),
    )  # fmt: skip
    sock = bind("127.0.0.1", port)
    srv = server(create_app(config), "127.0.0.1", port, log_level="warning")
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        assert until(lambda: srv.started, timeout=30), "uvicorn did not start"
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
        answer = httpx.get(f"{base}/v1/campaigns", headers=env.h("mailer"))
        assert answer.status_code == 200 and isinstance(answer.json()["campaigns"], list)
        big = httpx.post(f"{base}/v1/campaigns/urls", content=b"x" * (2 * 1024 * 1024), headers=env.h("mailer"))
        assert big.status_code == 413
        with pytest.raises(Exception, match="already in use"):
            bind("127.0.0.1", port)
    finally:
        srv.should_exit = True
        thread.join(15)
        sock.close()


def test_wrong_secrets_for_one_key_id_are_answered_429_without_hashing(env: Env) -> None:
    from passerelle.connectors.partner_api.keys import CHECK_BURST

    code, out = cli("partners", "add", "guessed", "--scope", "campaigns:read", "--topic", env.keys_topic)
    assert code == 0
    key_id, secret = out.strip().split(".")
    right = {"Authorization": f"Bearer {key_id}.{secret}"}
    wrong = {"Authorization": f"Bearer {key_id}.{secret[::-1]}"}
    assert until(lambda: env.client.get("/v1/campaigns", headers=right).status_code == 200), "new key not picked up"
    answers = [env.client.get("/v1/campaigns", headers=wrong).status_code for _ in range(CHECK_BURST)]
    assert answers == [401] * CHECK_BURST
    throttled = env.client.get("/v1/campaigns", headers=wrong)
    assert throttled.status_code == 429 and "authorization" in errors(throttled)
    assert 1 <= int(throttled.headers["retry-after"]) <= 6
    # The partner's own verified key is not locked out by someone guessing at its key id.
    assert env.client.get("/v1/campaigns", headers=right).status_code == 200
