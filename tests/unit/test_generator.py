"""The shop model and the sender without a broker: determinism, validity, proportions, retry rules."""

from __future__ import annotations

import itertools
import json
import os
from collections import Counter
from collections.abc import Callable
from typing import Any

import fastavro.validation
import httpx
import pytest

from passerelle.cli import main
from passerelle.commands.generate import resolve_site
from passerelle.connectors.collector.validation import HitRules, RequestContext, event_to_hit
from passerelle.connectors.generator.send import (
    CollectorRefused,
    CollectorUnavailable,
    CollectorUnreachable,
    EventSender,
    SendOptions,
    retry_after,
)
from passerelle.connectors.generator.shop import (
    CHANNELS,
    DECLARATIONS,
    HOUR,
    MINUTE,
    VISIT_TIMEOUT_MS,
    Journey,
    Shop,
    mix,
)
from passerelle.schemas.catalog import load_catalog
from passerelle.schemas.models import Campaign, CrmProfile
from passerelle.settings import CollectorSettings
from passerelle.streams.enrichment.attribution import attribute

pytestmark = pytest.mark.unit

START = 1_764_300_000_000  # 2025-11-28
SPAN = 22 * HOUR
SITE = "shop.example"


@pytest.fixture(scope="module")
def shop() -> Shop:
    return Shop(11, START, span_ms=SPAN, customers=250)


@pytest.fixture(scope="module")
def journeys(shop: Shop) -> list[Journey]:
    return list(shop.journeys(500))


# --- determinism -----------------------------------------------------------------------------------------


def test_same_seed_same_events_different_seed_different_events() -> None:
    first = Shop(5, START).events(60)
    assert first == Shop(5, START).events(60)
    assert Shop(5, START).campaigns() == Shop(5, START).campaigns()
    assert Shop(5, START).crm_profiles() == Shop(5, START).crm_profiles()
    other = Shop(6, START).events(60)
    assert {e["event_id"] for e in first}.isdisjoint(e["event_id"] for e in other)


def test_a_visitor_does_not_depend_on_how_many_visitors_are_asked() -> None:
    small = [j.events for j in Shop(5, START).journeys(10)]
    large = [j.events for j in Shop(5, START).journeys(40)]
    assert small == large[:10]


def test_another_start_time_keeps_the_visitors_but_not_the_event_ids() -> None:
    # A later run with the same seed replays the same people; new event ids keep it from being deduplicated away.
    a, b = Shop(5, START).journey(3), Shop(5, START + 7 * 24 * HOUR).journey(3)
    assert a.visitor_id == b.visitor_id
    assert [e["type"] for e in a.events] == [e["type"] for e in b.events]
    assert {e["event_id"] for e in a.events}.isdisjoint(e["event_id"] for e in b.events)


# --- validity --------------------------------------------------------------------------------------------


def test_every_event_passes_the_collector_validation_and_keeps_its_time(shop: Shop, journeys: list[Journey]) -> None:
    # Received just after the window ends, as in a live run: the collector keeps every client time.
    ctx = RequestContext(received_at_ms=START + SPAN + MINUTE, new_id=lambda: "server-id")
    rules = HitRules(sites=frozenset({SITE}))
    types: Counter[str] = Counter()
    for journey in journeys:
        for event in journey.events:
            raw = json.loads(json.dumps(event))  # what travels is JSON
            hit = event_to_hit(raw, ctx, rules)
            assert hit.event_id == event["event_id"] != "server-id"
            assert hit.event_time == event["event_time"]
            assert hit.visitor_id == journey.visitor_id
            types[hit.type.value] += 1
        landing = event_to_hit(journey.events[0], ctx, rules)
        assert bool(landing.campaign_params) == (journey.kind in ("campaign", "undeclared")), journey.events[0]["url"]
    assert set(types) == {"page_view", "product_view", "cart_add", "cart_remove", "order", "identify"}


