"""The .avsc contracts: valid for both Avro libraries, self-contained, documented, evolvable, and
exactly mirrored by the pydantic models."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import avro.schema
import fastavro
import fastavro.validation
import pytest

from passerelle.schemas.catalog import DEFAULT_SCHEMA_DIR, load_catalog, load_schema_text, parsed_schema
from passerelle.schemas.models import MODELS, AvroModel, Hit, HitType, model_for

pytestmark = pytest.mark.unit

AVSC = sorted(DEFAULT_SCHEMA_DIR.glob("*.avsc"))
RECORD_STEMS = sorted(p.stem for p in AVSC if p.stem != "StringKey")
T0 = 1_732_800_000_000  # 2024-11-28T13:20:00Z

PRODUCT = {
    "id": "SKU-42",
    "name": "Trail shoes",
    "price": 89.9,
    "currency": "EUR",
    "quantity": 1,
    "category": "shoes/trail",
    "url": "https://shop.example/p/sku-42",
    "image_url": "https://cdn.example/sku-42.jpg",
}
BARE_PRODUCT = {
    "id": "SKU-7",
    "name": None,
    "price": None,
    "currency": None,
    "quantity": 2,
    "category": None,
    "url": None,
    "image_url": None,
}
LINE = {"product_id": "SKU-42", "name": "Trail shoes", "price": 89.9, "quantity": 2, "currency": "EUR"}
CRM = {"gender": "F", "age_band": "35-44", "csp": "cadre", "loyalty_tier": "gold", "marketing_consent": True}
HIT: dict[str, Any] = {
    "event_id": "5b0f6f0e-6a0b-4d0e-9a53-3f1a3c1e2b11",
    "site": "shop.example",
    "visitor_id": "v-8f3a1c",
    "customer_id": None,
    "event_time": T0,
    "type": "order",
    "url": "https://shop.example/checkout/done?xtor=EREC-123&utm_source=newsletter",
    "referrer": "https://mail.example/",
    "page": "checkout::confirmation",
    "campaign_params": {"xtor": "EREC-123", "utm_source": "newsletter"},
    "product": None,
    "order": {"order_id": "O-1001", "revenue": 179.8, "currency": "EUR", "lines": [PRODUCT, BARE_PRODUCT]},
    "consent": {"analytics": True, "marketing": True},
    "user_agent": "Mozilla/5.0",
    "ip_truncated": "203.0.113.0",
}

SAMPLES: dict[str, dict[str, Any]] = {
    "Hit": HIT,
    "EnrichedHit": {
        **HIT,
        "customer_id": "C-77",
        "visit_id": "v-8f3a1c:3",
        "visit_number": 3,
        "traffic_source": {
            "medium": "email",
            "source": "newsletter",
            "campaign": "EREC-123",
            "term": None,
            "content": None,
            "click_id": None,
            "network": None,
        },
        "declared_campaign": {"key": "EREC-123", "name": "Winter sale", "partner": "mailer", "channel": "email"},
        "campaign_undeclared": False,
        "crm": CRM,
        "enriched_at": T0 + 120,
    },
    "CrmProfile": {
        "customer_id": "C-77",
        "email": "anna@example.org",
        "gender": "F",
        "birth_year": 1985,
        "age_band": "35-44",
        "csp": "cadre",
        "loyalty_tier": "gold",
        "marketing_consent": True,
        "updated_at": T0,
    },
    "IdentityLink": {
        "visitor_id": "v-8f3a1c",
        "customer_id": "C-77",
        "site": "shop.example",
        "linked_at": T0,
        "source": "login",
    },
    "Campaign": {
        "key": "EREC-123",
        "name": "Winter sale",
        "partner": "mailer",
        "channel": "email",
        "medium": "email",
        "tagged_url_template": "https://shop.example/?xtor={key}",
        "valid_from": T0,
        "valid_to": None,
        "cost_model": "CPM",
        "cost_amount": 4.5,
        "currency": "EUR",
        "declared_at": T0 - 86_400_000,
    },
    "AdImpression": {
        "impression_id": "imp-991",
        "visitor_id": "v-8f3a1c",
        "site": "shop.example",
        "campaign_key": "DISP-9",
        "creative": "banner-300x250",
        "placement": "news-home-top",
        "ad_server": "adserver.example",
        "event_time": T0 - 3_600_000,
    },
    "PartnerMetric": {
        "metric_id": "mailer:EREC-123:2024-11-27:cost",
        "partner": "mailer",
        "campaign_key": "EREC-123",
        "date": "2024-11-27",
        "metric": "cost",
        "value": 1250.0,
        "currency": "EUR",
        "received_at": T0,
    },
    "CartAbandoned": {
        "event_id": "cart:v-8f3a1c:ep-4",
        "visitor_id": "v-8f3a1c",
        "site": "shop.example",
        "customer_id": "C-77",
        "email": "anna@example.org",
        "episode_id": "ep-4",
        "lines": [LINE],
        "value": 179.8,
        "currency": "EUR",
        "viewed_products": [PRODUCT, BARE_PRODUCT],
        "crm": CRM,
        "marketing_consent": True,
        "site_marketing_consent": True,
        "last_activity_at": T0,
        "detected_at": T0 + 1_800_000,
    },
    "CampaignCounts": {
        "campaign_key": "EREC-123",
        "campaign_name": "Winter sale",
        "partner": "mailer",
        "channel": "email",
        "window_start": T0 - T0 % 86_400_000,
        "window_end": T0 - T0 % 86_400_000 + 86_400_000,
        "visits": 1250,
        "orders": 37,
        "revenue": {"EUR": 4321.5, "USD": 99.0},
        "final": False,
        "updated_at": T0,
    },
    "WebActivity": {
        "customer_id": "C-1001",
        "last_visit_at": T0,
        "last_campaign": "EREC-123",
        "visits_30d": 4,
        "orders_30d": 1,
        "revenue_30d": 129.9,
        "abandoned_carts_30d": 1,
        "remarketing_messages": 2,
        "recovered_orders": 1,
        "updated_at": T0 + 5000,
    },
    "CrmConversionPath": {
        "conversion_id": "order:shop.example:O-1001",
        "customer_id": "C-77",
        "order_id": "O-1001",
        "goal": None,
        "converted_at": T0,
        "revenue": 179.8,
        "currency": "EUR",
        "path_length": 2,
        "time_to_conversion_ms": 3_600_000,
        "first_channel": "display (post-view)",
        "last_channel": "direct",
        "channels": "display (post-view) > direct",
        "credits": '{"first_touch": {"credits": [1.0, 0.0], "revenue": [179.8, 0.0]}}',
        "revision": 0,
        "updated_at": T0 + 5000,
    },
    "CustomerChannels": {
        "customer_id": "C-77",
        "first_channel": "display (post-view)",
        "last_channel": "direct",
        "touchpoints": 2,
        "channels": "direct, display (post-view)",
        "last_conversion_id": "order:shop.example:O-1001",
        "last_conversion_at": T0,
        "updated_at": T0 + 5000,
    },
    "PostView": {
        "postview_id": "order:shop.example:O-1001:DISP-9",
        "kind": "order",
        "visitor_id": "v-8f3a1c",
        "customer_id": "C-77",
        "site": "shop.example",
        "campaign_key": "DISP-9",
        "impression_id": "imp-991",
        "impression_time": T0 - 3_600_000,
        "impressions": 2,
        "event_id": "5b0f6f0e-6a0b-4d0e-9a53-3f1a3c1e2b11",
        "visit_id": "v-8f3a1c:3",
        "event_time": T0,
        "delay_ms": 3_600_000,
        "visit_medium": "email",
        "visit_campaign": "EREC-123",
        "order_id": "O-1001",
        "revenue": 179.8,
        "currency": "EUR",
    },
    "PartnerKey": {
        "key_id": "3f9c0a7e5b2d4c18",
        "partner": "mailer",
        "scopes": ["campaigns:write", "campaigns:read"],
        "secret_hash": "scrypt$n=16384,r=8,p=1$c2FsdHNhbHRzYWx0c2FsdA$ZGlnZXN0ZGlnZXN0ZGlnZXN0ZGlnZXN0ZGlnZXN0ZGk",
        "created_at": T0,
        "revoked_at": None,
        "label": "campaign declarations from the emailing tool",
    },
    "QueryTemplate": {
        "template_id": "9a0b1c2d3e4f5a6b",
        "partner": "mailer",
        "name": "Visits by source, last 7 days",
        "query": '{"dimensions":["source"],"metrics":["visits"],"period":"last7"}',
        "version": 2,
        "created_at": T0,
        "updated_at": T0 + 60_000,
        "updated_by": "3f9c0a7e5b2d4c18",
        "token_hash": "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8",
    },
    "WebActivityDelta": {
        "event_id": "order:shop.example:o-77",
        "customer_id": "C-1001",
        "kind": "order",
        "at": T0,
        "campaign": None,
        "revenue": 129.9,
    },
    "RemarketingMessage": {
        "message_id": "seq-ep-4:2",
        "sequence_id": "seq-ep-4",
        "step": 2,
        "customer_id": "C-77",
        "email": "anna@example.org",
        "site": "shop.example",
        "products": [PRODUCT],
        "lines": [LINE],
        "promotion": {"code": "BACK10", "description": "10% off your cart", "discount_percent": 10.0},
        "created_at": T0 + 86_400_000,
    },
    "RemarketingDelivery": {
        "message_id": "seq-ep-4:2",
        "sequence_id": "seq-ep-4",
        "step": 2,
        "customer_id": "C-77",
        "partner": "mailer",
        "outcome": "dead_lettered",
        "reason": "retries_exhausted",
        "attempts": 6,
        "last_status": 503,
        "last_answer": '{"error": "maintenance"}',
        "latency_ms": 31_250,
        "source_partition": 1,
        "source_offset": 4242,
        "first_attempt_at": T0 + 86_400_000,
        "decided_at": T0 + 86_431_250,
    },
    "MarkovAttribution": {
        "period": "last-30-days", "period_start": 1764460800000, "period_end": 1767052800000,
        "computed_at": 1767052860000, "journeys": 3, "conversions": 1,
        "channels": [
            {"channel": "email", "removal_effect": 1.0, "credit": 0.6, "conversions": 0.6},
            {"channel": "direct", "removal_effect": 0.5, "credit": 0.4, "conversions": 0.4},
        ],
    },
    "ConversionPath": {
        "conversion_id": "conv:O-1001",
        "visitor_id": "v-8f3a1c",
        "customer_id": "C-77",
        "order_id": "O-1001",
        "revenue": 179.8,
        "currency": "EUR",
        "touchpoints": [
            {"medium": "display", "source": None, "campaign": "DISP-9", "at": T0 - 3_600_000, "kind": "postview",
             "channel": "display (post-view)", "campaign_key": "DISP-9", "visitor_id": "v-8f3a1c", "direct": False},
            {"medium": "direct", "source": None, "campaign": None, "at": T0 - 600_000, "kind": "visit",
             "channel": "direct", "campaign_key": None, "visitor_id": "v-2b7d", "direct": True},
        ],
        "converted_at": T0,
        "goal": None,
        "revenue_cents": 17_980,
        "path_length": 2,
        "time_to_conversion_ms": 3_600_000,
        "revision": 0,
        "models": [
            {"model": "first_touch", "credits": [1.0, 0.0], "revenue_cents": [17_980, 0]},
            {"model": "linear", "credits": [0.5, 0.5], "revenue_cents": [8_990, 8_990]},
        ],
    },
    "PathEvent": {
        "kind": "conversion",
        "customer_id": "C-77",
        "visitor_id": "v-8f3a1c",
        "touchpoints": [
            {"id": "visit:v-8f3a1c:3", "kind": "visit", "channel": "email", "medium": "email",
             "source": "newsletter", "campaign": "EREC-123", "campaign_key": "EREC-123", "at": T0 - 600_000,
             "visitor_id": "v-8f3a1c", "direct": False},
        ],
        "conversion": {"conversion_id": "order:shop.example:O-1001", "order_id": "O-1001", "goal": None,
                       "revenue": 179.8, "currency": "EUR", "at": T0, "event_id": "e-1", "visitor_id": "v-8f3a1c"},
    },
    "PrivacyRequest": {
        "request_id": "pr-1",
        "kind": "consent_change",
        "customer_id": "C-77",
        "visitor_id": None,
        "marketing_consent": False,
        "requested_at": T0,
    },
    "DeadLetter": {
        "source_topic": "hits.raw",
        "partition": 3,
        "offset": 123_456_789_012,
        "stage": "deserialize",
        "error_class": "SerializationError",
        "error_message": "unknown magic byte 123",
        "processor": "enrichment",
        "key": b"v-8f3a1c",
        "value": b'{"not": "avro"}',
        "headers": [{"key": "trace", "value": b"\x00\x01"}, {"key": "empty", "value": None}],
        "failed_at": T0,
    },
}


def millis(value: Any) -> Any:
    """fastavro reads timestamp-millis as aware datetimes; compare on the wire's int millis."""
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    if isinstance(value, dict):
        return {k: millis(v) for k, v in value.items()}
    if isinstance(value, list):
        return [millis(v) for v in value]
    return value


