"""Conversion paths: ``hits.enriched`` + ``ads.postview`` -> ``conversions.paths`` (+ CRM rows) on the runtime.

Wiring only; the rules are in ``rules.py``, the attribution models in
``models.py``.

A path spans a person's devices and the anonymous visits before login, but
the runtime keeps state per input partition, and the inputs are keyed by
visitor: two devices of one customer usually sit on different partitions, and
a stage keyed by visitor could not read the other device's touchpoints. So
the processor re-keys by person through an internal topic, as Kafka Streams
repartitions (and as ``crm_activity`` does), in two halves:

- half 1, per visitor (``hits.enriched`` and ``ads.postview``, co-partitioned,
  6 partitions, keyed by visitor id; store ``visitors``): decides what a hit
  is (a visit start gives a touchpoint, a new order or a goal a conversion)
  and who the person is. Identified visitors (the hit's ``customer_id``, set
  by the enrichment from the hit or from the visitor's identity link, or the
  post-view's) send their touchpoints and conversions to
  ``conversions.paths.events`` keyed by customer id. An anonymous visitor's
  path is kept here, in the visitor's record (the person is the visitor id),
  and converts here (a path without customer, no CRM row). The hit that
  identifies the visitor hands the anonymous touchpoints not yet consumed by a
  conversion over to the customer (a ``merge`` event), in the same
  transaction and before that hit's own events: the same producer writes them
  to the customer's partition in that order, so a login followed by an order
  finds the anonymous visits already on the customer's path.
- half 2, per customer (``conversions.paths.events``, the third input, 6
  partitions, keyed by customer id; store ``persons``): the customer's path
  state, whatever device each event came from. Conversions publish a
  ``ConversionPath`` on ``conversions.paths`` (keyed by the converting
  visitor), a ``CrmConversionPath`` on ``crm.conversion_paths`` (keyed by
  conversion id) and the customer's ``CustomerChannels`` on
  ``crm.customer_channels`` (also updated by each new touchpoint).

``identity.links`` is not read: the enrichment writes the link in the same
transaction as the identifying hit on ``hits.enriched`` and puts the
customer id on every later hit of the visitor, so the hits carry what the
links say, in order with the rest of the visitor's hits (a lookup table would
be read apart from the hits, with no ordering between them). A device that
logs in after the other device's conversion brings its earlier touchpoints
late: they are handled as any late touchpoint.

Late and out-of-order (``rules.py``): a touchpoint that arrives after a
conversion it precedes (event time) is attached while the conversion is
within its grace period (``grace_ms`` on the wall clock): the path is
re-emitted whole with ``revision`` + 1, and the CRM row, keyed by conversion
id, is overwritten. Later ones are counted ``late`` and never attached.

Timers: one wall-clock ``sweep`` per partition drops touchpoints older than
the lookback, conversions past their grace, idle visitors, and persons with
nothing left (a customer with CRM rows keeps their conversion ids).

Erasure: both stores declare ``person="customer_id"``; a ``crm.profiles``
tombstone or a privacy request deletes the customer's keys (the runtime),
and ``on_erased`` publishes tombstones for their ``crm.conversion_paths``
rows (the conversion ids kept in state) and their ``crm.customer_channels``
row, so the JDBC sink deletes them. A request naming a visitor deletes that
visitor's record (and its anonymous path) and drops their touchpoints from
the customers' states (``on_table_change``, again at each restore), without
re-publishing paths already written. Records of an erased person that
arrive later are ignored (``is_erased``), at both halves. Paths already on
``conversions.paths`` stay until its retention deletes them (a stream).

Exactly-once, as the other runtime processors: an event is written in the
transaction that commits its input's offset and the visitor's state, a path
in the one that commits the event's offset and the person's state.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter as PromCounter

from passerelle.streams.conversion_paths.rules import (
    ConversionRecord,
    Emission,
    Paths,
    PathsConfig,
    PersonState,
    PersonStep,
    TouchRecord,
    VisitorState,
)
from passerelle.streams.privacy import PRIVACY, privacy_erasure, privacy_table
from passerelle.streams.runtime import Context, InRecord, OutRecord, Processor, StoreSpec, TableSpec, Timer
from passerelle.streams.runtime.processor import is_erased

VISITORS: StoreSpec[VisitorState] = StoreSpec("visitors", person="customer_id", ttl_ms=None)  # own sweep
"""Per visitor (partitions of hits.enriched): visit, goals and orders seen, customer id, the anonymous path."""
PERSONS: StoreSpec[PersonState] = StoreSpec("persons", person="customer_id", ttl_ms=None)
"""Per customer (partitions of conversions.paths.events): the path state.

