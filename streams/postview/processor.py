"""Post-view: ``ads.impressions`` + ``hits.enriched`` -> ``ads.postview`` on the runtime.

Wiring only; the rules are in ``rules.py``. Both inputs are keyed by visitor
id and co-partitioned (6 partitions each), so partition p of both, and the
visitor state of p, are on one instance: a join per visitor, no re-keying.

- ``ads.impressions``: the impression is kept in the visitor's state
  (``visitors``) until it can no longer be credited (window + grace, on the
  wall clock);
- ``hits.enriched``: the first hit of a visit, and each new order, is matched
  against the visitor's impressions: ``PostView`` records on ``ads.postview``,
  keyed by visitor id.

Which input a batch's records come from first is up to the consumer: an
impression processed after the visit it preceded is not credited to it
(``rules.py``, "late"; counted in ``passerelle_postview_impressions_total``).

Timers: one wall-clock ``sweep`` per partition, armed when a visitor is
stored, forgets expired impressions and idle visitors every
``sweep_interval_ms`` while any remain (in the runtime's ``timers`` store, so
it survives restarts).

Erasure: ``visitors`` declares ``person="customer_id"`` (a hit that identifies
the visitor puts the customer id on their state). A ``crm.profiles``
tombstone or an erasure request on ``privacy.requests`` by customer id
deletes every visitor of the person (the runtime), one by visitor id that
visitor; records of an erased person or visitor that arrive later are
ignored (``is_erased``). Post-views already published stay on ``ads.postview``
until its retention deletes them (a stream, not a table: no tombstone
retracts a record).

Exactly-once, as the other runtime processors: a post-view is written in the
transaction that commits the hit's offset and the visitor's state (its visit
and orders marked seen), so a replay after a crash neither repeats it nor
loses it, and its id is deterministic besides.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter as PromCounter

from passerelle.streams.postview.rules import ORDER, VISIT, PostView, PostViewConfig, VisitorState
from passerelle.streams.privacy import privacy_table
from passerelle.streams.runtime import Context, InRecord, OutRecord, Processor, StoreSpec, TableSpec, Timer
from passerelle.streams.runtime.processor import is_erased

VISITORS: StoreSpec[VisitorState] = StoreSpec("visitors", person="customer_id", ttl_ms=None)
"""Per visitor: impressions kept, current visit, last orders, customer id (indexed by the runtime for erasures).

No runtime ``ttl_ms``: the processor's sweep forgets expired impressions and idle visitors."""
CRM = "crm"
SWEEP = "sweep"
OUTCOMES = ("kept", "late", "duplicate", "no_campaign", "expired", "erased")


@dataclass(frozen=True)
class PostViewTopics:
    """Topic names, overridable so tests and several deployments can share a cluster."""

    impressions: str = "ads.impressions"
    hits_enriched: str = "hits.enriched"
    postview: str = "ads.postview"
    crm_profiles: str = "crm.profiles"
    privacy_requests: str | None = "privacy.requests"
    """None: privacy requests are not read (tests of other behaviour on topics of their own)."""


