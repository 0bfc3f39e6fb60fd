"""End-to-end latencies of the three flows an operator promises, read from the records themselves.

Each processor's ``passerelle_event_to_emit_seconds`` covers one hop. The
flows a shop cares about span several processes, and the records carry the
times needed:

- ``hit_to_enriched``: ``hits.enriched`` ``enriched_at - event_time`` (the
  visitor's click to the enriched hit, collector and enrichment included);
- ``hit_to_abandoned_cart``: ``carts.abandoned`` ``detected_at -
  last_activity_at`` (the last hit to the abandonment: the idle timeout by
  design, plus how late the detection is);
- ``abandonment_to_partner``: ``remarketing.deliveries`` ``decided_at`` minus
  the ``created_at`` of its step-1 ``remarketing.messages`` record (created
  when the abandonment reached the sequencer) for delivered messages: the
  cart's first email reaching the emailing partner.

Pure functions over decoded values; the exporter feeds them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

HIT_TO_ENRICHED = "hit_to_enriched"
HIT_TO_ABANDONED_CART = "hit_to_abandoned_cart"
ABANDONMENT_TO_PARTNER = "abandonment_to_partner"
FLOWS = (HIT_TO_ENRICHED, HIT_TO_ABANDONED_CART, ABANDONMENT_TO_PARTNER)
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 1800, 3600, 7200, 21600, 86400)


@dataclass(frozen=True)
class FlowTopics:
    """The topics each flow reads (the catalog's names unless a test says otherwise)."""

    enriched: str = "hits.enriched"
    abandoned: str = "carts.abandoned"
    messages: str = "remarketing.messages"
    deliveries: str = "remarketing.deliveries"

    def all(self) -> list[str]:
        return [self.enriched, self.abandoned, self.messages, self.deliveries]


class FlowClock:
    """Turns decoded records into (flow, seconds) observations; joins step-1 messages and their deliveries.

    The two topics are read in one consumer, so a delivery may come before its
    message within a batch: whichever comes first waits (bounded) for the other.
    """

    def __init__(self, topics: FlowTopics, remembered: int = 100_000) -> None:
        self.topics = topics
        self._created: OrderedDict[str, int] = OrderedDict()
        self._decided: OrderedDict[str, int] = OrderedDict()
        self._remembered = remembered

    def _remember(self, table: OrderedDict[str, int], key: str, value: int) -> None:
        table[key] = value
        while len(table) > self._remembered:
            table.popitem(last=False)

    def observe(self, topic: str, value: Mapping[str, Any] | None) -> tuple[str, float] | None:
        """The flow latency a record completes, if any (a tombstone or another record: None)."""
        if value is None:
            return None
        if topic == self.topics.enriched:
            return _flow(HIT_TO_ENRICHED, value.get("enriched_at"), value.get("event_time"))
        if topic == self.topics.abandoned:
            return _flow(HIT_TO_ABANDONED_CART, value.get("detected_at"), value.get("last_activity_at"))
        message_id = str(value.get("message_id"))
        if topic == self.topics.messages:
            if value.get("step") == 1 and isinstance(value.get("created_at"), int):
                decided = self._decided.pop(message_id, None)
                if decided is not None:
                    return _flow(ABANDONMENT_TO_PARTNER, decided, value["created_at"])
                self._remember(self._created, message_id, int(value["created_at"]))
            return None
        if topic == self.topics.deliveries and value.get("outcome") == "delivered" and value.get("step", 1) == 1:
            created = self._created.pop(message_id, None)
            if created is not None:
                return _flow(ABANDONMENT_TO_PARTNER, value.get("decided_at"), created)
            if isinstance(value.get("decided_at"), int):
                self._remember(self._decided, message_id, int(value["decided_at"]))
        return None


def _flow(flow: str, later: Any, earlier: Any) -> tuple[str, float] | None:
    """(flow, later - earlier in seconds) when both times are there; a clock step back counts as 0."""
    if not isinstance(later, int) or not isinstance(earlier, int):
        return None
    return flow, max(0, later - earlier) / 1000
