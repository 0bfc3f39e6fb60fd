"""The sequencer's command handler with plain dicts for tables and a driven clock: no broker, no faust."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from passerelle.streams.remarketing.commands import (
    abandoned_command,
    dumps,
    link_command,
    loads,
    order_command,
    privacy_command,
    profile_command,
    tick_command,
    visitor_privacy_command,
)
from passerelle.streams.remarketing.handler import PARKED, CommandHandler, VisitorRouter
from passerelle.streams.remarketing.metrics import RemarketingMetrics
from passerelle.streams.remarketing.sequence import HOUR_MS, Outcome, Sequencer, SequencerConfig
from tests.unit.test_remarketing_sequence import T0, cart

pytestmark = pytest.mark.unit


def crm(customer: str = "C1", consent: bool | None = True, updated_at: int = T0 - HOUR_MS) -> dict[str, Any]:
    return {"customer_id": customer, "email": f"{customer.lower()}@example.com", "gender": None, "birth_year": None,
            "age_band": None, "csp": None, "loyalty_tier": None, "marketing_consent": consent,
            "updated_at": updated_at}  # fmt: skip


class Harness:
    """A handler over dict tables; ``ready`` plays the profiles gate, ``now`` the clock."""

    def __init__(self, ready: bool = True) -> None:
        self.sequences: dict[str, bytes] = {}
        self.profiles: dict[str, bytes] = {}
        self.parked: dict[str, bytes] = {}
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.ready = ready
        self.now = T0
        self.metrics = RemarketingMetrics()

        async def send(customer: str, message: dict[str, Any]) -> None:
            self.sent.append((customer, message))

        self.handler = CommandHandler(
            Sequencer(SequencerConfig(followup_ms=HOUR_MS)), self.sequences, self.profiles, self.parked, send,
            self.metrics, lambda: self.now, profiles_ready=lambda: self.ready,
        )  # fmt: skip

    def apply(self, routed: tuple[str, dict[str, Any]] | None) -> str:
        assert routed is not None
        customer, command = routed
        return asyncio.run(self.handler.handle(customer, loads(dumps(command))))  # through the JSON it travels in

    def steps(self) -> list[tuple[str, int]]:
        return [(customer, message["step"]) for customer, message in self.sent]

    def counted(self, kind: str, outcome: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "passerelle_remarketing_inputs_total", {"kind": kind, "outcome": outcome}
        )
        return value or 0.0


def test_a_cart_with_its_profile_cached_starts_at_once_even_before_the_profiles_are_read() -> None:
    h = Harness(ready=False)
    h.apply(profile_command("C1", crm()))
    assert h.apply(abandoned_command(cart())) == Outcome.STARTED
    assert h.steps() == [("C1", 1)] and h.sent[0][1]["email"] == "c1@example.com"
    assert not h.parked


def test_a_cart_before_its_profile_is_parked_then_judged_with_the_profile() -> None:
    """The flake's cause: at start a cart may reach the command topic before a profile written long before it."""
    h = Harness(ready=False)
    assert h.apply(abandoned_command(cart())) == PARKED
    assert h.sent == [] and "C1" in h.parked and "C1" not in h.sequences
    h.apply(profile_command("C1", crm()))
    assert h.steps() == [("C1", 1)] and h.sent[0][1]["email"] == "c1@example.com"
    assert "C1" not in h.parked and loads(h.sequences["C1"])["status"] == "active"
    assert h.counted("abandoned", PARKED) == 1 and h.counted("abandoned", "started") == 1


def test_without_the_gate_a_cart_before_its_profile_is_lost() -> None:
    """What happened before the gate: judged at once, no email, and the profile that follows changes nothing."""
    h = Harness(ready=True)
    assert h.apply(abandoned_command(cart())) == Outcome.NO_EMAIL
    h.apply(profile_command("C1", crm()))
    assert h.sent == []


def test_parked_carts_without_a_profile_are_judged_at_the_first_tick_once_the_profiles_are_read() -> None:
    h = Harness(ready=False)
    h.apply(abandoned_command(cart(email="c1@shop.example", consent=True, crm_consent=True)))  # the event's own
    h.apply(tick_command_for("C1"))
    assert h.sent == [] and "C1" in h.parked  # still not read: still parked
    h.ready = True
    h.apply(tick_command_for("C1"))
    assert h.steps() == [("C1", 1)] and h.sent[0][1]["email"] == "c1@shop.example" and not h.parked


