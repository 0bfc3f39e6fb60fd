"""The CRM web activity summary: its rules alone, then both processors through the runtime's test driver.

The driver runs the summary processor's halves as the runner would: hits and
carts on the partition of their visitor, deltas fed back on the partition of
their customer (the runner reads them back from crm.activity.deltas), the
messages processor's deltas likewise, wall-clock timers fired as the clock
moves, state rebuilt from the changelogs on restore.
"""

from __future__ import annotations

import io
import json
import math
import zlib
from collections.abc import Iterable, Mapping
from typing import Any

import fastavro
import pytest

from passerelle.commands import processor as command
from passerelle.schemas.catalog import load_catalog
from passerelle.settings import CrmActivitySettings, ProcessorSettings
from passerelle.streams.crm_activity.processor import (
    CUSTOMERS,
    VISITORS,
    CrmActivityProcessor,
    CrmActivityTopics,
    CrmMessagesProcessor,
)
from passerelle.streams.crm_activity.rules import (
    DAY_MS,
    HOUR_MS,
    MINUTE_MS,
    CrmActivity,
    CrmActivityConfig,
    CustomerState,
    delta,
)
from passerelle.streams.runtime import OutRecord
from passerelle.streams.runtime.testing import ProcessorDriver, Step
from tests.records import enriched_hit

pytestmark = pytest.mark.unit

DAY0 = 1_795_046_400_000  # 2026-11-19T00:00:00Z, a UTC midnight
T0 = DAY0 + 10 * HOUR_MS
PARTITIONS = 3
CATALOG = load_catalog()
DELTA_SCHEMA = fastavro.parse_schema(json.loads(CATALOG.schema_text("WebActivityDelta")))
HITS, CARTS, MESSAGES = "hits.enriched", "carts.abandoned", "remarketing.messages"
DELTAS, WEB = "crm.activity.deltas", "crm.web_activity"
CONFIG = CrmActivityConfig(emit_interval_ms=1_000)


# --- records as the inputs carry them ----------------------------------------------------------------------


def hit(visitor: str, at: int, visit: int = 1, customer: str | None = "c1", campaign: str | None = None,
        order: tuple[str, float] | None = None, n: int = 0) -> dict[str, Any]:  # fmt: skip
    """An ``EnrichedHit`` as fastavro decodes it; ``order`` = (order id, revenue)."""
    return enriched_hit(visitor, at, event_id=f"e-{visitor}-{at}-{n}", visit=visit, customer=customer,
                        campaign=campaign, order=order)  # fmt: skip


def cart(visitor: str, at: int, customer: str | None = "c1", episode: str = "1") -> dict[str, Any]:
    """A ``CartAbandoned`` (the fields the summary reads, and a few more)."""
    return {"event_id": f"cart-{visitor}-{episode}", "visitor_id": visitor, "site": "shop.example",
            "customer_id": customer, "email": None, "episode_id": episode, "lines": [], "value": 20.0,
            "currency": "EUR", "viewed_products": [], "crm": None, "marketing_consent": True,
            "site_marketing_consent": True, "last_activity_at": at - 30 * MINUTE_MS, "detected_at": at}  # fmt: skip


def message(customer: str, at: int, sequence: str = "s1", step: int = 1) -> dict[str, Any]:
    """A ``RemarketingMessage`` (the fields the summary reads, and a few more)."""
    return {"message_id": f"{sequence}-{step}", "sequence_id": sequence, "step": step, "customer_id": customer,
            "email": f"{customer}@example.org", "site": "shop.example", "products": [], "lines": [],
            "promotion": None, "created_at": at}  # fmt: skip


def wire(value: Mapping[str, Any]) -> dict[str, Any]:
    """A delta written and read back as the runner would (timestamps come back as datetimes)."""
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, DELTA_SCHEMA, value)
    buf.seek(0)
    decoded: Any = fastavro.schemaless_reader(buf, DELTA_SCHEMA, None)
    return decoded


def partition(key: str) -> int:
    """A stand-in for the producer's partitioner: stable per key."""
    return zlib.crc32(key.encode()) % PARTITIONS