def roundtrip(stem: str, record: Any) -> Any:
    schema = parsed_schema(stem)
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, record)
    buf.seek(0)
    out = fastavro.schemaless_reader(buf, schema, None)
    assert buf.read() == b"", "trailing bytes after one record"
    return out


def walk_named(schema: Any, found: dict[str, list[Any]]) -> None:
    """Collect every named type definition (record, enum) by full name."""
    if isinstance(schema, list):
        for branch in schema:
            walk_named(branch, found)
    elif isinstance(schema, dict):
        if schema.get("type") in ("record", "enum", "fixed"):
            full = schema["name"] if "." in schema["name"] else f"{schema.get('namespace', '')}.{schema['name']}"
            found.setdefault(full, []).append(schema)
        for fld in schema.get("fields", []):
            walk_named(fld["type"], found)
        for key in ("items", "values"):
            if key in schema:
                walk_named(schema[key], found)
        if isinstance(schema.get("type"), dict | list):
            walk_named(schema["type"], found)


def raw(path: Path) -> Any:
    return json.loads(path.read_text())


def test_there_is_one_sample_per_record_schema() -> None:
    assert sorted(SAMPLES) == RECORD_STEMS


@pytest.mark.parametrize("path", AVSC, ids=lambda p: p.name)
def test_schema_parses_alone_with_fastavro_and_apache_avro(path: Path) -> None:
    # Alone: each file is registered in the registry without references.
    fastavro.parse_schema(raw(path), named_schemas={})
    avro.schema.parse(path.read_text())


