"""Conversion paths as pure logic: touchpoints per person, conversions, the path and its attribution.

A **touchpoint** is a visit (its first hit in ``hits.enriched``: the traffic
source's medium, source and campaign, the declared campaign key; ``direct``
included, flagged ``direct``) or a post-view exposure (an ``ads.postview``
record: the display impression, at the time it was served, channel
``display (post-view)`` by default). A **conversion** is an order (a hit of
type ``order``, once per order id) or a configured goal (a hit type or a
regular expression on the URL or page label, once per goal and visit, with an
optional value).

State per person (``PersonState``, plain JSON): the touchpoints of the last
``lookback_ms`` (event time, relative to the newest event seen for the
person), the reset boundary (event time of the last conversion: with
``reset_after_conversion`` a path holds the touchpoints after the previous
conversion only), the conversions still within their grace period, the ids of
the conversions published to the CRM (an erasure deletes those rows) and the
last conversion.

The path of a conversion at ``T``: the touchpoints with ``max(boundary,
T - lookback) < at <= T`` (``at >= T - lookback``), oldest first (ties by id,
so deterministic), with the credit and revenue share of each touchpoint under
every model of ``models.py``.

Late and out-of-order (by event time): a touchpoint that arrives after a
conversion it precedes is attached to that conversion if the conversion was
emitted less than ``grace_ms`` ago (wall clock): the path is re-emitted whole
with ``revision`` + 1 (the CRM row, keyed by conversion id, is overwritten).
After the grace period it is counted ``late`` and kept only for the
customer's summary, never attached to a past path. A conversion arriving
after touchpoints that follow it (event time) takes only the touchpoints
before it; one older than the person's last conversion takes those after
the latest conversion before it still within its grace period (or the whole
lookback), so two conversions processed out of order may share touchpoints
(the later one is not re-emitted).

Ids are deterministic: ``order:<site>:<order id>``, ``goal:<name>:<event id>``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict

from passerelle.schemas.timeconv import to_millis
from passerelle.streams.conversion_paths.models import MODELS, ModelConfig, Touch, credits, revenue_shares

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
VISIT, POSTVIEW = "visit", "postview"
NO_BOUNDARY = -(2**62)


# --- configuration --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Goal:
    """A conversion that is not an order: a hit type, or a regular expression searched in the URL and page label."""

    name: str
    hit_type: str | None = None
    page_pattern: str | None = None
    value: float | None = None

    def __post_init__(self) -> None:
        if not self.name or (self.hit_type is None) == (self.page_pattern is None):
            raise ValueError(f"goal {self.name!r}: a name and exactly one of hit_type, page_pattern")
        if self.page_pattern is not None:
            re.compile(self.page_pattern)

    def matches(self, hit: Mapping[str, Any]) -> bool:
        if self.hit_type is not None:
            return bool(hit.get("type") == self.hit_type)
        pattern = re.compile(self.page_pattern or "")
        return any(pattern.search(str(hit.get(f) or "")) for f in ("url", "page"))


def parse_goals(text: str | None) -> tuple[Goal, ...]:
    """Goals from their JSON list: ``[{"name", "hit_type" or "page_pattern", "value"?}]``; one error per mistake."""
    if not text or not text.strip():
        return ()
    items = json.loads(text)
    if not isinstance(items, list):
        raise ValueError("goals: a JSON list of {name, hit_type or page_pattern, value?}")
    goals = []
    for item in items:
        if not isinstance(item, dict) or set(item) - {"name", "hit_type", "page_pattern", "value"}:
            raise ValueError(f"goal {item!r}: only name, hit_type, page_pattern, value")
        value = item.get("value")
        goals.append(Goal(str(item.get("name") or ""), item.get("hit_type"), item.get("page_pattern"),
                          float(value) if value is not None else None))  # fmt: skip
    if len({g.name for g in goals}) != len(goals):
        raise ValueError("goals: names must be unique")
    return tuple(goals)


@dataclass(frozen=True)
class PathsConfig:
    """Rules of conversion paths (times in milliseconds).

    ``lookback_ms``: how far back a touchpoint counts (event time).
    ``reset_after_conversion``: a path starts after the previous conversion.
    ``grace_ms``: how long after a conversion was emitted (wall clock) a late
    touchpoint is still attached to it (re-emitted with revision + 1).
    ``max_touchpoints``: touchpoints kept per person (the newest).
    ``idle_ms``: how long a visitor's routing record is kept without hits.
    """

    lookback_ms: int = 30 * DAY_MS
    goals: tuple[Goal, ...] = ()
    model: ModelConfig = field(default_factory=ModelConfig)
    reset_after_conversion: bool = True
    grace_ms: int = HOUR_MS
    max_touchpoints: int = 200
    max_orders: int = 8
    postview_channel: str = "display (post-view)"

    def __post_init__(self) -> None:
        if self.lookback_ms <= 0 or self.max_touchpoints < 1 or self.grace_ms < 0:
            raise ValueError("lookback_ms and max_touchpoints must be positive, grace_ms not negative")

    @property
    def sweep_interval_ms(self) -> int:
        return max(1_000, min(self.lookback_ms // 24, HOUR_MS))


# --- records ------------------------------------------------------------------------------------------------

TouchRecord = dict[str, Any]
"""A touchpoint: id, kind, channel, medium, source, campaign, campaign_key, at, visitor_id, direct."""
ConversionRecord = dict[str, Any]
"""A conversion: conversion_id, order_id, goal, revenue, currency, at, event_id, visitor_id, site."""


def touch_of_hit(hit: Mapping[str, Any]) -> TouchRecord:
    """The touchpoint of a visit, from its first hit."""
    source = hit.get("traffic_source") or {}
    declared = hit.get("declared_campaign")
    medium = str(source.get("medium") or "unknown")
    return {
        "id": f"visit:{hit['visit_id']}", "kind": VISIT, "channel": medium, "medium": medium,
        "source": source.get("source"), "campaign": source.get("campaign"),
        "campaign_key": str(declared["key"]) if declared else None, "at": to_millis(hit["event_time"]),
        "visitor_id": str(hit["visitor_id"]), "direct": medium == "direct",
    }  # fmt: skip


def touch_of_postview(pv: Mapping[str, Any], channel: str) -> TouchRecord:
    """The touchpoint of a post-view exposure: the impression credited, when it was served."""
    return {
        "id": f"postview:{pv['impression_id']}", "kind": POSTVIEW, "channel": channel, "medium": "display",
        "source": None, "campaign": str(pv["campaign_key"]), "campaign_key": str(pv["campaign_key"]),
        "at": to_millis(pv["impression_time"]), "visitor_id": str(pv["visitor_id"]), "direct": False,
    }  # fmt: skip


def _order_conversion(hit: Mapping[str, Any]) -> ConversionRecord:
    order = hit["order"]
    revenue = float(order["revenue"])
    return {
        "conversion_id": f"order:{hit['site']}:{order['order_id']}", "order_id": str(order["order_id"]),
        "goal": None, "revenue": revenue if math.isfinite(revenue) else 0.0, "currency": str(order["currency"]),
        "at": to_millis(hit["event_time"]), "event_id": str(hit["event_id"]), "visitor_id": str(hit["visitor_id"]),
    }  # fmt: skip


def _goal_conversion(hit: Mapping[str, Any], goal: Goal) -> ConversionRecord:
    return {
        "conversion_id": f"goal:{goal.name}:{hit['event_id']}", "order_id": None, "goal": goal.name,
        "revenue": goal.value or 0.0, "currency": None, "at": to_millis(hit["event_time"]),
        "event_id": str(hit["event_id"]), "visitor_id": str(hit["visitor_id"]),
    }  # fmt: skip


# --- stage 1: per visitor -------------------------------------------------------------------------------


class VisitorState(TypedDict):
    """One visitor (partitions of hits.enriched / ads.postview); plain JSON."""

    customer_id: str | None  # once identified (the runtime indexes it: an erasure finds the visitor)
    visit: int  # highest visit number seen
    goals: list[str]  # goals converted in that visit
    orders: list[str]  # last order ids seen
    person: PersonState | None  # the anonymous person's path state, until the visitor is identified
    seen: int  # wall clock of the last change


@dataclass(frozen=True)
class HitStep:
    """What one enriched hit gives: the visitor's state (the same object if unchanged), its touchpoint and
    conversions, and whether it identified the visitor (their anonymous state must move to the customer)."""

    state: VisitorState | None
    touches: tuple[TouchRecord, ...] = ()
    conversions: tuple[ConversionRecord, ...] = ()
    identified: bool = False


class PersonState(TypedDict):
    """One person's path state; plain JSON."""

    customer_id: str | None
    touches: list[TouchRecord]  # oldest first, the last lookback (event time)
    boundary: int  # event time of the last conversion when paths reset (NO_BOUNDARY: none)
    latest: int  # newest event time seen
    recent: list[RecentConversion]  # conversions still within their grace period
    crm: list[str]  # conversion ids published to crm.conversion_paths (their tombstones on erasure)
    last: list[Any] | None  # [conversion id, event time] of the last conversion
    seen: int  # wall clock of the last change


