"""What a tag sends becomes a ``Hit``: fields, defaults, campaign parameters, errors, IPs and event time."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from passerelle.connectors.collector.config import CollectorConfig, CollectorStartupError, trusted_networks
from passerelle.connectors.collector.validation import (
    MAX_CAMPAIGN_VALUE,
    HitRules,
    InvalidEvent,
    RequestContext,
    client_ip,
    event_to_hit,
    parse_event_time,
    pixel_to_hit,
    resolve_event_time,
    truncate_ip,
)
from passerelle.schemas.models import HitType

pytestmark = pytest.mark.unit

NOW = 1_750_000_000_000
HOUR = 3_600_000
RULES = HitRules(sites=frozenset({"shop.example", "blog.example"}))
CTX = RequestContext(
    received_at_ms=NOW,
    client_ip="203.0.113.77",
    user_agent="Mozilla/5.0",
    referer="https://shop.example/from-referer?utm_source=ref",
    new_id=lambda: "generated-id",
)


def pixel(**params: str) -> dict[str, str]:
    return {"site": "shop.example", "vid": "v-1", "url": "https://shop.example/", **params}


def event(**fields: Any) -> dict[str, Any]:
    return {"site": "shop.example", "visitor_id": "v-1", "url": "https://shop.example/", **fields}


def errors_of(call: Any, *args: Any) -> list[str]:
    with pytest.raises(InvalidEvent) as info:
        call(*args)
    return info.value.errors


# --- pixel -----------------------------------------------------------------------------------------


def test_pixel_page_view_defaults() -> None:
    hit = pixel_to_hit(pixel(), CTX, RULES)
    assert hit.event_id == "generated-id"
    assert hit.type is HitType.PAGE_VIEW
    assert hit.event_time == NOW
    assert hit.site == "shop.example" and hit.visitor_id == "v-1"
    assert hit.consent.analytics is False and hit.consent.marketing is False
    assert hit.user_agent == "Mozilla/5.0"
    assert hit.ip_truncated == "203.0.113.0"
    assert hit.product is None and hit.order is None and hit.customer_id is None
    assert hit.campaign_params == {}


def test_pixel_product_view_with_every_field() -> None:
    hit = pixel_to_hit(
        pixel(
            type="product_view",
            eid="client-id-1",
            ts=str(NOW - 5000),
            url="https://shop.example/p/1?utm_source=nl&utm_campaign=spring&sid=secret#xtor=EREC-3",
            ref="https://www.google.com/",
            page="product::1",
            cid="c-9",
            pid="sku-1",
            pname="Shirt",
            price="19.90",
            currency="eur",
            qty="2",
            category="shirts",
            purl="https://shop.example/p/1",
            pimg="https://cdn.example/1.jpg",
            ca="1",
            cm="true",
        ),
        CTX,
        RULES,
    )
    assert hit.event_id == "client-id-1"
    assert hit.event_time == NOW - 5000
    assert hit.type is HitType.PRODUCT_VIEW
    assert hit.referrer == "https://www.google.com/"
    assert hit.page == "product::1"
    assert hit.customer_id == "c-9"
    assert hit.campaign_params == {"utm_source": "nl", "utm_campaign": "spring", "xtor": "EREC-3"}
    assert hit.product is not None
    assert hit.product.to_avro() == {
        "id": "sku-1",
        "name": "Shirt",
        "price": 19.9,
        "currency": "EUR",
        "quantity": 2,
        "category": "shirts",
        "url": "https://shop.example/p/1",
        "image_url": "https://cdn.example/1.jpg",
    }
    assert hit.consent.analytics is True and hit.consent.marketing is True


def test_pixel_long_parameter_names_are_accepted() -> None:
    hit = pixel_to_hit(
        {"site": "shop.example", "visitor_id": "v-2", "event": "identify", "customer_id": "c-1", "url": "u"},
        CTX,
        RULES,
    )
    assert (hit.visitor_id, hit.type, hit.customer_id) == ("v-2", HitType.IDENTIFY, "c-1")


def test_pixel_order_puts_the_product_in_the_lines() -> None:
    hit = pixel_to_hit(pixel(type="order", oid="o-1", revenue="42.5", currency="EUR", pid="sku-1", qty="3"), CTX, RULES)
    assert hit.product is None
    assert hit.order is not None
    assert (hit.order.order_id, hit.order.revenue, hit.order.currency) == ("o-1", 42.5, "EUR")
    assert [(line.id, line.quantity) for line in hit.order.lines] == [("sku-1", 3)]


def test_pixel_order_names_its_missing_fields() -> None:
    errors = errors_of(pixel_to_hit, pixel(type="order", oid="o-1"), CTX, RULES)
    assert errors == ["revenue: required for an order", "currency: required for an order"]


def test_pixel_uses_the_referer_header_when_url_is_missing() -> None:
    params = pixel()
    del params["url"]
    hit = pixel_to_hit(params, CTX, RULES)
    assert hit.url == "https://shop.example/from-referer?utm_source=ref"
    assert hit.campaign_params == {"utm_source": "ref"}
    no_referer = RequestContext(received_at_ms=NOW)
    assert any(e.startswith("url:") for e in errors_of(pixel_to_hit, params, no_referer, RULES))


def test_pixel_empty_parameters_count_as_absent() -> None:
    hit = pixel_to_hit(pixel(ref="", page="", cid=""), CTX, RULES)
    assert hit.referrer is None and hit.page is None and hit.customer_id is None
    assert any(e.startswith("vid:") for e in errors_of(pixel_to_hit, pixel(vid=""), CTX, RULES))


def test_pixel_reports_every_bad_parameter() -> None:
    errors = errors_of(pixel_to_hit, pixel(type="bogus", price="abc", qty="0", currency="euro"), CTX, RULES)
    fields = sorted(e.split(":")[0] for e in errors)
    assert fields == ["currency", "price", "qty", "type"]


def test_pixel_product_hits_need_a_product() -> None:
    for hit_type in ("product_view", "cart_add", "cart_remove"):
        assert errors_of(pixel_to_hit, pixel(type=hit_type), CTX, RULES) == [f"type: {hit_type} hits need a product"]
    assert errors_of(pixel_to_hit, pixel(type="identify"), CTX, RULES) == ["type: identify hits need a customer id"]


def test_pixel_unknown_site_and_missing_visitor() -> None:
    assert errors_of(pixel_to_hit, pixel(site="evil.example"), CTX, RULES) == ["site: unknown site 'evil.example'"]
    params = pixel()
    del params["vid"]
    assert errors_of(pixel_to_hit, params, CTX, RULES) == ["vid: Field required"]


# --- JSON events -----------------------------------------------------------------------------------


def test_event_full() -> None:
    hit = event_to_hit(
        event(
            event_id="e-1",
            type="cart_add",
            event_time="2025-06-15T15:06:30Z",
            referrer="https://news.example/",
            page="cart",
            customer_id="c-1",
            product={"id": "sku-1", "price": 10, "currency": "EUR", "quantity": 2},
            consent={"analytics": True, "marketing": True},
            user_agent="server-side UA",
            ip="2001:db8:aaaa:bbbb::1",
        ),
        RequestContext(received_at_ms=1_750_000_000_000 + 10_000),
        RULES,
    )
    assert hit.event_id == "e-1"
    assert hit.event_time == 1_749_999_990_000
    assert hit.type is HitType.CART_ADD
    assert hit.product is not None and (hit.product.id, hit.product.quantity, hit.product.price) == ("sku-1", 2, 10.0)
    assert hit.consent.marketing is True
    assert hit.user_agent == "server-side UA"
    assert hit.ip_truncated == "2001:db8:aaaa::"


def test_event_order_with_lines() -> None:
    hit = event_to_hit(
        event(type="order", order={"order_id": "o-1", "revenue": 30.0, "currency": "usd", "lines": [{"id": "a"}]}),
        CTX,
        RULES,
    )
    assert hit.order is not None
    assert hit.order.currency == "USD"
    assert [line.id for line in hit.order.lines] == ["a"]


def test_event_defaults_come_from_the_request() -> None:
    hit = event_to_hit(event(), CTX, RULES)
    assert hit.event_id == "generated-id"
    assert hit.event_time == NOW
    assert hit.user_agent == "Mozilla/5.0"
    assert hit.ip_truncated == "203.0.113.0"


def test_event_campaign_params_from_url_unless_explicit() -> None:
    url = "https://shop.example/?gclid=abc&at_medium=email&q=shoes"
    assert event_to_hit(event(url=url), CTX, RULES).campaign_params == {"gclid": "abc", "at_medium": "email"}
    explicit = event_to_hit(event(url=url, campaign_params={"UTM_Source": "crm", "email": "a@b.c"}), CTX, RULES)
    assert explicit.campaign_params == {"utm_source": "crm"}


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"visitor_id": 123}, "visitor_id"),
        ({"visitor_id": ""}, "visitor_id"),
        ({"type": "click"}, "type"),
        ({"event_time": "yesterday"}, "event_time"),
        ({"event_time": True}, "event_time"),
        ({"event_time": "2025-06-15T15:06:30"}, "event_time"),
        ({"product": {"id": "x", "price": -1}, "type": "cart_add"}, "product.price"),
        ({"product": {"price": 1}, "type": "cart_add"}, "product.id"),
        ({"consent": {"analytics": "maybe"}}, "consent.analytics"),
        ({"ip": "not-an-ip"}, "ip"),
        ({"event_id": "has space"}, "event_id"),
        ({"visitorId": "typo"}, "visitorId"),
        ({"url": None}, "url"),
    ],
)
def test_event_bad_fields_are_named(fields: dict[str, Any], field: str) -> None:
    errors = errors_of(event_to_hit, event(**fields), CTX, RULES)
    assert any(e.startswith(f"{field}:") for e in errors), errors


def test_event_missing_visitor_and_non_object() -> None:
    raw = event()
    del raw["visitor_id"]
    assert errors_of(event_to_hit, raw, CTX, RULES) == ["visitor_id: Field required"]
    assert errors_of(event_to_hit, ["not", "an", "object"], CTX, RULES) == ["event must be a JSON object, got list"]


def test_event_site_rules() -> None:
    assert errors_of(event_to_hit, event(site="evil.example"), CTX, RULES) == ["site: unknown site 'evil.example'"]
    raw = event()
    del raw["site"]
    assert errors_of(event_to_hit, raw, CTX, RULES) == ["site: Field required"]
    one_site = RULES.for_sites({"blog.example"})
    assert event_to_hit(raw, CTX, one_site).site == "blog.example"
    assert errors_of(event_to_hit, event(site="shop.example"), CTX, one_site) == ["site: unknown site 'shop.example'"]


def test_errors_do_not_echo_the_input() -> None:
    errors = errors_of(event_to_hit, event(ip="10.1.2.secret"), CTX, RULES)
    assert not any("secret" in e for e in errors)


def test_campaign_params_keys_and_values_are_bounded() -> None:
    """Issue 17 item 1: a 900,000-character utm_source was accepted, and then killed the enrichment."""
    errors = errors_of(event_to_hit, event(campaign_params={"utm_source": "x" * 900_000}), CTX, RULES)
    assert [e.split(":")[0] for e in errors] == ["campaign_params.utm_source"], errors
    assert sum(map(len, errors)) < 300  # the message names the field, it does not echo the value
    long_key = "utm_" + "k" * 900_000
    errors = errors_of(event_to_hit, event(campaign_params={long_key: "v"}), CTX, RULES)
    assert errors and all(e.startswith("campaign_params.") for e in errors), errors
    assert sum(map(len, errors)) < 300  # nor the key
    limit = event(campaign_params={"utm_source": "s" * MAX_CAMPAIGN_VALUE, "utm_" + "k" * 124: "v"})
    assert event_to_hit(limit, CTX, RULES).campaign_params["utm_source"] == "s" * MAX_CAMPAIGN_VALUE
    errors = errors_of(event_to_hit, event(campaign_params={"utm_source": "s" * (MAX_CAMPAIGN_VALUE + 1)}), CTX, RULES)
    assert errors[0].startswith("campaign_params.utm_source:")


# --- event time ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        (NOW, NOW),
        (float(NOW) + 0.7, NOW),
        (str(NOW), NOW),
        ("2025-06-15T15:06:40Z", NOW),
        ("2025-06-15T17:06:40+02:00", NOW),
        ("2025-06-15T15:06:40.000+00:00", NOW),
    ],
)
def test_parse_event_time(value: Any, expected: int | None) -> None:
    assert parse_event_time(value) == expected


@pytest.mark.parametrize("value", [True, "soon", "2025-06-15T15:06:40", [NOW], float("nan")])
def test_parse_event_time_rejects(value: Any) -> None:
    with pytest.raises(ValueError):
        parse_event_time(value)


def test_event_time_keeps_sane_client_times_only() -> None:
    assert resolve_event_time(NOW - 23 * HOUR, NOW, RULES) == NOW - 23 * HOUR
    assert resolve_event_time(NOW + 60_000, NOW, RULES) == NOW + 60_000  # small clock skew is fine
    assert resolve_event_time(NOW + HOUR, NOW, RULES) == NOW  # a clock in the future
    assert resolve_event_time(NOW - 25 * HOUR, NOW, RULES) == NOW  # older than the replay window
    assert resolve_event_time(NOW // 1000, NOW, RULES) == NOW  # seconds instead of milliseconds
    assert resolve_event_time(None, NOW, RULES) == NOW
    hit = pixel_to_hit(pixel(ts=str(NOW + 2 * HOUR)), CTX, RULES)
    assert hit.event_time == NOW


# --- IP addresses ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        ("203.0.113.77", "203.0.113.0"),
        ("10.0.0.255", "10.0.0.0"),
        (" 192.0.2.1 ", "192.0.2.0"),
        ("192.0.2.1:8080", "192.0.2.0"),
        ("2001:db8:1234:5678:9abc:def0:1234:5678", "2001:db8:1234::"),
        ("[2001:db8:1234:5678::1]:443", "2001:db8:1234::"),
        ("fe80::1%eth0", "fe80::"),
        ("::1", "::"),
        ("::ffff:198.51.100.9", "198.51.100.0"),  # IPv4-mapped: the IPv4 inside is truncated
        ("2002:c633:6409::1", "198.51.100.0"),  # 6to4 embeds 198.51.100.9 in its first 48 bits
        ("not an ip", None),
        ("", None),
        (None, None),
    ],
)
def test_truncate_ip(ip: str | None, expected: str | None) -> None:
    assert truncate_ip(ip) == expected


def test_truncate_ip_never_keeps_more_than_24_or_48_bits() -> None:
    assert truncate_ip("203.0.113.77", ipv4_prefix=32) == "203.0.113.0"
    assert truncate_ip("2001:db8:1234:5678::1", ipv6_prefix=128) == "2001:db8:1234::"
    assert truncate_ip("203.0.113.77", ipv4_prefix=16) == "203.0.0.0"


def test_client_ip_trusts_forwarded_for_only_from_trusted_proxies() -> None:
    proxies = trusted_networks(["10.0.0.1", "192.168.0.0/16"])
    assert client_ip("10.0.0.1", "198.51.100.7", proxies) == "198.51.100.7"
    assert client_ip("10.0.0.1", "198.51.100.7", ()) == "10.0.0.1"  # trust off: no proxy is trusted
    assert client_ip("203.0.113.9", "198.51.100.7", proxies) == "203.0.113.9"  # a peer that is no proxy of ours
    assert client_ip("10.0.0.1", None, proxies) == "10.0.0.1"
    # Walk from the right: hops a client wrote itself (left of what our proxies appended) are not believed.
    assert client_ip("10.0.0.1", "6.6.6.6, 198.51.100.7, 192.168.4.4", proxies) == "198.51.100.7"
    assert client_ip("10.0.0.1", "192.168.1.1, 192.168.4.4", proxies) == "192.168.1.1"  # all ours: the first
    assert client_ip("10.0.0.1", " , x", proxies) is None  # what the proxy claims is no address: none
    assert client_ip("[::1]:1234", "2001:db8::7", trusted_networks(["::1"])) == "2001:db8::7"


def test_trusted_networks_refuse_what_is_not_an_address() -> None:
    assert [str(n) for n in trusted_networks([" 127.0.0.1 ", "::1", "10.0.0.0/8", ""])] == [
        "127.0.0.1/32",
        "::1/128",
        "10.0.0.0/8",
    ]
    with pytest.raises(ValueError, match=r"proxy\.example"):
        trusted_networks(["proxy.example"])


def test_ip_can_be_dropped_altogether() -> None:
    rules = HitRules(sites=RULES.sites, keep_ip=False)
    assert pixel_to_hit(pixel(), CTX, rules).ip_truncated is None


def test_full_ip_never_reaches_the_avro_record() -> None:
    record = pixel_to_hit(pixel(), CTX, RULES).to_avro()
    assert "203.0.113.77" not in repr(record)


# --- configuration ---------------------------------------------------------------------------------


def test_config_refuses_prefixes_that_would_keep_the_full_ip() -> None:
    with pytest.raises(CollectorStartupError, match="ipv4_prefix"):
        CollectorConfig(bootstrap_servers="b:9092", schema_registry_url="http://r", sites={"s": "k"}, ipv4_prefix=32)


def test_config_checks_limits_and_proxies() -> None:
    base: dict[str, Any] = {"bootstrap_servers": "b:9092", "schema_registry_url": "http://r", "sites": {"s": "k"}}
    bad_values: list[tuple[dict[str, Any], str]] = [
        ({"trusted_proxies": ("lb.internal",)}, "lb.internal"),
        ({"max_record_bytes": 2_000_000}, "max_record_bytes"),
        ({"body_timeout_s": 0}, "body_timeout_s"),
        ({"max_concurrency": 0}, "max_concurrency"),
    ]
    for bad, field in bad_values:
        with pytest.raises(CollectorStartupError, match=field):
            CollectorConfig(**base, **bad)
    assert CollectorConfig(**base).forwarding_proxies == ()
    trusting = CollectorConfig(**base, trust_forwarded=True, trusted_proxies=("10.0.0.0/8",))
    assert [str(n) for n in trusting.forwarding_proxies] == ["10.0.0.0/8"]


def test_config_repr_hides_api_keys() -> None:
    config = CollectorConfig(bootstrap_servers="b:9092", schema_registry_url="http://r", sites={"s": "secret-key"})
    assert "secret-key" not in repr(config)


# --- issue 18: the hot path's shortcuts say what the slow path said --------------------------------


def test_event_ids_drawn_by_the_collector_are_random_version_4_uuids() -> None:
    import uuid

    from passerelle.connectors.collector.validation import new_event_id

    ids = [new_event_id() for _ in range(2_000)]  # several draws of 256
    assert len(set(ids)) == len(ids)
    for text in ids[:300]:
        parsed = uuid.UUID(text)
        assert str(parsed) == text and parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_the_records_are_what_the_hit_models_write() -> None:
    from passerelle.connectors.collector.validation import event_to_record, pixel_to_record
    from passerelle.schemas.models import Hit

    samples = [
        pixel_to_record(
            pixel(type="order", oid="o-1", revenue="42.5", currency="eur", pid="sku-1", qty="3"), CTX, RULES
        ),
        pixel_to_record(pixel(type="cart_add", pid="sku-2", price="9.99", cm="1"), CTX, RULES),
        event_to_record(
            event(product={"id": "sku-3", "price": 5}, type="product_view", ip="::ffff:198.51.100.9"), CTX, RULES
        ),
        event_to_record(
            event(order={"id": "o-2", "revenue": 10, "currency": "USD", "lines": [{"id": "a"}]}, type="order"),
            CTX,
            RULES,
        ),
    ]
    for record in samples:
        assert Hit.from_avro(record).to_avro() == record


def test_truncate_ip_answers_the_same_from_its_cache() -> None:
    for _ in range(3):
        assert truncate_ip("203.0.113.77") == "203.0.113.0"
        assert truncate_ip("203.0.113.77", ipv4_prefix=16) == "203.0.0.0"
        assert truncate_ip("2001:db8:1234:5678::1") == "2001:db8:1234::"
        assert truncate_ip("not an ip") is None


# The fast path for plain events must give what EventIn gives, record for record, error for error.
_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 2_000_000_000_000), st.floats(allow_nan=True),
    st.sampled_from(["", " ", "shop.example", "blog.example", " shop.example", "evil.example", "page_view", "order",
                     "identify", "product_view", "v-1", "c-1", "evt-1", "evt 1", "é", "x" * 129, "u" * 8193,
                     "https://shop.example/?utm_source=nl&gclid=abc", "203.0.113.9", "2001:db8::1", "10.1.2.x",
                     "2026-11-29T10:00:00Z", "1750000000000", "\u00a0v\u00a0", "\x1cv", "v\x85", "\u3000x",
                     "\ud800", "é\ud800", "ü" * 128, "ü" * 129]),
    st.dictionaries(st.sampled_from(["analytics", "marketing", "other"]),
                    st.one_of(st.booleans(), st.just("true"), st.just(1)), max_size=3),
)  # fmt: skip
_KEYS = ["event_id", "site", "visitor_id", "customer_id", "type", "event_time", "url", "referrer", "page", "consent",
         "user_agent", "ip", "vid", "event", "campaign_params", "unknown"]  # fmt: skip


def _outcome(call: Any, raw: Any) -> Any:
    try:
        return call(raw, CTX, RULES)
    except InvalidEvent as exc:
        return ("invalid", exc.errors)


@settings(max_examples=600, deadline=None)
@given(
    base=st.fixed_dictionaries({"visitor_id": st.just("v-1"), "url": st.just("https://shop.example/")}),
    extra=st.dictionaries(st.sampled_from(_KEYS), _VALUES, max_size=5),
)
def test_the_fast_path_answers_what_the_model_answers(base: dict[str, Any], extra: dict[str, Any]) -> None:
    from passerelle.connectors.collector.validation import event_to_record, validated_event_record

    raw = {**base, **extra}
    assert _outcome(event_to_record, raw) == _outcome(validated_event_record, raw)


def test_plain_events_take_the_fast_path() -> None:
    from passerelle.connectors.collector.validation import _fast_event_record

    plain = event(event_id="evt-1", type="identify", customer_id="c-1", event_time=NOW - 1000, ip="198.51.100.7",
                  consent={"analytics": True}, referrer="https://search.example/", page="Home")  # fmt: skip
    assert _fast_event_record(plain, CTX, RULES) is not None
    assert _fast_event_record(event(vid="v-1"), CTX, RULES) is None  # an alias: the model decides


@pytest.mark.parametrize(
    "url",
    ["https://shop.example/", "https://shop.example/a?utm_source=nl", "https://shop.example/#xtor=EREC-1",
     "https://shop.example/?", "https://shop.example/?gclid=1#at_medium=email", "not a url"],
)  # fmt: skip
def test_urls_without_query_or_fragment_are_not_parsed_but_answer_the_same(url: str) -> None:
    from passerelle.connectors.collector.validation import url_campaign_params
    from passerelle.streams.enrichment.params import parse_campaign_params

    assert url_campaign_params(url) == parse_campaign_params(url)


_EVENTS = st.one_of(
    st.builds(lambda extra: {"visitor_id": "v-1", "url": "https://shop.example/?utm_source=nl", **extra},
              st.dictionaries(st.sampled_from(_KEYS), _VALUES, max_size=4)),
    _VALUES,  # not an object
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(_EVENTS, min_size=1, max_size=6))
def test_a_batch_answers_what_the_model_answers_event_by_event(raws: list[Any]) -> None:
    """``events_to_records`` (the batch's fast path, shared request values) against ``EventIn`` event by event."""
    from passerelle.connectors.collector.validation import event_to_record, events_to_records, validated_event_record

    got = [("invalid", o.errors) if isinstance(o, InvalidEvent) else o for o in events_to_records(raws, CTX, RULES)]
    expected = [_outcome(validated_event_record if isinstance(raw, dict) else event_to_record, raw) for raw in raws]
    assert got == expected


@settings(max_examples=300, deadline=None)
@given(st.lists(_EVENTS, min_size=1, max_size=6))
def test_a_batchs_rows_are_its_records(raws: list[Any]) -> None:
    """``events_to_rows`` (what the batch path produces) against ``events_to_records``: the same values, in order."""
    from passerelle.connectors.collector.validation import HIT_FIELDS, events_to_records, events_to_rows

    rows = events_to_rows(raws, CTX, RULES)
    records = events_to_records(raws, CTX, RULES)
    assert len(rows) == len(records) == len(raws)
    for row, record in zip(rows, records, strict=True):
        if isinstance(record, InvalidEvent):
            assert isinstance(row, InvalidEvent) and row.errors == record.errors
        else:
            assert isinstance(row, tuple) and dict(zip(HIT_FIELDS, row, strict=True)) == record


_URL_PARTS = [*"?#&=+%/ :aAx", "utm_source", "UTM_Medium", "xtor", "gclid", "amp;", "%3D", "%26", "https://x/p", "é"]


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.sampled_from(_URL_PARTS), max_size=14))
def test_url_campaign_params_answer_as_the_parser_from_the_cache_too(parts: list[str]) -> None:
    """Cached by what follows the first ``?`` or ``#``: the same answer as parsing the whole URL, every time."""
    from passerelle.connectors.collector.validation import url_campaign_params
    from passerelle.streams.enrichment.params import parse_campaign_params

    url = "".join(parts)
    first = url_campaign_params(url)
    first["utm_source"] = "changed by a caller"  # the cached map is never handed out
    assert url_campaign_params(url) == url_campaign_params(url) == parse_campaign_params(url)
