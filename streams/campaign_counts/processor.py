"""The live campaign counter: ``hits.enriched`` -> ``campaigns.live`` on the runtime.

Wiring only; the rules are in ``rules.py``. The input is keyed by visitor,
the counts by campaign, and the runtime keeps state per input partition: the
counts of one campaign come from every partition of ``hits.enriched``. So the
processor reads two topics and has two halves:

- ``hits.enriched`` (by visitor): store ``visitors`` decides whether a hit
  starts a visit or places an order not counted yet; if so, one delta goes to
  ``campaigns.live.deltas``, keyed by counter (``EREC-123@2024-11-28``);
- ``campaigns.live.deltas`` (by counter, its second input): every delta of a
  counter lands on the one partition its key hashes to, so store ``counters``
  holds each counter exactly once, on the one instance that owns that
  partition.

With exactly-once, a delta is written in the transaction that commits the
hit's offset and its visitor state, and read (``read_committed``) in a later
one that commits the counter and the delta's offset: no hit is counted twice,
none is lost, across crashes and rebalances alike.

Timers (wall clock, in the runtime's ``timers`` store, so they survive
restarts): ``flush`` publishes the counters changed since the last flush (one
record per counter per ``emit_interval_ms``); ``close@<window start>`` closes
a window ``grace_ms`` after its end (each counter published with ``final``,
then dropped); ``sweep`` forgets visitors idle for ``visitor_ttl_ms``. No
person data is kept (no customer id, nothing from the CRM), so no erasure.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter as PromCounter

from passerelle.schemas.timeconv import to_millis
from passerelle.streams.campaign_counts.rules import CampaignCounter, CampaignCountsConfig, Counter, VisitorState
from passerelle.streams.runtime import Context, InRecord, OutRecord, Processor, StoreSpec, Timer

VISITORS: StoreSpec[VisitorState] = StoreSpec("visitors", ttl_ms=None)
"""Per visitor from a declared campaign (partitions of hits.enriched): last visit and orders counted.