def test_orders_add_up_and_carry_a_customer(journeys: list[Journey]) -> None:
    orders = [e for j in journeys for e in j.events if e["type"] == "order"]
    assert orders
    for event in orders:
        order = event["order"]
        assert event["customer_id"]
        assert order["revenue"] == pytest.approx(sum(li["price"] * li["quantity"] for li in order["lines"]))
        assert order["currency"] == "EUR" and order["lines"]
    assert len({e["order"]["order_id"] for e in orders}) == len(orders)


def test_crm_profiles_are_valid_records(shop: Shop, journeys: list[Journey]) -> None:
    catalog = load_catalog()
    schema = catalog.parsed_schema(catalog.topic("crm.profiles").value_schema)
    profiles = shop.crm_profiles()
    assert len(profiles) == 250 and len(shop.crm_profiles(10)) == 10
    for record in profiles:
        assert fastavro.validation.validate(record, schema, raise_errors=True)
        assert CrmProfile.from_avro(record).to_avro() == record
    ids = {p["customer_id"] for p in profiles}
    assert len(ids) == len(profiles)
    assert {j.customer_id for j in journeys if j.customer_id} <= ids  # every identified visitor joins the CRM
    consent = Counter(p["marketing_consent"] for p in profiles)
    assert 0.45 < consent[True] / len(profiles) < 0.8
    assert len({p["gender"] for p in profiles}) >= 2 and len({p["loyalty_tier"] for p in profiles}) >= 3


def test_campaigns_are_valid_records_and_cover_the_declared_tags(shop: Shop) -> None:
    catalog = load_catalog()
    schema = catalog.parsed_schema(catalog.topic("campaigns").value_schema)
    records = shop.campaigns()
    for record in records:
        assert fastavro.validation.validate(record, schema, raise_errors=True)
        assert Campaign.from_avro(record).to_avro() == record
    keys = {r["key"] for r in records}
    assert keys == {"EREC-123", "SEC-9", "AL-72", "AD-3001", "weekly_newsletter"}
    for channel in CHANNELS:
        if channel.key is not None:
            assert (channel.key in keys) == (channel.kind == "campaign"), channel


def test_event_times_are_monotonic_and_in_the_window(journeys: list[Journey]) -> None:
    for journey in journeys:
        times = [e["event_time"] for e in journey.events]
        assert times == sorted(times)
        assert times[0] >= START and times[-1] <= START + SPAN
        gaps = [b - a for a, b in itertools.pairwise(times)]
        long_gaps = [g for g in gaps if g > VISIT_TIMEOUT_MS]
        assert len(long_gaps) == int(journey.returned)  # one visit, or two separated by hours
        assert all(g >= HOUR for g in long_gaps)


# --- proportions -----------------------------------------------------------------------------------------


def _independent_mix(journeys: list[Journey]) -> dict[str, float]:
    """What the events say, read the way attribution and cart tracking would, not from the model's own flags."""
    declared = {d.key for d in DECLARATIONS}
    media: Counter[str] = Counter()
    undeclared = ordered = abandoned = identified = returned = 0
    for journey in journeys:
        first = journey.events[0]
        attr = attribute(first["url"], first.get("referrer"))
        media[attr.medium] += 1
        undeclared += attr.family is not None and attr.campaign not in declared
        types = [e["type"] for e in journey.events]
        ordered += "order" in types
        last_add = max((i for i, t in enumerate(types) if t == "cart_add"), default=-1)
        last_order = max((i for i, t in enumerate(types) if t == "order"), default=-1)
        abandoned += last_add > last_order
        identified += any(e.get("customer_id") for e in journey.events)
        times = [e["event_time"] for e in journey.events]
        back = [i + 1 for i, (a, b) in enumerate(itertools.pairwise(times)) if b - a > VISIT_TIMEOUT_MS]
        returned += bool(back) and "referrer" not in journey.events[back[0]]
    n = len(journeys)
    shares = {f"medium.{m}": c / n for m, c in media.items()}
    shares.update(undeclared=undeclared / n, ordered=ordered / n, abandoned=abandoned / n, identified=identified / n)
    shares["returned_direct"] = returned / n
    return shares


