"""The retargeting partner stand-in without a broker: its declarations pass the API's rules, the visitors it
retargets, the traffic it brings (attributed by the real enrichment logic, credited by the real post-view
processor), the figures it uploads, and its HTTP client against a fake partner API."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import httpx
import pytest

from passerelle.connectors.collector.validation import HitRules, RequestContext, event_to_hit
from passerelle.connectors.generator import retargeting as rt
from passerelle.connectors.generator.shop import DAY, HOUR, MINUTE, FirstVisit, Shop
from passerelle.connectors.partner_api.app import CampaignIn, build_record, judged
from passerelle.connectors.partner_api.tagging import tag_of, tag_url
from passerelle.schemas.catalog import load_catalog
from passerelle.streams.enrichment.enricher import Enricher
from passerelle.streams.postview.processor import PostViewProcessor, PostViewTopics
from passerelle.streams.runtime.testing import ProcessorDriver

pytestmark = pytest.mark.unit

START = 1_795_082_400_000  # 2026-11-19T10:00:00Z
SPAN = 22 * HOUR
SITE = "shop.example"
VISITORS = 300


def records(shop: Shop) -> dict[str, dict[str, Any]]:
    """The ``Campaign`` records the API would publish for the stand-in's declarations."""
    found = {}
    for body in rt.declarations(shop):
        record, early = build_record(CampaignIn(**body), body["key"], rt.PARTNER, START - DAY, {})
        invalid, clashes = judged(record, early, {}, rt.PARTNER)
        assert not invalid and not clashes, (invalid, clashes)
        found[body["key"]] = record
    return found


def api_tagger(shop: Shop) -> Any:
    """What ``POST /v1/campaigns/urls`` answers, from the declared records (the API's own tagging)."""
    declared = records(shop)

    def tag(pairs: Any) -> dict[tuple[str, str], str]:
        return {(key, landing): tag_url(landing, tag_of(declared[key])) for key, landing in pairs}  # type: ignore[arg-type]

    return tag


@pytest.fixture(scope="module")
def shop() -> Shop:
    return Shop(5, START, span_ms=SPAN, customers=150)


@pytest.fixture(scope="module")
def traffic(shop: Shop) -> rt.Traffic:
    return rt.simulate(shop, VISITORS, api_tagger(shop))


# --- declarations ----------------------------------------------------------------------------------------


def test_declarations_are_display_campaigns_the_api_accepts(shop: Shop) -> None:
    declared = records(shop)
    assert set(declared) == set(rt.BY_KEY)
    for record in declared.values():
        assert record["medium"] == "display" and record["channel"] == "display"
        assert record["partner"] == rt.PARTNER and record["cost_model"] == "CPC" and record["currency"] == "EUR"
        assert "utm_source=retarget" in record["tagged_url_template"]
        assert record["valid_from"] < shop.start_ms and record["valid_to"] > shop.start_ms + shop.span_ms


# --- who is retargeted -----------------------------------------------------------------------------------


def first(index: int, viewed: tuple[str, ...] = ("SKU-1001",), cart: tuple[str, ...] = (), ordered: bool = False,
          room: int = 10 * HOUR) -> FirstVisit:  # fmt: skip
    return FirstVisit(index, f"v-{index}", 5 * MINUTE, room, viewed, cart, ordered)


def test_only_visitors_who_viewed_without_ordering_and_have_time_left_are_eligible() -> None:
    assert rt.eligible(first(0))
    assert not rt.eligible(first(0, viewed=()))
    assert not rt.eligible(first(0, ordered=True))
    assert not rt.eligible(first(0, room=rt.MIN_ROOM_MS - 1))


def test_the_audience_has_quotas_and_at_least_one_click_and_one_direct_return() -> None:
    assert rt.plan_audience([first(0, viewed=())], seed=1) == {}
    two = rt.plan_audience([first(0), first(1)], seed=1, share=1.0)
    assert sorted(t.outcome for t in two.values()) == [rt.CLICK, rt.POSTVIEW]
    many = rt.plan_audience([first(i) for i in range(100)], seed=1)
    outcomes = Counter(t.outcome for t in many.values())
    assert len(many) == 60 and outcomes == {rt.CLICK: 24, rt.POSTVIEW: 21, rt.NONE: 15}
    assert rt.plan_audience([first(i) for i in range(100)], seed=1) == many  # seeded


