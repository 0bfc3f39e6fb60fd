"""Enrichment rules through the test driver (driven clock, tables): visits, persistence, identity, CRM, erasure."""

from __future__ import annotations

from typing import Any

import pytest

from passerelle.schemas.models import EnrichedHit, age_band
from passerelle.streams.enrichment.enricher import crm_attributes
from passerelle.streams.enrichment.processor import VISITORS, EnrichmentProcessor
from passerelle.streams.runtime import OutRecord
from passerelle.streams.runtime.testing import ProcessorDriver

pytestmark = pytest.mark.unit

T0 = 1_795_000_000_000
MIN = 60_000
DAY = 24 * 60 * MIN
CAMPAIGN = {"key": "EREC-123", "name": "Black Friday newsletter", "partner": "mailer", "channel": "email",
            "medium": "email", "tagged_url_template": "https://shop.example/?xtor=EREC-123", "valid_from": None,
            "valid_to": None, "cost_model": None, "cost_amount": None, "currency": None, "declared_at": T0}  # fmt: skip
PROFILE = {"customer_id": "C1", "email": "c1@example.com", "gender": "F", "birth_year": 1990, "age_band": None,
           "csp": "cadre", "loyalty_tier": "gold", "marketing_consent": True, "updated_at": T0}  # fmt: skip


def hit(
    at: int,
    visitor: str = "v1",
    url: str = "https://shop.example/",
    referrer: str | None = None,
    params: dict[str, str] | None = None,
    customer: str | None = None,
    type_: str = "page_view",
) -> dict[str, Any]:
    return {
        "event_id": f"e-{visitor}-{at}", "site": "shop.example", "visitor_id": visitor, "customer_id": customer,
        "event_time": at, "type": type_, "url": url, "referrer": referrer, "page": None,
        "campaign_params": params or {}, "product": None, "order": None,
        "consent": {"analytics": True, "marketing": True}, "user_agent": None, "ip_truncated": None,
    }  # fmt: skip


class Harness:
    """The processor on the runtime's test driver; each hit is processed when it happens unless ``now`` says."""

    def __init__(self) -> None:
        self.proc = EnrichmentProcessor()
        self.driver = ProcessorDriver(self.proc, tables={"campaigns": {"EREC-123": CAMPAIGN}})

    def send(self, value: dict[str, Any], now: int | None = None) -> list[OutRecord]:
        at = value["event_time"]
        step = self.driver.send("hits.raw", value["visitor_id"], value, at, now=at if now is None else now)
        assert not step.dead_letters, step.dead_letters
        return step.outputs

    def enriched(self, value: dict[str, Any]) -> dict[str, Any]:
        outs = [o for o in self.send(value) if o.topic == "hits.enriched"]
        assert len(outs) == 1
        return outs[0].value  # type: ignore[no-any-return]


def test_declared_campaign_then_same_visit_then_direct_return_keeps_campaign() -> None:
    h = Harness()
    first = h.enriched(hit(T0, params={"xtor": "EREC-123-[bf]-20261128-[]-contact@list"}))
    assert first["traffic_source"]["medium"] == "email"
    assert first["traffic_source"]["campaign"] == "EREC-123"
    assert first["declared_campaign"] == {"key": "EREC-123", "name": "Black Friday newsletter",
                                          "partner": "mailer", "channel": "email"}  # fmt: skip
    assert first["campaign_undeclared"] is False
    assert (first["visit_id"], first["visit_number"]) == ("v1:1", 1)
    same = h.enriched(hit(T0 + 10 * MIN, url="https://shop.example/p/1", referrer="https://shop.example/"))
    assert same["visit_id"] == "v1:1" and same["declared_campaign"]["key"] == "EREC-123"
    back = h.enriched(hit(T0 + 3 * DAY))  # direct, 3 days later: prior-attribution credit
    assert back["visit_number"] == 2 and back["traffic_source"]["campaign"] == "EREC-123"
    late = h.enriched(hit(T0 + 40 * DAY))  # past the 30-day lifetime
    assert late["visit_number"] == 3 and late["traffic_source"]["medium"] == "direct"
    assert late["declared_campaign"] is None


def test_visit_breaks_after_30_minutes_and_a_search_visit_keeps_its_own_source() -> None:
    h = Harness()
    h.enriched(hit(T0, params={"utm_source": "nl", "utm_medium": "email", "utm_campaign": "spring"}))
    v = h.enriched(hit(T0 + 29 * MIN))
    assert v["visit_number"] == 1
    search = h.enriched(hit(T0 + 29 * MIN + 31 * MIN, referrer="https://www.google.fr/search?q=shoes"))
    assert search["visit_number"] == 2
    assert search["traffic_source"]["medium"] == "organic" and search["traffic_source"]["source"] == "google"


def test_undeclared_tag_is_flagged_on_every_hit_and_reported_once() -> None:
    h = Harness()
    outs = h.send(hit(T0, visitor="a", params={"xtor": "AL-72-[partnerx]"}))
    reports = [o for o in outs if o.topic == "campaigns.undeclared"]
    assert [o.key for o in reports] == ["AL-72"]
    assert reports[0].value["medium"] == "affiliate"
    enriched = next(o.value for o in outs if o.topic == "hits.enriched")
    assert enriched["campaign_undeclared"] is True and enriched["declared_campaign"] is None
    again = h.send(hit(T0 + MIN, visitor="b", params={"xtor": "AL-72-[partnerx]"}))
    assert [o for o in again if o.topic == "campaigns.undeclared"] == []
    assert next(o.value for o in again if o.topic == "hits.enriched")["campaign_undeclared"] is True