class Pipeline:
    """Both processors on drivers, the deltas they write fed back to the summary as the runner reads them."""

    def __init__(self, config: CrmActivityConfig = CONFIG, now: int = T0, privacy: bool = True) -> None:
        topics = CrmActivityTopics(privacy_requests="privacy.requests" if privacy else None)
        self.proc = CrmActivityProcessor(topics, config)
        self.driver = ProcessorDriver(self.proc, partitions=range(PARTITIONS), now=now)
        self.feeder = ProcessorDriver(CrmMessagesProcessor(topics), now=now)
        self.deltas: list[OutRecord] = []  # produced, not read back yet
        self.web: list[OutRecord] = []  # everything published to crm.web_activity

    def _take(self, step: Step) -> list[OutRecord]:
        assert not step.dead_letters, step.dead_letters
        assert not step.given_up and not step.retried
        self.deltas += [o for o in step.outputs if o.topic == DELTAS]
        web = [o for o in step.outputs if o.topic == WEB]
        self.web += web
        return web

    def send(self, *records: tuple[str, dict[str, Any]], now: int | None = None) -> list[OutRecord]:
        """One step with these (topic, value) records, each on its partition, then one reading the deltas back."""
        out: list[OutRecord] = []
        messages = [v for t, v in records if t == MESSAGES]
        if messages:
            feed = [self.feeder.record(MESSAGES, m["customer_id"], m, m["created_at"]) for m in messages]
            self.deltas += self.feeder.feed(*feed, now=now).outputs
        others = [(t, v) for t, v in records if t != MESSAGES]
        if others:
            batch = [self.driver.record(t, v["visitor_id"], v, self.driver.now, partition(v["visitor_id"]))
                     for t, v in others]  # fmt: skip
            out += self._take(self.driver.feed(*batch, now=now))
        return out + self.read_deltas(now)

    def read_deltas(self, now: int | None = None) -> list[OutRecord]:
        """The step in which the runner reads back what was produced to crm.activity.deltas."""
        pending, self.deltas = self.deltas, []
        if not pending:
            return []
        records = [self.driver.record(DELTAS, d.key, wire(d.value), self.driver.now, partition(d.key))
                   for d in pending]  # fmt: skip
        return self._take(self.driver.feed(*records, now=now))

    def advance(self, now: int) -> list[OutRecord]:
        return self._take(self.driver.advance(now))

    def table(self, table: str, key: str, value: dict[str, Any] | None, now: int | None = None) -> list[OutRecord]:
        """A lookup-table record arrives (``None``: a tombstone)."""
        return self._take(self.driver.table_update(table, key, value, now))

    def latest(self) -> dict[str, dict[str, Any] | None]:
        """The compacted view: the latest record per customer (None: a tombstone, the row deleted)."""
        return {o.key: o.value for o in self.web}

    def customers(self) -> dict[str, CustomerState]:
        return {k: v for p in range(PARTITIONS) for k, v in self.driver.store(CUSTOMERS, p).items()}

    def visitors(self) -> dict[str, Any]:
        return {k: v for p in range(PARTITIONS) for k, v in self.driver.store(VISITORS, p).items()}

    def metric(self, name: str, **labels: str) -> float | None:
        return self.driver.metric(name, **labels)


def counts(record: dict[str, Any] | None) -> tuple[int, int, float, int, int, int] | None:
    """(visits, orders, revenue, carts, messages, recovered) of a summary."""
    if record is None:
        return None
    return (record["visits_30d"], record["orders_30d"], record["revenue_30d"], record["abandoned_carts_30d"],
            record["remarketing_messages"], record["recovered_orders"])  # fmt: skip


def keys(outputs: Iterable[OutRecord]) -> list[str]:
    return [o.key for o in outputs]


# --- the rules alone -------------------------------------------------------------------------------------


