"""Abandoned-cart detection as pure logic: one JSON-able state per visitor, a driven clock.

What is kept per visitor (``CartState``): the cart lines (``cart_add`` /
``cart_remove``, emptied by an ``order``), the last distinct products viewed
(newest first, bounded), the last activity, and the customer id, CRM
attributes and marketing consent as last seen on the enriched hits. All of it
lives in one record so the processor writes one changelog record per visitor
per commit, however many hits the visitor sends.

Episodes. A cart *episode* starts when an empty cart gets its first line, or
when a visitor whose cart was reported abandoned comes back (any hit): the
cart is still there, but the abandonment that was reported is over. It ends
with an order, with the removal of the last line, or with its abandonment;
each episode is reported at most once. Its id is ``<visitor>:<start>``, where
``start`` is the event time of the hit that opened it, and the event id is a
UUID derived from visitor and episode: replaying the same hits gives the same
ids, so the emailing partner can deduplicate.

Time (why a wall-clock deadline computed from event time). Inactivity is
measured from the visitor's last event time, but only the wall clock moves
when nobody sends anything, so the deadline fires on the wall clock. It is
``max(last event time, time the hit was processed) + delay``: live, the two
are within the pipeline's lag of each other; when hits are replayed or the
processor catches up on a backlog, their event times lie in the past, and a
deadline from event time alone would fire after the first batch, before the
order further down the backlog was read. Waiting a full delay after the hit
was *processed* leaves the backlog time to deliver it. A client clock ahead
of the server (bounded by the collector) delays detection by that much only.

Visitors whose cart is empty (or already reported) are forgotten after
``forget_after_ms`` without activity, so the state does not grow forever.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypedDict

from passerelle.schemas.timeconv import to_millis
from passerelle.streams.consent import marketing_allowed

MINUTE_MS = 60 * 1000
ABANDON_AFTER_MS = 30 * MINUTE_MS
FORGET_AFTER_MS = 7 * 24 * 60 * MINUTE_MS  # hits.enriched retention: older history cannot be replayed anyway
RECENT_EVENT_IDS = 16
EVENT_ID_NAMESPACE = uuid.UUID("5b8f6c2e-3c1d-4d8e-9a57-c0a7e1ab0001")  # fixed forever: event ids depend on it


@dataclass(frozen=True)
class CartConfig:
    """Rules of abandonment.

    ``abandon_after_ms``: inactivity after which a non-empty cart is abandoned.
    ``max_viewed``: how many distinct viewed products are kept (the email shows 6).
    ``forget_after_ms``: inactivity after which a visitor without an open cart is dropped from state.
    ``default_currency``: for cart lines whose product carries no currency.
    """

    abandon_after_ms: int = ABANDON_AFTER_MS
    max_viewed: int = 6
    forget_after_ms: int = FORGET_AFTER_MS
    default_currency: str = "EUR"

    def __post_init__(self) -> None:
        if self.abandon_after_ms <= 0 or self.forget_after_ms <= 0 or self.max_viewed < 0:
            raise ValueError("abandon_after_ms and forget_after_ms must be positive, max_viewed not negative")


class CartState(TypedDict):
    """One visitor's state; plain JSON so the store's default codec carries it to the changelog."""

    visitor_id: str
    site: str
    lines: list[dict[str, Any]]  # CartLine records: product_id, name, price, quantity, currency
    viewed: list[dict[str, Any]]  # Product records, newest first, distinct ids, at most max_viewed
    last_activity: int  # highest event time seen (ms)
    last_seen_at: int  # wall clock when the last hit was processed (ms)
    customer_id: str | None
    crm: dict[str, Any] | None
    consent: bool  # the marketing consent of the last hit
    episode_start: int | None  # event time that opened the current episode; None while the cart is empty
    reported: str | None  # episode id already reported abandoned (the episode is over)
    recent: list[str]  # last event ids, to ignore a hit delivered twice


@dataclass(frozen=True)
class Step:
    """What the processor must do after a hit or a deadline.

    ``state``: the new state to store, ``None`` to forget the visitor.
    ``wake_at``: wall-clock ms at which ``on_deadline`` must run for this visitor (replacing any
    earlier one), ``None`` for no timer. ``abandoned``: a ``CartAbandoned`` record to emit.
    """

    state: CartState | None
    wake_at: int | None
    abandoned: dict[str, Any] | None = None


def episode_id(visitor_id: str, start: int) -> str:
    return f"{visitor_id}:{start}"


def episode_event_id(visitor_id: str, episode: str) -> str:
    """Deterministic id of an episode's ``CartAbandoned``: the same hits always give the same id."""
    return str(uuid.uuid5(EVENT_ID_NAMESPACE, f"cart-abandoned|{visitor_id}|{episode}"))