def test_identity_stitching_and_crm_published_after_first_hits() -> None:
    h = Harness()
    anon = h.enriched(hit(T0))
    assert anon["customer_id"] is None and anon["crm"] is None
    outs = h.send(hit(T0 + MIN, customer="C1", type_="identify"))
    links = [o for o in outs if o.topic == "identity.links"]
    assert [(o.key, o.value["customer_id"], o.value["source"]) for o in links] == [("v1", "C1", "identify")]
    before_crm = h.enriched(hit(T0 + 2 * MIN))
    assert before_crm["customer_id"] == "C1" and before_crm["crm"] is None
    h.driver.table_update("crm", "C1", PROFILE)  # the CRM publishes the profile later
    after = h.enriched(hit(T0 + 3 * MIN))
    assert after["crm"] == {"gender": "F", "age_band": "35-49", "csp": "cadre", "loyalty_tier": "gold",
                            "marketing_consent": True}  # fmt: skip
    assert [o for o in h.send(hit(T0 + 4 * MIN, customer="C1")) if o.topic == "identity.links"] == []


def test_crm_tombstone_purges_every_visitor_of_the_person() -> None:
    h = Harness()
    h.driver.table_update("crm", "C1", PROFILE)
    h.send(hit(T0, visitor="phone", customer="C1"))
    h.send(hit(T0, visitor="laptop", customer="C1"))
    outs = h.driver.table_update("crm", "C1", None).outputs  # the erasure: a tombstone
    assert sorted((o.topic, o.key, o.value) for o in outs) == [
        ("identity.links", "laptop", None), ("identity.links", "phone", None),
    ]  # fmt: skip
    assert "phone" not in h.driver.store(VISITORS) and h.driver.store(VISITORS).keys_of("C1") == []
    later = h.enriched(hit(T0 + MIN, visitor="phone"))
    assert later["customer_id"] is None and later["crm"] is None and later["visit_number"] == 1


def test_erasure_seen_during_restore_is_enforced() -> None:
    h = Harness()
    h.send(hit(T0, customer="C9"))
    h.driver.revoke(0)
    h.driver.table_update("crm", "C9", None)  # erased while the partition was elsewhere (or the instance down)
    outs = h.driver.restore(0).outputs
    assert [(o.key, o.value) for o in outs] == [("v1", None)]
    assert "v1" not in h.driver.store(VISITORS)


def request(kind: str = "erasure", customer: str | None = None, visitor: str | None = None) -> dict[str, Any]:
    """A ``PrivacyRequest`` as fastavro decodes it."""
    return {"request_id": f"r-{customer}-{visitor}", "kind": kind, "customer_id": customer, "visitor_id": visitor,
            "marketing_consent": None if kind == "erasure" else False, "requested_at": T0}  # fmt: skip


def test_privacy_erasure_by_visitor_or_by_customer_purges_and_retracts_the_links() -> None:
    h = Harness()
    h.send(hit(T0, visitor="phone", customer="C1"))
    h.send(hit(T0, visitor="laptop", customer="C1"))
    h.send(hit(T0, visitor="other", customer="C2"))
    assert h.driver.table_update("privacy", "phone", request(kind="consent_change", visitor="phone")).outputs == []
    assert "phone" in h.driver.store(VISITORS)  # a consent change is not the enrichment's to apply
    outs = h.driver.table_update("privacy", "phone", request(visitor="phone")).outputs  # a visitor id only
    assert [(o.topic, o.key, o.value) for o in outs] == [("identity.links", "phone", None)]
    assert set(h.driver.store(VISITORS)) == {"laptop", "other"}
    outs = h.driver.table_update("privacy", "C1", request(customer="C1")).outputs  # every visitor of the person
    assert [(o.topic, o.key, o.value) for o in outs] == [("identity.links", "laptop", None)]
    assert set(h.driver.store(VISITORS)) == {"other"}
    assert h.driver.metric("passerelle_enrichment_erasures_total") == 2


def test_privacy_erasure_held_in_the_table_applies_again_to_restored_state() -> None:
    h = Harness()
    h.send(hit(T0, customer="C9"))
    h.driver.revoke(0)
    h.driver.table_update("privacy", "v1", request(visitor="v1"))  # while the partition was elsewhere
    outs = h.driver.restore(0).outputs
    assert [(o.topic, o.key, o.value) for o in outs] == [("identity.links", "v1", None)]
    assert "v1" not in h.driver.store(VISITORS)


def test_age_band_comes_from_birth_year_when_missing() -> None:
    assert crm_attributes({"birth_year": 2000}, T0)["age_band"] == "25-34"  # type: ignore[index]
    assert crm_attributes({"birth_year": 2015}, T0)["age_band"] == "<18"  # type: ignore[index]
    assert crm_attributes(None, T0) is None
    # One definition of the bands, shared with the shop generator that writes CRM profiles.
    assert [age_band(2026 - age, 2026) for age in (17, 18, 24, 25, 49, 50, 64, 65, 90)] == [
        "<18", "18-24", "18-24", "25-34", "35-49", "50-64", "50-64", "65+", "65+",
    ]  # fmt: skip


def test_every_field_of_the_hit_passes_through() -> None:
    h = Harness()
    enriched = h.enriched(hit(T0, params={"utm_source": "nl", "utm_medium": "email"}))
    assert EnrichedHit.from_avro(enriched).visit_id == "v1:1"  # the shape the output schema writes
    newer = {**hit(T0 + MIN), "referrer_policy": "strict-origin"}  # a field a later Hit schema adds
    assert h.enriched(newer)["referrer_policy"] == "strict-origin"
