"""The remarketing sequence as pure rules: abandoned cart -> step 1 now, step 2 with a promotion later.

Why pure: the sequence spans hours and days, so its behaviour must be checked
with a driven clock, not by waiting; and the same rules must give the same
answer when Kafka redelivers or a topic is replayed. Every function here takes
the per-customer state (a small JSON-able dict, or ``None`` when the customer
has none) and ``now`` in UTC milliseconds, and returns the new state; nothing
here reads a clock, a topic or a table.

Ids are deterministic (sha256 of stable inputs), so a replayed abandonment
yields the same sequence id and every step the same message id: the emailing
bridge uses the message id as its idempotency key, which is what bounds the
duplicates an at-least-once runtime can produce.

State of one customer (all times UTC ms, processing time unless said otherwise)::

    {"customer_id", "visitor_id", "site", "email", "sequence_id", "event_id",
     "status": "active" | "completed" | "recovered" | "cancelled",
     "reason": why it stopped (None while active or completed),
     "step1_at", "step2_due_at", "step2_at", "abandoned_at" (event time),
     "recovered_order_id", "products", "lines"}

Once a sequence can send nothing more, the email, products and lines are
dropped from the state (data minimisation); what stays serves the frequency
cap and the counting of recovered orders, and the whole state expires after
the cap window and the recovery window have both passed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypedDict

from passerelle.schemas.timeconv import to_millis as to_ms
from passerelle.streams.consent import marketing_allowed

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
MAX_PRODUCTS = 6

State = dict[str, Any]
Message = dict[str, Any]

ACTIVE = "active"
COMPLETED = "completed"
RECOVERED = "recovered"
CANCELLED = "cancelled"

_PRODUCT_DEFAULTS: dict[str, Any] = {
    "name": None,
    "price": None,
    "currency": None,
    "quantity": 1,
    "category": None,
    "url": None,
    "image_url": None,
}


class Outcome(StrEnum):
    """What an input did to the sequence; the wiring counts these (metric label values, no per-person data)."""

    STARTED = "started"  # step 1 emitted
    DUPLICATE = "duplicate"  # the same abandonment again (redelivery or replay): nothing new
    ANONYMOUS = "anonymous"  # no customer id: nobody to write to
    NO_EMAIL = "no_email"  # neither the event nor the CRM profile has an email address
    NO_CONSENT = "no_consent"  # the site or the CRM refused marketing, or one of them is unknown
    CAPPED = "capped"  # a sequence already started for this customer within the cap window
    STALE = "stale"  # abandonment detected too long ago to still be worth an email
    RECOVERED = "recovered"  # an order after step 1 (or 2): counted, the rest cancelled
    CANCELLED = "cancelled"  # what remained was cancelled (consent withdrawn, order before step 1)
    ERASED = "erased"  # the person is forgotten: state removed
    IGNORED = "ignored"  # nothing to do (no active sequence, consent granted, old order)


@dataclass(frozen=True)
class Promotion:
    """The incentive step 2 adds; the ``Promotion`` record of ``RemarketingMessage``."""

    code: str = "COMEBACK10"
    description: str = "10% off your cart, today only"
    discount_percent: float | None = 10.0

    def record(self) -> dict[str, Any]:
        return {"code": self.code, "description": self.description, "discount_percent": self.discount_percent}


@dataclass(frozen=True)
class SequencerConfig:
    """Delays and limits; frozen so a running sequencer cannot be reconfigured under its states."""

    followup_ms: int = DAY_MS  # step 1 -> step 2
    cap_ms: int = 7 * DAY_MS  # at most one sequence per customer per window (from step 1)
    promotion: Promotion = field(default_factory=Promotion)
    max_products: int = MAX_PRODUCTS  # the email template shows at most 6 products
    max_lateness_ms: int | None = DAY_MS  # an abandonment detected longer ago than this starts nothing
    recovery_window_ms: int = 7 * DAY_MS  # an order this long after step 1 still counts as recovered

    def __post_init__(self) -> None:
        if self.followup_ms < 0 or self.cap_ms < 0 or self.recovery_window_ms < 0:
            raise ValueError("followup, cap and recovery windows must be >= 0")
        if not 0 < self.max_products <= MAX_PRODUCTS:
            raise ValueError(f"max_products must be within 1..{MAX_PRODUCTS}")


class Profile(TypedDict):
    """What the sequencer needs of a CRM profile (the cache keeps nothing more of it)."""

    email: str | None
    marketing_consent: bool | None
    updated_at: int


def profile_from_crm(record: Mapping[str, Any]) -> Profile:
    """Reduce a ``CrmProfile`` record to the cached fields (less personal data held, less to erase)."""
    return {
        "email": record.get("email") or None,
        "marketing_consent": record.get("marketing_consent"),
        "updated_at": to_ms(record.get("updated_at") or 0),
    }


def consents(event: Mapping[str, Any], profile: Profile | None) -> tuple[bool | None, bool | None]:
    """(site, CRM) marketing consent of an abandoned cart, for ``marketing_allowed``.

    Site: the event's ``site_marketing_consent``; an event written before that
    field existed only has the combined ``marketing_consent`` (site and CRM as
    the tracker saw them), which then stands for the site's: conservative, it
    is false whenever either refused. CRM: the cached profile's consent (the
    latest record, privacy requests included), else the copy the hits carried
    (``crm.marketing_consent``); unknown stays ``None``, which is not consent.
    """
    site = event.get("site_marketing_consent")
    if site is None:
        site = event.get("marketing_consent")
    crm = profile.get("marketing_consent") if profile is not None else (event.get("crm") or {}).get("marketing_consent")
    return site, crm


def sequence_id(customer_id: str, event_id: str) -> str:
    """One sequence per abandonment event and customer, the same on every replay."""
    return hashlib.sha256(f"remarketing\x1f{customer_id}\x1f{event_id}".encode()).hexdigest()[:32]


def message_id(seq_id: str, step: int) -> str:
    """The emailing bridge's idempotency key: the same (sequence, step) always gives the same id."""
    return hashlib.sha256(f"{seq_id}\x1f{step}".encode()).hexdigest()