class PostViewProcessor(Processor):
    """Credits visits and orders to the display impressions that preceded them within the post-view window."""

    name = "postview"
    stores = (VISITORS,)

    def __init__(self, topics: PostViewTopics | None = None, config: PostViewConfig | None = None) -> None:
        self.topics = t = topics or PostViewTopics()
        self.inputs = (t.impressions, t.hits_enriched)
        self.outputs = (t.postview,)
        self.tables = (
            TableSpec(CRM, t.crm_profiles, erases=True),
            *((privacy_table(t.privacy_requests),) if t.privacy_requests else ()),
        )
        self.rules = PostView(config)
        self.config = self.rules.config
        self.impressions = PromCounter(
            "passerelle_postview_impressions_total",
            "Ad impressions read, by outcome: kept, late (kept, but after the visit it preceded was credited), "
            "duplicate, no_campaign, expired (older than window + grace), erased (person or visitor erased)",
            ["outcome"], registry=None,
        )  # fmt: skip
        self._outcome = {o: self.impressions.labels(o) for o in OUTCOMES}
        self.emitted = PromCounter(
            "passerelle_postview_emitted_total", "PostView records published, by kind (visit, order)", ["kind"],
            registry=None,
        )  # fmt: skip
        self._emitted = {k: self.emitted.labels(k) for k in (VISIT, ORDER)}
        self.expired = PromCounter(
            "passerelle_postview_visitors_expired_total",
            "Visitors forgotten by the sweep (no impression left to credit, idle for the TTL)", registry=None,
        )  # fmt: skip
        self.erasures = PromCounter(
            "passerelle_postview_erasures_total",
            "Visitors forgotten because their person or visitor id was erased (CRM tombstone or privacy request)",
            registry=None,
        )  # fmt: skip
        self.metrics = (self.impressions, self.emitted, self.expired, self.erasures)

    def process_one(self, record: InRecord, ctx: Context) -> Iterable[OutRecord] | None:
        if record.topic == self.topics.impressions:
            self._impression(record.value, ctx)
            return None
        return self._hit(record.value, ctx)

    def _impression(self, imp: dict[str, Any], ctx: Context) -> None:
        visitor = str(imp["visitor_id"])
        if is_erased(self, ctx, visitor):
            self._outcome["erased"].inc()
            return
        visitors, now = ctx.store(VISITORS), ctx.now()
        old = visitors.get(visitor)
        step = self.rules.on_impression(old, imp, now)
        if step.state is not None and step.state is not old:
            visitors.put(visitor, step.state)
            self._arm(ctx, now)
        self._outcome[step.outcome].inc()

    def _hit(self, hit: dict[str, Any], ctx: Context) -> list[OutRecord] | None:
        visitor = str(hit["visitor_id"])
        visitors, now = ctx.store(VISITORS), ctx.now()
        old = visitors.get(visitor)
        step = self.rules.on_hit(old, hit, now)
        if step.state is old:
            return None  # the common case, first: a hit of a visit already seen
        if is_erased(self, ctx, hit.get("customer_id"), visitor):
            return None  # a hit enriched before the person's erasure: do not bring them back
        if step.state is not None:
            visitors.put(visitor, step.state)
            self._arm(ctx, now)
        if not step.postviews:
            return None
        out = [OutRecord(self.topics.postview, visitor, pv) for pv in step.postviews]
        for pv in step.postviews:
            self._emitted[pv["kind"]].inc()
        return out

    # --- timers ------------------------------------------------------------------------------

    def _arm(self, ctx: Context, now: int) -> None:
        """A sweep unless one is pending (a steady stream must not push it back)."""
        if ctx.timers.get(SWEEP, kind="wall") is None:
            ctx.timers.schedule(SWEEP, now + self.config.sweep_interval_ms, kind="wall")

    def on_timer(self, timers: Sequence[Timer], ctx: Context) -> Iterable[OutRecord]:
        if any(t.key == SWEEP for t in timers):
            self._sweep(ctx)
        return ()

    def _sweep(self, ctx: Context) -> None:
        """Forget expired impressions and idle visitors; come back while some remain."""
        visitors, now = ctx.store(VISITORS), ctx.now()
        forgotten = 0
        for visitor, state in visitors.items():
            new = self.rules.expire(state, now)
            if new is None:
                visitors.delete(visitor)
                forgotten += 1
            elif new is not state:
                visitors.put(visitor, new)
        self.expired.inc(forgotten)
        if len(visitors):
            ctx.timers.schedule(SWEEP, now + self.config.sweep_interval_ms, kind="wall")

    # --- erasure ---------------------------------------------------------------------------------

    def on_erased(self, store: StoreSpec[Any], key: str, value: Any, ctx: Context) -> Iterable[OutRecord] | None:
        """A visitor forgotten on erasure: nothing was published that a tombstone could retract."""
        self.erasures.inc()
        return None