def tick_command_for(customer: str) -> tuple[str, dict[str, Any]]:
    return customer, tick_command()


def test_parked_carts_keep_their_order_and_a_later_cart_waits_behind_them() -> None:
    h = Harness(ready=False)
    h.apply(abandoned_command(cart("cart-1")))
    h.apply(privacy_command({"customer_id": "C1", "kind": "consent", "marketing_consent": True,
                             "requested_at": T0}))  # fmt: skip
    assert "C1" in h.profiles  # a profile now, but an older cart is still parked: the next one queues behind it
    assert h.apply(abandoned_command(cart("cart-2"))) == PARKED
    assert [e["event_id"] for e in loads(h.parked["C1"])] == ["cart-1", "cart-2"]
    h.apply(profile_command("C1", crm(updated_at=T0 + 1)))  # newer than the consent request
    assert h.steps() == [("C1", 1)]  # cart-1 started the sequence; cart-2 is capped behind it
    assert loads(h.sequences["C1"])["event_id"] == "cart-1"
    assert h.counted("abandoned", "capped") == 1


def test_an_erasure_drops_the_parked_carts() -> None:
    for erasure in (profile_command("C1", None), privacy_command({"customer_id": "C1", "kind": "erasure"})):
        h = Harness(ready=False)
        h.apply(abandoned_command(cart()))
        h.apply(erasure)
        assert not h.parked
        h.ready = True
        h.apply(tick_command_for("C1"))
        assert h.sent == []


def test_once_the_profiles_are_read_an_order_judges_the_parked_carts_first() -> None:
    h = Harness(ready=False)
    h.apply(abandoned_command(cart(email="c1@shop.example", crm_consent=True)))
    h.ready = True
    h.now = T0 + 60_000
    order = {"type": "order", "customer_id": "C1", "visitor_id": "v1", "event_id": "h1", "event_time": h.now,
             "order": {"order_id": "O-1"}}  # fmt: skip
    assert h.apply(order_command(order)) == Outcome.RECOVERED  # the parked cart's step 1 went first
    assert h.steps() == [("C1", 1)]


def test_step_2_comes_from_a_tick_once_due() -> None:
    h = Harness()
    h.apply(profile_command("C1", crm()))
    h.apply(abandoned_command(cart()))
    assert h.apply(tick_command_for("C1")) == "not_due"
    h.now += HOUR_MS
    assert h.apply(tick_command_for("C1")) == "step2"
    assert h.steps() == [("C1", 1), ("C1", 2)] and h.sent[1][1]["promotion"] is not None


def test_commands_route_by_customer_and_refuse_what_has_none() -> None:
    assert abandoned_command(cart(customer=None)) is None
    assert privacy_command({"customer_id": None, "visitor_id": "v1", "kind": "erasure"}) is None
    assert profile_command("C9", None) == ("C9", {"kind": "profile", "profile": None})  # a tombstone: key's customer
    assert order_command({"type": "page_view", "customer_id": "C1"}) is None
    assert order_command({"type": "order", "customer_id": None}) is None


def test_the_metrics_are_the_runtimes_names_with_processor_remarketing() -> None:
    metrics = RemarketingMetrics()
    metrics.dead_letter("deserialize")
    metrics.records_in("carts.abandoned")
    metrics.records_out("remarketing.messages")
    metrics.state_keys("sequences", 3)
    metrics.registry_retry()
    sample = metrics.registry.get_sample_value
    assert sample("passerelle_dead_letters_total", {"processor": "remarketing", "stage": "deserialize"}) == 1
    assert sample("passerelle_records_in_total", {"processor": "remarketing", "topic": "carts.abandoned"}) == 1
    assert sample("passerelle_records_out_total", {"processor": "remarketing", "topic": "remarketing.messages"}) == 1
    assert sample("passerelle_state_keys", {"processor": "remarketing", "store": "sequences"}) == 3
    assert sample("passerelle_schema_registry_retries_total", {"processor": "remarketing"}) == 1
    names = {m.name for m in metrics.registry.collect()}
    assert "passerelle_remarketing_dead_letters" not in names and "passerelle_remarketing_states" not in names