def test_the_mix_is_as_designed(journeys: list[Journey]) -> None:
    seen = _independent_mix(journeys)
    for medium in ("email", "cpc", "affiliate", "display", "organic", "social", "referral", "direct"):
        assert seen.get(f"medium.{medium}", 0) > 0.02, (medium, seen)
    assert 0.12 < seen["medium.direct"] < 0.28
    assert 0.15 < seen["medium.organic"] < 0.30
    assert 0.02 < seen["undeclared"] < 0.09
    assert 0.10 < seen["ordered"] < 0.35
    assert 0.08 < seen["abandoned"] < 0.30
    assert 0.20 < seen["identified"] < 0.50
    assert 0.12 < seen["returned_direct"] < 0.35
    # the model's own bookkeeping agrees with what its events say
    own = mix(journeys)
    assert own["ordered"] == pytest.approx(seen["ordered"])
    assert own["abandoned"] == pytest.approx(seen["abandoned"])
    assert own["identified"] == pytest.approx(seen["identified"])
    assert own["source.undeclared"] == pytest.approx(seen["undeclared"])
    assert own["returned"] == pytest.approx(seen["returned_direct"])


def test_undeclared_tags_are_the_undeclared_channels(journeys: list[Journey]) -> None:
    declared = {d.key for d in DECLARATIONS}
    for journey in journeys:
        attr = attribute(journey.events[0]["url"], journey.events[0].get("referrer"))
        if journey.kind in ("campaign", "undeclared"):
            assert attr.campaign == journey.channel.key
            assert (attr.campaign in declared) == (journey.kind == "campaign")
        else:
            assert attr.family is None


# --- the sender, against a scripted HTTP peer ------------------------------------------------------------


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def _events(n: int) -> list[dict[str, Any]]:
    return [
        {"event_id": f"e{i}", "site": SITE, "visitor_id": f"v{i % 4}", "type": "page_view", "url": "https://s/"}
        for i in range(n)
    ]


def _sender(handler: Callable[[httpx.Request], httpx.Response], options: SendOptions) -> tuple[EventSender, FakeTime]:
    fake = FakeTime()
    client = httpx.Client(transport=httpx.MockTransport(handler))
    sender = EventSender("http://collector", "key", options, client=client, progress=None, sleep=fake.sleep,
                         clock=fake.clock)  # fmt: skip
    return sender, fake


def _accept(request: httpx.Request) -> httpx.Response:
    events = json.loads(request.content)["events"]
    results = [{"index": i, "status": "accepted", "event_id": e["event_id"]} for i, e in enumerate(events)]
    return httpx.Response(200, json={"accepted": len(events), "rejected": 0, "results": results})


