"""Timers never lost: a handler that raises re-arms its timer with back-off, or dead-letters it in the end.

The first tests need no broker (marked ``unit``): ``timers.fire`` and the
runner's wiring of it, with a fake producer. The others run the runtime on
the real broker and registry: a handler that raises N times then succeeds,
one that always raises (dead-lettered with its key and payload), and a
SIGKILL while timers are armed and retrying: none lost, none fired twice.
"""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest

from passerelle.deploy.local.stack import free_port
from passerelle.streams.runtime import (
    Context,
    OutRecord,
    Processor,
    Runner,
    RunnerConfig,
    StoreSpec,
    Timer,
    header_dict,
    make_context,
)
from passerelle.streams.runtime.state import KeyValueStore
from passerelle.streams.runtime.timers import TIMER_STORE, TimerRetry, TimerService, fire
from tests.integration.kafka_helpers import TopicReader, create_topics, produce_avro
from tests.integration.runtime_app import IN_SCHEMA, build, config

SEEN: StoreSpec[Any] = StoreSpec("seen")

ROOT = Path(__file__).resolve().parents[2]

# --- no broker ------------------------------------------------------------------------------------------------------


class Picky(Processor):
    """Emits one record per timer; raises for keys in ``failing`` (while ``budget[key]`` > 0) after a state change."""

    name = "picky"
    outputs = ("out",)
    stores = (SEEN,)

    def __init__(self, failing: dict[str, int]) -> None:
        self.budget = dict(failing)  # key -> failures left (a large number: always)
        self.calls: list[list[str]] = []

    def on_timer(self, timers: Sequence[Timer], ctx: Context) -> Iterable[OutRecord]:
        self.calls.append([t.key for t in timers])
        out = []
        for t in timers:
            ctx.store(SEEN).put(t.key, ctx.store(SEEN).get(t.key, 0) + 1)
            if self.budget.get(t.key, 0) > 0:
                self.budget[t.key] -= 1
                raise RuntimeError(f"cannot handle {t.key}")
            out.append(OutRecord("out", t.key, {"attempts": t.attempts, "payload": t.payload}))
        return out


def _fire(proc: Picky, ctx: Context, now: int, retry: TimerRetry) -> Any:
    due = ctx.timers.due("wall", now) + ctx.timers.due_retries(now)
    return fire(due, lambda ts: proc.on_timer(ts, ctx), ctx.stores.values(), ctx.timers, now, retry)


@pytest.mark.unit
def test_a_raising_timer_is_retried_with_backoff_and_the_healthy_ones_fire_once() -> None:
    proc = Picky({"bad": 3})
    ctx = make_context(proc, 0)
    for key in ("a", "bad", "c"):
        ctx.timers.schedule(key, 1_000, kind="wall", payload={"k": key})
    retry = TimerRetry(max_attempts=5, backoff_ms=1_000, max_backoff_ms=60_000)
    first = _fire(proc, ctx, 1_000, retry)
    # All three at once raised; then one by one: a and c fired, bad re-armed 1 s later.
    assert proc.calls == [["a", "bad", "c"], ["a"], ["bad"], ["c"]]
    assert [o.key for o in first.outputs] == ["a", "c"] and [t.key for t in first.fired] == ["a", "c"]
    assert [(t.key, at) for t, _, at in first.retried] == [("bad", 2_000)] and not first.given_up
    # The failed batch call's state changes were rolled back: each healthy timer counted once, bad not at all.
    assert dict(ctx.store(SEEN).items()) == {"a": 1, "c": 1}
    assert ctx.timers.get("bad", kind="wall") == 1_000  # still pending, as scheduled
    assert _fire(proc, ctx, 1_999, retry).fired == []
    second = _fire(proc, ctx, 2_000, retry)  # second attempt raises too: next one 2 s later
    assert [(t.key, t.attempts, at) for t, _, at in second.retried] == [("bad", 1, 4_000)]
    assert _fire(proc, ctx, 3_999, retry).fired == []
    third = _fire(proc, ctx, 4_000, retry)
    assert [o.value for o in third.outputs] == [{"attempts": 2, "payload": {"k": "bad"}}]
    assert len(ctx.timers) == 0 and _fire(proc, ctx, 100_000, retry).fired == []
    assert dict(ctx.store(SEEN).items()) == {"a": 1, "c": 1, "bad": 1}