def test_a_visit_counts_on_the_first_identified_hit_of_each_visit_number_and_an_order_on_every_order_hit() -> None:
    rules = CrmActivity()
    assert rules.on_hit(None, hit("v1", T0, customer=None), T0).deltas == ()  # anonymous: nothing at all
    assert rules.on_hit(None, hit("v1", T0, customer=None), T0).state is None
    first = rules.on_hit(None, hit("v1", T0, campaign="EREC-1"), T0)
    assert first.deltas == (delta("visit:v1:1", "c1", "visit", T0, campaign="EREC-1"),)
    assert first.state == {"customer_id": "c1", "visit": 1, "seen": T0}
    same = rules.on_hit(first.state, hit("v1", T0 + 1), T0 + 1)
    assert same.deltas == () and same.state is first.state  # unchanged: nothing to write
    order = rules.on_hit(first.state, hit("v1", T0 + 2, order=("O-1", 99.905)), T0 + 2)
    assert order.deltas == (delta("order:shop.example:O-1", "c1", "order", T0 + 2, revenue=99.905),)
    both = rules.on_hit(first.state, hit("v1", T0 + 3, visit=2, order=("O-2", 5.0)), T0 + 3)
    assert [d["event_id"] for d in both.deltas] == ["visit:v1:2", "order:shop.example:O-2"]
    other = rules.on_hit(first.state, hit("v1", T0 + 4, customer="c2"), T0 + 4)  # a shared computer
    assert [(d["customer_id"], d["kind"]) for d in other.deltas] == [("c2", "visit")]
    nan = rules.on_hit(first.state, hit("v1", T0 + 5, order=("O-3", math.nan)), T0 + 5)
    assert nan.deltas[0]["revenue"] == 0.0


def test_carts_and_messages_count_for_identified_customers_with_deterministic_ids() -> None:
    assert CrmActivity.on_cart(cart("v1", T0, customer=None)) is None
    assert CrmActivity.on_cart(cart("v1", T0)) == delta("cart:cart-v1-1", "c1", "abandoned_cart", T0)
    assert CrmActivity.on_message(message("c1", T0)) == delta("message:s1-1", "c1", "message", T0)


def test_deltas_add_up_per_utc_day_once_per_event_id_and_late_ones_are_dropped() -> None:
    rules = CrmActivity()
    state = None
    for d in (delta("visit:v1:1", "c1", "visit", T0), delta("order:s:O-1", "c1", "order", T0, revenue=10.1),
              delta("order:s:O-2", "c1", "order", T0 - DAY_MS, revenue=0.2),
              delta("cart:x", "c1", "abandoned_cart", T0), delta("message:m", "c1", "message", T0 + 1)):  # fmt: skip
        step = rules.add(state, d, T0)
        assert step.outcome == "counted" and step.state is not None and step.state["pending"]
        state = step.state
    assert state is not None
    assert rules.add(state, delta("order:s:O-1", "c1", "order", T0, revenue=10.1), T0).outcome == "duplicate"
    assert rules.add(state, delta("visit:v1:0", "c1", "visit", T0 - 30 * DAY_MS), T0).outcome == "late"
    assert rules.add(state, delta("visit:v1:0", "c1", "visit", DAY0 - 29 * DAY_MS), T0).outcome == "counted"
    assert rules.summary(state, T0) == {
        "customer_id": "c1", "last_visit_at": T0, "last_campaign": None, "visits_30d": 1, "orders_30d": 2,
        "revenue_30d": 10.3, "abandoned_carts_30d": 1, "remarketing_messages": 1, "recovered_orders": 0,
        "updated_at": T0,
    }  # fmt: skip
    with pytest.raises(ValueError, match="unknown activity kind"):
        rules.add(state, delta("x", "c1", "refund", T0), T0)


def test_the_last_visit_and_the_last_declared_campaign_are_the_latest_whatever_the_arrival_order() -> None:
    rules = CrmActivity()
    state = None
    for d in (delta("visit:a", "c1", "visit", T0, campaign="EREC-1"), delta("visit:b", "c1", "visit", T0 + 5),
              delta("visit:c", "c1", "visit", T0 - HOUR_MS, campaign="OLD-1")):  # fmt: skip
        state = rules.add(state, d, T0 + 10).state
    assert state is not None
    assert (state["last_visit_at"], state["last_campaign"]) == (T0 + 5, "EREC-1")  # a visit without one keeps it