def test_key_schema_is_a_plain_string() -> None:
    assert raw(DEFAULT_SCHEMA_DIR / "StringKey.avsc") == "string"
    assert load_schema_text("StringKey") == '"string"'
    assert roundtrip("StringKey", "v-8f3a1c") == "v-8f3a1c"


@pytest.mark.parametrize("stem", RECORD_STEMS)
def test_record_is_documented_and_named_after_its_file(stem: str) -> None:
    schema = raw(DEFAULT_SCHEMA_DIR / f"{stem}.avsc")
    assert schema["type"] == "record"
    assert schema["name"] == stem
    assert schema["namespace"] == "passerelle"
    named: dict[str, list[Any]] = {}
    walk_named(schema, named)
    for full, defs in named.items():
        assert full.startswith("passerelle."), full
        assert len(defs) == 1, f"{full} defined twice in {stem}.avsc"
        assert defs[0].get("doc"), f"{full} has no doc"
        for fld in defs[0].get("fields", []):
            assert fld.get("doc"), f"{full}.{fld['name']} has no doc"


@pytest.mark.parametrize("stem", RECORD_STEMS)
def test_optional_fields_can_evolve_backward(stem: str) -> None:
    named: dict[str, list[Any]] = {}
    walk_named(raw(DEFAULT_SCHEMA_DIR / f"{stem}.avsc"), named)
    for full, (definition,) in named.items():
        for fld in definition.get("fields", []):
            if isinstance(fld["type"], list):
                assert fld["type"][0] == "null", f"{full}.{fld['name']}: 'null' must come first"
                assert "default" in fld and fld["default"] is None, f"{full}.{fld['name']}: default null"


