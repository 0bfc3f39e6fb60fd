"""Per-customer web activity for the CRM: ``hits.enriched``, ``carts.abandoned`` -> ``crm.web_activity``.

Wiring only; the rules are in ``rules.py``. The inputs are keyed by visitor,
the summary by customer, and the runtime keeps state per input partition, so
the processor has two halves, as ``campaign_counts`` does
(``docs/writing-a-processor.md``, section 2):

- ``hits.enriched`` and ``carts.abandoned`` (by visitor, 6 partitions): store
  ``visitors`` decides whether a hit starts a visit of an identified customer;
  each visit, order and abandoned cart of one becomes a delta on
  ``crm.activity.deltas``, keyed by customer id;
- ``crm.activity.deltas`` (by customer, 6 partitions, the third input): store
  ``customers`` holds each customer's daily buckets and totals on the one
  partition their key hashes to.

Remarketing messages. ``remarketing.messages`` has 3 partitions; the runner
refuses inputs of different partition counts (state is kept per partition
number, ``Runner._ensure_changelogs``). So a second, stateless processor,
``CrmMessagesProcessor`` (``passerelle crm-activity-messages``), turns each
message into a delta on the same internal topic: exactly-once on its own (its
transaction holds the delta and the message's offset), and the deltas topic
is keyed by customer, so the messages land on their customer's partition like
the rest. A lookup table would not do: it is read without committed offsets
(messages arriving while an instance is down would be lost or, at a restart,
seen again), holds one message per customer, and reaches every instance.

Timers (wall clock, in the runtime's ``timers`` store): ``flush`` publishes
the customers changed since the last flush (once each per
``emit_interval_ms``); ``sweep`` at each UTC midnight drops the day that fell
out of the window and marks the customers it changed for the next flush;
``forget`` drops visitors whose counted visit is older than the TTL.

Erasure: both stores declare ``person="customer_id"``; a ``crm.profiles``
tombstone or a privacy request deletes the person's keys (the runtime), and
``on_erased`` publishes a tombstone on ``crm.web_activity`` for the customer
so the JDBC sink deletes their CRM row. Records of an erased person that
arrive later are ignored (``is_erased``), at both halves.

Exactly-once, as the other runtime processors: a delta is written in the
transaction that commits its input's offset, counted in one that commits the
delta's offset and the customer's state, and a summary is published in the
one that clears the customer's ``pending`` flag. At-least-once would not
double-count (deltas are deduplicated by event id) but is not the default.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter as PromCounter

from passerelle.streams.crm_activity.rules import (
    CrmActivity,
    CrmActivityConfig,
    CustomerState,
    Delta,
    VisitorState,
    next_midnight,
)
from passerelle.streams.privacy import privacy_table
from passerelle.streams.runtime import Context, InRecord, OutRecord, Processor, StoreSpec, TableSpec, Timer
from passerelle.streams.runtime.processor import is_erased

VISITORS: StoreSpec[VisitorState] = StoreSpec("visitors", person="customer_id", ttl_ms=None)
"""Per identified visitor (partitions of hits.enriched): the last visit counted, and for whom.

No runtime ``ttl_ms``: the ``forget`` sweep drops visitors past the TTL of the rules."""
CUSTOMERS: StoreSpec[CustomerState] = StoreSpec("customers", person="customer_id", ttl_ms=None)
"""Per customer (partitions of crm.activity.deltas): daily buckets, totals, dedup memory.

Never expires: a customer's totals live as long as the CRM keeps the customer (erased with them)."""
CRM = "crm"

FLUSH = "flush"
SWEEP = "sweep"
FORGET = "forget"
ORDER = {SWEEP: 0, FORGET: 1, FLUSH: 2}  # the flush last: it publishes what the sweep marked


@dataclass(frozen=True)
class CrmActivityTopics:
    """Topic names, overridable so tests and several deployments can share a cluster."""

    hits_enriched: str = "hits.enriched"
    carts_abandoned: str = "carts.abandoned"
    remarketing_messages: str = "remarketing.messages"
    """Read by ``CrmMessagesProcessor`` (3 partitions: not co-partitioned with the others)."""
    deltas: str = "crm.activity.deltas"
    web_activity: str = "crm.web_activity"
    crm_profiles: str = "crm.profiles"
    privacy_requests: str | None = "privacy.requests"
    """None: privacy requests are not read (tests of other behaviour on topics of their own)."""