@pytest.mark.parametrize("message_first", [True, False])
def test_an_order_within_the_recovery_window_after_a_message_is_recovered_whichever_arrives_first(
    message_first: bool,
) -> None:
    rules = CrmActivity(CrmActivityConfig(recovery_window_ms=2 * DAY_MS))
    m = delta("message:m1", "c1", "message", T0 - 3 * DAY_MS)
    orders = [
        delta("order:s:before", "c1", "order", T0 - 4 * DAY_MS, revenue=1.0),  # before the message: not recovered
        delta("order:s:in", "c1", "order", T0 - 2 * DAY_MS, revenue=1.0),
        delta("order:s:edge", "c1", "order", T0 - DAY_MS, revenue=1.0),  # exactly the window after
        delta("order:s:after", "c1", "order", T0 - DAY_MS + 1, revenue=1.0),  # too late
    ]
    state = None
    for d in [m, *orders] if message_first else [*orders, m]:
        state = rules.add(state, d, T0).state
    assert state is not None
    assert (state["messages"], state["recovered"]) == (1, 2)
    again = rules.add(state, delta("message:m2", "c1", "message", T0 - 3 * DAY_MS - 1), T0).state
    assert again is not None and again["recovered"] == 2  # an order is recovered once, however many messages


def test_the_window_slides_with_the_wall_clock_and_the_sweep_marks_who_changed() -> None:
    rules = CrmActivity()
    state = rules.add(None, delta("visit:a", "c1", "visit", T0), T0).state
    assert state is not None
    state = rules.published(state)
    later = T0 + 29 * DAY_MS
    assert rules.slide(state, later) is None  # still in the window: nothing to write, nothing to publish
    assert rules.summary(state, later)["visits_30d"] == 1
    gone = DAY0 + 30 * DAY_MS
    assert rules.summary(state, gone)["visits_30d"] == 0
    slid = rules.slide(state, gone)
    assert slid is not None and slid["pending"] and slid["days"] == {} and slid["seen"] == {}
    assert slid["last_visit_at"] == T0  # the last visit is not a 30-day count


def test_the_dedup_memory_is_bounded_newest_first() -> None:
    rules = CrmActivity(CrmActivityConfig(max_event_ids=3))
    state = None
    for i in range(5):
        state = rules.add(state, delta(f"visit:{i}", "c1", "visit", T0 + i), T0 + 10).state
    assert state is not None and sorted(state["seen"]) == ["visit:2", "visit:3", "visit:4"]


def test_config_refuses_non_positive_values() -> None:
    with pytest.raises(ValueError, match="positive"):
        CrmActivityConfig(emit_interval_ms=0)


# --- the processors on the driver ------------------------------------------------------------------------


def test_events_of_every_partition_make_one_summary_per_customer_published_once_per_interval() -> None:
    p = Pipeline()
    assert p.send(
        (HITS, hit("v1", T0, campaign="EREC-1")), (HITS, hit("v1", T0 + 1, n=1)),  # one visit, two hits
        (HITS, hit("v2", T0 + 2, visit=3)),  # the same customer on another device
        (HITS, hit("v3", T0 + 3, customer=None)),  # anonymous
        (HITS, hit("v2", T0 + 4, visit=3, order=("O-1", 40.5))),
        (HITS, hit("v2", T0 + 5, visit=3, order=("O-1", 40.5))),  # the confirmation page reloaded
        (CARTS, cart("v4", T0 + 6, customer="c2")), (CARTS, cart("v5", T0 + 7, customer=None)),
        (MESSAGES, message("c2", T0 - HOUR_MS)),
    ) == []  # fmt: skip
    published = p.advance(T0 + 1_000)
    assert sorted(keys(published)) == ["c1", "c2"]
    assert all(o.timestamp == T0 + 1_000 for o in published)
    assert p.latest()["c1"] == {
        "customer_id": "c1", "last_visit_at": T0 + 2, "last_campaign": "EREC-1", "visits_30d": 2, "orders_30d": 1,
        "revenue_30d": 40.5, "abandoned_carts_30d": 0, "remarketing_messages": 0, "recovered_orders": 0,
        "updated_at": T0 + 1_000,
    }  # fmt: skip
    assert counts(p.latest()["c2"]) == (0, 0, 0.0, 1, 1, 0)
    assert p.metric("passerelle_crm_activity_deltas_total", kind="visit") == 2
    assert p.metric("passerelle_crm_activity_deltas_total", kind="order") == 2  # the reload: deduplicated later
    assert p.metric("passerelle_crm_activity_ignored_total", reason="duplicate") == 1
    assert p.feeder.metric("passerelle_crm_activity_deltas_total", kind="message") == 1
    assert p.metric("passerelle_crm_activity_updates_total") == 2
    assert set(p.visitors()) == {"v1", "v2"}  # identified visitors only
    assert p.advance(T0 + 60_000) == []  # nothing changed: nothing published


