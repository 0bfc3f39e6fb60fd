"""The commands the input agents forward to the command topic, keyed by customer id (small JSON documents).

Every input is keyed differently (carts and hits by visitor, profiles and
privacy requests by customer) and partitioned differently, so each input
agent only turns a record into ``(customer id, command)``; the command agent
applies the commands of one customer in order (``handler.py``). The kinds:

- ``abandoned``: ``{"event": CartAbandoned}``
- ``order``: ``{"order_id", "order_time", "visitor_id"}``
- ``profile``: ``{"profile": CrmProfile | None}`` (None: the CRM's tombstone, an erasure)
- ``privacy``: ``{"request": {"kind", "marketing_consent", "requested_at"}}``
- ``tick``: ``{}``, sent by the timer when a state is due (step 2, expiry, parked carts)

What names only a visitor goes first to a second internal topic keyed by
visitor id (``<app id>-visitors``), whose agent keeps the visitor -> customer
links read from ``identity.links`` and routes to the command topic
(``handler.VisitorRouter``):

- ``link``: ``{"customer_id", "linked_at"}`` (``customer_id`` None: the link's tombstone)
- ``privacy``: ``{"request": {"kind", "marketing_consent", "requested_at", "visitor_id"}}``
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from passerelle.streams.remarketing.sequence import to_ms

ABANDONED = "abandoned"
ORDER = "order"
PROFILE = "profile"
PRIVACY = "privacy"
TICK = "tick"
LINK = "link"

Command = dict[str, Any]


def dumps(value: Any) -> bytes:
    """Compact JSON; datetimes (fastavro's timestamp-millis) as UTC milliseconds."""
    return json.dumps(value, separators=(",", ":"), default=_json_default).encode()


def _json_default(value: Any) -> Any:
    try:
        return to_ms(value)
    except (TypeError, ValueError):
        raise TypeError(f"not JSON serialisable: {type(value).__name__}") from None


def loads(raw: bytes | None) -> Any:
    return None if raw is None else json.loads(raw)


def abandoned_command(cart: Mapping[str, Any]) -> tuple[str, Command] | None:
    """(customer id, command) of an abandoned cart; None for an anonymous one (nobody to write to)."""
    customer = cart.get("customer_id")
    if not customer:
        return None
    return str(customer), {"kind": ABANDONED, "event": dict(cart)}


def order_command(hit: Mapping[str, Any]) -> tuple[str, Command] | None:
    """(customer id, command) of an order hit; None for any other hit or an order without a customer."""
    if hit.get("type") != "order" or not hit.get("customer_id"):
        return None
    order = hit.get("order") or {}
    return str(hit["customer_id"]), {
        "kind": ORDER,
        "order_id": order.get("order_id") or hit["event_id"],
        "order_time": to_ms(hit["event_time"]),
        "visitor_id": hit.get("visitor_id"),
    }


def profile_command(key: Any, record: Mapping[str, Any] | None) -> tuple[str, Command] | None:
    """(customer id, command) of a CRM profile or its tombstone (whose customer is the record key)."""
    customer = (record or {}).get("customer_id") or key
    if not customer:
        return None
    return str(customer), {"kind": PROFILE, "profile": None if record is None else dict(record)}


def privacy_command(request: Mapping[str, Any]) -> tuple[str, Command] | None:
    """(customer id, command) of a privacy request; None when it names no customer (``visitor_privacy_command``)."""
    customer = request.get("customer_id")
    if not customer:
        return None
    return str(customer), {"kind": PRIVACY, "request": {
        "kind": request["kind"], "marketing_consent": request.get("marketing_consent"),
        "requested_at": request.get("requested_at"),
    }}  # fmt: skip


def visitor_privacy_command(request: Mapping[str, Any]) -> tuple[str, Command] | None:
    """(visitor id, command) of a privacy request naming a visitor but no customer; None otherwise."""
    visitor = request.get("visitor_id")
    if request.get("customer_id") or not visitor:
        return None
    return str(visitor), {"kind": PRIVACY, "request": {
        "kind": request["kind"], "marketing_consent": request.get("marketing_consent"),
        "requested_at": request.get("requested_at"), "visitor_id": str(visitor),
    }}  # fmt: skip


def link_command(key: Any, record: Mapping[str, Any] | None) -> tuple[str, Command] | None:
    """(visitor id, command) of an ``IdentityLink`` or its tombstone (whose visitor is the record key)."""
    visitor = (record or {}).get("visitor_id") or key
    if not visitor:
        return None
    if record is None:
        return str(visitor), {"kind": LINK, "customer_id": None, "linked_at": None}
    return str(visitor), {"kind": LINK, "customer_id": str(record["customer_id"]),
                          "linked_at": to_ms(record.get("linked_at") or 0)}  # fmt: skip


def tick_command() -> Command:
    return {"kind": TICK}