def next_due(state: Mapping[str, Any] | None, config: SequencerConfig) -> int | None:
    """When ``on_tick`` next has something to do for this state: step 2, or forgetting it.

    The timer scans states with this, so it must be cheap and depend on the
    state only.
    """
    if not state:
        return None
    if state.get("status") == ACTIVE and state.get("step2_due_at") is not None:
        return int(state["step2_due_at"])
    return _expires_at(state, config)


def _expires_at(state: Mapping[str, Any], config: SequencerConfig) -> int:
    if state.get("step1_at") is None:  # only the memory of an order: kept as long as an abandonment may lag it
        return int(state["last_order_at"]) + max(config.max_lateness_ms or 0, config.followup_ms)
    step1 = int(state["step1_at"])
    return step1 + max(config.cap_ms, config.recovery_window_ms, config.followup_ms)


def _product(raw: Mapping[str, Any]) -> dict[str, Any]:
    product = {"id": str(raw["id"]), **{key: raw.get(key, default) for key, default in _PRODUCT_DEFAULTS.items()}}
    if product["quantity"] is None:
        product["quantity"] = 1
    return product


def _line(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "product_id": str(raw["product_id"]),
        "name": raw.get("name"),
        "price": float(raw["price"]),
        "quantity": int(raw["quantity"]),
        "currency": str(raw["currency"]),
    }


def select_products(viewed: Sequence[Mapping[str, Any]], limit: int = MAX_PRODUCTS) -> list[dict[str, Any]]:
    """The newest distinct viewed products, at most ``limit`` (the template's slots)."""
    chosen: list[dict[str, Any]] = []
    seen: set[str] = set()
    for raw in viewed:
        product = _product(raw)
        if product["id"] in seen:
            continue
        seen.add(product["id"])
        chosen.append(product)
        if len(chosen) >= limit:
            break
    return chosen


def _minimised(state: State) -> State:
    """Drop what only a future step needed (email, products, lines) once no step can follow."""
    return {**state, "email": None, "products": [], "lines": [], "step2_due_at": None}


