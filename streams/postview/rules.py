"""Post-view as pure logic: which display impressions a visit or an order is credited to.

A visitor shown a banner of a display campaign, who then visits the site the
banner promoted, or orders on it, within the post-view window, is a post-view
of that campaign, whatever brought the visit itself (direct, email, search...).
For each visit start and each order of a visitor, the impressions credited
are that visitor's impressions for the same site served BEFORE it and at most
the window before it (event times): ``0 < event time - impression time <=
window``. With ``attribution="last"`` (the default) the most recent of them
wins: one ``PostView`` per visit or order. With ``"all"``, one per campaign,
each naming that campaign's most recent impression.

State, per visitor (``VisitorState``, plain JSON for the store's default codec):

- the impressions received (time, campaign, id, site), oldest first, at most
  ``max_impressions`` (the newest), each forgotten ``window_ms + grace_ms``
  after it was served, on the wall clock (the grace leaves room for hits that
  arrive late: enrichment lag, a short outage);
- the visitor's current visit (its number and the event time of its first
  hit) and the last order ids seen, so that a visit is credited once, on its
  first hit, and an order once per order id (a confirmation page reloaded is
  not a second order). This is kept for every visitor with a visit in the
  last ``visitor_ttl_ms``, impressions or not: an impression arriving in the
  middle of a visit must not make the visit's next hit look like a visit
  start;
- the customer id, once a hit has identified the visitor: a CRM tombstone or
  an erasure request of the customer then finds this visitor (the runtime's
  person index, ``StoreSpec(person="customer_id")``).

Decisions, as documented in README and ``processor.py``:

- An impression served after the visit started or the order was placed
  (event time) is never credited to it.
- A late impression, served within the window before a visit but received
  after the visit's first hit was processed, is not credited to that visit:
  a visit is judged once, when its first hit is processed, against the
  impressions received by then. It is kept for the visitor's next visits and
  orders, and counted (outcome ``late``) so a lagging ad-server feed shows.
- The impression and the visit must be for the same site (the impression's
  ``site`` is the advertiser site the banner promotes).
- An impression without a campaign key cannot be credited: not kept.
- Ids are deterministic (``visit:<visit id>:<campaign>``,
  ``order:<site>:<order id>:<campaign>``): a replay emits the same ids.

Time: the window is on event time; expiry on the wall clock (``now`` passed
in), as campaign counts closes its windows: the state shrinks when traffic
stops, and a backlog older than window + grace (a replay, a long outage) is
not credited with impressions already forgotten.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, TypedDict

from passerelle.schemas.timeconv import to_millis

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS

Attribution = Literal["last", "all"]
LAST: Final = "last"
ALL: Final = "all"
VISIT, ORDER = "visit", "order"

# An impression as kept in the state: [event time (ms), campaign key, impression id, site]
Impression = list[Any]
T, CAMPAIGN, ID, SITE = 0, 1, 2, 3


@dataclass(frozen=True)
class PostViewConfig:
    """Rules of post-view.

    ``window_ms``: how long after an impression a visit or an order is
    credited to it. ``attribution``: ``last`` (the most recent impression
    wins, one post-view per visit or order) or ``all`` (one per campaign).
    ``grace_ms``: how long after the window an impression is still kept, for
    hits that arrive late. ``visitor_ttl_ms``: how long a visitor's current
    visit and orders are remembered after the state last changed (longer than
    a visit lasts). ``max_impressions``: impressions kept per visitor (the
    newest). ``max_orders``: order ids remembered per visitor.
    """

    window_ms: int = DAY_MS
    attribution: Attribution = LAST
    grace_ms: int = HOUR_MS
    visitor_ttl_ms: int = 6 * HOUR_MS
    max_impressions: int = 32
    max_orders: int = 8

    def __post_init__(self) -> None:
        if self.window_ms <= 0 or self.visitor_ttl_ms <= 0 or self.max_impressions < 1 or self.max_orders < 1:
            raise ValueError("window_ms, visitor_ttl_ms, max_impressions and max_orders must be positive")
        if self.grace_ms < 0:
            raise ValueError("grace_ms must not be negative")
        if self.attribution not in (LAST, ALL):
            raise ValueError(f"attribution must be 'last' or 'all', not {self.attribution!r}")

    @property
    def sweep_interval_ms(self) -> int:
        """How often a partition's state is swept: impressions and idle visitors outlive their expiry by at most
        a quarter of the shorter of the window and the TTL."""
        return max(1_000, min(self.window_ms, self.visitor_ttl_ms) // 4)


class VisitorState(TypedDict):
    """One visitor; plain JSON for the store's default codec."""

    customer_id: str | None  # once a hit identified them (the runtime indexes it: an erasure finds the visitor)
    visit: int  # highest visit number seen (0: none)
    start: int  # event time of that visit's first hit (-1: none)
    orders: list[str]  # last order ids seen, oldest first
    imps: list[Impression]  # impressions kept, oldest first
    seen: int  # wall clock of the last change (ms): expiry of a visitor without impressions