def test_a_busy_customer_is_published_at_most_once_per_emit_interval() -> None:
    p = Pipeline()
    for i in range(10):
        assert p.send((HITS, hit("v1", T0 + i * 100, visit=i + 1)), now=T0 + i * 100) == []  # 0 .. 900 ms
    assert [counts(o.value) for o in p.advance(T0 + 1_000)] == [(10, 0, 0.0, 0, 0, 0)]
    p.send((HITS, hit("v1", T0 + 1_100, visit=11)), now=T0 + 1_100)
    assert p.advance(T0 + 2_000) == []  # the next flush is an interval after the change that armed it
    assert [counts(o.value) for o in p.advance(T0 + 2_100)] == [(11, 0, 0.0, 0, 0, 0)]


def test_recovered_orders_through_both_processors() -> None:
    p = Pipeline()
    p.send((MESSAGES, message("c1", T0 - 2 * DAY_MS)))
    p.send((HITS, hit("v1", T0, order=("O-1", 10.0))), (HITS, hit("v1", T0 + 1, visit=2, order=("O-2", 5.0))))
    p.advance(T0 + 1_000)
    assert counts(p.latest()["c1"]) == (2, 2, 15.0, 0, 1, 2)


def test_the_daily_sweep_republishes_customers_whose_days_fell_out_and_drops_their_buckets() -> None:
    p = Pipeline()
    p.send((HITS, hit("v1", T0)), (CARTS, cart("v2", T0, customer="c2")))
    p.send((HITS, hit("v3", T0 + 5 * DAY_MS, customer="c3")), now=T0 + 5 * DAY_MS)
    p.advance(T0 + 5 * DAY_MS + 1_000)
    assert {k: counts(v) for k, v in p.latest().items()} == {
        "c1": (1, 0, 0.0, 0, 0, 0), "c2": (0, 0, 0.0, 1, 0, 0), "c3": (1, 0, 0.0, 0, 0, 0)}  # fmt: skip
    assert p.advance(DAY0 + 29 * DAY_MS) == []  # midnights pass, nothing falls out yet
    p.web.clear()
    p.advance(DAY0 + 30 * DAY_MS)  # day 0 falls out: c1 and c2 change, c3 does not
    published = p.advance(DAY0 + 30 * DAY_MS + 1_000)
    assert sorted(keys(published)) == ["c1", "c2"]
    assert all(counts(o.value) == (0, 0, 0.0, 0, 0, 0) for o in published)
    assert all(o.value["updated_at"] == DAY0 + 30 * DAY_MS + 1_000 for o in published)
    assert p.customers()["c1"]["days"] == {} and p.customers()["c1"]["last_visit_at"] == T0
    assert p.customers()["c3"]["days"] != {}
    sweeps = [p.driver.context(i).timers.get("sweep", kind="wall") for i in range(PARTITIONS)]
    assert set(sweeps) - {None} == {DAY0 + 31 * DAY_MS}  # re-armed for the next midnight