No runtime ``ttl_ms``: ``sweep`` forgets visitors idle for ``visitor_ttl_ms``."""
COUNTERS: StoreSpec[Counter] = StoreSpec("counters", ttl_ms=None)
"""Per campaign and window (partitions of campaigns.live.deltas): the running totals (dropped with their window)."""

FLUSH = "flush"
SWEEP = "sweep"
CLOSE = "close@"  # + window start (ms)


@dataclass(frozen=True)
class CampaignCountsTopics:
    """Topic names, overridable so tests and several deployments can share a cluster."""

    hits_enriched: str = "hits.enriched"
    deltas: str = "campaigns.live.deltas"
    live: str = "campaigns.live"


class CampaignCountsProcessor(Processor):
    """Visits, orders and revenue per declared campaign and window, published live on a compacted topic."""

    name = "campaign-counts"
    stores = (VISITORS, COUNTERS)

    def __init__(self, topics: CampaignCountsTopics | None = None, config: CampaignCountsConfig | None = None) -> None:
        self.topics = t = topics or CampaignCountsTopics()
        self.inputs = (t.hits_enriched, t.deltas)
        self.outputs = (t.deltas, t.live)
        self.counter = CampaignCounter(config)
        self.config = self.counter.config
        self.visits = PromCounter(
            "passerelle_campaign_counts_visits_total", "Visits from declared campaigns counted", registry=None
        )
        self.orders = PromCounter(
            "passerelle_campaign_counts_orders_total", "Orders in visits from declared campaigns counted",
            registry=None,
        )  # fmt: skip
        self.late = PromCounter(
            "passerelle_campaign_counts_late_total", "Hits and deltas dropped because their window was closed",
            ["input"], registry=None,
        )  # fmt: skip
        self.updates = PromCounter(
            "passerelle_campaign_counts_updates_total", "Counter records published (final ones included)",
            registry=None,
        )  # fmt: skip
        self.closed = PromCounter(
            "passerelle_campaign_counts_closed_total", "Counters closed (published final, then forgotten)",
            registry=None,
        )  # fmt: skip
        self.metrics = (self.visits, self.orders, self.late, self.updates, self.closed)

    def process_one(self, record: InRecord, ctx: Context) -> Iterable[OutRecord] | None:
        if record.topic == self.topics.deltas:
            if not isinstance(record.key, str):
                raise ValueError(f"a delta without its counter key: {record.key!r}")  # a dead letter
            self._count(record.key, record.value, ctx)
            return None
        return self._hit(record.value, ctx)

    # --- half 1: per visitor (hits.enriched) ---------------------------------------------

    def _hit(self, hit: dict[str, Any], ctx: Context) -> list[OutRecord] | None:
        visitors, visitor, now = ctx.store(VISITORS), str(hit["visitor_id"]), ctx.now()
        old = visitors.get(visitor)
        step = self.counter.on_hit(old, hit, now)
        if step.state is not None and step.state != old:
            visitors.put(visitor, step.state)
            self._arm(ctx, SWEEP, now + self.config.sweep_interval_ms)
        if step.late:
            self.late.labels("hits").inc()
        delta = step.delta
        if delta is None:
            return None
        self.visits.inc(delta["visits"])
        self.orders.inc(delta["orders"])
        key = self.counter.key(delta["campaign_key"], delta["window_start"])
        return [OutRecord(self.topics.deltas, key, delta)]  # timestamped when produced: event times may be far off

    # --- half 2: per counter (campaigns.live.deltas) ---------------------------------------

    def _count(self, key: str, delta: dict[str, Any], ctx: Context) -> None:
        now = ctx.now()
        start, end = to_millis(delta["window_start"]), to_millis(delta["window_end"])
        if self.counter.closed(end, now):
            self.late.labels("deltas").inc()  # its window was published final: never reopen it
            return
        counters = ctx.store(COUNTERS)
        counters.put(key, self.counter.add(counters.get(key), delta))
        self._arm(ctx, CLOSE + str(start), self.counter.closes_at(end))
        self._arm(ctx, FLUSH, now + self.config.emit_interval_ms)

    # --- timers ------------------------------------------------------------------------------

    @staticmethod
    def _arm(ctx: Context, key: str, when: int) -> None:
        """Schedule a wall-clock timer unless one is pending for ``key`` (a flush is not pushed back)."""
        if ctx.timers.get(key, kind="wall") is None:
            ctx.timers.schedule(key, when, kind="wall")

    def on_timer(self, timers: Sequence[Timer], ctx: Context) -> Iterable[OutRecord]:
        keys = sorted((t.key for t in timers), key=lambda k: (not k.startswith(CLOSE), k))  # closes first
        out: list[OutRecord] = []
        for key in keys:
            if key.startswith(CLOSE):
                out.extend(self._close(int(key[len(CLOSE) :]), ctx))
            elif key == FLUSH:
                out.extend(self._flush(ctx))
            elif key == SWEEP:
                self._sweep(ctx)
        self.updates.inc(len(out))
        return out

    def _flush(self, ctx: Context) -> list[OutRecord]:
        """Publish every counter changed since the last flush, once."""
        counters, now = ctx.store(COUNTERS), ctx.now()
        out = []
        for key, counter in counters.items():
            if counter["pending"]:
                out.append(OutRecord(self.topics.live, key, self.counter.published(counter, now), timestamp=now))
                counters.put(key, {**counter, "pending": False})
        return out

    def _close(self, start: int, ctx: Context) -> list[OutRecord]:
        """The window starting at ``start`` is over: each of its counters published ``final``, then forgotten."""
        counters, now = ctx.store(COUNTERS), ctx.now()
        out = []
        for key, counter in counters.items():
            if counter["window_start"] == start:
                out.append(OutRecord(self.topics.live, key, self.counter.published(counter, now, final=True),
                                     timestamp=now))  # fmt: skip
                counters.delete(key)
        self.closed.inc(len(out))
        return out

    def _sweep(self, ctx: Context) -> None:
        """Forget visitors idle for the TTL; come back while some remain."""
        visitors, now = ctx.store(VISITORS), ctx.now()
        for visitor, state in visitors.items():
            if self.counter.expired(state, now):
                visitors.delete(visitor)
        if len(visitors):
            ctx.timers.schedule(SWEEP, now + self.config.sweep_interval_ms, kind="wall")