class PostViewRecord(TypedDict):
    """A ``PostView`` record (``schemas/avro/PostView.avsc``)."""

    postview_id: str
    kind: str
    visitor_id: str
    customer_id: str | None
    site: str
    campaign_key: str
    impression_id: str
    impression_time: int
    impressions: int
    event_id: str
    visit_id: str
    event_time: int
    delay_ms: int
    visit_medium: str
    visit_campaign: str | None
    order_id: str | None
    revenue: float | None
    currency: str | None


ImpressionOutcome = Literal["kept", "late", "duplicate", "no_campaign", "expired"]


@dataclass(frozen=True)
class ImpressionStep:
    """What one impression does: the visitor's state (the same object if unchanged) and what became of it."""

    state: VisitorState | None
    outcome: ImpressionOutcome


@dataclass(frozen=True)
class HitStep:
    """What one enriched hit does: the visitor's state (the same object if unchanged) and the post-views."""

    state: VisitorState | None
    postviews: tuple[PostViewRecord, ...] = ()


def postview_id(kind: str, hit: Mapping[str, Any], campaign: str) -> str:
    """The deterministic id of a post-view: the visit or the order, and the campaign."""
    if kind == VISIT:
        return f"visit:{hit['visit_id']}:{campaign}"
    return f"order:{hit['site']}:{hit['order']['order_id']}:{campaign}"