def test_a_503_retries_only_the_failed_events_after_retry_after() -> None:
    posted: list[list[str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        events = json.loads(request.content)["events"]
        posted.append([e["event_id"] for e in events])
        assert request.headers["x-api-key"] == "key"
        if len(posted) == 1:
            results = [{"index": i, "status": "failed" if i % 2 else "accepted"} for i in range(len(events))]
            return httpx.Response(503, headers={"Retry-After": "7"}, json={"accepted": 2, "results": results})
        return _accept(request)

    sender, fake = _sender(handler, SendOptions(batch_size=4))
    report = sender.send(_events(4))
    assert posted == [["e0", "e1", "e2", "e3"], ["e1", "e3"]]
    assert fake.sleeps == [7.0]
    assert (report.events, report.accepted, report.rejected, report.retries) == (4, 4, 0, 1)
    assert report.visitors == 4


def test_rejections_are_counted_with_the_first_reason() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        events = json.loads(request.content)["events"]
        results = [{"index": i, "status": "rejected", "errors": ["url: bad"]} for i in range(len(events))]
        return httpx.Response(400, json={"accepted": 0, "rejected": len(events), "results": results})

    sender, _ = _sender(handler, SendOptions(batch_size=2))
    report = sender.send(_events(3))
    assert (report.accepted, report.rejected) == (0, 3)
    assert report.first_rejection == "event e0: url: bad"


def test_retries_are_bounded_in_count_and_time() -> None:
    sender, fake = _sender(lambda r: httpx.Response(503, headers={"Retry-After": "3600"}), SendOptions(max_attempts=4))
    with pytest.raises(CollectorUnavailable, match="after 4 attempt"):
        sender.send(_events(3))
    assert fake.sleeps == [30.0, 30.0, 30.0]  # Retry-After capped; three waits between four attempts
    sender, fake = _sender(lambda r: httpx.Response(502), SendOptions(max_attempts=50, max_retry_s=10))
    with pytest.raises(CollectorUnavailable):
        sender.send(_events(1))
    assert sum(fake.sleeps) <= 10


def test_wrong_key_is_a_clear_refusal() -> None:
    sender, _ = _sender(lambda r: httpx.Response(403, json={"error": "API key not valid"}), SendOptions())
    with pytest.raises(CollectorRefused, match=r"HTTP 403: API key not valid.*--api-key"):
        sender.send(_events(1))


def test_nothing_listening_is_unreachable_at_once() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    sender, fake = _sender(refuse, SendOptions())
    with pytest.raises(CollectorUnreachable, match="cannot reach the collector at http://collector"):
        sender.send(_events(1))
    assert fake.sleeps == []


def test_rate_paces_requests() -> None:
    sender, fake = _sender(_accept, SendOptions(batch_size=100, rate=10))
    report = sender.send(_events(35))
    assert report.accepted == 35
    assert sum(fake.sleeps) == pytest.approx(3.0)  # batches of 10 at 0, 1, 2, 3 s


def test_retry_after_forms() -> None:
    assert retry_after("5") == 5.0
    assert retry_after(None) is None and retry_after("soon") is None
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: no wait


# --- the command -----------------------------------------------------------------------------------------


def test_site_and_key_come_from_the_collector_settings() -> None:
    settings = CollectorSettings(collector_sites={"shop.example": "k1", "blog.example": "k2"})  # type: ignore[arg-type]
    assert resolve_site(settings, None, None, need_key=True) == ("shop.example", "k1")
    assert resolve_site(settings, "blog.example", None, need_key=True) == ("blog.example", "k2")
    assert resolve_site(settings, "other.example", "k3", need_key=True) == ("other.example", "k3")
    with pytest.raises(Exception, match="unknown site 'nope'"):
        resolve_site(settings, "nope", None, need_key=True)
    with pytest.raises(Exception, match="no site configured"):
        resolve_site(CollectorSettings(), None, None, need_key=True)


def test_dry_run_prints_valid_json_events(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("PASSERELLE_")]:
        monkeypatch.delenv(key)
    assert main(["generate", "--dry-run", "--visitors", "8", "--seed", "3"]) == 0
    out, err = capsys.readouterr()
    events = [json.loads(line) for line in out.splitlines()]
    assert [e["event_time"] for e in events] == sorted(e["event_time"] for e in events)  # as a site sends them
    assert len({e["visitor_id"] for e in events}) == 8
    assert "seed 3" in err and "dry run" in err


def test_retargeting_options_are_documented_and_checked(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in [k for k in os.environ if k.startswith("PASSERELLE_")]:
        monkeypatch.delenv(key)
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for option in ("--retargeting-api URL", "--retargeting-key KEY", "--retargeting-share SHARE"):
        assert option in out
    assert "POST /v1/impressions" in out and "POST /v1/metrics" in out
    for args, message in (
        (["--dry-run", "--retargeting-api", "http://127.0.0.1:1"], "cannot be combined"),
        (["--site", "s", "--api-key", "k", "--retargeting-api", "http://127.0.0.1:1"], "needs --retargeting-key"),
        (["--site", "s", "--api-key", "k", "--retargeting-share", "0"], "--retargeting-share"),
    ):
        assert main(["generate", "--visitors", "3", *args]) != 0
        assert message in capsys.readouterr().err