class RecentConversion(TypedDict):
    conv: ConversionRecord
    start: int  # exclusive lower bound of its path (the previous boundary)
    revision: int
    until: int  # wall clock until which a late touchpoint is attached


@dataclass(frozen=True)
class Emission:
    """A path to publish: a conversion, its touchpoints, its revision, the person's customer id."""

    conv: ConversionRecord
    touches: tuple[TouchRecord, ...]
    revision: int
    customer_id: str | None


@dataclass(frozen=True)
class PersonStep:
    """What a touchpoint, a conversion or a merge does to a person: the new state (the same object if
    unchanged), the paths to (re-)publish and what became of the input (``kept``, ``attached``, ``late``,
    ``duplicate``, ``expired``, ``converted``)."""

    state: PersonState
    emissions: tuple[Emission, ...] = ()
    outcome: str = "kept"
    outcomes: tuple[str, ...] = ()  # a merge: the outcome of each touchpoint


class Paths:
    """The rules; no I/O, the wall clock passed in."""

    def __init__(self, config: PathsConfig | None = None) -> None:
        self.config = config or PathsConfig()

    # --- stage 1 ---------------------------------------------------------------------------------

    def on_hit(self, state: VisitorState | None, hit: Mapping[str, Any], now: int) -> HitStep:
        """A hit: a touchpoint if it starts a visit, conversions for a new order and goals, identification."""
        visit = int(hit["visit_number"])
        customer = hit.get("customer_id")
        new_visit = state is None or visit > state["visit"]
        goals_done = [] if new_visit or state is None else state["goals"]
        orders = state["orders"] if state is not None else []
        conversions: list[ConversionRecord] = []
        order = hit.get("order") if hit.get("type") == "order" else None
        new_order = order is not None and str(order["order_id"]) not in orders
        if new_order:
            conversions.append(_order_conversion(hit))
        goals = [g for g in self.config.goals if g.name not in goals_done and g.matches(hit)]
        conversions += [_goal_conversion(hit, g) for g in goals]
        identified = customer is not None and (state is None or state["customer_id"] != customer)
        if not (new_visit or conversions or identified):
            return HitStep(state)
        new: VisitorState = {
            "customer_id": str(customer) if customer is not None else (state["customer_id"] if state else None),
            "visit": visit if new_visit else state["visit"] if state else visit,
            "goals": [*goals_done, *(g.name for g in goals)],
            "orders": [*orders, str(order["order_id"])][-self.config.max_orders :] if new_order and order else orders,
            "person": state["person"] if state is not None else None,
            "seen": now,
        }  # fmt: skip
        touches = (touch_of_hit(hit),) if new_visit else ()
        return HitStep(new, touches, tuple(conversions), identified)

    def touch_of_postview(self, pv: Mapping[str, Any]) -> TouchRecord:
        return touch_of_postview(pv, self.config.postview_channel)

    # --- a person ---------------------------------------------------------------------------------

    @staticmethod
    def empty(customer: str | None, now: int) -> PersonState:
        return {"customer_id": customer, "touches": [], "boundary": NO_BOUNDARY, "latest": NO_BOUNDARY,
                "recent": [], "crm": [], "last": None, "seen": now}  # fmt: skip

    def _live(self, recent: Sequence[RecentConversion], now: int) -> list[RecentConversion]:
        return [r for r in recent if now < r["until"]]

    def path(self, state: PersonState, conv: ConversionRecord, start: int) -> tuple[TouchRecord, ...]:
        """The touchpoints of a conversion: after ``start``, within the lookback, not after it; oldest first."""
        at = conv["at"]
        lo = at - self.config.lookback_ms
        return tuple(t for t in state["touches"] if t["at"] > start and lo <= t["at"] <= at)

    def _prune(self, touches: list[TouchRecord], latest: int) -> list[TouchRecord]:
        lo = latest - self.config.lookback_ms
        kept = [t for t in touches if t["at"] >= lo]
        return kept[-self.config.max_touchpoints :]

    def add_touch(self, state: PersonState | None, touch: TouchRecord, customer: str | None, now: int) -> PersonStep:
        """One touchpoint: kept for the next paths, attached to a conversion in grace it precedes (re-emitted)."""
        base = state if state is not None else self.empty(customer, now)
        if any(t["id"] == touch["id"] for t in base["touches"]):
            return PersonStep(base, (), "duplicate")
        at = touch["at"]
        latest = max(base["latest"], at)
        if at < latest - self.config.lookback_ms:
            return PersonStep(base, (), "expired")
        touches = self._prune(sorted([*base["touches"], touch], key=lambda t: (t["at"], t["id"])), latest)
        new: PersonState = {**base, "touches": touches, "latest": latest, "seen": now,
                            "customer_id": customer or base["customer_id"]}  # fmt: skip
        recent, emissions = [], []
        for r in self._live(base["recent"], now):
            conv = r["conv"]
            if r["start"] < at <= conv["at"] and at >= conv["at"] - self.config.lookback_ms:
                r = {**r, "revision": r["revision"] + 1}
                emissions.append(Emission(conv, self.path(new, conv, r["start"]), r["revision"], new["customer_id"]))
            recent.append(r)
        new["recent"] = recent
        self._remember(new, emissions)
        if emissions:
            return PersonStep(new, tuple(emissions), "attached")
        if self.config.reset_after_conversion and at <= base["boundary"]:
            return PersonStep(new, (), "late")  # kept for the summary, on no path
        return PersonStep(new, (), "kept")

    def convert(self, state: PersonState | None, conv: ConversionRecord, customer: str | None, now: int) -> PersonStep:
        """One conversion: its path published; with reset, the next path starts after it."""
        base = state if state is not None else self.empty(customer, now)
        cid = conv["conversion_id"]
        if (
            cid in base["crm"]
            or any(r["conv"]["conversion_id"] == cid for r in base["recent"])
            or (base["last"] is not None and base["last"][0] == cid)
        ):
            return PersonStep(base, (), "duplicate")
        reset = self.config.reset_after_conversion
        at = conv["at"]
        start = NO_BOUNDARY
        if reset and at > base["boundary"]:
            start = base["boundary"]
        elif reset:  # out of order: after the latest conversion before it that is still known
            start = max((r["conv"]["at"] for r in base["recent"] if r["conv"]["at"] < at), default=NO_BOUNDARY)
        latest = max(base["latest"], at)
        new: PersonState = {**base, "latest": latest, "seen": now, "customer_id": customer or base["customer_id"],
                            "touches": self._prune(base["touches"], latest)}  # fmt: skip
        emission = Emission(conv, self.path(new, conv, start), 0, new["customer_id"])
        recent = self._live(base["recent"], now)
        if self.config.grace_ms > 0:
            recent.append({"conv": conv, "start": start, "revision": 0, "until": now + self.config.grace_ms})
        new["recent"] = recent
        if reset:
            new["boundary"] = max(base["boundary"], at)
        if base["last"] is None or at >= base["last"][1]:
            new["last"] = [cid, at]
        self._remember(new, [emission])
        return PersonStep(new, (emission,), "converted")

    @staticmethod
    def _remember(state: PersonState, emissions: Sequence[Emission]) -> None:
        """Conversion ids published to the CRM (identified persons): erasure deletes their rows."""
        if state["customer_id"] is None:
            return
        ids = [e.conv["conversion_id"] for e in emissions if e.conv["conversion_id"] not in state["crm"]]
        if ids:
            state["crm"] = [*state["crm"], *ids]

    def pending(self, state: PersonState) -> list[TouchRecord]:
        """What an anonymous person hands over when identified: the touchpoints not consumed by a conversion."""
        boundary = state["boundary"] if self.config.reset_after_conversion else NO_BOUNDARY
        return [t for t in state["touches"] if t["at"] > boundary]

    def merge(self, state: PersonState | None, touches: Sequence[TouchRecord], customer: str | None,
              now: int) -> PersonStep:  # fmt: skip
        """Touchpoints handed over (an anonymous visitor identified): each added; one emission per conversion."""
        step = PersonStep(state if state is not None else self.empty(customer, now))
        latest: dict[str, Emission] = {}
        outcomes = []
        for touch in touches:
            step = self.add_touch(step.state, touch, customer, now)
            outcomes.append(step.outcome)
            for e in step.emissions:
                latest[e.conv["conversion_id"]] = e
        return PersonStep(step.state, tuple(latest.values()), "merged", tuple(outcomes))

    def expire(self, state: PersonState, now: int) -> PersonState | None:
        """The sweep (wall clock): touchpoints older than the lookback and conversions past their grace go;
        ``None`` when nothing is left (a customer with CRM rows keeps their ids, for an erasure)."""
        touches = [t for t in state["touches"] if t["at"] >= now - self.config.lookback_ms - self.config.grace_ms]
        recent = self._live(state["recent"], now)
        if not touches and not recent and not state["crm"]:
            return None
        if len(touches) == len(state["touches"]) and len(recent) == len(state["recent"]):
            return state
        return {**state, "touches": touches, "recent": recent}

    def visitor_expired(self, state: VisitorState, now: int) -> bool:
        """A visitor's routing record goes after a lookback without hits."""
        return now - state["seen"] >= self.config.lookback_ms + self.config.grace_ms

    # --- records ----------------------------------------------------------------------------------

    def attribution(self, e: Emission) -> list[dict[str, Any]]:
        """Per model: the credit and the revenue share (cents) of each touchpoint."""
        touches = [Touch(t["channel"], t["at"], bool(t["direct"])) for t in e.touches]
        if not touches:
            return [{"model": m, "credits": [], "revenue_cents": []} for m in MODELS]
        by_model = credits(touches, e.conv["at"], self.config.model)
        cents = revenue_cents(e.conv["revenue"])
        return [{"model": m, "credits": [float(c) for c in by_model[m]],
                 "revenue_cents": [int(x) for x in revenue_shares(by_model[m], cents)]}
                for m in MODELS]  # fmt: skip

    def path_record(self, e: Emission, models: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """The ``ConversionPath`` (``conversions.paths``)."""
        conv, touches = e.conv, e.touches
        return {
            "conversion_id": conv["conversion_id"], "visitor_id": conv["visitor_id"], "customer_id": e.customer_id,
            "order_id": conv["order_id"], "revenue": conv["revenue"], "currency": conv["currency"],
            "touchpoints": [{"medium": t["medium"], "source": t["source"], "campaign": t["campaign"], "at": t["at"],
                             "kind": t["kind"], "channel": t["channel"], "campaign_key": t["campaign_key"],
                             "visitor_id": t["visitor_id"], "direct": t["direct"]} for t in touches],
            "converted_at": conv["at"], "goal": conv["goal"], "revenue_cents": revenue_cents(conv["revenue"]),
            "path_length": len(touches), "time_to_conversion_ms": conv["at"] - touches[0]["at"] if touches else 0,
            "revision": e.revision, "models": models if models is not None else self.attribution(e),
        }  # fmt: skip

    @staticmethod
    def crm_path_record(e: Emission, models: list[dict[str, Any]], now: int) -> dict[str, Any]:
        """The ``CrmConversionPath`` row (``crm.conversion_paths``) of an identified customer's conversion."""
        conv, touches = e.conv, e.touches
        return {
            "conversion_id": conv["conversion_id"], "customer_id": e.customer_id, "order_id": conv["order_id"],
            "goal": conv["goal"], "converted_at": conv["at"], "revenue": conv["revenue"],
            "currency": conv["currency"], "path_length": len(touches),
            "time_to_conversion_ms": conv["at"] - touches[0]["at"] if touches else 0,
            "first_channel": touches[0]["channel"] if touches else None,
            "last_channel": touches[-1]["channel"] if touches else None,
            "channels": " > ".join(t["channel"] for t in touches),
            "credits": json.dumps({m["model"]: {"credits": m["credits"], "revenue_cents": m["revenue_cents"]}
                                   for m in models}, separators=(",", ":")),
            "revision": e.revision, "updated_at": now,
        }  # fmt: skip

    def channels_record(self, customer: str, state: PersonState, now: int) -> dict[str, Any]:
        """The ``CustomerChannels`` row (``crm.customer_channels``): the lookback's channels and last conversion."""
        lo = state["latest"] - self.config.lookback_ms
        touches = [t for t in state["touches"] if t["at"] >= lo]
        distinct: list[str] = []
        for t in reversed(touches):
            if t["channel"] not in distinct:
                distinct.append(t["channel"])
        last = state["last"]
        return {
            "customer_id": customer, "first_channel": touches[0]["channel"] if touches else None,
            "last_channel": touches[-1]["channel"] if touches else None, "touchpoints": len(touches),
            "channels": ", ".join(distinct), "last_conversion_id": last[0] if last else None,
            "last_conversion_at": last[1] if last else None, "updated_at": now,
        }  # fmt: skip


def revenue_cents(revenue: float) -> int:
    """A revenue in cents, rounded half away from zero (0 for a value that is not finite)."""
    if not math.isfinite(revenue):
        return 0
    return math.floor(abs(revenue) * 100 + 0.5) * (1 if revenue >= 0 else -1)