@pytest.mark.unit
def test_a_timer_that_always_raises_is_given_up_after_max_attempts() -> None:
    proc = Picky({"doomed": 10**9})
    ctx = make_context(proc, 0)
    ctx.timers.schedule("doomed", 0, kind="event", payload=[1, 2])
    retry = TimerRetry(max_attempts=4, backoff_ms=100, max_backoff_ms=250)
    done = fire(ctx.timers.due("event", 0), lambda ts: proc.on_timer(ts, ctx), ctx.stores.values(), ctx.timers,
                10_000, retry)  # fmt: skip
    at = [a for _, _, a in done.retried]
    while not done.given_up:
        assert ctx.timers.due("event", 10**12) == []  # a retrying event timer waits for the wall clock only
        done = _fire(proc, ctx, at[-1], retry)
        at += [a for _, _, a in done.retried]
    assert at == [10_100, 10_300, 10_550]  # 100 ms doubling, capped at 250 ms
    [(timer, error)] = done.given_up
    assert (timer.key, timer.kind, timer.payload, timer.attempts) == ("doomed", "event", [1, 2], 3)
    assert str(error) == "cannot handle doomed"
    assert len(ctx.timers) == 0


@pytest.mark.unit
def test_attempts_survive_a_restart_through_the_changelog() -> None:
    proc = Picky({"bad": 10**9})
    ctx = make_context(proc, 0)
    ctx.timers.schedule("bad", 50, kind="wall")
    ctx.timers.schedule("later", 5_000, kind="wall")
    retry = TimerRetry(max_attempts=3, backoff_ms=1_000)
    _fire(proc, ctx, 100, retry)
    changelog = ctx.stores[TIMER_STORE.name].take_changes()  # what the commit writes
    restored = KeyValueStore(TIMER_STORE, 0)
    for key, value in changelog:
        restored.restore(key, value)
    again = TimerService(restored)
    assert again.due("wall", 1_000) == []  # not as a fresh timer...
    assert again.due_retries(1_100) == [Timer("bad", 50, "wall", None, attempts=1)]  # ...but as a retry
    assert [t.key for t in again.due("wall", 5_000)] == ["later"]


@pytest.mark.unit
def test_rescheduling_a_retrying_timer_replaces_it() -> None:
    proc = Picky({"k": 1})
    ctx = make_context(proc, 0)
    ctx.timers.schedule("k", 10, kind="wall")
    _fire(proc, ctx, 10, TimerRetry())
    ctx.timers.schedule("k", 20_000, kind="wall", payload="new")  # the processor moved the deadline
    assert ctx.timers.due_retries(10**9) == []
    assert ctx.timers.due("wall", 20_000) == [Timer("k", 20_000, "wall", "new")]


class FakeProducer:
    def __init__(self) -> None:
        self.records: list[tuple[str, Any, Any, dict[str, Any]]] = []

    def produce(self, topic: str, value: Any = None, key: Any = None, **kwargs: Any) -> None:
        self.records.append((topic, key, value, kwargs))

    def poll(self, timeout: float = 0) -> int:
        return 0


class JsonEncoder:
    def encode(self, value: Any) -> bytes:
        return json.dumps(value).encode()