def test_shared_named_types_are_identical_in_every_file() -> None:
    # Self-contained files repeat shared types; they must not diverge or the registry sees two "Product"s.
    seen: dict[str, tuple[str, Any]] = {}
    for path in AVSC:
        named: dict[str, list[Any]] = {}
        walk_named(raw(path), named)
        for full, (definition,) in named.items():
            if full in seen:
                first_file, first = seen[full]
                assert definition == first, f"{full} differs between {first_file} and {path.name}"
            else:
                seen[full] = (path.name, definition)
    assert {"passerelle.Product", "passerelle.CartLine", "passerelle.CrmAttributes"} <= set(seen)


@pytest.mark.parametrize("stem", RECORD_STEMS)
def test_sample_roundtrips_through_fastavro(stem: str) -> None:
    sample = SAMPLES[stem]
    assert fastavro.validation.validate(sample, parsed_schema(stem), raise_errors=True)
    assert millis(roundtrip(stem, sample)) == sample


@pytest.mark.parametrize("stem", RECORD_STEMS)
def test_model_mirrors_its_schema_field_for_field(stem: str) -> None:
    model = model_for(stem)
    schema = raw(DEFAULT_SCHEMA_DIR / f"{stem}.avsc")
    assert list(model.model_fields) == [f["name"] for f in schema["fields"]]