class Sequencer:
    """The rules of the two-step sequence; stateless itself, so one instance serves every customer."""

    def __init__(self, config: SequencerConfig | None = None) -> None:
        self.config = config or SequencerConfig()

    # -- inputs ---------------------------------------------------------------------------------

    def on_abandoned(
        self, state: State | None, event: Mapping[str, Any], profile: Profile | None, now: int
    ) -> tuple[State | None, list[Message], Outcome]:
        """A cart was abandoned: start a sequence and emit step 1 when the person may and can be written to.

        The email comes from the event, else from the CRM profile. Consent is
        the one rule (``passerelle.streams.consent.marketing_allowed``) over
        the site's consent carried by the event and the CRM's latest consent
        (``consents``). A replayed event (same sequence id) changes nothing, because the
        wiring stores the state only after step 1 was acknowledged.
        """
        customer = event.get("customer_id")
        if not customer:
            return state, [], Outcome.ANONYMOUS
        last_order = state.get("last_order_at") if state is not None else None
        abandoned_at = to_ms(event.get("last_activity_at") or event["detected_at"])
        if last_order is not None and int(last_order) >= abandoned_at:
            # The order (maybe on another device) reached us before the abandonment did: nothing to remind.
            return state, [], Outcome.CANCELLED
        seq = sequence_id(customer, str(event["event_id"]))
        if state is not None and state.get("sequence_id") == seq:
            return state, [], Outcome.DUPLICATE
        lateness = self.config.max_lateness_ms
        if lateness is not None and now - to_ms(event["detected_at"]) > lateness:
            return state, [], Outcome.STALE
        email = event.get("email") or (profile["email"] if profile is not None else None)
        if not email:
            return state, [], Outcome.NO_EMAIL
        if not marketing_allowed(*consents(event, profile)):
            return state, [], Outcome.NO_CONSENT
        step1_at = state.get("step1_at") if state is not None else None
        if step1_at is not None and now - int(step1_at) < self.config.cap_ms:
            return state, [], Outcome.CAPPED
        new: State = {
            "customer_id": customer,
            "visitor_id": event.get("visitor_id"),
            "site": str(event["site"]),
            "email": str(email),
            "sequence_id": seq,
            "event_id": str(event["event_id"]),
            "status": ACTIVE,
            "reason": None,
            "abandoned_at": abandoned_at,
            "last_order_at": last_order,
            "step1_at": now,
            "step2_due_at": now + self.config.followup_ms,
            "step2_at": None,
            "recovered_order_id": None,
            "products": select_products(event.get("viewed_products") or [], self.config.max_products),
            "lines": [_line(line) for line in event.get("lines") or []],
        }
        return new, [self._message(new, 1, now)], Outcome.STARTED

    def on_order(
        self,
        state: State | None,
        order_id: str,
        order_time: int,
        now: int,
        customer_id: str | None = None,
        visitor_id: str | None = None,
    ) -> tuple[State | None, Outcome]:
        """An order stops what remains; after step 1 (or 2) it is a recovered order, counted once.

        ``customer_id``/``visitor_id`` say whose order it is: it matches when
        either is the sequence's (an order hit may carry only the visitor id).
        An order placed before the abandoned cart's last activity is an old
        one arriving late and changes nothing; one placed between that and
        step 1 cancels without counting (the email did not recover it).
        """
        if state is None or state.get("sequence_id") is None:
            # No sequence yet: remember the order, an abandonment that lags it must not start one.
            if not customer_id:
                return state, Outcome.IGNORED
            memo: State = dict(state or {"customer_id": customer_id})
            memo["last_order_at"] = max(order_time, int(memo.get("last_order_at") or 0))
            return memo, Outcome.IGNORED
        if not self._concerns(state, customer_id, visitor_id):
            return state, Outcome.IGNORED
        if order_time < int(state["abandoned_at"]) or state.get("recovered_order_id") is not None:
            return state, Outcome.IGNORED
        status = state["status"]
        if status == CANCELLED:
            return state, Outcome.IGNORED
        if order_time >= int(state["step1_at"]) and now - int(state["step1_at"]) <= self.config.recovery_window_ms:
            stopped = _minimised(state) if status == ACTIVE else dict(state)
            stopped.update(status=RECOVERED, reason="order", recovered_order_id=order_id)
            return stopped, Outcome.RECOVERED
        if status == ACTIVE:
            stopped = _minimised(state)
            stopped.update(status=CANCELLED, reason="order")
            return stopped, Outcome.CANCELLED
        return state, Outcome.IGNORED

    def on_consent(self, state: State | None, marketing_consent: bool | None, now: int) -> tuple[State | None, Outcome]:
        """Consent withdrawn (privacy request or CRM update): cancel what remains, keep the cap memory.

        Consent granted changes nothing here: it only matters for the next
        abandonment, through the profile.
        """
        if state is None or marketing_consent is not False or state.get("status") != ACTIVE:
            return state, Outcome.IGNORED
        stopped = _minimised(state)
        stopped.update(status=CANCELLED, reason="consent")
        return stopped, Outcome.CANCELLED

    def on_erasure(self, state: State | None) -> tuple[None, Outcome]:
        """Erasure: the person is forgotten, cap memory included (an erased person has no email left anyway)."""
        return None, Outcome.ERASED if state is not None else Outcome.IGNORED

    def on_tick(self, state: State | None, now: int) -> tuple[State | None, list[Message]]:
        """Time passed: emit step 2 when due and still wanted; forget states past every window.

        Step 2 is emitted once: the returned state records ``step2_at`` and is
        no longer active, so a second tick (a repeated timer, a redelivered
        tick command) emits nothing.
        """
        if state is None:
            return None, []
        if state.get("status") == ACTIVE:
            due = state.get("step2_due_at")
            if due is None or now < int(due):
                return state, []
            message = self._message(state, 2, now)
            done = _minimised(state)
            done.update(status=COMPLETED, step2_at=now)
            return done, [message]
        if now >= _expires_at(state, self.config):
            return None, []
        return state, []

    # -- helpers --------------------------------------------------------------------------------

    @staticmethod
    def _concerns(state: State, customer_id: str | None, visitor_id: str | None) -> bool:
        if customer_id and state.get("customer_id") == customer_id:
            return True
        return bool(visitor_id) and state.get("visitor_id") == visitor_id

    def _message(self, state: State, step: int, now: int) -> Message:
        """A ``RemarketingMessage`` record (fastavro-ready dict)."""
        return {
            "message_id": message_id(state["sequence_id"], step),
            "sequence_id": state["sequence_id"],
            "step": step,
            "customer_id": state["customer_id"],
            "email": state["email"],
            "site": state["site"],
            "products": [dict(p) for p in state["products"]],
            "lines": [dict(line) for line in state["lines"]],
            "promotion": self.config.promotion.record() if step == 2 else None,
            "created_at": now,
        }