@pytest.mark.unit
def test_the_runner_emits_re_arms_dead_letters_and_counts() -> None:
    proc = Picky({"bad": 2, "doomed": 10**9})  # bad: raises in the batch call, then alone, then succeeds
    cfg = RunnerConfig("app", "b", "r", {"out": "{}"}, dead_letter_topic="dlq", timer_max_attempts=2,
                       timer_backoff_ms=500)  # fmt: skip
    runner = Runner(proc, cfg)
    producer = FakeProducer()
    runner._producer = producer  # type: ignore[assignment]
    runner._encoders = {"out": JsonEncoder()}  # type: ignore[dict-item]
    runner._key_encoders = {"out": JsonEncoder()}  # type: ignore[dict-item]
    ctx = make_context(proc, 2)
    runner._contexts[2] = ctx
    for key in ("ok", "bad", "doomed"):
        ctx.timers.schedule(key, 1_000, kind="wall", payload={"key": key})
    for now in (1_000, 1_499, 1_500, 2_000, 10_000):
        runner._fire_wall_timers(now)
    outs = [(k, json.loads(v)) for t, k, v, _ in producer.records if t == "out"]
    assert outs == [(b'"ok"', {"attempts": 0, "payload": {"key": "ok"}}),
                    (b'"bad"', {"attempts": 1, "payload": {"key": "bad"}})]  # fmt: skip
    [(_, key, value, kwargs)] = [r for r in producer.records if r[0] == "dlq"]
    assert key == b"doomed"
    assert json.loads(value) == {"kind": "wall", "when": 1_000, "payload": {"key": "doomed"}, "attempts": 2}
    errors = header_dict(kwargs["headers"])
    assert errors["stage"] == "timer" and errors["partition"] == "2" and errors["topic"] == "app-timers-changelog"
    assert errors["exception.message"] == "cannot handle doomed" and errors["processor"] == "picky"
    sample = runner.metrics.registry.get_sample_value
    labels = {"processor": "picky", "kind": "wall"}
    assert sample("passerelle_timers_fired_total", labels) == 2
    assert sample("passerelle_timer_retries_total", labels) == 2  # bad once, doomed once
    assert sample("passerelle_dead_letters_total", {"processor": "picky", "stage": "timer"}) == 1
    assert len(ctx.timers) == 0


# --- real broker ----------------------------------------------------------------------------------------------------


class Names:
    def __init__(self, unique: Callable[[str], str]) -> None:
        self.input = unique("tf.in")
        self.output = unique("tf.out")
        self.dlq = unique("tf.dlq")
        self.app = unique("tf-app")


@pytest.fixture
def names(unique: Callable[[str], str], kafka_bootstrap: str) -> Names:
    n = Names(unique)
    create_topics(kafka_bootstrap, {n.input: 3, n.output: 3, n.dlq: 1})
    return n


def probes(count: int) -> list[tuple[str, dict[str, Any]]]:
    """n % 3: 0 healthy, 1 raises twice then succeeds, 2 always raises (FlakyTimer)."""
    return [(f"v{i % 7}", {"event_id": f"e{i}", "visitor_id": f"v{i % 7}", "n": i}) for i in range(count)]


def args_for(names: Names, bootstrap: str, registry: str, attempts: int, backoff_ms: int) -> Any:
    import argparse

    return argparse.Namespace(
        app=names.app, bootstrap=bootstrap, registry=registry, output=names.output, instance="0", alo=False,
        dlq=names.dlq, input=[names.input], commit_ms=100, timer_attempts=attempts, timer_backoff_ms=backoff_ms,
    )  # fmt: skip


@pytest.mark.integration
def test_a_timer_raising_twice_fires_once_and_one_always_raising_is_dead_lettered(
    kafka_bootstrap: str, schema_registry_url: str, names: Names
) -> None:
    produce_avro(kafka_bootstrap, schema_registry_url, names.input, IN_SCHEMA, probes(30))
    cfg = config(args_for(names, kafka_bootstrap, schema_registry_url, attempts=3, backoff_ms=200))
    cfg.metrics_port = free_port()
    runner = Runner(build("flaky-timer", [names.input], names.output), cfg)
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    try:
        out = TopicReader(kafka_bootstrap, schema_registry_url, names.output).read(until=21, timeout=60, idle=5)
        dlq = TopicReader(kafka_bootstrap, schema_registry_url, names.dlq, decode=False).read(until=11, timeout=30,
                                                                                               idle=3)  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{cfg.metrics_port}/metrics", timeout=5).read().decode()
            if 'passerelle_dead_letters_total{processor="flaky-timer",stage="timer"} 10.0' in metrics:
                break
            assert time.monotonic() < deadline, metrics
            time.sleep(0.2)
    finally:
        runner.stop()
        thread.join(30)
    fired = sorted((v["event_id"], v["count"]) for _, v in out)
    # Healthy timers fired once on the first attempt, flaky ones once on the third; none twice.
    assert fired == sorted([(f"e{i}", 0) for i in range(0, 30, 3)] + [(f"e{i}", 2) for i in range(1, 30, 3)])
    assert len(dlq) == 10
    doomed = {f"e{i}" for i in range(2, 30, 3)}
    assert {m.key().decode() for m, _ in dlq} == doomed
    for msg, value in dlq:
        errors = header_dict(msg.headers())
        assert errors["stage"] == "timer" and errors["topic"] == f"{names.app}-timers-changelog"
        assert errors["exception.class"] == "builtins.RuntimeError"
        entry = json.loads(value)
        i = int(msg.key().decode()[1:])
        assert entry["kind"] == "wall" and entry["attempts"] == 3
        assert entry["payload"] == {"visitor": f"v{i % 7}", "fails": 1_000_000}
    assert 'passerelle_timers_fired_total{kind="wall",processor="flaky-timer"} 20.0' in metrics
    assert 'passerelle_timer_retries_total{kind="wall",processor="flaky-timer"} 40.0' in metrics