def _deltas_counter() -> PromCounter:
    return PromCounter(
        "passerelle_crm_activity_deltas_total", "Customer events re-keyed to crm.activity.deltas", ["kind"],
        registry=None,
    )  # fmt: skip


class CrmActivityProcessor(Processor):
    """Maintains each identified customer's web activity summary, published for the CRM's web_activity table."""

    name = "crm-activity"
    stores = (VISITORS, CUSTOMERS)

    def __init__(self, topics: CrmActivityTopics | None = None, config: CrmActivityConfig | None = None) -> None:
        self.topics = t = topics or CrmActivityTopics()
        self.inputs = (t.hits_enriched, t.carts_abandoned, t.deltas)
        self.outputs = (t.deltas, t.web_activity)
        self.tables = (
            TableSpec(CRM, t.crm_profiles, erases=True),
            *((privacy_table(t.privacy_requests),) if t.privacy_requests else ()),
        )
        self.rules = CrmActivity(config)
        self.config = self.rules.config
        self._pending: dict[int, set[str]] = {}  # per partition: customers whose state says pending
        self.deltas = _deltas_counter()
        self.ignored = PromCounter(
            "passerelle_crm_activity_ignored_total",
            "Deltas not counted: duplicate (event already counted), late (older than 30 days), erased (person erased)",
            ["reason"], registry=None,
        )  # fmt: skip
        self.updates = PromCounter(
            "passerelle_crm_activity_updates_total", "WebActivity summaries published", registry=None
        )
        self.erasures = PromCounter(
            "passerelle_crm_activity_erasures_total", "Customers erased: state forgotten, tombstone published",
            registry=None,
        )  # fmt: skip
        self.metrics = (self.deltas, self.ignored, self.updates, self.erasures)

    def process_one(self, record: InRecord, ctx: Context) -> Iterable[OutRecord] | None:
        t = self.topics
        if record.topic == t.deltas:
            if not isinstance(record.key, str):
                raise ValueError(f"a delta without its customer key: {record.key!r}")  # a dead letter
            self._count(record.key, record.value, ctx)
            return None
        if record.topic == t.carts_abandoned:
            cart = record.value
            if is_erased(self, ctx, cart.get("customer_id"), cart.get("visitor_id")):
                return None
            return self._out(self.rules.on_cart(cart))
        return self._hit(record.value, ctx)

    # --- half 1: per visitor (hits.enriched, carts.abandoned) -------------------------------

    def _hit(self, hit: dict[str, Any], ctx: Context) -> list[OutRecord] | None:
        if not hit.get("customer_id"):
            return None  # the common case, first: anonymous hits count for no one
        visitor = str(hit["visitor_id"])
        if is_erased(self, ctx, hit.get("customer_id"), visitor):
            return None  # a hit enriched before the person's erasure: do not bring them back
        visitors, now = ctx.store(VISITORS), ctx.now()
        old = visitors.get(visitor)
        step = self.rules.on_hit(old, hit, now)
        if step.state is not None and step.state is not old:
            visitors.put(visitor, step.state)
            self._arm(ctx, FORGET, now + self.config.forget_interval_ms)
        return self._out(*step.deltas)

    def _out(self, *deltas: Delta | None) -> list[OutRecord] | None:
        out = [OutRecord(self.topics.deltas, d["customer_id"], d) for d in deltas if d is not None]
        for record in out:
            self.deltas.labels(record.value["kind"]).inc()
        return out or None

    # --- half 2: per customer (crm.activity.deltas) --------------------------------------------

    def _count(self, customer: str, delta: dict[str, Any], ctx: Context) -> None:
        if delta["customer_id"] != customer:  # the state must sit under the key the partitioner placed it by
            raise ValueError(f"a delta of {delta['customer_id']!r} keyed {customer!r}")  # a dead letter
        if is_erased(self, ctx, customer):
            self.ignored.labels("erased").inc()
            return
        customers, now = ctx.store(CUSTOMERS), ctx.now()
        step = self.rules.add(customers.get(customer), delta, now)
        if step.state is None:
            self.ignored.labels(step.outcome).inc()
            return
        customers.put(customer, step.state)
        self._pending.setdefault(ctx.partition, set()).add(customer)
        self._arm(ctx, FLUSH, now + self.config.emit_interval_ms)
        self._arm(ctx, SWEEP, next_midnight(now))

    # --- timers ------------------------------------------------------------------------------

    @staticmethod
    def _arm(ctx: Context, key: str, when: int) -> None:
        """Schedule a wall-clock timer unless one is pending for ``key`` (a flush is not pushed back)."""
        if ctx.timers.get(key, kind="wall") is None:
            ctx.timers.schedule(key, when, kind="wall")

    def on_timer(self, timers: Sequence[Timer], ctx: Context) -> Iterable[OutRecord]:
        out: list[OutRecord] = []
        for key in sorted((t.key for t in timers if t.kind == "wall"), key=lambda k: ORDER.get(k, 3)):
            if key == SWEEP:
                self._sweep(ctx)
            elif key == FORGET:
                self._forget(ctx)
            elif key == FLUSH:
                out.extend(self._flush(ctx))
        return out

    def _flush(self, ctx: Context) -> list[OutRecord]:
        """Publish every customer changed since the last flush, once.

        The in-memory set only says where to look; the ``pending`` flag in the
        state is the truth (rolled back with it, restored from the changelog),
        and the set is updated last, after everything that could raise.
        """
        customers, now = ctx.store(CUSTOMERS), ctx.now()
        pending = self._pending.get(ctx.partition, set())
        out = []
        for customer in sorted(pending):
            state = customers.get(customer)
            if state is not None and state["pending"]:
                out.append(OutRecord(self.topics.web_activity, customer, self.rules.summary(state, now), timestamp=now))
                customers.put(customer, self.rules.published(state))
        self.updates.inc(len(out))
        pending.clear()
        return out

    def _sweep(self, ctx: Context) -> None:
        """A UTC day fell out of the window: drop it everywhere, mark the customers whose counts changed."""
        customers, now = ctx.store(CUSTOMERS), ctx.now()
        changed = []
        for customer, state in customers.items():
            new = self.rules.slide(state, now)
            if new is not None:
                customers.put(customer, new)
                if new["pending"]:
                    changed.append(customer)
        if changed:
            self._arm(ctx, FLUSH, now + self.config.emit_interval_ms)
        if len(customers):
            ctx.timers.schedule(SWEEP, next_midnight(now), kind="wall")
        self._pending.setdefault(ctx.partition, set()).update(changed)

    def _forget(self, ctx: Context) -> None:
        """Forget visitors whose visit was counted a TTL ago; come back while some remain."""
        visitors, now = ctx.store(VISITORS), ctx.now()
        for visitor, state in visitors.items():
            if self.rules.expired(state, now):
                visitors.delete(visitor)
        if len(visitors):
            ctx.timers.schedule(FORGET, now + self.config.forget_interval_ms, kind="wall")

    # --- partitions and erasure ----------------------------------------------------------------

    def on_partition_restored(self, ctx: Context) -> Iterable[OutRecord] | None:
        """Rebuild the partition's pending set from the restored flags (erasures were applied just before)."""
        pending = {customer for customer, state in ctx.store(CUSTOMERS).items() if state["pending"]}
        self._pending[ctx.partition] = pending
        if pending:
            self._arm(ctx, FLUSH, ctx.now() + self.config.emit_interval_ms)
        return None

    def on_partition_revoked(self, ctx: Context) -> None:
        self._pending.pop(ctx.partition, None)

    def on_erased(self, store: StoreSpec[Any], key: str, value: Any, ctx: Context) -> Iterable[OutRecord] | None:
        """A customer erased (CRM tombstone or privacy request): their summary is forgotten and a tombstone
        deletes their CRM row; an erased visitor's counted visit is simply gone."""
        if store.name != CUSTOMERS.name:
            return None
        self._pending.get(ctx.partition, set()).discard(key)
        self.erasures.inc()
        return [OutRecord(self.topics.web_activity, key, None, timestamp=ctx.now())]


class CrmMessagesProcessor(Processor):
    """``remarketing.messages`` -> ``crm.activity.deltas``: each message to a customer, re-keyed, stateless.

    Separate from ``CrmActivityProcessor`` because its input has 3 partitions,
    the others 6 (see the module's docstring). Erasure is judged where the
    state is: the deltas of an erased customer are ignored there.
    """

    name = "crm-activity-messages"

    def __init__(self, topics: CrmActivityTopics | None = None) -> None:
        self.topics = t = topics or CrmActivityTopics()
        self.inputs = (t.remarketing_messages,)
        self.outputs = (t.deltas,)
        self.deltas = _deltas_counter()
        self.metrics = (self.deltas,)

    def process_one(self, record: InRecord, ctx: Context) -> Iterable[OutRecord] | None:
        d = CrmActivity.on_message(record.value)
        if d is None:
            return None
        self.deltas.labels(d["kind"]).inc()
        return [OutRecord(self.topics.deltas, d["customer_id"], d)]
