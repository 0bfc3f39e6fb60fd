"""Abandoned carts through the test driver: episodes, orders, removals, viewed products, replays, erasure."""

from __future__ import annotations

import json
from typing import Any

import fastavro
import pytest

from passerelle.schemas.catalog import load_catalog
from passerelle.schemas.models import CartAbandoned
from passerelle.streams.carts.processor import CARTS, CartTrackerProcessor
from passerelle.streams.carts.tracker import CartConfig, CartTracker, cart_value, episode_event_id
from passerelle.streams.consent import marketing_allowed
from passerelle.streams.runtime import OutRecord
from passerelle.streams.runtime.testing import ProcessorDriver

pytestmark = pytest.mark.unit

T0 = 1_795_000_000_000
MIN = 60_000
DELAY = 30 * MIN
CRM = {"gender": "F", "age_band": "25-34", "csp": "cadre", "loyalty_tier": "gold", "marketing_consent": True}
SCHEMA = fastavro.parse_schema(json.loads(load_catalog().schema_text("CartAbandoned")))


def product(pid: str, price: float | None = 10.0, quantity: int = 1, **extra: Any) -> dict[str, Any]:
    return {"id": pid, "name": f"Product {pid}", "price": price, "currency": "EUR", "quantity": quantity,
            "category": None, "url": None, "image_url": f"https://cdn.example/{pid}.jpg", **extra}  # fmt: skip