def test_idle_visitors_are_forgotten_and_a_visit_counted_again_is_deduplicated_per_customer() -> None:
    p = Pipeline(CrmActivityConfig(emit_interval_ms=1_000, visitor_ttl_ms=HOUR_MS))
    p.send((HITS, hit("v1", T0)))
    p.advance(T0 + HOUR_MS + HOUR_MS // 4)
    assert p.visitors() == {}
    p.send((HITS, hit("v1", T0 + 2 * HOUR_MS)))  # the same visit, still going: its delta comes again
    assert p.metric("passerelle_crm_activity_ignored_total", reason="duplicate") == 1
    p.advance(T0 + 3 * HOUR_MS)
    assert counts(p.latest()["c1"]) == (1, 0, 0.0, 0, 0, 0)


def test_a_crm_tombstone_forgets_the_customer_publishes_a_tombstone_and_later_records_are_ignored() -> None:
    p = Pipeline()
    p.send((HITS, hit("v1", T0)), (HITS, hit("v2", T0, customer="c2")))
    p.advance(T0 + 1_000)
    p.send((HITS, hit("v1", T0 + 2_000, visit=2)))  # pending, not published yet
    in_flight = [OutRecord(DELTAS, "c1", delta("cart:late", "c1", "abandoned_cart", T0 + 2_000))]
    assert [(o.topic, o.key, o.value) for o in p.table("crm", "c1", None, now=T0 + 2_500)] == [(WEB, "c1", None)]
    assert set(p.customers()) == {"c2"} and set(p.visitors()) == {"v2"}
    assert p.metric("passerelle_crm_activity_erasures_total") == 1
    p.deltas = in_flight
    p.read_deltas()  # a delta written before the erasure
    p.send((HITS, hit("v1", T0 + 3_000, visit=3)), (CARTS, cart("v1", T0 + 3_000)))  # hits enriched before it
    p.send((MESSAGES, message("c1", T0)))
    assert p.advance(T0 + 60_000) == [] and set(p.customers()) == {"c2"} and set(p.visitors()) == {"v2"}
    assert p.metric("passerelle_crm_activity_ignored_total", reason="erased") == 2  # the late delta, the message
    assert p.latest()["c1"] is None


def test_a_privacy_request_erases_a_customer_or_only_a_visitor() -> None:
    p = Pipeline()
    p.send((HITS, hit("v1", T0)), (HITS, hit("v2", T0, customer="c2")), (HITS, hit("v3", T0, customer="c2")))
    p.advance(T0 + 1_000)
    request = {"request_id": "r1", "kind": "erasure", "customer_id": None, "visitor_id": "v3",
               "marketing_consent": None, "requested_at": T0}  # fmt: skip
    assert p.table("privacy", "v3", request) == []  # the visitor only: the summary stays
    assert set(p.visitors()) == {"v1", "v2"}
    request = {**request, "request_id": "r2", "customer_id": "c1", "visitor_id": None}
    assert [(o.key, o.value) for o in p.table("privacy", "c1", request)] == [("c1", None)]
    assert set(p.customers()) == {"c2"} and set(p.visitors()) == {"v2"}
    p.send((HITS, hit("v1", T0 + 2_000, visit=2)), (HITS, hit("v3", T0 + 2_000, visit=2, customer="c2")))
    assert p.deltas == [] and p.advance(T0 + 60_000) == []
    consent = {**request, "request_id": "r3", "kind": "consent_change", "customer_id": "c2"}
    assert p.table("privacy", "c2", consent) == []  # not an erasure


def test_an_erasure_that_happened_while_a_partition_was_away_is_applied_when_it_comes_back() -> None:
    p = Pipeline()
    p.send((HITS, hit("v1", T0)))
    p.advance(T0 + 1_000)
    home = partition("c1")
    p.driver.revoke(home)
    p.driver.table_update("crm", "c1", None)  # nothing held has c1's summary: no tombstone yet
    assert [(o.key, o.value) for o in p.driver.restore(home).outputs] == [("c1", None)]
    assert "c1" not in p.customers()


def test_state_pending_summaries_and_timers_survive_a_revoke_and_restore() -> None:
    p = Pipeline()
    p.send((HITS, hit("v1", T0, order=("O-1", 10.0))), (MESSAGES, message("c1", T0 - HOUR_MS)))
    assert p.driver.changelog(CUSTOMERS, partition("c1"))["c1"]["pending"] is True
    for part in range(PARTITIONS):  # every partition moves away, and comes back (as after a crash)
        p.driver.revoke(part)
        p.driver.restore(part)
    assert [counts(o.value) for o in p.advance(T0 + 1_000)] == [(1, 1, 10.0, 0, 1, 1)]  # the pending flush fired
    assert p.driver.changelog(CUSTOMERS, partition("c1"))["c1"]["pending"] is False
    for part in range(PARTITIONS):
        p.driver.revoke(part)
        p.driver.restore(part)
    p.send((HITS, hit("v1", T0 + 1, order=("O-1", 10.0))), (MESSAGES, message("c1", T0 - HOUR_MS)))
    assert p.advance(T0 + 60_000) == []  # the visit, the order and the message: not again


def test_a_delta_that_cannot_be_counted_is_a_dead_letter_and_changes_nothing() -> None:
    p = Pipeline()
    bad = p.driver.send(DELTAS, "c1", {**delta("x", "c1", "refund", T0)}, T0, partition=partition("c1"))
    keyless = p.driver.send(DELTAS, None, wire(delta("visit:a", "c1", "visit", T0)), T0)
    misplaced = p.driver.send(DELTAS, "c2", wire(delta("visit:a", "c1", "visit", T0)), T0, partition=partition("c2"))
    stages = [stage for _, _, stage in bad.dead_letters + keyless.dead_letters + misplaced.dead_letters]
    assert stages == ["process"] * 3
    assert p.customers() == {} and p.advance(T0 + 60_000) == []


def test_outputs_encode_as_their_topics_wire_formats() -> None:
    """Deltas as Avro, summaries and tombstones as Kafka Connect JSON with their schema (what the sink reads)."""
    proc = CrmActivityProcessor(CrmActivityTopics(privacy_requests=None), CONFIG)
    schemas = {DELTAS: CATALOG.schema_text("WebActivityDelta"), WEB: CATALOG.schema_text("WebActivity")}
    driver = ProcessorDriver(proc, now=T0, output_schemas=schemas, wire_formats={WEB: "connect-json"})
    step = driver.send(HITS, "v1", hit("v1", T0, campaign="EREC-1", order=("O-1", 12.5)), T0)
    assert [o.encoded is not None for o in step.outputs] == [True, True] and not step.dead_letters
    for out in step.outputs:
        driver.send(DELTAS, out.key, wire(out.value), T0)
    [summary] = driver.advance(T0 + 1_000).outputs
    assert summary.encoded is not None and summary.encoded[0] == b"c1"
    envelope = json.loads(summary.encoded[1] or b"")
    assert envelope["payload"] == {**summary.value, "revenue_30d": 12.5}
    fields = {f["field"]: f for f in envelope["schema"]["fields"]}
    assert fields["last_visit_at"]["name"] == "org.apache.kafka.connect.data.Timestamp"
    assert fields["last_visit_at"]["optional"] and not fields["visits_30d"]["optional"]
    [tombstone] = driver.table_update("crm", "c1", None).outputs
    assert tombstone.encoded == (b"c1", None)


# --- settings and command ----------------------------------------------------------------------------------


def test_settings_count_in_milliseconds() -> None:
    config = CrmActivitySettings(crm_activity_emit_seconds=0.5, crm_activity_recovery_days=3,
                                 crm_activity_visitor_ttl_hours=2).to_config()  # fmt: skip
    assert config == CrmActivityConfig(emit_interval_ms=500, recovery_window_ms=3 * DAY_MS, visitor_ttl_ms=2 * HOUR_MS)
    assert CrmActivitySettings().to_config() == CrmActivityConfig()


def test_the_commands_build_both_processors_and_run_them(monkeypatch: pytest.MonkeyPatch) -> None:
    from passerelle.cli import build_parser

    seen: list[tuple[Any, ...]] = []

    def run(*args: Any) -> int:
        seen.append(args)
        return 0

    monkeypatch.setattr(command, "run_processor", run)
    monkeypatch.setenv("PASSERELLE_CRM_ACTIVITY_EMIT_SECONDS", "2")
    for name in ("crm-activity", "crm-activity-messages"):
        args = build_parser().parse_args([name])
        assert args.func(args) == 0
    [(settings, proc, app_id, _), (feeder_settings, feeder, feeder_app, _)] = seen
    assert isinstance(settings, CrmActivitySettings) and isinstance(proc, CrmActivityProcessor)
    assert proc.config.emit_interval_ms == 2_000 and app_id == "passerelle-crm-activity"
    assert type(feeder_settings) is ProcessorSettings and isinstance(feeder, CrmMessagesProcessor)
    assert feeder_app == "passerelle-crm-activity-messages"
    assert "PASSERELLE_CRM_ACTIVITY_RECOVERY_DAYS (default: 7)" in command.settings_epilog(CrmActivitySettings, 100)


def test_the_catalog_co_partitions_the_summarys_inputs_and_not_the_messages() -> None:
    """Why there are two processors: the runner refuses inputs of different partition counts."""
    proc = CrmActivityProcessor()
    assert len({CATALOG.topic(t).partitions for t in proc.inputs}) == 1
    assert CATALOG.topic(MESSAGES).partitions != CATALOG.topic(DELTAS).partitions
    assert CrmMessagesProcessor().outputs == (DELTAS,)
    assert CATALOG.topic(WEB).wire_format == "connect-json" and CATALOG.topic(WEB).cleanup_policy == "compact"