def test_a_cart_left_behind_gets_the_cart_campaign_and_its_product() -> None:
    targets = rt.plan_audience([first(0, viewed=("SKU-1001", "SKU-1002"), cart=("SKU-1003",)), first(1)], 3, 1.0)
    assert targets[0].campaign == "rt_carts" and targets[0].landing == "SKU-1003"
    assert targets[1].campaign == "rt_viewed" and targets[1].landing == "SKU-1001"


def test_impressions_come_before_the_visit_and_inside_the_room() -> None:
    for target in rt.plan_audience([first(i) for i in range(200)], seed=9).values():
        times = target.impression_times
        assert list(times) == sorted(times) and 1 <= len(times) <= 4
        assert times[0] > 5 * MINUTE  # after the first visit
        if target.visit_at is not None:
            assert 0 < target.visit_at - times[-1] <= 12 * HOUR
            assert target.visit_at <= 5 * MINUTE + 10 * HOUR
            if target.outcome == rt.CLICK:
                assert target.visit_at - times[-1] <= 40_000
            else:
                assert target.visit_at - 5 * MINUTE > 30 * MINUTE  # a new visit
        else:
            assert target.outcome == rt.NONE and times[-1] <= 5 * MINUTE + 10 * HOUR


# --- the traffic -----------------------------------------------------------------------------------------


def test_visitors_not_retargeted_keep_their_journey(shop: Shop, traffic: rt.Traffic) -> None:
    plain = list(shop.journeys(VISITORS))
    assert traffic.targets
    changed = {i for i, (before, after) in enumerate(zip(plain, traffic.journeys, strict=True))
               if before.events != after.events}  # fmt: skip
    assert changed <= set(traffic.targets)
    assert {i for i, t in traffic.targets.items() if t.outcome != rt.NONE} <= changed  # they come back


def test_same_seed_same_partner_traffic(shop: Shop, traffic: rt.Traffic) -> None:
    again = rt.simulate(shop, VISITORS, api_tagger(shop))
    assert again.impressions == traffic.impressions and again.events() == traffic.events()


def test_every_event_is_valid_and_in_the_window(shop: Shop, traffic: rt.Traffic) -> None:
    ctx = RequestContext(received_at_ms=START + SPAN + MINUTE)
    rules = HitRules(sites=frozenset({SITE}))
    for event in traffic.events():
        event_to_hit(json.loads(json.dumps(event)), ctx, rules)
        assert START <= event["event_time"] <= START + SPAN
    for imp in traffic.impressions:
        assert START <= imp["event_time"] <= START + SPAN
        assert imp["site"] == SITE and imp["campaign_key"] in rt.BY_KEY and imp["impression_id"].startswith("retarget-")
    assert len({i["impression_id"] for i in traffic.impressions}) == len(traffic.impressions)


