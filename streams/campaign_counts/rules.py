"""Live campaign counts as pure logic: which hits count, in which window, and how counts add up.

For each declared campaign and window (a UTC day by default), three numbers:
the visits the campaign brought (a visit counted once, on its first hit), the
orders placed in those visits, and their revenue per currency. Only declared
campaigns are counted: their keys come from partners' declarations, a bounded
set, whereas undeclared tags and mediums are whatever a URL says, so a bot
could make up a new "campaign" per request.

Two halves, because the input is keyed by visitor and the counts by campaign
(``processor.py`` wires them; ``docs/writing-a-processor.md`` says why):

- per visitor (``on_hit``): has this hit started a visit not counted yet, or
  placed an order not counted yet? If so, a *delta*: a ``CampaignCounts``
  record holding what this one hit adds to its campaign's window. The
  visitor's state is the last visit number counted and the last order ids
  (a confirmation page reloaded is not a second order), forgotten
  ``visitor_ttl_ms`` after their last hit;
- per campaign and window (``add``): the deltas summed into a counter,
  published (``published``) with its running totals, and, once the window is
  closed, a last time with ``final`` set.

Time. A hit belongs to the window of its event time. A window closes on the
wall clock ``grace_ms`` after its end: from then on, hits and deltas for it
are late and dropped (counted in a metric), its counters are published with
``final`` and forgotten. The wall clock and not the event time, because this
is a live view: a day's counts are final an hour after midnight whether or
not traffic keeps coming, and a replayed backlog older than that is not
recounted into days already closed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypedDict, cast

from passerelle.schemas.timeconv import to_millis

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS


@dataclass(frozen=True)
class CampaignCountsConfig:
    """Rules of counting.

    ``window_ms``: length of a window; a divisor of a day (windows start at UTC
    midnight, then every ``window_ms``) or a whole number of days (aligned on
    1970-01-01). ``grace_ms``: how long after its end a window still counts
    late hits. ``emit_interval_ms``: how often changed counters are published
    (one record per counter per interval, however many hits changed it).
    ``visitor_ttl_ms``: how long after their last hit a visitor's last counted
    visit and orders are remembered; longer than a visit's inactivity timeout
    (30 minutes), or a visit could be counted twice. ``max_orders``: order ids
    remembered per visitor.
    """

    window_ms: int = DAY_MS
    grace_ms: int = HOUR_MS
    emit_interval_ms: int = 1_000
    visitor_ttl_ms: int = 6 * HOUR_MS
    max_orders: int = 8

    def __post_init__(self) -> None:
        if self.window_ms <= 0 or (DAY_MS % self.window_ms and self.window_ms % DAY_MS):
            raise ValueError(f"window_ms must divide a day or be a whole number of days, not {self.window_ms}")
        if self.grace_ms < 0 or self.emit_interval_ms <= 0 or self.visitor_ttl_ms <= 0 or self.max_orders < 1:
            raise ValueError("grace_ms must not be negative; emit_interval_ms, visitor_ttl_ms, max_orders positive")

    @property
    def sweep_interval_ms(self) -> int:
        """How often a partition's visitors are swept: a visitor is kept between 1 and 1.25 times the TTL."""
        return max(1_000, self.visitor_ttl_ms // 4)


class VisitorState(TypedDict):
    """One visitor who came from a declared campaign; plain JSON for the store's default codec."""

    visit: int  # highest visit number counted
    orders: list[str]  # last order ids counted, oldest first, at most max_orders
    seen: int  # wall clock when their last hit was processed (ms): expiry


class Counts(TypedDict):
    """A ``CampaignCounts`` record (``schemas/avro/CampaignCounts.avsc``): a delta or a counter's totals."""

    campaign_key: str
    campaign_name: str
    partner: str
    channel: str
    window_start: int
    window_end: int
    visits: int
    orders: int
    revenue: dict[str, float]  # currency -> amount
    final: bool
    updated_at: int


class Counter(Counts):
    """A counter as stored: its totals, and whether they changed since they were last published."""

    pending: bool


@dataclass(frozen=True)
class HitStep:
    """What one enriched hit does: the visitor's new state (``None``: keep nothing) and its delta, if any."""

    state: VisitorState | None
    delta: Counts | None = None
    late: bool = False
    """The hit would count, but its window is closed: dropped."""


def window_label(start: int, window_ms: int) -> str:
    """``2024-11-28`` for windows of whole days, ``2024-11-28T13:00Z`` for shorter ones."""
    at = datetime.fromtimestamp(start / 1000, UTC)
    return at.strftime("%Y-%m-%d") if window_ms % DAY_MS == 0 else at.strftime("%Y-%m-%dT%H:%MZ")


class CampaignCounter:
    """The rules of both halves; no I/O, time passed in."""

    def __init__(self, config: CampaignCountsConfig | None = None) -> None:
        self.config = config or CampaignCountsConfig()

    # --- windows ----------------------------------------------------------------

    def window(self, event_time: int) -> tuple[int, int]:
        """The window holding ``event_time``: (start, end), end excluded."""
        size = self.config.window_ms
        start = event_time - event_time % size
        return start, start + size

    def key(self, campaign_key: str, window_start: int) -> str:
        """The identity of a counter: ``EREC-123@2024-11-28`` (key of the deltas and of the published counts)."""
        return f"{campaign_key}@{window_label(window_start, self.config.window_ms)}"

    def closed(self, window_end: int, now: int) -> bool:
        """Whether a window no longer counts anything at wall-clock ``now``."""
        return now >= window_end + self.config.grace_ms

    def closes_at(self, window_end: int) -> int:
        """Wall-clock time at which a window closes."""
        return window_end + self.config.grace_ms

    # --- per visitor --------------------------------------------------------------

    def on_hit(self, state: VisitorState | None, hit: Mapping[str, Any], now: int) -> HitStep:
        """Apply one enriched hit to its visitor's state; ``now`` is the wall clock at processing time."""
        campaign = hit.get("declared_campaign")
        if not campaign:
            return HitStep(state)  # not from a declared campaign: nothing to count, nothing to remember
        visit = int(hit["visit_number"])
        new_visit = state is None or visit > state["visit"]
        orders = list(state["orders"]) if state is not None else []
        order = hit.get("order") if hit.get("type") == "order" else None
        new_order = order is not None and str(order["order_id"]) not in orders
        if order is not None and new_order:
            orders = [*orders, str(order["order_id"])][-self.config.max_orders :]
        new_state: VisitorState = {
            "visit": visit if state is None else max(visit, state["visit"]),
            "orders": orders,
            "seen": now,
        }
        if not (new_visit or new_order):
            return HitStep(new_state)
        start, end = self.window(to_millis(hit["event_time"]))
        if self.closed(end, now):
            return HitStep(new_state, late=True)
        revenue: dict[str, float] = {}
        if order is not None and new_order and math.isfinite(float(order["revenue"])):
            revenue[str(order["currency"])] = round(float(order["revenue"]), 4)
        delta: Counts = {
            "campaign_key": str(campaign["key"]),
            "campaign_name": str(campaign["name"]),
            "partner": str(campaign["partner"]),
            "channel": str(campaign["channel"]),
            "window_start": start,
            "window_end": end,
            "visits": int(new_visit),
            "orders": int(new_order),
            "revenue": revenue,
            "final": False,
            "updated_at": now,
        }
        return HitStep(new_state, delta)

    def expired(self, state: VisitorState, now: int) -> bool:
        """Whether a visitor can be forgotten: no hit for ``visitor_ttl_ms``."""
        return now - state["seen"] >= self.config.visitor_ttl_ms

    # --- per campaign and window -----------------------------------------------------

    def add(self, counter: Counter | None, delta: Mapping[str, Any]) -> Counter:
        """A counter with ``delta`` added (a new one for the delta's first); marked pending (to publish)."""
        revenue = dict(counter["revenue"]) if counter is not None else {}
        for currency, amount in (delta.get("revenue") or {}).items():
            revenue[currency] = round(revenue.get(currency, 0.0) + float(amount), 4)  # strip float noise
        return {
            "campaign_key": str(delta["campaign_key"]),
            "campaign_name": str(delta["campaign_name"]),  # the latest declaration's name, partner, channel
            "partner": str(delta["partner"]),
            "channel": str(delta["channel"]),
            "window_start": to_millis(delta["window_start"]),
            "window_end": to_millis(delta["window_end"]),
            "visits": (counter["visits"] if counter else 0) + int(delta["visits"]),
            "orders": (counter["orders"] if counter else 0) + int(delta["orders"]),
            "revenue": revenue,
            "final": False,
            "updated_at": to_millis(delta["updated_at"]),  # when its latest hit was counted
            "pending": True,
        }

    @staticmethod
    def published(counter: Counter, now: int, final: bool = False) -> Counts:
        """The ``CampaignCounts`` record publishing a counter's totals at ``now``."""
        totals = {name: value for name, value in counter.items() if name != "pending"}
        return cast(Counts, {**totals, "final": final, "updated_at": now})