def cart_value(lines: list[dict[str, Any]]) -> tuple[float, str | None]:
    """Total and currency of a cart: the first line's currency; lines in another one are not added up."""
    if not lines:
        return 0.0, None
    currency = str(lines[0]["currency"])
    total = sum(float(line["price"]) * int(line["quantity"]) for line in lines if line["currency"] == currency)
    return round(total, 4), currency  # strip float noise (0.1 + 0.2), keep any currency's decimals


class CartTracker:
    """Carts, viewed products and abandonment of one visitor at a time; no I/O, time passed in."""

    def __init__(self, config: CartConfig | None = None) -> None:
        self.config = config or CartConfig()

    # --- hits ---------------------------------------------------------------------

    def on_hit(self, state: CartState | None, hit: Mapping[str, Any], now: int) -> Step:
        """Apply one enriched hit; ``now`` is the wall clock at processing time."""
        event_id = str(hit.get("event_id") or "")
        if state is not None and event_id and event_id in state["recent"]:
            return Step(state, self.wake_at(state))  # delivered twice: a cart_add must not count twice
        t = to_millis(hit["event_time"])
        s = self._new(hit, t) if state is None else copy.deepcopy(state)
        if s["reported"] is not None:
            # Activity after a reported abandonment: that episode is over; if the cart still holds
            # something, a new episode starts now (strictly later, so its id differs even for a late hit).
            previous = s["episode_start"] if s["episode_start"] is not None else t - 1
            s["reported"] = None
            s["episode_start"] = max(t, previous + 1) if s["lines"] else None

        kind = hit.get("type")
        product = hit.get("product")
        if kind == "product_view" and product:
            self._viewed(s, product, hit)
        elif kind == "cart_add" and product:
            self._add(s, product)
        elif kind == "cart_remove" and product:
            self._remove(s, product)
        elif kind == "order":
            s["lines"] = []

        if not s["lines"]:
            s["episode_start"] = None  # ordered or emptied: the episode ends without abandonment
        elif s["episode_start"] is None:
            s["episode_start"] = t
        s["site"] = hit.get("site") or s["site"]
        s["last_activity"] = max(s["last_activity"], t)
        s["last_seen_at"] = max(s["last_seen_at"], now)
        s["customer_id"] = hit.get("customer_id")
        crm = hit.get("crm")
        s["crm"] = dict(crm) if crm else None
        consent = hit.get("consent") or {}
        s["consent"] = bool(consent.get("marketing", False))
        if event_id:
            s["recent"] = [*s["recent"], event_id][-RECENT_EVENT_IDS:]
        return Step(s, self.wake_at(s))

    @staticmethod
    def _new(hit: Mapping[str, Any], t: int) -> CartState:
        return CartState(
            visitor_id=str(hit["visitor_id"]), site=str(hit.get("site") or ""), lines=[], viewed=[],
            last_activity=t, last_seen_at=0, customer_id=None, crm=None, consent=False, episode_start=None,
            reported=None, recent=[],
        )  # fmt: skip

    def _viewed(self, s: CartState, product: Mapping[str, Any], hit: Mapping[str, Any]) -> None:
        """Most recent first, each product once (a second view moves it to the front), bounded."""
        pid = str(product["id"])
        entry = {
            "id": pid,
            "name": product.get("name"),
            "price": None if product.get("price") is None else float(product["price"]),
            "currency": product.get("currency"),
            "quantity": 1,
            "category": product.get("category"),
            "url": product.get("url") or hit.get("url"),  # a product view's page is the product's page
            "image_url": product.get("image_url"),
        }
        s["viewed"] = [entry, *(v for v in s["viewed"] if v["id"] != pid)][: self.config.max_viewed]

    def _add(self, s: CartState, product: Mapping[str, Any]) -> None:
        pid = str(product["id"])
        quantity = max(1, int(product.get("quantity") or 1))
        price = product.get("price")
        if price is None:  # the tag forgot the price: the one last seen on a view is the best guess
            price = next((v["price"] for v in s["viewed"] if v["id"] == pid and v["price"] is not None), None)
        for line in s["lines"]:
            if line["product_id"] == pid:
                line["quantity"] += quantity
                if price is not None:
                    line["price"] = float(price)
                if product.get("name"):
                    line["name"] = product["name"]
                if product.get("currency"):
                    line["currency"] = product["currency"]
                return
        s["lines"].append({
            "product_id": pid, "name": product.get("name"), "price": float(price or 0.0), "quantity": quantity,
            "currency": product.get("currency") or self.config.default_currency,
        })  # fmt: skip

    @staticmethod
    def _remove(s: CartState, product: Mapping[str, Any]) -> None:
        """A remove lowers the line by its quantity (1 when absent) and drops it at zero."""
        pid = str(product["id"])
        quantity = max(1, int(product.get("quantity") or 1))
        lines = []
        for line in s["lines"]:
            if line["product_id"] == pid:
                line["quantity"] -= quantity
                if line["quantity"] <= 0:
                    continue
            lines.append(line)
        s["lines"] = lines

    # --- time -----------------------------------------------------------------------

    def is_open(self, state: CartState | None) -> bool:
        """A cart with lines whose episode has not been reported yet: it may still be abandoned."""
        return state is not None and bool(state["lines"]) and state["reported"] is None

    def wake_at(self, state: CartState) -> int:
        """When ``on_deadline`` must look at this visitor again (wall clock, ms)."""
        if self.is_open(state):
            return max(state["last_activity"], state["last_seen_at"]) + self.config.abandon_after_ms
        return max(state["last_activity"], state["last_seen_at"]) + self.config.forget_after_ms

    def on_deadline(self, state: CartState | None, now: int, email: str | None = None) -> Step:
        """The visitor's timer fired at wall-clock ``now``: report the abandonment, or forget an idle visitor.

        ``email`` is the customer's address when the caller knows it (the CRM table); hits never carry it.
        """
        if state is None:
            return Step(None, None)
        due = self.wake_at(state)
        if now < due:  # a stale timer: activity moved the deadline
            return Step(state, due)
        if not self.is_open(state):
            return Step(None, None)  # idle for forget_after_ms without an open cart
        assert state["episode_start"] is not None
        s = copy.deepcopy(state)
        episode = episode_id(s["visitor_id"], state["episode_start"])
        value, currency = cart_value(s["lines"])
        crm = s["crm"]
        event = {
            "event_id": episode_event_id(s["visitor_id"], episode),
            "visitor_id": s["visitor_id"],
            "site": s["site"],
            "customer_id": s["customer_id"],
            "email": email,
            "episode_id": episode,
            "lines": [dict(line) for line in s["lines"]],
            "value": value,
            "currency": currency or self.config.default_currency,
            "viewed_products": [dict(v) for v in s["viewed"]],
            "crm": dict(crm) if crm else None,
            # The one consent rule (site and CRM both yes); the site's own choice travels too, so the
            # sequencer can combine it with the CRM's latest consent rather than the one copied on the hits.
            "marketing_consent": marketing_allowed(s["consent"], crm.get("marketing_consent") if crm else None),
            "site_marketing_consent": s["consent"],
            "last_activity_at": s["last_activity"],
            "detected_at": now,
        }
        s["reported"] = episode
        return Step(s, self.wake_at(s), event)