def enrich(shop: Shop, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The enrichment's own logic over the events, with the stand-in's campaigns declared."""
    ctx = RequestContext(received_at_ms=START + SPAN + MINUTE)
    rules = HitRules(sites=frozenset({SITE}))
    campaigns = records(shop)
    enricher, states, out = Enricher(), {}, []  # type: ignore[var-annotated]
    for event in events:
        hit = event_to_hit(json.loads(json.dumps(event)), ctx, rules).to_avro()
        _, states[hit["visitor_id"]] = enricher.enrich(hit, states.get(hit["visitor_id"]), campaigns, {}, START + SPAN)
        out.append(hit)
    return out


def test_clicks_are_attributed_to_the_declared_campaign_and_post_views_credited(
    shop: Shop, traffic: rt.Traffic
) -> None:
    enriched = enrich(shop, traffic.events())
    by_id = {h["event_id"]: h for h in enriched}
    for click in traffic.clicks:
        hit = by_id[click["event_id"]]
        assert hit["declared_campaign"]["key"] == click["campaign_key"] and not hit["campaign_undeclared"]
        assert hit["traffic_source"]["medium"] == "display" and hit["traffic_source"]["source"] == rt.PARTNER
    attributed = rt.attributed(enriched)
    assert sum(attributed.values()) >= len(traffic.clicks) > 0
    assert not any(h["campaign_undeclared"] and h["traffic_source"]["campaign"] in rt.BY_KEY for h in enriched)

    # The real post-view processor: impressions first (as the stand-in reports them before the visits), then hits.
    proc = PostViewProcessor(PostViewTopics(privacy_requests=None))
    driver = ProcessorDriver(proc, partitions=[0], now=START + SPAN,
                             output_schemas={"ads.postview": load_catalog().schema_text("PostView")})  # fmt: skip
    imps = [driver.record("ads.impressions", i["visitor_id"], {**i, "ad_server": rt.PARTNER}, i["event_time"])
            for i in traffic.impressions]  # fmt: skip
    step = driver.feed(*imps)
    assert not step.dead_letters
    hits = [driver.record("hits.enriched", h["visitor_id"], h, h["event_time"]) for h in enriched]
    outputs = [o.value for o in driver.feed(*hits).outputs]
    visits = [o for o in outputs if o["kind"] == "visit"]
    returns = {t.visitor_id for t in traffic.targets.values() if t.outcome in (rt.CLICK, rt.POSTVIEW)}
    assert {v["visitor_id"] for v in visits} == returns and len(visits) == len(returns)
    campaign_of = {t.visitor_id: t.campaign for t in traffic.targets.values()}
    assert all(v["campaign_key"] == campaign_of[v["visitor_id"]] for v in outputs)
    direct = [v for v in visits if v["visit_campaign"] not in rt.BY_KEY]
    assert len(direct) == traffic.outcomes()[rt.POSTVIEW]  # the post-view case proper: no click


def test_metrics_are_what_was_simulated(traffic: rt.Traffic) -> None:
    rows = traffic.metrics()
    total: Counter[str] = Counter()
    for row in rows:
        assert row["campaign_key"] in rt.BY_KEY and len(row["date"]) == 10
        assert row["currency"] == ("EUR" if row["metric"] == "cost" else None)
        total[row["metric"]] += row["value"]
    assert total["impressions"] == len(traffic.impressions)
    assert total["clicks"] == len(traffic.clicks) == traffic.outcomes()[rt.CLICK]
    cost = sum(rt.BY_KEY[c["campaign_key"]].cpc for c in traffic.clicks)
    assert total["cost"] == pytest.approx(cost)
    assert len({(r["date"], r["campaign_key"], r["metric"]) for r in rows}) == len(rows)


def test_impressions_and_metrics_pass_the_api_rules(shop: Shop, traffic: rt.Traffic) -> None:
    from datetime import UTC, datetime

    from passerelle.connectors.partner_api.impression_rules import validate_impression
    from passerelle.connectors.partner_api.metric_rules import validate_metric

    now = START + SPAN + MINUTE
    for imp in traffic.impressions:
        record, errors = validate_impression(json.loads(json.dumps(imp)), rt.PARTNER, now)
        assert record is not None and not errors, errors
        assert record["ad_server"] == rt.PARTNER and record["event_time"] == imp["event_time"]
    today = datetime.fromtimestamp(now / 1000, UTC).date()
    for row in traffic.metrics():
        verdict = validate_metric(json.loads(json.dumps(row)), rt.PARTNER, records(shop), today, now)
        assert verdict.record is not None and not verdict.errors and verdict.undeclared is None, verdict.errors


# --- the HTTP client -------------------------------------------------------------------------------------


class FakeApi:
    """A partner API with the shapes of passerelle's: PUT campaigns, tagged URLs, impressions, metrics."""

    def __init__(self) -> None:
        self.campaigns: dict[str, dict[str, Any]] = {}
        self.impressions: list[dict[str, Any]] = []
        self.metrics: list[dict[str, Any]] = []
        self.calls: list[tuple[str, str]] = []
        self.unavailable = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls.append((request.method, request.url.path))
        if request.headers.get("authorization") != "Bearer k.s":
            return httpx.Response(401, json={"errors": [{"field": "authorization", "reason": "API key not valid"}]})
        if self.unavailable:
            self.unavailable -= 1
            return httpx.Response(503, headers={"Retry-After": "1"}, json={"errors": []})
        body = json.loads(request.content or b"null")
        path = request.url.path
        if request.method == "PUT" and path.startswith("/v1/campaigns/"):
            key = path.rsplit("/", 1)[1]
            new = key not in self.campaigns
            self.campaigns[key] = body
            return httpx.Response(201 if new else 200, json=body)
        if path == "/v1/campaigns/urls":
            return httpx.Response(200, json={"urls": [{**u, "url": u["landing"] + "?utm_campaign=" + u["campaign"]}
                                                      for u in body["urls"]]})  # fmt: skip
        if path == "/v1/impressions":
            bad = [{"index": i, "field": "event_time", "reason": "too old"} for i, x in enumerate(body["impressions"])
                   if x["event_time"] < 0]  # fmt: skip
            self.impressions += [x for x in body["impressions"] if x["event_time"] >= 0]
            return httpx.Response(207 if bad else 200, json={"accepted": len(body["impressions"]) - len(bad),
                                                             "errors": bad})  # fmt: skip
        if path == "/v1/metrics":
            self.metrics += body["metrics"]
            undeclared = sorted({m["campaign_key"] for m in body["metrics"]} - set(self.campaigns))
            return httpx.Response(200, json={"accepted": len(body["metrics"]), "errors": [], "undeclared": undeclared})
        return httpx.Response(404, json={"errors": [{"field": "path", "reason": "Not Found"}]})


def client(api: FakeApi, key: str = "k.s", batch: int = 500) -> rt.PartnerClient:
    return rt.PartnerClient("http://api.test/", key, client=httpx.Client(transport=httpx.MockTransport(api)),
                            batch=batch, sleep=lambda _s: None)  # fmt: skip


def test_declaring_twice_replaces_and_never_fails(shop: Shop) -> None:
    api = FakeApi()
    assert client(api).declare(rt.declarations(shop)) == 2
    again = client(api)
    assert again.declare(rt.declarations(shop)) == 0 and again.report.declared == 2
    assert set(api.campaigns) == set(rt.BY_KEY) and "key" in api.campaigns["rt_viewed"]


def test_the_whole_partner_run_through_the_client(shop: Shop) -> None:
    api = FakeApi()
    with client(api, batch=7) as partner:
        partner.declare(rt.declarations(shop))
        traffic = rt.simulate(shop, 60, partner.tagged_urls)
        assert partner.report_impressions(traffic.impressions) == len(traffic.impressions) == len(api.impressions)
        assert partner.upload_metrics(traffic.metrics()) == len(api.metrics) == len(traffic.metrics())
    report = partner.report
    assert report.impressions_sent == report.impressions_accepted and not report.errors and not report.undeclared
    assert any("utm_campaign=rt_" in e["url"] for e in traffic.events())
    lines = "\n".join(report.lines())
    assert "2 declared through the API (2 new)" in lines
    assert f"{len(traffic.impressions)} accepted of {len(traffic.impressions)}" in lines


def test_refusals_and_partial_answers_are_reported() -> None:
    api = FakeApi()
    with pytest.raises(rt.PartnerApiError, match=r"HTTP 401.*--retargeting-key"):
        client(api, key="wrong").declare([{"key": "rt_x", "name": "x"}])
    partner = client(api)
    imps = [{"event_time": 1}, {"event_time": -1}]
    assert partner.report_impressions(imps) == 1
    assert partner.report.errors == ["impressions [1] event_time: too old"]
    assert partner.upload_metrics([{"campaign_key": "nobody", "date": "2026-11-19", "metric": "cost", "value": 1,
                                    "currency": "EUR"}]) == 1  # fmt: skip
    assert partner.report.undeclared == ["nobody"]


def test_a_503_is_retried_and_a_missing_endpoint_says_so() -> None:
    api = FakeApi()
    api.unavailable = 2
    assert client(api).upload_metrics([]) == 0  # nothing to send: no request
    assert client(api).declare([{"key": "rt_x", "name": "x"}]) == 1
    assert api.calls.count(("PUT", "/v1/campaigns/rt_x")) == 3
    with pytest.raises(rt.PartnerApiError, match="HTTP 404"):
        client(api)._batches("/v1/nothing", "rows", [{"a": 1}], "rows")


def test_nothing_listening_is_a_clear_error() -> None:
    partner = rt.PartnerClient("http://127.0.0.1:1", "k.s", attempts=1, sleep=lambda _s: None)
    with pytest.raises(rt.PartnerApiError, match="cannot reach the partner API"):
        partner.declare([{"key": "rt_x", "name": "x"}])