def test_an_enriched_hit_is_a_hit_plus_the_enrichment() -> None:
    # The enricher passes the hit through whole: a field added to Hit.avsc must be added to EnrichedHit.avsc
    # (same place, type and default) or enriched hits would drop it when written.
    def shape(fld: dict[str, Any]) -> tuple[Any, ...]:
        return fld["name"], fld["type"], fld.get("default", "<none>")

    hit, enriched = (raw(DEFAULT_SCHEMA_DIR / f"{stem}.avsc")["fields"] for stem in ("Hit", "EnrichedHit"))
    assert [shape(f) for f in enriched[: len(hit)]] == [shape(f) for f in hit]
    assert issubclass(model_for("EnrichedHit"), Hit)


@pytest.mark.parametrize("stem", RECORD_STEMS)
def test_model_to_avro_validates_and_roundtrips(stem: str) -> None:
    model = model_for(stem).from_avro(SAMPLES[stem])
    data = model.to_avro()
    assert data == SAMPLES[stem]
    assert fastavro.validation.validate(data, parsed_schema(stem), raise_errors=True)
    read_back = roundtrip(stem, data)  # timestamps come back as datetimes
    assert model_for(stem).from_avro(read_back) == model


@pytest.mark.parametrize("stem", RECORD_STEMS)
def test_model_defaults_match_schema_defaults(stem: str) -> None:
    model = model_for(stem)
    for fld in raw(DEFAULT_SCHEMA_DIR / f"{stem}.avsc")["fields"]:
        info = model.model_fields[fld["name"]]
        if "default" in fld:
            assert not info.is_required(), f"{stem}.{fld['name']} should default to {fld['default']!r}"
            assert info.get_default(call_default_factory=True) == fld["default"], fld["name"]
        else:
            assert info.is_required(), f"{stem}.{fld['name']} has no Avro default, the model must require it"


def test_every_catalog_value_schema_has_a_model() -> None:
    values = {spec.value_schema for spec in load_catalog().topics if spec.value_schema}  # raw, connect-json: none
    assert values == set(MODELS)


def test_model_enums_and_timestamps_are_plain_on_the_wire() -> None:
    hit = Hit.from_avro({**HIT, "event_time": datetime(2024, 11, 28, 13, 20, tzinfo=UTC), "type": "cart_add"})
    assert hit.type is HitType.CART_ADD
    assert hit.event_time == T0
    data = hit.to_avro()
    assert type(data["type"]) is str and data["type"] == "cart_add"
    assert type(data["event_time"]) is int


def test_models_reject_what_the_schema_rejects() -> None:
    with pytest.raises(ValueError):
        Hit.from_avro({**HIT, "type": "click"})
    with pytest.raises(ValueError):
        Hit.from_avro({**HIT, "unexpected": 1})
    with pytest.raises(ValueError):
        Hit.from_avro({k: v for k, v in HIT.items() if k != "consent"})
    with pytest.raises(ValueError):
        model_for("RemarketingMessage").from_avro({**SAMPLES["RemarketingMessage"], "step": 3})


def test_models_are_avro_models() -> None:
    assert all(issubclass(m, AvroModel) and m.schema_name == stem for stem, m in MODELS.items())