def spawn(names: Names, bootstrap: str, registry: str, log: Path, attempts: int,
          backoff_ms: int) -> subprocess.Popen[bytes]:  # fmt: skip
    cmd = [
        sys.executable, "-m", "tests.integration.runtime_app", "flaky-timer", "--bootstrap", bootstrap,
        "--registry", registry, "--app", names.app, "--input", names.input, "--output", names.output,
        "--dlq", names.dlq, "--timer-attempts", str(attempts), "--timer-backoff-ms", str(backoff_ms),
    ]  # fmt: skip
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


RETRIED = re.compile(r"on_timer raised for wall timer '(e\d+)' \(attempt (\d+)\), retrying")


@pytest.mark.integration
def test_timers_armed_and_retrying_survive_a_kill_9_neither_lost_nor_fired_twice(
    kafka_bootstrap: str, schema_registry_url: str, names: Names, tmp_path: Path
) -> None:
    # Back-off 1 s: attempts at +0, +1, +3 s (flaky ones succeed there), +7 s (doomed ones are given up).
    produce_avro(kafka_bootstrap, schema_registry_url, names.input, IN_SCHEMA, probes(30))
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    proc = spawn(names, kafka_bootstrap, schema_registry_url, first_log, attempts=4, backoff_ms=1000)
    reader = TopicReader(kafka_bootstrap, schema_registry_url, names.output)
    try:
        assert len(reader.read(until=10, timeout=60)) == 10, first_log.read_text()[-3000:]  # the healthy ones
        time.sleep(1.8)  # second attempts failed and were committed; third ones due in ~1 s
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        before = list(reader.records)
        proc = spawn(names, kafka_bootstrap, schema_registry_url, second_log, attempts=4, backoff_ms=1000)
        values = [v for _, v in reader.read(until=100, timeout=45, idle=12)]
        dlq = TopicReader(kafka_bootstrap, schema_registry_url, names.dlq, decode=False).read(until=10, timeout=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    logs = first_log.read_text() + second_log.read_text()
    ids = sorted(v["event_id"] for v in values)
    expected = sorted(f"e{i}" for i in range(30) if i % 3 != 2)
    assert ids == expected, logs[-4000:]  # every healthy and flaky timer exactly once
    assert {v["event_id"] for _, v in before} >= {f"e{i}" for i in range(0, 30, 3)}
    assert all(v["count"] == (0 if int(v["event_id"][1:]) % 3 == 0 else 2) for v in values)
    assert sorted(m.key().decode() for m, _ in dlq) == sorted(f"e{i}" for i in range(2, 30, 3))
    assert all(json.loads(v)["attempts"] == 4 for _, v in dlq)
    # The failed attempts counted before the kill were committed and carried on after it: a flaky timer
    # raised twice in all, a doomed one four times (one more each if the kill beat a commit).
    retried = collections.Counter(key for key, _ in RETRIED.findall(logs))
    for i in range(30):
        wanted = {0: 0, 1: 2, 2: 3}[i % 3]  # the fourth failure of a doomed one is logged as "dead-lettered"
        assert wanted <= retried[f"e{i}"] <= wanted + 1, (i, retried)
    after = {int(attempt) for _, attempt in RETRIED.findall(second_log.read_text())}
    assert after and 1 not in after, after  # the restarted instance went on counting, it did not start again