class PostView:
    """The rules; no I/O, the wall clock passed in."""

    def __init__(self, config: PostViewConfig | None = None) -> None:
        self.config = config or PostViewConfig()

    @staticmethod
    def empty(now: int) -> VisitorState:
        return {"customer_id": None, "visit": 0, "start": -1, "orders": [], "imps": [], "seen": now}

    def expires_at(self, impression_time: int) -> int:
        """Wall-clock time from which an impression is forgotten."""
        return impression_time + self.config.window_ms + self.config.grace_ms

    def _live(self, imps: Sequence[Impression], now: int) -> list[Impression]:
        keep = self.config.window_ms + self.config.grace_ms
        return [i for i in imps if now < i[T] + keep]

    # --- impressions ------------------------------------------------------------------

    def on_impression(self, state: VisitorState | None, imp: Mapping[str, Any], now: int) -> ImpressionStep:
        """Keep one ``AdImpression`` in its visitor's state, if it can still be credited to something."""
        campaign = imp.get("campaign_key")
        if not campaign:
            return ImpressionStep(state, "no_campaign")
        at, imp_id = to_millis(imp["event_time"]), str(imp["impression_id"])
        if now >= self.expires_at(at):
            return ImpressionStep(state, "expired")
        if state is not None and any(i[ID] == imp_id for i in state["imps"]):
            return ImpressionStep(state, "duplicate")  # the ad server delivered it twice
        base = state if state is not None else self.empty(now)
        entry: Impression = [at, str(campaign), imp_id, str(imp["site"])]
        imps = sorted([*self._live(base["imps"], now), entry])[-self.config.max_impressions :]
        start = base["start"]
        late = start >= 0 and 0 < start - at <= self.config.window_ms  # the visit in progress was judged without it
        return ImpressionStep({**base, "imps": imps, "seen": now}, "late" if late else "kept")

    # --- hits ----------------------------------------------------------------------------

    def on_hit(self, state: VisitorState | None, hit: Mapping[str, Any], now: int) -> HitStep:
        """Apply one enriched hit: post-views for a visit start and for a new order; the visitor's new state."""
        visit = int(hit["visit_number"])
        customer = hit.get("customer_id")
        new_visit = state is None or visit > state["visit"]
        order = hit.get("order") if hit.get("type") == "order" else None
        orders = state["orders"] if state is not None else []
        new_order = order is not None and str(order["order_id"]) not in orders
        identified = customer is not None and (state is None or state["customer_id"] != customer)
        if not (new_visit or new_order or identified):
            return HitStep(state)  # the common case: a page view in a visit already seen
        at = to_millis(hit["event_time"])
        base = state if state is not None else self.empty(now)
        imps = self._live(base["imps"], now)
        new: VisitorState = {
            "customer_id": str(customer) if customer is not None else base["customer_id"],
            "visit": visit if new_visit else base["visit"],
            "start": at if new_visit else base["start"],
            "orders": [*orders, str(order["order_id"])][-self.config.max_orders :] if new_order and order else orders,
            "imps": imps,
            "seen": now,
        }
        out: list[PostViewRecord] = []
        if imps:
            if new_visit:
                out += self._credit(VISIT, hit, new, at)
            if new_order:
                out += self._credit(ORDER, hit, new, at)
        return HitStep(new, tuple(out))

    def credited(self, imps: Sequence[Impression], site: str, at: int) -> list[tuple[Impression, int]]:
        """The impressions a visit or order at event time ``at`` on ``site`` is credited to, with each
        campaign's exposure count in the window; per the attribution, the latest only or one per campaign."""
        lo = at - self.config.window_ms
        latest: dict[str, Impression] = {}
        counts: dict[str, int] = {}
        for imp in imps:  # oldest first: the last one seen per campaign is its latest
            if imp[SITE] == site and lo <= imp[T] < at:
                latest[imp[CAMPAIGN]] = imp
                counts[imp[CAMPAIGN]] = counts.get(imp[CAMPAIGN], 0) + 1
        if not latest:
            return []
        if self.config.attribution == LAST:
            winner = max(latest.values())  # latest time; ties broken by campaign key then id: deterministic
            return [(winner, counts[winner[CAMPAIGN]])]
        return [(latest[c], counts[c]) for c in sorted(latest)]

    def _credit(self, kind: str, hit: Mapping[str, Any], state: VisitorState, at: int) -> list[PostViewRecord]:
        site = str(hit["site"])
        order = hit.get("order") if kind == ORDER else None
        revenue = float(order["revenue"]) if order is not None else None
        source = hit.get("traffic_source") or {}
        declared = hit.get("declared_campaign")
        out: list[PostViewRecord] = []
        for imp, count in self.credited(state["imps"], site, at):
            out.append({
                "postview_id": postview_id(kind, hit, imp[CAMPAIGN]),
                "kind": kind,
                "visitor_id": str(hit["visitor_id"]),
                "customer_id": state["customer_id"],
                "site": site,
                "campaign_key": imp[CAMPAIGN],
                "impression_id": imp[ID],
                "impression_time": imp[T],
                "impressions": count,
                "event_id": str(hit["event_id"]),
                "visit_id": str(hit["visit_id"]),
                "event_time": at,
                "delay_ms": at - imp[T],
                "visit_medium": str(source.get("medium") or "unknown"),
                "visit_campaign": str(declared["key"]) if declared else None,
                "order_id": str(order["order_id"]) if order is not None else None,
                "revenue": round(revenue, 4) if revenue is not None and math.isfinite(revenue) else None,
                "currency": str(order["currency"]) if order is not None else None,
            })  # fmt: skip
        return out

    # --- expiry ------------------------------------------------------------------------------

    def expire(self, state: VisitorState, now: int) -> VisitorState | None:
        """The sweep: the state without expired impressions (the same object if none), ``None`` to forget the
        visitor (no impression left and no change for the TTL)."""
        imps = self._live(state["imps"], now)
        if not imps and now - state["seen"] >= self.config.visitor_ttl_ms:
            return None
        if len(imps) == len(state["imps"]):
            return state
        return {**state, "imps": imps}
