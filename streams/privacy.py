"""Privacy requests (``privacy.requests``) as the runtime's processors honour them.

A processor that keeps personal state declares ``privacy_table(topic)``
among its lookup tables: every instance then holds the whole topic (keyed by
customer or visitor id, the latest request per key) and reacts on each
partition it holds:

- a new request (``on_table_change``): ``honour`` it at once;
- a restored partition (``on_partition_restored``): ``honour_all`` the
  requests held, so state restored after an erasure (from a changelog written
  before it, or on an instance that was down) is erased again, as CRM
  tombstones are through ``ctx.deleted``.

What an erasure deletes: for a customer id, every key of the person in the
processor's ``person`` stores (the runtime's person index, on every
partition); for a visitor id, that key in the same stores (these processors
keep their personal state keyed by visitor id). ``on_erased`` runs for each
deleted key, so the processor retracts what it emitted (the enrichment's
identity link). A ``consent_change`` is not theirs to apply: marketing
consent is judged by the remarketing sequencer (``passerelle.streams.consent``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from passerelle.streams.runtime import Context, OutRecord, Processor, TableSpec
from passerelle.streams.runtime.processor import erase

PRIVACY = "privacy"
ERASURE = "erasure"


def privacy_table(topic: str) -> TableSpec:
    """The lookup table of privacy requests (not ``erases``: its records are requests, not tombstones)."""
    return TableSpec(PRIVACY, topic)


def honour(processor: Processor, ctx: Context, request: Mapping[str, Any] | None) -> list[OutRecord]:
    """Apply one privacy request to one partition's state; what the processor retracts (``on_erased``)."""
    if not request or request.get("kind") != ERASURE:
        return []  # consent changes are the sequencer's; the processors keep no consent to judge
    out: list[OutRecord] = []
    customer = request.get("customer_id")
    if customer:
        out += erase(processor, ctx, str(customer))
    visitor = request.get("visitor_id")
    if visitor:
        out += erase(processor, ctx, key=str(visitor))
    return out


def honour_all(processor: Processor, ctx: Context, requests: Iterable[Mapping[str, Any]]) -> list[OutRecord]:
    """Every erasure request held, on a partition just restored."""
    out: list[OutRecord] = []
    for request in list(requests):
        out += honour(processor, ctx, request)
    return out


def erased(requests: Mapping[Any, Mapping[str, Any]], visitor: str, customer: str | None) -> bool:
    """Whether the latest request held for this visitor or customer is an erasure (late records must not
    bring the person back)."""
    for key in (visitor, customer):
        request = requests.get(key) if key else None
        if request is not None and request.get("kind") == ERASURE:
            return True
    return False