# --- privacy requests naming only a visitor: the visitor -> customer links of identity.links ----------------


def link(visitor: str = "v1", customer: str = "C1") -> dict[str, Any]:
    return {"visitor_id": visitor, "customer_id": customer, "site": "shop.example", "linked_at": T0 - HOUR_MS,
            "source": "identify"}  # fmt: skip


class Routed:
    """A ``VisitorRouter`` over a dict table, forwarding into a ``Harness``'s command handler."""

    def __init__(self, h: Harness) -> None:
        self.h = h
        self.links: dict[str, bytes] = {}

        async def forward(customer: str, command: dict[str, Any]) -> None:
            await h.handler.handle(customer, loads(dumps(command)))

        self.router = VisitorRouter(self.links, forward, h.metrics)

    def apply(self, routed: tuple[str, dict[str, Any]] | None) -> str:
        assert routed is not None
        visitor, command = routed
        return asyncio.run(self.router.handle(visitor, loads(dumps(command))))


def test_a_request_naming_only_a_visitor_reaches_the_linked_customer() -> None:
    h = Harness()
    r = Routed(h)
    h.apply(profile_command("C1", crm()))
    h.apply(abandoned_command(cart()))
    assert h.steps() == [("C1", 1)] and "C1" in h.sequences
    request = {"request_id": "r1", "kind": "erasure", "customer_id": None, "visitor_id": "v1",
               "marketing_consent": None, "requested_at": T0}  # fmt: skip
    assert privacy_command(request) is None  # no customer: it goes by visitor
    assert r.apply(link_command("v1", link())) == "linked"
    assert r.apply(visitor_privacy_command(request)) == "routed"
    assert "C1" not in h.sequences and "C1" not in h.profiles  # the person is erased
    assert "v1" not in r.links  # and the link forgotten
    assert h.counted("privacy", Outcome.ERASED) == 1 and h.counted("visitor_privacy", "routed") == 1
    h.now = T0 + 2 * HOUR_MS
    h.apply(tick_command_for("C1"))
    assert h.steps() == [("C1", 1)]  # no step 2


def test_a_consent_withdrawal_by_visitor_cancels_the_sequence() -> None:
    h = Harness()
    r = Routed(h)
    h.apply(profile_command("C1", crm()))
    h.apply(abandoned_command(cart()))
    r.apply(link_command("v1", link()))
    request = {"request_id": "r2", "kind": "consent_change", "customer_id": None, "visitor_id": "v1",
               "marketing_consent": False, "requested_at": T0}  # fmt: skip
    assert r.apply(visitor_privacy_command(request)) == "routed"
    assert loads(h.sequences["C1"])["status"] == "cancelled" and "v1" in r.links  # not an erasure: link kept


def test_an_unlinked_visitor_is_counted_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    h = Harness()
    r = Routed(h)
    r.apply(link_command("v1", link()))
    assert r.apply(link_command("v1", None)) == "forgotten"  # the link's tombstone
    request = {"request_id": "r3", "kind": "erasure", "customer_id": None, "visitor_id": "v1",
               "marketing_consent": None, "requested_at": T0}  # fmt: skip
    with caplog.at_level("WARNING", logger="passerelle.remarketing"):
        assert r.apply(visitor_privacy_command(request)) == "unlinked"
        assert r.apply(visitor_privacy_command({**request, "visitor_id": "v2"})) == "unlinked"
    assert len([rec for rec in caplog.records if "linked to no customer" in rec.getMessage()]) == 1
    assert h.counted("visitor_privacy", "unlinked") == 2


def test_commands_keyed_by_visitor() -> None:
    assert link_command("v1", link()) == ("v1", {"kind": "link", "customer_id": "C1", "linked_at": T0 - HOUR_MS})
    assert link_command("v1", None) == ("v1", {"kind": "link", "customer_id": None, "linked_at": None})
    both = {"request_id": "r", "kind": "erasure", "customer_id": "C1", "visitor_id": "v1", "requested_at": T0}
    assert visitor_privacy_command(both) is None and privacy_command(both) is not None  # by customer
    assert visitor_privacy_command({**both, "customer_id": None, "visitor_id": None}) is None
