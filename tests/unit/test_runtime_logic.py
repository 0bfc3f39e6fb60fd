"""Runtime pieces that need no broker: stores, timers, dead-letter headers, error budget."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pytest

from streams.runtime import (
    Context,
    ErrorBudget,
    ErrorBudgetExceeded,
    InRecord,
    KeyValueStore,
    OutRecord,
    Processor,
    StoreSpec,
    Timer,
    header_dict,
    make_context,
)
from streams.runtime.deadletter import dead_letter_headers
from streams.runtime.timers import TIMER_STORE, TimerService

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
    stores = (StoreSpec("counts"),)

    def process_one(self, record: InRecord, ctx: Context) -> Iterable[OutRecord]:
        if record.value["n"] < 0:
            raise ValueError("negative")
        counts = ctx.store("counts")
        counts.put(record.key, counts.get(record.key, 0) + 1)
        ctx.timers.schedule(record.key, record.timestamp + 10)
        return [OutRecord("out", record.key, {"n": record.value["n"] * 2})]

    def on_timer(self, timers: Sequence[Timer], ctx: Context) -> Iterable[OutRecord]:
        return [OutRecord("out", t.key, {"n": -1}) for t in timers]


def test_a_failing_record_becomes_a_dead_letter_and_the_others_go_on() -> None:
    proc = Doubler()
    ctx = make_context(proc, partition=0)
    records = [InRecord("in", 0, i, 100 + i, "k", {"n": n}) for i, n in enumerate([1, -5, 3])]
    out = list(proc.process(records, ctx))
    assert [o.value for o in out] == [{"n": 2}, {"n": 6}]
    assert [(r.offset, str(e), s) for r, e, s in ctx.failures] == [(1, "negative", "process")]
    assert ctx.store("counts").get("k") == 2
    fired = ctx.timers.due("event", 200)
    assert list(proc.on_timer(fired, ctx)) == [OutRecord("out", "k", {"n": -1})]


def test_commit_due_per_interval_and_early_only_when_caught_up() -> None:
    from streams.runtime import RunnerConfig

    cfg = RunnerConfig("app", "b", "r", {}, commit_interval_ms=100, min_commit_interval_ms=30)
    assert cfg.commit_due(100, caught_up=False, uncommitted=False)  # the interval always commits
    assert not cfg.commit_due(60, caught_up=False, uncommitted=True)  # a backlog waits for the interval
    assert cfg.commit_due(30, caught_up=True, uncommitted=True)  # caught up: outputs visible sooner
    assert not cfg.commit_due(29, caught_up=True, uncommitted=True)
    assert not cfg.commit_due(60, caught_up=True, uncommitted=False)  # nothing to commit
    off = RunnerConfig("app", "b", "r", {}, commit_interval_ms=100, min_commit_interval_ms=0)
    assert not off.commit_due(99, caught_up=True, uncommitted=True)


def test_a_batch_that_did_not_fill_up_means_caught_up() -> None:
    from streams.runtime import RunnerConfig

    # A steady flow keeps a few records queued at every turn: still caught up.
    assert RunnerConfig.caught_up(queued_batch=37, batch_size=2000)
    assert not RunnerConfig.caught_up(queued_batch=2000, batch_size=2000)  # a full batch: a backlog


class _Counting(Processor):
    """Counts per key and arms a timer; a value of "boom" fails after changing the state."""

    name = "counting"
    stores = (StoreSpec("counts"),)
    outputs = ("out",)

    def process_one(self, record: InRecord, ctx: Context) -> Iterable[OutRecord]:
        counts = ctx.store("counts")
        counts.put(record.key, counts.get(record.key, 0) + 1)
        ctx.timers.schedule(record.key, 1_000 + record.offset, kind="wall")
        if record.value == "boom":
            raise ValueError("boom")
        return [OutRecord("out", record.key, record.value)]


def test_a_failing_record_leaves_no_state_behind_and_the_others_go_on() -> None:
    processor = _Counting()
    ctx = make_context(processor, 0)
    records = [InRecord("in", 0, n, 0, "k", v) for n, v in enumerate(["a", "boom", "b"])]
    out = processor.process(records, ctx)
    assert [o.value for o in out] == ["a", "b"]
    assert ctx.store("counts").get("k") == 2  # the failed record's increment is undone
    assert ctx.timers.get("k", kind="wall") == 1_002
    assert [(r.offset, str(e), stage) for r, e, stage in ctx.failures] == [(1, "boom", "process")]
    assert dict(ctx.store("counts").take_changes()) == {b"k": b"2"}


def test_an_output_that_cannot_be_written_fails_its_record_alone() -> None:
    processor = _Counting()
    ctx = make_context(processor, 0)

    class TooLarge(Exception):
        stage = "produce"

    def seal(outputs: Sequence[OutRecord]) -> None:
        if any(o.value == "huge" for o in outputs):
            raise TooLarge("output too large")

    ctx.seal = seal
    ctx.store("counts").put("k", 5)
    ctx.store("counts").take_changes()
    records = [InRecord("in", 0, n, 0, "k", v) for n, v in enumerate(["a", "huge", "b"])]
    out = processor.process(records, ctx)
    assert [o.value for o in out] == ["a", "b"]
    assert ctx.store("counts").get("k") == 7
    assert [(r.offset, stage) for r, _, stage in ctx.failures] == [(1, "produce")]


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
