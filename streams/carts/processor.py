"""The abandoned-cart processor: ``hits.enriched`` -> ``carts.abandoned`` on the runtime.

Wiring only; the rules are in ``tracker.py``. State: ``carts`` (one record per
visitor: cart, viewed products, last activity, identity, consent), indexed by
the runtime under its customer id so that a CRM erasure finds every visitor
of the person. One wall-clock timer per visitor, re-armed
by each hit (rescheduling replaces it), fires the abandonment deadline or
forgets an idle visitor; timers live in the runtime's ``timers`` store, so a
deadline set before a crash fires once after the restart. Tables: CRM
profiles, for the email address (hits do not carry it) and erasures; privacy
requests (an erasure by customer or by visitor id forgets the person's carts:
``passerelle.streams.privacy``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Gauge

from passerelle.streams.carts.tracker import CartConfig, CartState, CartTracker, Step
from passerelle.streams.privacy import privacy_table
from passerelle.streams.runtime import Context, InRecord, OutRecord, Processor, StoreSpec, TableSpec, Timer
from passerelle.streams.runtime.processor import is_erased

CARTS: StoreSpec[CartState] = StoreSpec("carts", person="customer_id", ttl_ms=None)
"""One record per visitor; the runtime indexes it under its customer id, for erasures.

No runtime ``ttl_ms``: the tracker's own idle timer forgets a visitor (and emits the abandonment first)."""
CRM = "crm"


@dataclass(frozen=True)
class CartTopics:
    """Topic names, overridable so tests and several deployments can share a cluster."""

    hits_enriched: str = "hits.enriched"
    carts_abandoned: str = "carts.abandoned"
    crm_profiles: str = "crm.profiles"
    privacy_requests: str | None = "privacy.requests"
    """None: privacy requests are not read (tests of other behaviour on topics of their own)."""


class CartTrackerProcessor(Processor):
    """Detects abandoned carts in near real time and emits one ``CartAbandoned`` per cart episode."""

    name = "carts"
    stores = (CARTS,)

    def __init__(self, topics: CartTopics | None = None, config: CartConfig | None = None) -> None:
        self.topics = t = topics or CartTopics()
        self.inputs = (t.hits_enriched,)
        self.outputs = (t.carts_abandoned,)
        self.tables = (
            TableSpec(CRM, t.crm_profiles, erases=True),
            *((privacy_table(t.privacy_requests),) if t.privacy_requests else ()),
        )
        self.tracker = CartTracker(config)
        self._open: dict[int, int] = {}  # open carts per partition held (read by the metrics thread)
        gauge = Gauge("passerelle_carts_open", "Carts with lines not yet reported abandoned", registry=None)
        gauge.set_function(self.open_carts)
        self.abandoned = Counter("passerelle_carts_abandoned_total", "CartAbandoned events emitted", registry=None)
        self.erasures = Counter(
            "passerelle_carts_erasures_total",
            "Visitors forgotten because their person was erased (CRM tombstone or privacy request)",
            registry=None,
        )  # fmt: skip
        self.metrics = (gauge, self.abandoned, self.erasures)

    def open_carts(self) -> int:
        """Open carts over the partitions this instance holds."""
        return sum(list(self._open.values()))

    def _bump(self, ctx: Context, before: bool, after: bool) -> None:
        if before != after:
            self._open[ctx.partition] = self._open.get(ctx.partition, 0) + (1 if after else -1)

    # --- partitions -------------------------------------------------------------------

    def on_partition_restored(self, ctx: Context) -> Iterable[OutRecord] | None:
        """Count the open carts (erasures held were applied by the runtime just before)."""
        self._open[ctx.partition] = sum(1 for _, state in ctx.store(CARTS).items() if self.tracker.is_open(state))
        return None

    def on_partition_revoked(self, ctx: Context) -> None:
        self._open.pop(ctx.partition, None)

    # --- hits and timers ----------------------------------------------------------

    def process_one(self, record: InRecord, ctx: Context) -> Iterable[OutRecord] | None:
        hit = record.value
        if hit is None:
            return None
        visitor = str(hit["visitor_id"])
        if is_erased(self, ctx, hit.get("customer_id"), visitor):
            return None  # a hit enriched before the person's erasure: do not track them again
        old = ctx.store(CARTS).get(visitor)
        self._apply(ctx, visitor, old, self.tracker.on_hit(old, hit, ctx.now()))
        return None

    def on_timer(self, timers: Sequence[Timer], ctx: Context) -> Iterable[OutRecord]:
        carts, crm = ctx.store(CARTS), ctx.table(CRM)
        out: list[OutRecord] = []
        for timer in timers:
            if timer.kind != "wall":
                continue
            state: CartState | None = carts.get(timer.key)
            email = None
            if state is not None and state["customer_id"]:
                profile = crm.get(state["customer_id"])
                email = profile.get("email") if profile else None
            now = ctx.now()
            step = self.tracker.on_deadline(state, now, email)
            self._apply(ctx, timer.key, state, step)
            if step.abandoned is not None:
                out.append(OutRecord(self.topics.carts_abandoned, timer.key, step.abandoned, timestamp=now))
        if out:
            self.abandoned.inc(len(out))
        return out

    def _apply(self, ctx: Context, visitor: str, old: CartState | None, step: Step) -> None:
        """Store the new state (the runtime indexes its customer), keep the visitor's timer in step with it."""
        carts = ctx.store(CARTS)
        new = step.state
        if new is None:
            if old is not None:
                carts.delete(visitor)
        else:
            carts.put(visitor, new)
        if step.wake_at is None:
            ctx.timers.cancel(visitor, kind="wall")
        elif ctx.timers.get(visitor, kind="wall") != step.wake_at:
            ctx.timers.schedule(visitor, step.wake_at, kind="wall")
        self._bump(ctx, self.tracker.is_open(old), self.tracker.is_open(new))

    # --- erasure ------------------------------------------------------------------

    def on_erased(self, store: StoreSpec[Any], key: str, value: Any, ctx: Context) -> Iterable[OutRecord] | None:
        """Erasure (CRM tombstone or privacy request): the visitor's cart and viewed products are deleted;
        its timer goes too."""
        self._bump(ctx, self.tracker.is_open(value), False)
        ctx.timers.cancel(key, kind="wall")
        self.erasures.inc()
        return None
