"""Privacy requests (``privacy.requests``) as the runtime's processors honour them.

A processor that keeps personal state declares ``privacy_table(topic)``
among its lookup tables: every instance then holds the whole topic (keyed by
customer or visitor id, the latest request per key), and the runtime applies
each erasure request as it does a CRM tombstone (``TableSpec.erasures``): on
every partition held when it arrives, again on each partition restored later
(state from a changelog written before it, or on an instance that was down),
and ``runtime.processor.is_erased`` tells a processor to ignore late records
of the person.

What an erasure deletes: for a customer id, every key of the person in the
processor's ``person`` stores (the runtime's person index, on every
partition); for a visitor id, that key in the same stores (these processors
keep their personal state keyed by visitor id). ``on_erased`` runs for each
deleted key, so the processor retracts what it emitted (the enrichment's
identity link). A ``consent_change`` is not theirs to apply: marketing
consent is judged by the remarketing sequencer (``passerelle.streams.consent``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from passerelle.streams.runtime import TableSpec
from passerelle.streams.runtime.processor import Erasure

PRIVACY = "privacy"
ERASURE = "erasure"


def privacy_table(topic: str) -> TableSpec:
    """The lookup table of privacy requests: the runtime erases what each erasure request names."""
    return TableSpec(PRIVACY, topic, erasures=privacy_erasure)


def privacy_erasure(key: Any, request: Mapping[str, Any] | None) -> Erasure | None:
    """Who an erasure request erases: its customer (every key of the person), its visitor (that key).

    A ``consent_change`` erases nothing: marketing consent is judged by the
    remarketing sequencer (``passerelle.streams.consent``).
    """
    if not request or request.get("kind") != ERASURE:
        return None
    customer, visitor = request.get("customer_id"), request.get("visitor_id")
    return Erasure(persons=(str(customer),) if customer else (), keys=(str(visitor),) if visitor else ())
