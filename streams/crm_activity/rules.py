"""Per-customer web activity for the CRM as pure logic: which events count, and how a summary adds up.

The CRM's ``web_activity`` row of a customer (``WebActivity.avsc``): their last
visit and last declared campaign, visits, orders, revenue and abandoned carts
of the last 30 days, remarketing messages received and orders recovered by
one (ever). Only identified customers count: a summary is keyed by customer id.

Two halves, because the inputs are keyed by visitor and the summary by
customer (``processor.py`` wires them, as ``campaign_counts`` does):

- per visitor (``on_hit``, ``on_cart``, ``on_message``): has this event started
  a visit, placed an order, abandoned a cart, sent a message? If so a
  ``WebActivityDelta``, keyed by customer id. A visit is counted on the first
  *identified* hit of each ``visit_number`` (the enrichment numbers visits;
  campaign counts does the same), at that hit's time (a visitor who logs in
  mid-visit: their last visit starts at the login, anonymous hits are not
  kept); the visitor's last counted visit is the only state, forgotten
  ``visitor_ttl_ms`` after it was counted;
- per customer (``add``): deltas summed into daily buckets (UTC days of event
  time) and totals, deduplicated by ``event_id``. Each delta's id is
  deterministic (``visit:<visit id>``, ``order:<site>:<order id>``,
  ``cart:<event id>``, ``message:<message id>``), so a reloaded confirmation
  page, a visit counted again after its visitor was forgotten, or an input
  replayed are counted once. Revenue is summed as it comes: the CRM column
  has no currency, the site has one.

Time. The window is the 30 UTC days up to today on the wall clock. An event
older than the window is late and dropped: it would fall out at once, and the
dedup memory keeps ids exactly that long (newest ``max_event_ids`` at most, so
memory stays bounded for a customer whose traffic is a bot's). Within the
window the result does not depend on the order deltas arrive in: sums
commute, the last visit is the latest one, and a recovered order is recognised
whichever of the order and the message comes first.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypedDict

from passerelle.schemas.timeconv import to_millis

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
WINDOW_DAYS = 30
"""The CRM columns say ``_30d``: not a setting."""

VISIT, ORDER, CART, MESSAGE = "visit", "order", "abandoned_cart", "message"
KINDS = (VISIT, ORDER, CART, MESSAGE)
MAX_SENT = 32  # message times kept per customer for the recovery rule
MAX_UNRECOVERED = 64  # order times kept per customer for a message that arrives after its order


@dataclass(frozen=True)
class CrmActivityConfig:
    """Rules of the summary.

    ``emit_interval_ms``: a customer's summary is published at most once per
    interval, however many events changed it. ``recovery_window_ms``: an order
    placed within this time after a remarketing message to the customer is a
    recovered order. ``visitor_ttl_ms``: how long a visitor's counted visit is
    remembered (longer than a visit lasts; a visit counted again after that is
    deduplicated per customer anyway). ``max_event_ids``: event ids remembered
    per customer for deduplication.
    """

    emit_interval_ms: int = 5_000
    recovery_window_ms: int = 7 * DAY_MS
    visitor_ttl_ms: int = 6 * HOUR_MS
    max_event_ids: int = 512

    def __post_init__(self) -> None:
        if min(self.emit_interval_ms, self.recovery_window_ms, self.visitor_ttl_ms, self.max_event_ids) <= 0:
            raise ValueError("emit_interval_ms, recovery_window_ms, visitor_ttl_ms and max_event_ids must be positive")

    @property
    def forget_interval_ms(self) -> int:
        """How often a partition's visitors are swept: a visitor is kept between 1 and 1.25 times the TTL."""
        return max(1_000, self.visitor_ttl_ms // 4)


class Delta(TypedDict):
    """A ``WebActivityDelta`` (``schemas/avro/WebActivityDelta.avsc``): one event of one customer."""

    event_id: str
    customer_id: str
    kind: str
    at: int
    campaign: str | None
    revenue: float | None


class VisitorState(TypedDict):
    """An identified visitor's last counted visit; plain JSON for the store's default codec."""

    customer_id: str  # who it was counted for (the runtime indexes it: an erasure finds the visitor)
    visit: int  # its visit_number
    seen: int  # wall clock when it was counted (ms): expiry


@dataclass(frozen=True)
class HitStep:
    """What one enriched hit does: the visitor's state (unchanged if the same object) and its deltas."""

    state: VisitorState | None
    deltas: tuple[Delta, ...] = ()


class Bucket(TypedDict):
    """One UTC day of a customer's activity."""

    visits: int
    orders: int
    revenue: float
    carts: int


class CustomerState(TypedDict):
    """What is kept per customer; plain JSON (day keys are day numbers since 1970-01-01, as strings)."""

    customer_id: str
    days: dict[str, Bucket]
    last_visit_at: int | None
    last_campaign: str | None
    last_campaign_at: int | None  # event time of the visit last_campaign comes from
    messages: int  # ever
    recovered: int  # ever
    sent: list[int]  # times of messages that may still recover an order, oldest first
    unrecovered: list[int]  # times of orders no message recovered yet, while a late message still could
    seen: dict[str, int]  # event id -> event time: what was counted (dedup)
    pending: bool  # changed since it was last published


class WebActivity(TypedDict):
    """A ``WebActivity`` record (``schemas/avro/WebActivity.avsc``): the CRM row of one customer."""

    customer_id: str
    last_visit_at: int | None
    last_campaign: str | None
    visits_30d: int
    orders_30d: int
    revenue_30d: float
    abandoned_carts_30d: int
    remarketing_messages: int
    recovered_orders: int
    updated_at: int


Outcome = Literal["counted", "duplicate", "late"]


@dataclass(frozen=True)
class AddStep:
    """What one delta does to its customer: the new state (``None``: unchanged) and why."""

    state: CustomerState | None
    outcome: Outcome


def delta(event_id: str, customer: str, kind: str, at: int, campaign: str | None = None,
          revenue: float | None = None) -> Delta:  # fmt: skip
    """A delta record (what the first half writes)."""
    return {"event_id": event_id, "customer_id": customer, "kind": kind, "at": at, "campaign": campaign,
            "revenue": revenue}  # fmt: skip


def first_day(now: int) -> int:
    """The oldest UTC day (number since 1970-01-01) of the window at wall-clock ``now``."""
    return now // DAY_MS - (WINDOW_DAYS - 1)


def next_midnight(now: int) -> int:
    """When the next UTC day starts: a day falls out of every customer's window."""
    return (now // DAY_MS + 1) * DAY_MS


class CrmActivity:
    """The rules of both halves; no I/O, time passed in."""

    def __init__(self, config: CrmActivityConfig | None = None) -> None:
        self.config = config or CrmActivityConfig()

    # --- per visitor ----------------------------------------------------------------

    def on_hit(self, state: VisitorState | None, hit: Mapping[str, Any], now: int) -> HitStep:
        """An enriched hit: a visit delta on the first identified hit of a visit, an order delta per order hit."""
        customer = hit.get("customer_id")
        if not customer:
            return HitStep(state)  # anonymous: nothing counts, nothing remembered
        customer, at = str(customer), to_millis(hit["event_time"])
        visit = int(hit["visit_number"])
        deltas: list[Delta] = []
        if state is None or state["visit"] != visit or state["customer_id"] != customer:
            campaign = hit.get("declared_campaign")
            deltas.append(delta(f"visit:{hit['visit_id']}", customer, VISIT, at,
                                campaign=str(campaign["key"]) if campaign else None))  # fmt: skip
            state = {"customer_id": customer, "visit": visit, "seen": now}
        order = hit.get("order") if hit.get("type") == "order" else None
        if order is not None:
            revenue = float(order["revenue"])
            deltas.append(delta(f"order:{hit['site']}:{order['order_id']}", customer, ORDER, at,
                                revenue=round(revenue, 4) if math.isfinite(revenue) else 0.0))  # fmt: skip
        return HitStep(state, tuple(deltas))

    @staticmethod
    def on_cart(cart: Mapping[str, Any]) -> Delta | None:
        """A ``CartAbandoned``: counted on the day it was detected, if its visitor was identified."""
        customer = cart.get("customer_id")
        if not customer:
            return None
        return delta(f"cart:{cart['event_id']}", str(customer), CART, to_millis(cart["detected_at"]))

    @staticmethod
    def on_message(message: Mapping[str, Any]) -> Delta | None:
        """A ``RemarketingMessage``: counted when it was created."""
        customer = message.get("customer_id")
        if not customer:
            return None
        return delta(f"message:{message['message_id']}", str(customer), MESSAGE, to_millis(message["created_at"]))

    def expired(self, state: VisitorState, now: int) -> bool:
        """Whether a visitor can be forgotten: their visit was counted ``visitor_ttl_ms`` ago."""
        return now - state["seen"] >= self.config.visitor_ttl_ms

    # --- per customer -------------------------------------------------------------------

    @staticmethod
    def empty(customer: str) -> CustomerState:
        return {"customer_id": customer, "days": {}, "last_visit_at": None, "last_campaign": None,
                "last_campaign_at": None, "messages": 0, "recovered": 0, "sent": [], "unrecovered": [],
                "seen": {}, "pending": False}  # fmt: skip

    def add(self, state: CustomerState | None, d: Mapping[str, Any], now: int) -> AddStep:
        """A customer's state with one delta counted (a new state: stored values are never mutated)."""
        at, event_id, kind = to_millis(d["at"]), str(d["event_id"]), str(d["kind"])
        if kind not in KINDS:
            raise ValueError(f"unknown activity kind {kind!r}")
        if at // DAY_MS < first_day(now):
            return AddStep(None, "late")
        if state is not None and event_id in state["seen"]:
            return AddStep(None, "duplicate")
        s = state.copy() if state is not None else self.empty(str(d["customer_id"]))
        s["pending"] = True
        s["seen"] = {**s["seen"], event_id: at}
        if kind == MESSAGE:
            self._message(s, at)
        else:
            day = str(at // DAY_MS)
            old = s["days"].get(day)
            b: Bucket = old.copy() if old else {"visits": 0, "orders": 0, "revenue": 0.0, "carts": 0}
            if kind == VISIT:
                b["visits"] += 1
                self._visit(s, at, d.get("campaign"))
            elif kind == ORDER:
                b["orders"] += 1
                b["revenue"] = round(b["revenue"] + float(d.get("revenue") or 0.0), 4)  # strip float noise
                self._order(s, at)
            else:
                b["carts"] += 1
            s["days"] = {**s["days"], day: b}
        return AddStep(self._prune(s, now)[0], "counted")

    @staticmethod
    def _visit(s: CustomerState, at: int, campaign: str | None) -> None:
        if s["last_visit_at"] is None or at > s["last_visit_at"]:
            s["last_visit_at"] = at
        if campaign and (s["last_campaign_at"] is None or at >= s["last_campaign_at"]):
            s["last_campaign"], s["last_campaign_at"] = str(campaign), at

    def _order(self, s: CustomerState, at: int) -> None:
        """Recovered if a message was sent at most the recovery window before it; else wait for a late one."""
        window = self.config.recovery_window_ms
        if any(m <= at <= m + window for m in s["sent"]):
            s["recovered"] += 1
        else:
            s["unrecovered"] = sorted([*s["unrecovered"], at])[-MAX_UNRECOVERED:]

    def _message(self, s: CustomerState, at: int) -> None:
        """Counted ever; recovers the orders already counted that it precedes by at most the window."""
        window = self.config.recovery_window_ms
        s["messages"] += 1
        s["sent"] = sorted([*s["sent"], at])[-MAX_SENT:]
        recovered = [o for o in s["unrecovered"] if at <= o <= at + window]
        if recovered:
            s["recovered"] += len(recovered)
            s["unrecovered"] = [o for o in s["unrecovered"] if not at <= o <= at + window]

    def _prune(self, s: CustomerState, now: int) -> tuple[CustomerState, bool]:
        """Forget what the window no longer needs; returns the state and whether a day fell out (counts changed)."""
        first = first_day(now)
        start = first * DAY_MS
        window = self.config.recovery_window_ms
        days = {day: b for day, b in s["days"].items() if int(day) >= first}
        seen = {e: at for e, at in s["seen"].items() if at >= start}
        if len(seen) > self.config.max_event_ids:
            seen = dict(sorted(seen.items(), key=lambda item: item[1])[-self.config.max_event_ids :])
        pruned: CustomerState = {
            **s,
            "days": days,
            "seen": seen,
            "sent": [m for m in s["sent"] if m + window >= start],  # could still recover an order in the window
            "unrecovered": [o for o in s["unrecovered"] if o >= start],
        }
        return pruned, len(days) != len(s["days"])

    def slide(self, state: CustomerState, now: int) -> CustomerState | None:
        """The daily sweep: the state with what fell out of the window dropped, ``None`` if nothing did.

        A customer a day of activity fell out for is marked pending: their
        30-day counts changed without any new event, and must be published.
        """
        pruned, fell_out = self._prune(state, now)
        if pruned == state:
            return None
        return {**pruned, "pending": True} if fell_out else pruned

    @staticmethod
    def published(state: CustomerState) -> CustomerState:
        """The state once its summary is published: no longer pending."""
        new = state.copy()
        new["pending"] = False
        return new

    @staticmethod
    def summary(state: CustomerState, now: int) -> WebActivity:
        """The ``WebActivity`` record of a customer at wall-clock ``now``: sums over the window's days."""
        first = first_day(now)
        days = [b for day, b in state["days"].items() if int(day) >= first]
        return {
            "customer_id": state["customer_id"],
            "last_visit_at": state["last_visit_at"],
            "last_campaign": state["last_campaign"],
            "visits_30d": sum(b["visits"] for b in days),
            "orders_30d": sum(b["orders"] for b in days),
            "revenue_30d": round(sum(b["revenue"] for b in days), 2),  # numeric(12, 2) in the CRM
            "abandoned_carts_30d": sum(b["carts"] for b in days),
            "remarketing_messages": state["messages"],
            "recovered_orders": state["recovered"],
            "updated_at": now,
        }
