"""Runtime pieces that need no broker: stores, timers, dead-letter headers, error budget, the test driver."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import pytest

from passerelle.streams.runtime import (
    Context,
    ErrorBudget,
    ErrorBudgetExceeded,
    InRecord,
    KeyValueStore,
    OutRecord,
    Processor,
    StoreSpec,
    TableSpec,
    Timer,
    header_dict,
)
from passerelle.streams.runtime.deadletter import dead_letter_headers
from passerelle.streams.runtime.testing import ProcessorDriver
from passerelle.streams.runtime.timers import TIMER_STORE, TimerRetry, TimerService

COUNTS: StoreSpec[Any] = StoreSpec("counts")
SEEN: StoreSpec[Any] = StoreSpec("seen")
DONE: StoreSpec[Any] = StoreSpec("done")

pytestmark = pytest.mark.unit


def test_store_coalesces_changes_to_the_last_value_per_key() -> None:
    store = KeyValueStore(StoreSpec("s"), 0)
    for i in range(100):
        store.put("visitor-1", {"hits": i})
    store.put("visitor-2", 1)
    store.delete("visitor-2")
    changes = dict(store.take_changes())
    assert changes == {b"visitor-1": b'{"hits":99}', b"visitor-2": None}
    assert store.take_changes() == []


def test_store_restores_from_changelog_records_without_marking_dirty() -> None:
    store = KeyValueStore(StoreSpec("s"), 3)
    store.restore(b"a", b'{"x":1}')
    store.restore(b"b", b"2")
    store.restore(b"a", None)
    assert dict(store.items()) == {"b": 2}
    assert not store.has_changes()


def timers() -> tuple[TimerService, KeyValueStore]:
    store = KeyValueStore(TIMER_STORE, 0)
    return TimerService(store), store


def test_timer_fires_once_and_rescheduling_replaces_it() -> None:
    service, _ = timers()
    service.schedule("cart-1", 1_000)
    service.schedule("cart-1", 2_000)  # activity pushed the deadline
    service.schedule("cart-2", 1_500, payload={"n": 2})
    assert service.due("event", 1_200) == []
    assert service.due("event", 1_500) == [Timer("cart-2", 1_500, "event", {"n": 2})]
    assert service.due("event", 5_000) == [Timer("cart-1", 2_000, "event", None)]
    assert service.due("event", 9_000) == []


def test_cancelled_timer_never_fires_and_kinds_are_separate() -> None:
    service, _ = timers()
    service.schedule("a", 10, kind="wall")
    service.schedule("a", 10, kind="event")
    service.cancel("a", kind="wall")
    assert service.due("wall", 100) == []
    assert [t.key for t in service.due("event", 100)] == ["a"]


def test_timers_survive_a_restart_through_the_changelog() -> None:
    service, store = timers()
    service.schedule("x", 100)
    service.schedule("y", 200)
    assert [t.key for t in service.due("event", 150)] == ["x"]  # x fired, its deletion is a change
    changelog = store.take_changes()
    restored = KeyValueStore(TIMER_STORE, 0)
    for key, value in changelog:
        restored.restore(key, value)
    again = TimerService(restored)
    assert [t.key for t in again.due("event", 1_000)] == ["y"]


def test_dead_letter_headers_name_origin_stage_and_error() -> None:
    headers = dead_letter_headers(
        topic="hits.raw", partition=2, offset=41, stage="deserialize", error=ValueError("bad magic"),
        processor="enrich", original=[("trace", b"t1")],
    )  # fmt: skip
    assert headers[0] == ("trace", b"t1")
    assert header_dict(headers) == {
        "topic": "hits.raw",
        "partition": "2",
        "offset": "41",
        "stage": "deserialize",
        "exception.class": "builtins.ValueError",
        "exception.message": "bad magic",
        "processor": "enrich",
    }


def test_error_budget_tolerates_sparse_failures_and_stops_systemic_ones() -> None:
    budget = ErrorBudget(max_ratio=0.1, window=1_000, min_records=100)
    for _ in range(50):
        budget.record(100, 1)  # 1 %
    with pytest.raises(ErrorBudgetExceeded, match="looks systemic"):
        for _ in range(20):
            budget.record(100, 60)


class Doubler(Processor):
    name = "doubler"
    inputs = ("in",)
    outputs = ("out",)
    stores = (COUNTS,)

    def process_one(self, record: InRecord, ctx: Context) -> Iterable[OutRecord]:
        if record.value["n"] < 0:
            raise ValueError("negative")
        counts = ctx.store(COUNTS)
        counts.put(record.key, counts.get(record.key, 0) + 1)
        ctx.timers.schedule(record.key, record.timestamp + 10)
        return [OutRecord("out", record.key, {"n": record.value["n"] * 2})]

    def on_timer(self, timers: Sequence[Timer], ctx: Context) -> Iterable[OutRecord]:
        return [OutRecord("out", t.key, {"n": -1}) for t in timers]


def test_a_failing_record_becomes_a_dead_letter_and_the_others_go_on() -> None:
    driver = ProcessorDriver(Doubler())
    step = driver.feed(*(driver.record("in", "k", {"n": n}, 100 + i) for i, n in enumerate([1, -5, 3])))
    assert [o.value for o in step.outputs] == [{"n": 2}, {"n": 6}]
    assert [(r.offset, str(e), s) for r, e, s in step.dead_letters] == [(1, "negative", "process")]
    assert driver.store(COUNTS).get("k") == 2
    assert driver.advance(10_000).outputs == []  # an event-time timer waits for stream time, not the clock
    step = driver.send("in", "other", {"n": 0}, 200)  # stream time passes k's timer (102 + 10)
    assert step.outputs == [OutRecord("out", "other", {"n": 0}), OutRecord("out", "k", {"n": -1})]
    assert step.fired == [Timer("k", 112, "event")]


def test_commit_due_per_interval_and_early_only_when_caught_up() -> None:
    from passerelle.streams.runtime import RunnerConfig

    cfg = RunnerConfig("app", "b", "r", {}, commit_interval_ms=100, min_commit_interval_ms=30)
    assert cfg.commit_due(100, caught_up=False, uncommitted=False)  # the interval always commits
    assert not cfg.commit_due(60, caught_up=False, uncommitted=True)  # a backlog waits for the interval
    assert cfg.commit_due(30, caught_up=True, uncommitted=True)  # caught up: outputs visible sooner
    assert not cfg.commit_due(29, caught_up=True, uncommitted=True)
    assert not cfg.commit_due(60, caught_up=True, uncommitted=False)  # nothing to commit
    off = RunnerConfig("app", "b", "r", {}, commit_interval_ms=100, min_commit_interval_ms=0)
    assert not off.commit_due(99, caught_up=True, uncommitted=True)


def test_a_batch_that_did_not_fill_up_means_caught_up() -> None:
    from passerelle.streams.runtime import RunnerConfig

    # A steady flow keeps a few records queued at every turn: still caught up.
    assert RunnerConfig.caught_up(queued_batch=37, batch_size=2000)
    assert not RunnerConfig.caught_up(queued_batch=2000, batch_size=2000)  # a full batch: a backlog


class _Counting(Processor):
    """Counts per key and arms a timer; a value of "boom" fails after changing the state."""

    name = "counting"
    stores = (COUNTS,)
    inputs = ("in",)
    outputs = ("out",)

    def process_one(self, record: InRecord, ctx: Context) -> Iterable[OutRecord]:
        counts = ctx.store(COUNTS)
        counts.put(record.key, counts.get(record.key, 0) + 1)
        ctx.timers.schedule(record.key, 1_000 + record.offset, kind="wall")
        if record.value == "boom":
            raise ValueError("boom")
        return [OutRecord("out", record.key, record.value)]


def test_a_failing_record_leaves_no_state_behind_and_the_others_go_on() -> None:
    driver = ProcessorDriver(_Counting())
    step = driver.feed(*(driver.record("in", "k", v, 0) for v in ["a", "boom", "b"]))
    assert [o.value for o in step.outputs] == ["a", "b"]
    assert driver.store(COUNTS).get("k") == 2  # the failed record's increment is undone
    assert driver.context().timers.get("k", kind="wall") == 1_002
    assert [(r.offset, str(e), stage) for r, e, stage in step.dead_letters] == [(1, "boom", "process")]
    assert step.changelog[("counts", 0)] == {"k": 2}


def test_an_output_that_cannot_be_written_fails_its_record_alone() -> None:
    class TooLarge(Exception):
        stage = "produce"

    def seal(outputs: Sequence[OutRecord]) -> None:
        if any(o.value == "huge" for o in outputs):
            raise TooLarge("output too large")

    driver = ProcessorDriver(_Counting(), seal=seal)
    driver.store(COUNTS).put("k", 5)
    step = driver.feed(*(driver.record("in", "k", v, 0) for v in ["a", "huge", "b"]))
    assert [o.value for o in step.outputs] == ["a", "b"]
    assert driver.store(COUNTS).get("k") == 7
    assert [(r.offset, stage) for r, _, stage in step.dead_letters] == [(1, "produce")]


def test_rollback_restores_deleted_and_new_keys() -> None:
    store = KeyValueStore(StoreSpec("s"), 0)
    store.put("kept", 1)
    store.put("gone", 2)
    store.take_changes()
    store.begin()
    store.delete("gone")
    store.put("new", 3)
    store.put("kept", 10)
    store.rollback()
    assert (store.get("kept"), store.get("gone"), "new" in store) == (1, 2, False)
    assert store.take_changes() == []


class _Tracing(Processor):
    """Says what it was called with: partition, stream time and wall clock, in the order of the calls."""

    name = "tracing"
    inputs = ("in",)
    outputs = ("out",)
    stores = (SEEN,)
    tables = (TableSpec("t", "t.topic"),)

    def process_one(self, record: InRecord, ctx: Context) -> Iterable[OutRecord]:
        ctx.store(SEEN).put(record.key, record.value)
        ctx.timers.schedule(record.key, record.timestamp + 10)
        ctx.timers.schedule(record.key, ctx.now() + 100, kind="wall")
        return [OutRecord("out", record.key, ["record", ctx.partition, ctx.stream_time, ctx.now()])]

    def on_timer(self, timers: Sequence[Timer], ctx: Context) -> Iterable[OutRecord]:
        return [OutRecord("out", t.key, [t.kind, ctx.partition, ctx.stream_time, ctx.now()]) for t in timers]

    def on_table_change(self, table: str, key: object, old: object, new: object, ctx: Context) -> Iterable[OutRecord]:
        return [OutRecord("out", str(key), ["table", ctx.partition, new])]

    def on_partition_restored(self, ctx: Context) -> Iterable[OutRecord]:
        return [OutRecord("out", "-", ["restored", ctx.partition, sorted(ctx.store(SEEN))])]


def test_the_driver_calls_a_processor_in_the_order_the_runner_does() -> None:
    driver = ProcessorDriver(_Tracing(), partitions=(0, 1), now=1_000)
    assert [o.value for o in driver.started.outputs] == [["restored", 0, []], ["restored", 1, []]]
    batch = [driver.record("in", "a", 1, 5), driver.record("in", "b", 2, 50, partition=1),
             driver.record("in", "c", 3, 20)]  # fmt: skip
    step = driver.feed(*batch)
    # Per partition: stream time raised to the batch's latest first, records, then event timers due at stream time.
    assert [(o.key, o.value) for o in step.outputs] == [
        ("a", ["record", 0, 20, 1_000]), ("c", ["record", 0, 20, 1_000]), ("a", ["event", 0, 20, 1_000]),
        ("b", ["record", 1, 50, 1_000]),
    ]  # fmt: skip
    # Wall-clock timers on every partition held, when the clock passes them.
    assert driver.advance(1_099).outputs == []
    step = driver.advance(1_100)
    assert [(o.key, o.value) for o in step.outputs] == [
        ("a", ["wall", 0, 20, 1_100]), ("c", ["wall", 0, 20, 1_100]), ("b", ["wall", 1, 50, 1_100]),
    ]  # fmt: skip
    assert [t.key for t in step.fired] == ["a", "c", "b"]
    # A table change reaches every partition held; a revoked one learns of it through ``ctx.deleted`` on restore.
    assert [o.value for o in driver.table_update("t", "x", 7).outputs] == [["table", 0, 7], ["table", 1, 7]]
    driver.revoke(1)
    assert [o.value for o in driver.table_update("t", "x", None).outputs] == [["table", 0, None]]
    step = driver.restore(1)
    assert [o.value for o in step.outputs] == [["restored", 1, ["b"]]]  # state from the changelog
    assert driver.context(1).deleted["t"] == {"x"} and driver.context(1).stream_time == -1
    assert driver.changelog(SEEN, 1) == {"b": 2}
    # Timers come back with the state: b's event timer (60) fires once stream time passes it again.
    step = driver.send("in", "d", 4, 70, partition=1)
    assert [(o.key, o.value[0]) for o in step.outputs] == [("d", "record"), ("b", "event")]


class _Flaky(Processor):
    """A wall-clock timer per key whose handler raises ``failures`` times, after changing the state."""

    name = "flaky"
    inputs = ("in",)
    outputs = ("out",)
    stores = (DONE,)

    def __init__(self, failures: int) -> None:
        self.failures = failures

    def process_one(self, record: InRecord, ctx: Context) -> Iterable[OutRecord]:
        ctx.timers.schedule(record.key, 10, kind="wall", payload=record.value)
        return []

    def on_timer(self, timers: Sequence[Timer], ctx: Context) -> Iterable[OutRecord]:
        for timer in timers:
            ctx.store(DONE).put(timer.key, timer.attempts)
        if self.failures > 0:
            self.failures -= 1
            raise RuntimeError("partner down")
        return [OutRecord("out", t.key, t.payload) for t in timers]


def test_a_timer_whose_handler_raises_is_retried_neither_lost_nor_fired_twice() -> None:
    driver = ProcessorDriver(_Flaky(failures=2), timer_retry=TimerRetry(max_attempts=5, backoff_ms=100))
    driver.send("in", "k", "payload", 0)
    step = driver.advance(10)
    assert step.outputs == [] and [(t.key, at) for t, _, at in step.retried] == [("k", 110)]
    assert "k" not in driver.store(DONE)  # what the failed handler did is rolled back
    driver.restore(0)  # a restart in between: the re-armed timer is in the changelog
    assert driver.advance(109).retried == []
    assert [(t.attempts, at) for t, _, at in driver.advance(110).retried] == [(1, 310)]  # back-off doubles
    step = driver.advance(310)
    assert step.outputs == [OutRecord("out", "k", "payload")] and step.fired == [Timer("k", 10, "wall", "payload", 2)]
    assert driver.store(DONE).get("k") == 2
    assert driver.advance(100_000).outputs == [] and len(driver.context().timers) == 0


def test_a_timer_that_always_raises_is_given_up_after_its_attempts() -> None:
    driver = ProcessorDriver(_Flaky(failures=99), timer_retry=TimerRetry(max_attempts=3, backoff_ms=100))
    driver.send("in", "k", "payload", 0)
    assert len(driver.advance(10).retried) == 1
    assert len(driver.advance(110).retried) == 1
    step = driver.advance(310)  # the third attempt raises too: given up, for the runner to dead-letter
    assert step.retried == [] and [(t.key, t.payload, t.attempts) for t, _ in step.given_up] == [("k", "payload", 2)]
    assert len(driver.context().timers) == 0 and driver.advance(100_000).given_up == []
