"""The remarketing sequence rules with a driven clock: no broker, no faust."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import fastavro
import pytest

from passerelle.schemas.catalog import load_catalog
from passerelle.streams.remarketing.sequence import (
    DAY_MS,
    HOUR_MS,
    Outcome,
    Profile,
    Promotion,
    Sequencer,
    SequencerConfig,
    State,
    message_id,
    next_due,
    profile_from_crm,
    sequence_id,
)

pytestmark = pytest.mark.unit

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
PROFILE: Profile = {"email": "c1@example.com", "marketing_consent": True, "updated_at": T0 - DAY_MS}


def product(n: int) -> dict[str, Any]:
    return {"id": f"SKU-{n}", "name": f"Product {n}", "price": 10.0 + n, "currency": "EUR", "quantity": 1,
            "category": None, "url": f"https://shop.example/p/{n}", "image_url": None}  # fmt: skip


def cart(
    event_id: str = "cart-1",
    customer: str | None = "C1",
    email: str | None = None,
    consent: bool = True,
    at: int = T0,
    viewed: int = 3,
    site_consent: bool | None = None,
    crm_consent: bool | None = None,
) -> dict[str, Any]:
    """``consent``: the combined flag; ``site_consent`` absent (None) plays an event written before it existed."""
    return {
        "event_id": event_id, "visitor_id": "v1", "site": "shop.example", "customer_id": customer, "email": email,
        "episode_id": f"ep-{event_id}",
        "lines": [{"product_id": "SKU-1", "name": "Product 1", "price": 11.0, "quantity": 2, "currency": "EUR"}],
        "value": 22.0, "currency": "EUR", "viewed_products": [product(n) for n in range(1, viewed + 1)],
        "crm": None if crm_consent is None else {"gender": None, "age_band": None, "csp": None,
                                                 "loyalty_tier": None, "marketing_consent": crm_consent},
        "marketing_consent": consent, "site_marketing_consent": site_consent,
        "last_activity_at": at - 30 * 60_000, "detected_at": at,
    }  # fmt: skip


@pytest.fixture
def seq() -> Sequencer:
    return Sequencer(SequencerConfig(promotion=Promotion("BACK15", "15% off", 15.0)))


def start(seq: Sequencer, now: int = T0, **kw: Any) -> State:
    state, messages, outcome = seq.on_abandoned(None, cart(at=now, **kw), PROFILE, now)
    assert outcome is Outcome.STARTED and len(messages) == 1 and state is not None
    return state


def test_abandon_gives_step_1_then_step_2_after_the_delay_not_before(seq: Sequencer) -> None:
    state, messages, outcome = seq.on_abandoned(None, cart(), PROFILE, T0)
    assert outcome is Outcome.STARTED and state is not None
    [step1] = messages
    assert step1["step"] == 1 and step1["email"] == "c1@example.com" and step1["customer_id"] == "C1"
    assert step1["promotion"] is None and [p["id"] for p in step1["products"]] == ["SKU-1", "SKU-2", "SKU-3"]
    assert step1["lines"][0]["quantity"] == 2 and step1["created_at"] == T0
    assert next_due(state, seq.config) == T0 + DAY_MS

    state, early = seq.on_tick(state, T0 + DAY_MS - 1)
    assert early == []
    state, due = seq.on_tick(state, T0 + DAY_MS)
    [step2] = due
    assert step2["step"] == 2 and step2["sequence_id"] == step1["sequence_id"]
    assert step2["promotion"] == {"code": "BACK15", "description": "15% off", "discount_percent": 15.0}
    assert step2["products"] == step1["products"] and step2["lines"] == step1["lines"]
    assert state is not None and state["status"] == "completed" and state["step2_at"] == T0 + DAY_MS
    assert state["email"] is None and state["products"] == []  # nothing personal kept once nothing can follow

    again, none = seq.on_tick(state, T0 + DAY_MS + HOUR_MS)  # timers fire once
    assert none == [] and again == state


def test_messages_validate_against_the_avro_contract(seq: Sequencer) -> None:
    schema = fastavro.parse_schema(json.loads(load_catalog().schema_text("RemarketingMessage")))
    state, [step1], _ = seq.on_abandoned(None, cart(), PROFILE, T0)
    _, [step2] = seq.on_tick(state, T0 + DAY_MS)
    for message in (step1, step2):
        assert fastavro.validate(message, schema, raise_errors=True)
    json.dumps(state)  # the state is JSON-able


def test_order_after_step_1_stops_step_2_and_counts_a_recovered_order(seq: Sequencer) -> None:
    state = start(seq)
    state, outcome = seq.on_order(state, "O1", T0 + HOUR_MS, T0 + HOUR_MS, customer_id="C1")
    assert outcome is Outcome.RECOVERED and state is not None
    assert state["status"] == "recovered" and state["recovered_order_id"] == "O1"
    _, messages = seq.on_tick(state, T0 + 2 * DAY_MS)
    assert messages == []
    _, second = seq.on_order(state, "O2", T0 + 2 * HOUR_MS, T0 + 2 * HOUR_MS, customer_id="C1")
    assert second is Outcome.IGNORED  # one recovered order per sequence


def test_order_matches_by_visitor_and_after_step_2_still_counts(seq: Sequencer) -> None:
    state = start(seq)
    state, [_] = seq.on_tick(state, T0 + DAY_MS)
    state, outcome = seq.on_order(state, "O1", T0 + 2 * DAY_MS, T0 + 2 * DAY_MS, visitor_id="v1")
    assert outcome is Outcome.RECOVERED and state is not None and state["status"] == "recovered"


def test_orders_that_do_not_concern_the_sequence_change_nothing(seq: Sequencer) -> None:
    state = start(seq)
    same, outcome = seq.on_order(state, "O9", T0 + HOUR_MS, T0 + HOUR_MS, customer_id="C2", visitor_id="v2")
    assert outcome is Outcome.IGNORED and same == state
    same, outcome = seq.on_order(state, "O0", T0 - DAY_MS, T0 + HOUR_MS, customer_id="C1")  # an old order, late
    assert outcome is Outcome.IGNORED and same == state
    stopped, outcome = seq.on_order(state, "O1", T0 - 60_000, T0 + HOUR_MS, customer_id="C1")  # before step 1
    assert outcome is Outcome.CANCELLED and stopped is not None and stopped["status"] == "cancelled"
    assert seq.on_tick(stopped, T0 + DAY_MS)[1] == []
    assert seq.on_order(None, "O1", T0, T0, customer_id="C1") == (
        {"customer_id": "C1", "last_order_at": T0},
        Outcome.IGNORED,
    )


@pytest.mark.parametrize(
    ("event", "profile", "expected"),
    [
        (cart(consent=False), {**PROFILE, "marketing_consent": False}, Outcome.NO_CONSENT),
        (cart(consent=True), {**PROFILE, "marketing_consent": False}, Outcome.NO_CONSENT),  # the CRM wins
        (cart(consent=False, email="e@example.com"), None, Outcome.NO_CONSENT),
        (cart(), {**PROFILE, "marketing_consent": None}, Outcome.NO_CONSENT),  # unknown in the CRM: not consent
        (cart(consent=False), {**PROFILE, "marketing_consent": None}, Outcome.NO_CONSENT),
        (cart(), None, Outcome.NO_EMAIL),  # unknown email
        (cart(), {**PROFILE, "email": None}, Outcome.NO_EMAIL),
        (cart(email="from-event@example.com", crm_consent=True), None, Outcome.STARTED),  # the hits' CRM copy
        (cart(email="from-event@example.com"), None, Outcome.NO_CONSENT),  # no CRM consent known at all
        # the site's refusal carried by the event is not undone by the CRM's latest yes
        (cart(consent=False, site_consent=False), PROFILE, Outcome.NO_CONSENT),
        # the CRM said no when the cart was detected, yes since: the site's yes and the latest profile count
        (cart(consent=False, site_consent=True, crm_consent=False), PROFILE, Outcome.STARTED),
        (cart(site_consent=True, crm_consent=True), {**PROFILE, "marketing_consent": False}, Outcome.NO_CONSENT),
        # an event from before site_marketing_consent: its combined flag stands for the site's (conservative)
        (cart(consent=False), PROFILE, Outcome.NO_CONSENT),
        (cart(consent=True), PROFILE, Outcome.STARTED),
        (cart(customer=None, email="anon@example.com"), PROFILE, Outcome.ANONYMOUS),
        (cart(at=T0 - 2 * DAY_MS), PROFILE, Outcome.STALE),
    ],
)
def test_no_message_without_identity_email_consent_or_freshness(
    seq: Sequencer, event: dict[str, Any], profile: Profile | None, expected: Outcome
) -> None:
    state, messages, outcome = seq.on_abandoned(None, event, profile, T0)
    assert outcome is expected
    assert (messages != []) is (expected is Outcome.STARTED)
    assert (state is not None) is (expected is Outcome.STARTED)


def test_consent_withdrawal_cancels_what_remains(seq: Sequencer) -> None:
    state = start(seq)
    same, outcome = seq.on_consent(state, True, T0 + HOUR_MS)
    assert outcome is Outcome.IGNORED and same == state
    state, outcome = seq.on_consent(state, False, T0 + HOUR_MS)
    assert outcome is Outcome.CANCELLED and state is not None and state["reason"] == "consent"
    assert seq.on_tick(state, T0 + DAY_MS)[1] == []
    # the cap memory stays: a new abandonment in the window starts nothing even with consent back
    _, messages, outcome = seq.on_abandoned(state, cart("cart-2", at=T0 + 2 * HOUR_MS), PROFILE, T0 + 2 * HOUR_MS)
    assert outcome is Outcome.CAPPED and messages == []


def test_erasure_mid_sequence_stops_everything_and_forgets(seq: Sequencer) -> None:
    state = start(seq)
    erased, outcome = seq.on_erasure(state)
    assert erased is None and outcome is Outcome.ERASED
    assert seq.on_tick(erased, T0 + DAY_MS) == (None, [])
    assert seq.on_erasure(None) == (None, Outcome.IGNORED)


def test_frequency_cap_one_sequence_per_customer_per_window(seq: Sequencer) -> None:
    state = start(seq)
    state, [_] = seq.on_tick(state, T0 + DAY_MS)
    within = T0 + 7 * DAY_MS - 1
    same, messages, outcome = seq.on_abandoned(state, cart("cart-2", at=within), PROFILE, within)
    assert outcome is Outcome.CAPPED and messages == [] and same == state
    after = T0 + 7 * DAY_MS
    new, [step1], outcome = seq.on_abandoned(state, cart("cart-3", at=after), PROFILE, after)
    assert outcome is Outcome.STARTED and new is not None
    assert new["sequence_id"] != state["sequence_id"] and step1["step"] == 1


def test_cap_is_configurable_and_states_expire(seq: Sequencer) -> None:
    short = Sequencer(SequencerConfig(followup_ms=5_000, cap_ms=60_000, recovery_window_ms=60_000))
    state, _, _ = short.on_abandoned(None, cart(), PROFILE, T0)
    state, [_] = short.on_tick(state, T0 + 5_000)
    assert next_due(state, short.config) == T0 + 60_000
    kept, _ = short.on_tick(state, T0 + 59_999)
    assert kept == state
    assert short.on_tick(state, T0 + 60_000) == (None, [])  # forgotten: the table shrinks
    _, _, outcome = short.on_abandoned(state, cart("cart-2", at=T0 + 60_000), PROFILE, T0 + 60_000)
    assert outcome is Outcome.STARTED


def test_never_more_than_6_products_newest_distinct_first(seq: Sequencer) -> None:
    event = cart(viewed=10)
    event["viewed_products"].insert(1, product(1))  # a repeated view takes no slot
    _, [step1], _ = seq.on_abandoned(None, event, PROFILE, T0)
    assert [p["id"] for p in step1["products"]] == [f"SKU-{n}" for n in range(1, 7)]
    with pytest.raises(ValueError):
        SequencerConfig(max_products=7)


def test_ids_are_deterministic_and_replays_change_nothing(seq: Sequencer) -> None:
    a_state, [a1], _ = seq.on_abandoned(None, cart(), PROFILE, T0)
    b_state, [b1], _ = Sequencer(seq.config).on_abandoned(None, cart(), PROFILE, T0 + 1_000)  # a replay, later
    assert a1["message_id"] == b1["message_id"] == message_id(sequence_id("C1", "cart-1"), 1)
    assert a1["sequence_id"] == sequence_id("C1", "cart-1")
    _, [a2] = seq.on_tick(a_state, T0 + DAY_MS)
    _, [b2] = seq.on_tick(b_state, T0 + 2 * DAY_MS)
    assert a2["message_id"] == b2["message_id"] != a1["message_id"]
    same, messages, outcome = seq.on_abandoned(a_state, cart(), PROFILE, T0 + HOUR_MS)  # redelivered event
    assert outcome is Outcome.DUPLICATE and messages == [] and same == a_state
    assert sequence_id("C2", "cart-1") != sequence_id("C1", "cart-1")


def test_profile_from_crm_keeps_only_what_the_sequence_needs() -> None:
    record = {"customer_id": "C1", "email": "c1@example.com", "gender": "F", "birth_year": 1990, "age_band": "35-44",
              "csp": "cadre", "loyalty_tier": "gold", "marketing_consent": True,
              "updated_at": dt.datetime.fromtimestamp(T0 / 1000, tz=dt.UTC)}  # fmt: skip
    assert profile_from_crm(record) == {"email": "c1@example.com", "marketing_consent": True, "updated_at": T0}


def test_datetimes_from_fastavro_are_accepted(seq: Sequencer) -> None:
    event = cart()
    event["detected_at"] = dt.datetime.fromtimestamp(T0 / 1000, tz=dt.UTC)
    event["last_activity_at"] = dt.datetime.fromtimestamp((T0 - 60_000) / 1000, tz=dt.UTC)
    state, _, outcome = seq.on_abandoned(None, event, PROFILE, T0)
    assert outcome is Outcome.STARTED and state is not None and state["abandoned_at"] == T0 - 60_000


def test_an_order_that_arrives_before_the_abandonment_cancels_it(seq: Sequencer) -> None:
    # The order (another device, or a backlog) is read before the tracker's CartAbandoned, 30 min later.
    memo, outcome = seq.on_order(None, "O1", T0 - 10 * 60_000, T0 - 10 * 60_000, customer_id="C1")
    assert outcome is Outcome.IGNORED and memo is not None and memo["last_order_at"] == T0 - 10 * 60_000
    state, messages, outcome = seq.on_abandoned(memo, cart(), PROFILE, T0)
    assert outcome is Outcome.CANCELLED and messages == []
    assert seq.on_tick(state, T0 + DAY_MS)[1] == []


def test_an_older_order_does_not_stop_a_later_cart(seq: Sequencer) -> None:
    memo, _ = seq.on_order(None, "O0", T0 - 2 * HOUR_MS, T0 - 2 * HOUR_MS, customer_id="C1")
    state, messages, outcome = seq.on_abandoned(memo, cart(), PROFILE, T0)
    assert outcome is Outcome.STARTED and [m["step"] for m in messages] == [1]
    assert state is not None and seq.on_tick(state, T0 + DAY_MS)[1][0]["step"] == 2


def test_the_memory_of_an_order_is_forgotten_after_the_lateness_window(seq: Sequencer) -> None:
    memo, _ = seq.on_order(None, "O1", T0, T0, customer_id="C1")
    assert seq.on_tick(memo, T0 + HOUR_MS)[0] == memo
    assert seq.on_tick(memo, T0 + 2 * DAY_MS)[0] is None