def hit(
    at: int,
    type_: str = "page_view",
    prod: dict[str, Any] | None = None,
    visitor: str = "v1",
    customer: str | None = None,
    crm: dict[str, Any] | None = None,
    marketing: bool = True,
    order: dict[str, Any] | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    """An ``EnrichedHit`` as fastavro decodes it (enums as strings)."""
    url = f"https://shop.example/p/{prod['id']}" if prod else "https://shop.example/"
    return {
        "event_id": event_id or f"e-{visitor}-{type_}-{at}", "site": "shop.example", "visitor_id": visitor,
        "customer_id": customer, "event_time": at, "type": type_, "url": url, "referrer": None, "page": None,
        "campaign_params": {}, "product": prod, "order": order,
        "consent": {"analytics": True, "marketing": marketing}, "user_agent": None, "ip_truncated": None,
        "visit_id": f"{visitor}:1", "visit_number": 1,
        "traffic_source": {"medium": "direct", "source": None, "campaign": None, "term": None, "content": None,
                           "click_id": None, "network": None},
        "declared_campaign": None, "campaign_undeclared": False, "crm": crm, "enriched_at": at,
    }  # fmt: skip


def order(at: int, visitor: str = "v1") -> dict[str, Any]:
    return hit(at, "order", visitor=visitor, order={"order_id": f"o-{at}", "revenue": 10.0, "currency": "EUR",
                                                    "lines": []})  # fmt: skip


class Harness:
    """The processor on the runtime's test driver: one step per hit, the wall clock moved by the test."""

    def __init__(self, config: CartConfig | None = None, crm: dict[str, Any] | None = None) -> None:
        self.proc = CartTrackerProcessor(config=config)
        self.driver = ProcessorDriver(self.proc, tables={"crm": crm or {}}, now=T0)

    @property
    def now(self) -> int:
        return self.driver.now

    @now.setter
    def now(self, now: int) -> None:
        self.driver.now = now

    def send(self, *hits: dict[str, Any]) -> list[OutRecord]:
        out: list[OutRecord] = []
        for value in hits:
            at = value["event_time"]  # processed as it happens, or later when the clock is ahead (a replay)
            step = self.driver.send("hits.enriched", value["visitor_id"], value, at, now=max(self.now, at))
            assert not step.dead_letters, step.dead_letters
            out.extend(step.outputs)
        return out

    def tick(self, now: int) -> list[OutRecord]:
        """Move the wall clock to ``now``: due timers fire."""
        return self.driver.advance(now).outputs

    def abandoned(self, until: int) -> list[dict[str, Any]]:
        """Advance minute by minute to ``until``; the CartAbandoned values emitted on the way."""
        out: list[OutRecord] = []
        for now in range(self.now + MIN, until + 1, MIN):
            out.extend(self.tick(now))
        assert all(o.topic == "carts.abandoned" and o.key == o.value["visitor_id"] for o in out)
        return [o.value for o in out]

    def metric(self, name: str) -> float | None:
        return self.driver.metric(name)


def valid(event: dict[str, Any]) -> dict[str, Any]:
    """Writable with the catalog's schema and accepted by the typed model."""
    assert fastavro.validation.validate(event, SCHEMA, raise_errors=True)
    CartAbandoned.from_avro(event)
    return event


def test_cart_left_alone_is_abandoned_once_after_the_delay() -> None:
    h = Harness()
    assert (
        h.send(
            hit(T0, "product_view", product("A", 129.0)),
            hit(T0 + MIN, "product_view", product("B", 19.99)),
            hit(T0 + 2 * MIN, "cart_add", product("A", 129.0, quantity=2)),
            hit(T0 + 3 * MIN, "cart_add", product("B", 19.99)),
        )
        == []
    )
    assert h.metric("passerelle_carts_open") == 1
    assert h.abandoned(T0 + 3 * MIN + DELAY - MIN) == []  # one minute early: nothing yet
    events = h.abandoned(T0 + 3 * MIN + 3 * DELAY)  # and only once, however long we wait
    assert len(events) == 1
    event = valid(events[0])
    assert event["visitor_id"] == "v1" and event["site"] == "shop.example"
    assert event["lines"] == [
        {"product_id": "A", "name": "Product A", "price": 129.0, "quantity": 2, "currency": "EUR"},
        {"product_id": "B", "name": "Product B", "price": 19.99, "quantity": 1, "currency": "EUR"},
    ]
    assert (event["value"], event["currency"]) == (277.99, "EUR")
    assert [p["id"] for p in event["viewed_products"]] == ["B", "A"]
    assert event["viewed_products"][0]["url"] == "https://shop.example/p/B"
    assert event["viewed_products"][0]["image_url"] == "https://cdn.example/B.jpg"
    assert event["episode_id"] == f"v1:{T0 + 2 * MIN}"  # opened by the first add
    assert event["event_id"] == episode_event_id("v1", event["episode_id"])
    assert event["last_activity_at"] == T0 + 3 * MIN
    assert event["detected_at"] == T0 + 3 * MIN + DELAY
    assert event["customer_id"] is None and event["email"] is None and event["crm"] is None
    assert h.metric("passerelle_carts_open") == 0 and h.metric("passerelle_carts_abandoned_total") == 1


def test_activity_postpones_the_deadline() -> None:
    h = Harness()
    h.send(hit(T0, "cart_add", product("A")))
    h.send(hit(T0 + 20 * MIN, "page_view"))
    assert h.abandoned(T0 + 20 * MIN + DELAY - MIN) == []
    assert [e["last_activity_at"] for e in h.abandoned(T0 + 20 * MIN + DELAY)] == [T0 + 20 * MIN]


def test_order_before_the_delay_means_no_abandonment() -> None:
    h = Harness()
    h.send(hit(T0, "cart_add", product("A")), hit(T0 + 5 * MIN, "cart_add", product("B")))
    h.send(order(T0 + 10 * MIN))
    assert h.metric("passerelle_carts_open") == 0
    assert h.abandoned(T0 + 3 * DELAY) == []


def test_removing_the_only_line_empties_the_cart() -> None:
    h = Harness()
    h.send(hit(T0, "cart_add", product("A", quantity=2)), hit(T0 + MIN, "cart_remove", product("A")))
    assert h.proc.tracker.is_open(h.driver.store(CARTS).get("v1"))  # one unit left
    h.send(hit(T0 + 2 * MIN, "cart_remove", product("A")))
    assert h.driver.store(CARTS).get("v1")["lines"] == []
    assert h.abandoned(T0 + 3 * DELAY) == []


def test_activity_after_abandonment_starts_a_new_episode() -> None:
    h = Harness()
    h.send(hit(T0, "cart_add", product("A")))
    first = h.abandoned(T0 + DELAY)
    assert len(first) == 1
    back = T0 + DELAY + 10 * MIN
    h.send(hit(back, "page_view"))  # came back, cart still full, left again
    assert h.abandoned(back + DELAY - MIN) == []
    second = h.abandoned(back + 2 * DELAY)
    assert len(second) == 1
    assert second[0]["episode_id"] == f"v1:{back}" != first[0]["episode_id"]
    assert second[0]["event_id"] != first[0]["event_id"]
    assert second[0]["lines"] == first[0]["lines"]
    h.send(order(back + 3 * DELAY))  # ordering after an abandonment emits nothing more
    assert h.abandoned(back + 6 * DELAY) == []


def test_a_viewed_product_appears_once_and_at_most_six_newest_first() -> None:
    h = Harness()
    h.send(*(hit(T0 + i * MIN, "product_view", product(f"P{i}")) for i in range(9)))
    h.send(hit(T0 + 10 * MIN, "product_view", product("P5")))  # viewed again: moves to the front, once
    h.send(hit(T0 + 11 * MIN, "cart_add", product("P8")))
    [event] = h.abandoned(T0 + 11 * MIN + DELAY)
    assert [p["id"] for p in event["viewed_products"]] == ["P5", "P8", "P7", "P6", "P4", "P3"]
    tracker = CartTracker(CartConfig(max_viewed=3))
    state = None
    for i in range(9):
        state = tracker.on_hit(state, hit(T0 + i, "product_view", product(f"P{i}")), T0 + i).state
    assert state is not None and [p["id"] for p in state["viewed"]] == ["P8", "P7", "P6"]


def test_replaying_the_same_hits_gives_the_same_event_id() -> None:
    hits = [hit(T0, "product_view", product("A")), hit(T0 + MIN, "cart_add", product("A")),
            hit(T0 + 2 * MIN, "cart_add", product("B"))]  # fmt: skip
    live = Harness()
    live.send(*hits)
    [first] = live.abandoned(T0 + 2 * MIN + DELAY)
    replay = Harness()  # a week later, from the retained topic: event times in the past
    replay.now = T0 + 7 * 24 * 60 * MIN
    replay.send(*hits)
    assert replay.abandoned(replay.now + DELAY - MIN) == []  # the backlog gets a full delay to deliver an order
    [again] = replay.abandoned(replay.now + 2 * MIN)
    assert (again["event_id"], again["episode_id"]) == (first["event_id"], first["episode_id"])
    assert again["last_activity_at"] == first["last_activity_at"]


def test_a_replayed_order_later_in_the_backlog_cancels_the_abandonment() -> None:
    h = Harness()
    h.now = T0 + 7 * 24 * 60 * MIN  # catching up: hits an hour apart in event time, processed seconds apart
    h.send(hit(T0, "cart_add", product("A")))
    h.tick(h.now + 5_000)
    h.send(order(T0 + 60 * MIN))
    assert h.abandoned(h.now + 3 * DELAY) == []


def test_a_hit_delivered_twice_counts_once() -> None:
    h = Harness()
    add = hit(T0, "cart_add", product("A"))
    h.send(add, dict(add))
    assert h.driver.store(CARTS).get("v1")["lines"][0]["quantity"] == 1


def test_consent_crm_customer_and_email_are_carried() -> None:
    h = Harness()
    h.driver.table_update("crm", "C1", {"customer_id": "C1", "email": "c1@example.com"})
    h.send(hit(T0, "cart_add", product("A"), customer="C1", crm=CRM))
    [event] = h.abandoned(T0 + DELAY)
    valid(event)
    assert (event["customer_id"], event["email"]) == ("C1", "c1@example.com")
    assert event["crm"] == CRM and event["marketing_consent"] is True

    h = Harness()
    h.send(hit(T0, "cart_add", product("A"), customer="C2", crm=CRM))
    h.send(hit(T0 + MIN, "page_view", customer="C2", crm=CRM, marketing=False))  # consent withdrawn on the site
    [event] = h.abandoned(T0 + MIN + DELAY)
    assert event["marketing_consent"] is False and event["email"] is None  # no CRM profile published

    h = Harness()
    h.send(hit(T0, "cart_add", product("A"), customer="C3", crm={**CRM, "marketing_consent": False}))
    [event] = h.abandoned(T0 + DELAY)
    assert event["marketing_consent"] is False  # the CRM's refusal wins over the hit's consent
    assert event["site_marketing_consent"] is True  # the site's own choice travels beside the combined flag


def test_consent_is_the_one_rule_site_and_crm_both_yes() -> None:
    """The tracker's flag is ``marketing_allowed(site, crm)``: a CRM yes does not undo a site refusal."""
    cases = [(True, True, True), (False, True, False), (True, False, False), (True, None, False),
             (False, None, False)]  # fmt: skip
    for site, crm_consent, allowed in cases:
        h = Harness()
        crm = None if crm_consent is None else {**CRM, "marketing_consent": crm_consent}
        h.send(hit(T0, "cart_add", product("A"), customer="C1", crm=crm, marketing=site))
        [event] = h.abandoned(T0 + DELAY)
        valid(event)
        assert event["marketing_consent"] is allowed is marketing_allowed(site, crm_consent), (site, crm_consent)
        assert event["site_marketing_consent"] is site


def test_crm_tombstone_forgets_every_cart_of_the_person() -> None:
    h = Harness(crm={"C1": {"customer_id": "C1"}})
    h.send(hit(T0, "cart_add", product("A"), visitor="phone", customer="C1"),
           hit(T0, "cart_add", product("B"), visitor="laptop", customer="C1"),
           hit(T0, "cart_add", product("C"), visitor="other", customer="C2"))  # fmt: skip
    assert h.metric("passerelle_carts_open") == 3
    assert h.driver.table_update("crm", "C1", None).outputs == []
    assert set(h.driver.store(CARTS)) == {"other"} and h.driver.store(CARTS).persons() == ["C2"]
    assert h.metric("passerelle_carts_open") == 1
    assert [e["visitor_id"] for e in h.abandoned(T0 + 2 * DELAY)] == ["other"]


def test_erasure_seen_during_restore_is_enforced_and_late_hits_of_the_person_ignored() -> None:
    h = Harness()
    h.send(hit(T0, "cart_add", product("A"), customer="C9"))
    h.driver.revoke(0)
    h.driver.table_update("crm", "C9", None)  # erased while the partition was elsewhere (or the instance down)
    assert h.driver.restore(0).outputs == []
    assert "v1" not in h.driver.store(CARTS)
    h.send(hit(T0 + MIN, "cart_add", product("A"), customer="C9"))  # enriched before the erasure, read after
    assert "v1" not in h.driver.store(CARTS)
    assert h.abandoned(T0 + 2 * DELAY) == []


def request(kind: str = "erasure", customer: str | None = None, visitor: str | None = None) -> dict[str, Any]:
    """A ``PrivacyRequest`` as fastavro decodes it."""
    return {"request_id": f"r-{customer}-{visitor}", "kind": kind, "customer_id": customer, "visitor_id": visitor,
            "marketing_consent": None if kind == "erasure" else False, "requested_at": T0}  # fmt: skip


def test_privacy_erasure_by_visitor_or_by_customer_forgets_the_carts() -> None:
    h = Harness()
    h.send(hit(T0, "cart_add", product("A"), visitor="phone", customer="C1"),
           hit(T0, "cart_add", product("B"), visitor="laptop", customer="C1"),
           hit(T0, "cart_add", product("C"), visitor="other", customer="C2"),
           hit(T0, "cart_add", product("D"), visitor="anon"))  # fmt: skip
    assert h.driver.table_update("privacy", "anon", request(kind="consent_change", visitor="anon")).outputs == []
    assert set(h.driver.store(CARTS)) == {"phone", "laptop", "other", "anon"}  # consent is not the tracker's
    assert h.driver.table_update("privacy", "anon", request(visitor="anon")).outputs == []  # a visitor id only
    assert h.driver.table_update("privacy", "C1", request(customer="C1")).outputs == []
    assert set(h.driver.store(CARTS)) == {"other"} and h.metric("passerelle_carts_open") == 1
    assert len(h.driver.context().timers) == 1  # the erased visitors' deadlines went with them
    assert [e["visitor_id"] for e in h.abandoned(T0 + 2 * DELAY)] == ["other"]


def test_privacy_erasure_held_in_the_table_applies_again_to_restored_state() -> None:
    h = Harness()
    h.send(hit(T0, "cart_add", product("A")), hit(T0, "cart_add", product("B"), visitor="v2"))
    h.driver.revoke(0)
    h.driver.table_update("privacy", "v1", request(visitor="v1"))  # while the partition was elsewhere
    assert h.driver.restore(0).outputs == []
    assert set(h.driver.store(CARTS)) == {"v2"} and h.metric("passerelle_carts_open") == 1
    h.send(hit(T0 + MIN, "cart_add", product("C")))  # enriched before the erasure, read after: not tracked again
    assert set(h.driver.store(CARTS)) == {"v2"}
    assert [e["visitor_id"] for e in h.abandoned(T0 + 2 * DELAY)] == ["v2"]


def test_idle_visitors_without_a_cart_are_forgotten() -> None:
    h = Harness(CartConfig(forget_after_ms=DELAY * 4))
    h.send(hit(T0, "product_view", product("A")), hit(T0, "cart_add", product("B"), visitor="v2"))
    assert h.abandoned(T0 + 2 * DELAY) != []  # v2's cart
    assert set(h.driver.store(CARTS)) == {"v1", "v2"}
    h.abandoned(T0 + 4 * DELAY)
    assert set(h.driver.store(CARTS)) == set() and len(h.driver.context().timers) == 0


def test_cart_value_and_state_survive_a_json_round_trip() -> None:
    assert cart_value([]) == (0.0, None)
    lines = [{"product_id": "A", "name": None, "price": 0.1, "quantity": 1, "currency": "EUR"},
             {"product_id": "B", "name": None, "price": 0.2, "quantity": 1, "currency": "EUR"},
             {"product_id": "C", "name": None, "price": 5.0, "quantity": 1, "currency": "USD"}]  # fmt: skip
    assert cart_value(lines) == (0.3, "EUR")
    tracker = CartTracker()
    step = tracker.on_hit(None, hit(T0, "cart_add", product("A", price=None)), T0)
    assert step.state is not None and step.wake_at == T0 + DELAY
    restored = json.loads(json.dumps(step.state))  # what the changelog carries
    assert restored == step.state
    assert tracker.on_deadline(restored, T0 + DELAY - 1).abandoned is None
    event = tracker.on_deadline(restored, T0 + DELAY).abandoned
    assert event is not None and valid(event)["lines"][0]["price"] == 0.0


def test_config_is_checked() -> None:
    with pytest.raises(ValueError):
        CartConfig(abandon_after_ms=0)


def test_open_carts_gauge_counts_only_the_partitions_held() -> None:
    h = Harness()
    h.send(hit(T0, "cart_add", product("A")), hit(T0, "cart_add", product("B"), visitor="v2"))
    assert h.metric("passerelle_carts_open") == 2
    h.driver.revoke(0)  # a rebalance moves the partition away: its carts are someone else's now
    assert h.metric("passerelle_carts_open") == 0
    h.driver.restore(0)
    assert h.metric("passerelle_carts_open") == 2