No runtime ``ttl_ms`` on either store: the processor's sweep expires paths past the lookback."""
CRM = "crm"
SWEEP = "sweep"
TOUCH, CONVERSION, MERGE = "touch", "conversion", "merge"
TOUCH_OUTCOMES = ("kept", "attached", "late", "duplicate", "expired", "erased")


@dataclass(frozen=True)
class ConversionPathsTopics:
    """Topic names, overridable so tests and several deployments can share a cluster."""

    hits_enriched: str = "hits.enriched"
    postview: str = "ads.postview"
    events: str = "conversions.paths.events"
    paths: str = "conversions.paths"
    crm_paths: str = "crm.conversion_paths"
    customer_channels: str = "crm.customer_channels"
    crm_profiles: str = "crm.profiles"
    privacy_requests: str | None = "privacy.requests"
    """None: privacy requests are not read (tests of other behaviour on topics of their own)."""


class ConversionPathsProcessor(Processor):
    """Builds each person's multichannel path and publishes it, with its attribution, at each conversion."""

    name = "conversion-paths"
    stores = (VISITORS, PERSONS)

    def __init__(self, topics: ConversionPathsTopics | None = None, config: PathsConfig | None = None) -> None:
        self.topics = t = topics or ConversionPathsTopics()
        self.inputs = (t.hits_enriched, t.postview, t.events)
        self.outputs = (t.events, t.paths, t.crm_paths, t.customer_channels)
        self.tables = (
            TableSpec(CRM, t.crm_profiles, erases=True),
            *((privacy_table(t.privacy_requests),) if t.privacy_requests else ()),
        )
        self.rules = Paths(config)
        self.config = self.rules.config
        self.touches = PromCounter(
            "passerelle_conversion_paths_touchpoints_total",
            "Touchpoints read, by outcome: kept, attached (late, attached to a conversion in its grace period, "
            "re-emitted), late (after the grace period: on no path), duplicate, expired (older than the lookback), "
            "erased",
            ["outcome"], registry=None,
        )  # fmt: skip
        self._touch = {o: self.touches.labels(o) for o in TOUCH_OUTCOMES}
        self.conversions = PromCounter(
            "passerelle_conversion_paths_conversions_total", "Conversions by kind (order, goal) and outcome "
            "(converted, duplicate)", ["kind", "outcome"], registry=None,
        )  # fmt: skip
        self.paths = PromCounter(
            "passerelle_conversion_paths_published_total",
            "ConversionPath records published: first (revision 0) or revised (a late touchpoint attached)",
            ["revision"], registry=None,
        )  # fmt: skip
        self.events = PromCounter(
            "passerelle_conversion_paths_events_total",
            "Events re-keyed by customer to the internal topic, by kind (touch, conversion, merge)",
            ["kind"], registry=None,
        )  # fmt: skip
        self.expired = PromCounter(
            "passerelle_conversion_paths_expired_total", "Visitors and persons forgotten by the sweep", registry=None
        )
        self.erasures = PromCounter(
            "passerelle_conversion_paths_erasures_total",
            "Customers erased: state forgotten, tombstones published for their CRM rows", registry=None,
        )  # fmt: skip
        self.metrics = (self.touches, self.conversions, self.paths, self.events, self.expired, self.erasures)

    def process_one(self, record: InRecord, ctx: Context) -> Iterable[OutRecord] | None:
        t = self.topics
        if record.topic == t.events:
            if not isinstance(record.key, str):
                raise ValueError(f"a path event without its customer key: {record.key!r}")  # a dead letter
            return self._event(record.key, record.value, ctx)
        if record.topic == t.postview:
            return self._postview(record.value, ctx)
        return self._hit(record.value, ctx)

    # --- half 1: per visitor ----------------------------------------------------------------------

    def _hit(self, hit: dict[str, Any], ctx: Context) -> list[OutRecord] | None:
        visitor = str(hit["visitor_id"])
        visitors, now = ctx.store(VISITORS), ctx.now()
        old = visitors.get(visitor)
        step = self.rules.on_hit(old, hit, now)
        if step.state is old or step.state is None:
            return None  # the common case, first: a page of a visit already seen
        if is_erased(self, ctx, hit.get("customer_id"), visitor):
            return None  # a hit enriched before the person's erasure: do not bring them back
        state, out = self._route(step.state, visitor, step.touches, step.conversions, now)
        visitors.put(visitor, state)
        self._arm(ctx, now)
        return out

    def _postview(self, pv: dict[str, Any], ctx: Context) -> list[OutRecord] | None:
        visitor = str(pv["visitor_id"])
        if is_erased(self, ctx, pv.get("customer_id"), visitor):
            self._touch["erased"].inc()
            return None
        visitors, now = ctx.store(VISITORS), ctx.now()
        old = visitors.get(visitor)
        base: VisitorState = old if old is not None else {
            "customer_id": None, "visit": 0, "goals": [], "orders": [], "person": None, "seen": now}  # fmt: skip
        customer = base["customer_id"] or pv.get("customer_id")
        state: VisitorState = {**base, "customer_id": str(customer) if customer else None, "seen": now}
        state, out = self._route(state, visitor, (self.rules.touch_of_postview(pv),), (), now)
        visitors.put(visitor, state)
        self._arm(ctx, now)
        return out

    def _route(self, state: VisitorState, visitor: str, touches: Sequence[TouchRecord],
               conversions: Sequence[ConversionRecord], now: int) -> tuple[VisitorState, list[OutRecord]]:  # fmt: skip
        """Identified: events keyed by customer (the anonymous path handed over first). Anonymous: the path
        kept and converted here."""
        customer = state["customer_id"]
        out: list[OutRecord] = []
        if customer is None:
            person = state["person"]
            for touch in touches:
                ps = self.rules.add_touch(person, touch, None, now)
                person = ps.state
                self._touch[ps.outcome].inc()
                out += self._publish(ps, None, now)
            for conv in conversions:
                ps = self.rules.convert(person, conv, None, now)
                person = ps.state
                self._converted(conv, ps)
                out += self._publish(ps, None, now)
            return {**state, "person": person}, out
        if state["person"] is not None:
            pending = self.rules.pending(state["person"])
            if pending:
                out.append(self._event_record(MERGE, customer, visitor, pending))
            state = {**state, "person": None}
        out += [self._event_record(TOUCH, customer, visitor, [t]) for t in touches]
        out += [self._event_record(CONVERSION, customer, visitor, [], conv) for conv in conversions]
        return state, out

    def _event_record(self, kind: str, customer: str, visitor: str, touches: Sequence[TouchRecord],
                      conv: ConversionRecord | None = None) -> OutRecord:  # fmt: skip
        self.events.labels(kind).inc()
        value = {"kind": kind, "customer_id": customer, "visitor_id": visitor, "touchpoints": list(touches),
                 "conversion": conv}  # fmt: skip
        return OutRecord(self.topics.events, customer, value)

    # --- half 2: per customer ---------------------------------------------------------------------

    def _event(self, customer: str, event: dict[str, Any], ctx: Context) -> list[OutRecord] | None:
        if event["customer_id"] != customer:  # the state must sit under the key the partitioner placed it by
            raise ValueError(f"a path event of {event['customer_id']!r} keyed {customer!r}")  # a dead letter
        kind = event["kind"]
        if is_erased(self, ctx, customer, event["visitor_id"]):
            if kind != CONVERSION:
                self._touch["erased"].inc(len(event["touchpoints"]))
            return None
        persons, now = ctx.store(PERSONS), ctx.now()
        old = persons.get(customer)
        if kind == CONVERSION:
            conv = _plain_conversion(event["conversion"])
            step = self.rules.convert(old, conv, customer, now)
            self._converted(conv, step)
        elif kind in (TOUCH, MERGE):
            touches = [_plain_touch(t) for t in event["touchpoints"]]
            if len(touches) == 1:
                step = self.rules.add_touch(old, touches[0], customer, now)
                self._touch[step.outcome].inc()
            else:
                step = self.rules.merge(old, touches, customer, now)
                for outcome in step.outcomes:
                    self._touch[outcome].inc()
        else:
            raise ValueError(f"unknown path event kind {kind!r}")  # a dead letter
        if step.state is old:
            return None
        persons.put(customer, step.state)
        self._arm(ctx, now)
        out = self._publish(step, customer, now)
        out.append(OutRecord(self.topics.customer_channels, customer,
                             self.rules.channels_record(customer, step.state, now)))  # fmt: skip
        return out

    # --- outputs ----------------------------------------------------------------------------------

    def _converted(self, conv: ConversionRecord, step: PersonStep) -> None:
        self.conversions.labels("goal" if conv["goal"] else "order", step.outcome).inc()

    def _publish(self, step: PersonStep, customer: str | None, now: int) -> list[OutRecord]:
        out = []
        for e in step.emissions:
            out += self._path_records(e, customer, now)
        return out

    def _path_records(self, e: Emission, customer: str | None, now: int) -> list[OutRecord]:
        models = self.rules.attribution(e)
        self.paths.labels("first" if e.revision == 0 else "revised").inc()
        out = [OutRecord(self.topics.paths, e.conv["visitor_id"], self.rules.path_record(e, models))]
        if customer is not None:
            out.append(OutRecord(self.topics.crm_paths, e.conv["conversion_id"],
                                 self.rules.crm_path_record(e, models, now)))  # fmt: skip
        return out

    # --- timers -----------------------------------------------------------------------------------

    def _arm(self, ctx: Context, now: int) -> None:
        """A sweep unless one is pending (a steady stream must not push it back)."""
        if ctx.timers.get(SWEEP, kind="wall") is None:
            ctx.timers.schedule(SWEEP, now + self.config.sweep_interval_ms, kind="wall")

    def on_timer(self, timers: Sequence[Timer], ctx: Context) -> Iterable[OutRecord]:
        if any(t.key == SWEEP for t in timers):
            self._sweep(ctx)
        return ()

    def _sweep(self, ctx: Context) -> None:
        """Forget old touchpoints, conversions past their grace, idle visitors and empty persons."""
        visitors, persons, now = ctx.store(VISITORS), ctx.store(PERSONS), ctx.now()
        forgotten = 0
        for visitor, vstate in visitors.items():
            if self.rules.visitor_expired(vstate, now):
                visitors.delete(visitor)
                forgotten += 1
            elif vstate["person"] is not None:
                person = self.rules.expire(vstate["person"], now)
                if person is not vstate["person"]:
                    visitors.put(visitor, {**vstate, "person": person})
        for customer, pstate in persons.items():
            new = self.rules.expire(pstate, now)
            if new is None:
                persons.delete(customer)
                forgotten += 1
            elif new is not pstate:
                persons.put(customer, new)
        self.expired.inc(forgotten)
        if len(visitors) or len(persons):
            ctx.timers.schedule(SWEEP, now + self.config.sweep_interval_ms, kind="wall")

    # --- erasure ----------------------------------------------------------------------------------

    def on_table_change(self, table: str, key: Any, old: Any, new: Any, ctx: Context) -> Iterable[OutRecord]:
        """A request erasing a visitor: their touchpoints leave the customers' paths kept here (the runtime
        deleted the visitor's own record; a customer named by the request was erased whole)."""
        if table == PRIVACY and new is not None:
            erasure = privacy_erasure(key, new)
            if erasure is not None and erasure.keys:
                self._forget_visitors(ctx, set(erasure.keys))
        return ()

    def on_partition_restored(self, ctx: Context) -> Iterable[OutRecord] | None:
        """Visitor erasures requested while the partition was elsewhere (the runtime did the rest)."""
        visitors: set[str] = set()
        for key, request in ctx.tables.get(PRIVACY, {}).items():
            erasure = privacy_erasure(key, request)
            if erasure is not None:
                visitors.update(erasure.keys)
        if visitors:
            self._forget_visitors(ctx, visitors)
        return None

    def _forget_visitors(self, ctx: Context, erased: set[str]) -> None:
        """Drop these visitors' touchpoints from every person of the partition (nothing re-published: a path
        already on conversions.paths or in the CRM stays as it was until the person's own erasure)."""
        persons = ctx.store(PERSONS)
        for customer, state in persons.items():
            touches = [t for t in state["touches"] if t["visitor_id"] not in erased]
            if len(touches) != len(state["touches"]):
                persons.put(customer, {**state, "touches": touches})

    def on_erased(self, store: StoreSpec[Any], key: str, value: Any, ctx: Context) -> Iterable[OutRecord] | None:
        """A customer erased: tombstones for their CRM rows (conversion paths and channels); a visitor's
        record (and anonymous path) is simply gone."""
        if store.name != PERSONS.name:
            return None
        self.erasures.inc()
        now = ctx.now()
        out = [OutRecord(self.topics.crm_paths, cid, None, timestamp=now) for cid in value["crm"]]
        out.append(OutRecord(self.topics.customer_channels, key, None, timestamp=now))
        return out


def _plain_touch(t: dict[str, Any]) -> TouchRecord:
    return {"id": t["id"], "kind": t["kind"], "channel": t["channel"], "medium": t["medium"], "source": t["source"],
            "campaign": t["campaign"], "campaign_key": t["campaign_key"], "at": int(t["at"]),
            "visitor_id": t["visitor_id"], "direct": bool(t["direct"])}  # fmt: skip


def _plain_conversion(c: dict[str, Any]) -> ConversionRecord:
    return {"conversion_id": c["conversion_id"], "order_id": c["order_id"], "goal": c["goal"],
            "revenue": float(c["revenue"]), "currency": c["currency"], "at": int(c["at"]),
            "event_id": c["event_id"], "visitor_id": c["visitor_id"]}  # fmt: skip
