"""The abandoned-cart processor: ``hits.enriched`` -> ``carts.abandoned`` on the runtime.

Wiring only; the rules are in ``tracker.py``. State: ``carts`` (one record per
visitor: cart, viewed products, last activity, identity, consent) and
``customers`` (customer id -> visitor ids of this partition, so an erasure
finds every visitor of a person). One wall-clock timer per visitor, re-armed
by each hit (rescheduling replaces it), fires the abandonment deadline or
forgets an idle visitor; timers live in the runtime's ``timers`` store, so a
deadline set before a crash fires once after the restart. Table: CRM
profiles, for the email address (hits do not carry it) and erasures.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from streams.carts.tracker import CartConfig, CartState, CartTracker, Step
from streams.runtime import Context, InRecord, OutRecord, Processor, StoreSpec, TableSpec, Timer

CARTS = "carts"
CUSTOMERS = "customers"
CRM = "crm"


@dataclass(frozen=True)
class CartTopics:
    """Topic names, overridable so tests and several deployments can share a cluster."""

    hits_enriched: str = "hits.enriched"
    carts_abandoned: str = "carts.abandoned"
    crm_profiles: str = "crm.profiles"


class CartTrackerProcessor(Processor):
    """Detects abandoned carts in near real time and emits one ``CartAbandoned`` per cart episode."""

    name = "carts"
    stores = (StoreSpec(CARTS), StoreSpec(CUSTOMERS))

    def __init__(self, topics: CartTopics | None = None, config: CartConfig | None = None) -> None:
        self.topics = t = topics or CartTopics()
        self.inputs = (t.hits_enriched,)
        self.outputs = (t.carts_abandoned,)
        self.tables = (TableSpec(CRM, t.crm_profiles),)
        self.tracker = CartTracker(config)
        # Open carts per partition, checked against the live context: the runner drops a revoked
        # partition's context without telling the processor, and the weak reference then dies with it.
        self._open: dict[int, tuple[weakref.ref[Context], int]] = {}
        self._abandoned: Counter | None = None
        self._erasures: Counter | None = None

    # --- metrics ------------------------------------------------------------------

    def register_metrics(self, registry: CollectorRegistry) -> None:
        gauge = Gauge("passerelle_carts_open", "Carts with lines not yet reported abandoned", registry=registry)
        gauge.set_function(self.open_carts)
        self._abandoned = Counter("passerelle_carts_abandoned_total", "CartAbandoned events emitted", registry=registry)
        self._erasures = Counter(
            "passerelle_carts_erasures_total", "Visitors forgotten because their CRM profile was erased",
            registry=registry,
        )  # fmt: skip

    def open_carts(self) -> int:
        """Open carts over the partitions this instance holds (read by the metrics thread)."""
        return sum(count for ref, count in list(self._open.values()) if ref() is not None)

    def _track(self, ctx: Context) -> None:
        entry = self._open.get(ctx.partition)
        if entry is None or entry[0]() is not ctx:
            count = sum(1 for _, state in ctx.store(CARTS).items() if self.tracker.is_open(state))
            self._open[ctx.partition] = (weakref.ref(ctx), count)

    def _bump(self, ctx: Context, before: bool, after: bool) -> None:
        if before != after:
            ref, count = self._open[ctx.partition]
            self._open[ctx.partition] = (ref, count + (1 if after else -1))

    # --- hits and timers ----------------------------------------------------------

    def process(self, records: Sequence[InRecord], ctx: Context) -> Iterable[OutRecord]:
        self._track(ctx)
        return super().process(records, ctx)

    def process_one(self, record: InRecord, ctx: Context) -> Iterable[OutRecord] | None:
        hit = record.value
        if hit is None:
            return None
        customer = hit.get("customer_id")
        if customer is not None and customer in ctx.deleted.get(CRM, ()):
            return None  # a hit enriched before the person's erasure: do not track them again
        visitor = str(hit["visitor_id"])
        carts = ctx.store(CARTS)
        old: CartState | None = carts.get(visitor)
        self._apply(ctx, visitor, old, self.tracker.on_hit(old, hit, ctx.now()))
        return None

    def on_timer(self, timers: Sequence[Timer], ctx: Context) -> Iterable[OutRecord]:
        self._track(ctx)
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
        if out and self._abandoned is not None:
            self._abandoned.inc(len(out))
        return out

    def _apply(self, ctx: Context, visitor: str, old: CartState | None, step: Step) -> None:
        """Store the new state, keep the customer index and the visitor's timer in step with it."""
        carts = ctx.store(CARTS)
        new = step.state
        if new is None:
            if old is not None:
                carts.delete(visitor)
        else:
            carts.put(visitor, new)
        old_customer = old["customer_id"] if old else None
        new_customer = new["customer_id"] if new else None
        if old_customer != new_customer:
            self._index(ctx, visitor, old_customer, new_customer)
        if step.wake_at is None:
            ctx.timers.cancel(visitor, kind="wall")
        elif ctx.timers.get(visitor, kind="wall") != step.wake_at:
            ctx.timers.schedule(visitor, step.wake_at, kind="wall")
        self._bump(ctx, self.tracker.is_open(old), self.tracker.is_open(new))

    @staticmethod
    def _index(ctx: Context, visitor: str, old: str | None, new: str | None) -> None:
        customers = ctx.store(CUSTOMERS)
        if old:
            remaining = [v for v in customers.get(old, []) if v != visitor]
            if remaining:
                customers.put(old, remaining)
            else:
                customers.delete(old)
        if new:
            linked = customers.get(new, [])
            if visitor not in linked:
                customers.put(new, [*linked, visitor])

    # --- erasure ------------------------------------------------------------------

    def _purge(self, customer: str, ctx: Context) -> None:
        """Erasure: forget every visitor of this person (cart, viewed products, timer)."""
        carts = ctx.store(CARTS)
        for visitor in ctx.store(CUSTOMERS).get(customer, []):
            state = carts.get(visitor)
            if state is not None:
                carts.delete(visitor)
                self._bump(ctx, self.tracker.is_open(state), False)
            ctx.timers.cancel(visitor, kind="wall")
            if self._erasures is not None:
                self._erasures.inc()
        ctx.store(CUSTOMERS).delete(customer)

    def on_table_change(self, table: str, key: Any, old: Any, new: Any, ctx: Context) -> Iterable[OutRecord]:
        if table == CRM and new is None and key in ctx.store(CUSTOMERS):
            self._track(ctx)
            self._purge(key, ctx)
        return ()

    def on_partition_restored(self, ctx: Context) -> Iterable[OutRecord] | None:
        # An erasure that arrived while this partition was elsewhere (or before a crash) still applies.
        self._track(ctx)
        erased = ctx.deleted.get(CRM, set())
        for customer in list(ctx.store(CUSTOMERS)):
            if customer in erased:
                self._purge(customer, ctx)
        return None
