"""The journeys of a period, converted or not, for the Markov model: pure, no I/O.

The Markov removal effect needs the paths that did not convert as much as
those that did (a channel seen only on converting paths looks decisive
otherwise), and ``conversions.paths`` holds only the converting ones. So the
job rebuilds every person's journeys of the period from what the processor
reads: the visits of ``hits.enriched`` (one touchpoint per visit, its
channel as ``rules.touch_of_hit`` gives it) and the exposures of
``ads.postview``, the orders as conversions.

A person is the customer id a visitor's hits carry once it is known (any hit
of the period), the visitor id otherwise, so devices and the anonymous
visits before a login join one journey, as the processor stitches them.
Events are ordered by event time (touchpoints before a conversion at the same
millisecond); each order closes a converting path, and what follows the last
order is a path that did not convert (yet). Goals are not conversions here:
the model measures orders.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from passerelle.schemas.timeconv import to_millis
from passerelle.streams.conversion_paths.rules import touch_of_hit

Journey = tuple[list[str], bool]
"""Channels in order, and whether the journey ended in an order."""


def journeys(
    hits: Iterable[Mapping[str, Any]], postviews: Iterable[Mapping[str, Any]] = (), postview_channel: str = ""
) -> list[Journey]:
    """Every person's journeys of the period (``postview_channel`` empty: exposures left out)."""
    person_of: dict[str, str] = {}
    events: dict[str, list[tuple[int, int, str]]] = defaultdict(list)  # visitor -> (at, 0 touch / 1 order, channel)
    visits: set[str] = set()
    orders: set[str] = set()
    for hit in hits:
        visitor = str(hit["visitor_id"])
        if hit.get("customer_id"):
            person_of[visitor] = str(hit["customer_id"])
        visit = str(hit.get("visit_id") or "")
        if visit and visit not in visits:
            visits.add(visit)
            touch = touch_of_hit(hit)
            events[visitor].append((touch["at"], 0, str(touch["channel"])))
        order = hit.get("order")
        if hit.get("type") == "order" and order:
            order_key = f"{hit.get('site')}:{order['order_id']}"
            if order_key not in orders:
                orders.add(order_key)
                events[visitor].append((to_millis(hit["event_time"]), 1, ""))
    if postview_channel:
        seen: set[str] = set()
        for pv in postviews:
            if pv["impression_id"] in seen:
                continue
            seen.add(pv["impression_id"])
            visitor = str(pv["visitor_id"])
            if pv.get("customer_id"):
                person_of.setdefault(visitor, str(pv["customer_id"]))
            events[visitor].append((to_millis(pv["impression_time"]), 0, postview_channel))
    by_person: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
    for visitor, visitor_events in events.items():
        by_person[person_of.get(visitor, visitor)].extend(visitor_events)
    result: list[Journey] = []
    for person in sorted(by_person):
        result.extend(split(sorted(by_person[person])))
    return result


def split(ordered: Sequence[tuple[int, int, str]]) -> list[Journey]:
    """One person's events, time-ordered, cut at each order."""
    out: list[Journey] = []
    channels: list[str] = []
    for _at, kind, channel in ordered:
        if kind == 1:
            out.append((channels, True))
            channels = []
        else:
            channels.append(channel)
    if channels:
        out.append((channels, False))
    return out
