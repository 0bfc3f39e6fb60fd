"""Timers that survive restarts: kept in a state store, so their changelog carries them.

A fired timer is deleted from the store in the same commit (transaction) as
the records its handler emits, so after a crash it either fired and is gone,
or did not and fires again: never lost, never doubled.

A timer whose handler raises is not lost either (``fire``): it is re-armed
with a wall-clock back-off, its failed attempts counted in its store entry
(so they survive restarts too), and after ``TimerRetry.max_attempts`` it is
handed back to be dead-lettered with its key and payload.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from passerelle.streams.runtime.records import OutRecord
from passerelle.streams.runtime.state import KeyValueStore, StoreSpec

TimerKind = Literal["event", "wall"]
TIMER_STORE: StoreSpec[Any] = StoreSpec("timers")


@dataclass(frozen=True)
class Timer:
    """A due timer handed to ``Processor.on_timer``.

    ``attempts`` is how many times its handler already raised (0 on the first
    firing); ``when`` stays the time it was scheduled for, retries included.
    """

    key: str
    when: int
    kind: TimerKind
    payload: Any = None
    attempts: int = 0


@dataclass(frozen=True)
class TimerRetry:
    """How a timer whose handler raises is retried: ``backoff_ms`` doubling up to ``max_backoff_ms``.

    Retries run on the wall clock whatever the timer's kind: back-off gives a
    failing dependency time to recover, and event time may stand still (an
    idle partition) or jump by hours (a replayed backlog). After
    ``max_attempts`` failed attempts the timer is given up (dead-lettered).
    """

    max_attempts: int = 5
    backoff_ms: int = 1_000
    max_backoff_ms: int = 60_000

    def delay_ms(self, failed: int) -> int:
        """Wait before the next attempt once ``failed`` (>= 1) attempts have raised."""
        return min(self.max_backoff_ms, self.backoff_ms * 2 ** max(0, failed - 1))


class TimerService:
    """Timers of one partition: one pending timer per (kind, key); rescheduling replaces it.

    Store entry ``<kind>|<key>`` -> ``{"when", "payload"}``, plus ``"attempts"``
    and ``"retry"`` (the wall-clock time of the next attempt) once its handler
    raised. Scheduling the key again replaces a retrying timer (and its count).
    """

    def __init__(self, store: KeyValueStore) -> None:
        self._store = store
        self._heaps: dict[str, list[tuple[int, str]]] = {"event": [], "wall": []}
        self._retries: list[tuple[int, TimerKind, str]] = []  # (retry at, kind, key), wall clock
        self.reload()

    def reload(self) -> None:
        """Rebuild the in-memory heaps from the store (after a restore)."""
        for heap in self._heaps.values():
            heap.clear()
        self._retries.clear()
        for skey, entry in self._store.items():
            kind, key = skey.split("|", 1)
            if "retry" in entry:
                self._retries.append((int(entry["retry"]), cast(TimerKind, kind), key))
            else:
                self._heaps[kind].append((int(entry["when"]), key))
        for heap in self._heaps.values():
            heapq.heapify(heap)
        heapq.heapify(self._retries)

    def schedule(self, key: str, when: int, kind: TimerKind = "event", payload: Any = None) -> None:
        """Fire ``on_timer`` for ``key`` once time reaches ``when`` (ms): event time or wall clock."""
        self._store.put(f"{kind}|{key}", {"when": when, "payload": payload})
        heapq.heappush(self._heaps[kind], (when, key))

    def cancel(self, key: str, kind: TimerKind = "event") -> None:
        skey = f"{kind}|{key}"
        if skey in self._store:
            self._store.delete(skey)

    def get(self, key: str, kind: TimerKind = "event") -> int | None:
        """When the pending timer of ``key`` was scheduled for (a retrying one included), else None."""
        entry = self._store.get(f"{kind}|{key}")
        return None if entry is None else int(entry["when"])

    def __len__(self) -> int:
        return len(self._store)

    def due(self, kind: TimerKind, now: int) -> list[Timer]:
        """Pop every timer of ``kind`` due at ``now``; stale heap entries (rescheduled) are skipped."""
        heap = self._heaps[kind]
        fired: list[Timer] = []
        while heap and heap[0][0] <= now:
            when, key = heapq.heappop(heap)
            skey = f"{kind}|{key}"
            entry = self._store.get(skey)
            if entry is None or int(entry["when"]) != when or "retry" in entry:
                continue
            self._store.delete(skey)
            fired.append(Timer(key, when, kind, entry.get("payload")))
        return fired

    def due_retries(self, now: int) -> list[Timer]:
        """Pop every re-armed timer (either kind) whose next attempt is due at wall-clock ``now``."""
        heap = self._retries
        fired: list[Timer] = []
        while heap and heap[0][0] <= now:
            at, kind, key = heapq.heappop(heap)
            skey = f"{kind}|{key}"
            entry = self._store.get(skey)
            if entry is None or entry.get("retry") != at:
                continue
            self._store.delete(skey)
            fired.append(Timer(key, int(entry["when"]), kind, entry.get("payload"), int(entry.get("attempts", 0))))
        return fired

    def retry(self, timer: Timer, at: int) -> None:
        """Re-arm a timer whose handler raised: next attempt at wall-clock ``at``, one more failure counted."""
        entry = {"when": timer.when, "payload": timer.payload, "attempts": timer.attempts + 1, "retry": at}
        self._store.put(f"{timer.kind}|{timer.key}", entry)
        heapq.heappush(self._retries, (at, timer.kind, timer.key))


@dataclass
class Fired:
    """What ``fire`` did with a list of due timers."""

    outputs: list[OutRecord] = field(default_factory=list)
    fired: list[Timer] = field(default_factory=list)  # handled: their outputs are in ``outputs``
    retried: list[tuple[Timer, BaseException, int]] = field(default_factory=list)  # (timer, error, next attempt at)
    given_up: list[tuple[Timer, BaseException]] = field(default_factory=list)  # to dead-letter


def fire(
    due: Sequence[Timer],
    handler: Callable[[Sequence[Timer]], Iterable[OutRecord] | None],
    stores: Iterable[KeyValueStore],
    service: TimerService,
    now: int,
    retry: TimerRetry,
) -> Fired:
    """Run ``handler`` on ``due`` timers (popped from ``service``) as the runner does.

    The whole list first, as one unit: state changes are journaled and rolled
    back if the handler raises. Then, after a failure, each timer alone, so
    the healthy ones still fire (once) and the culprit is found. A timer whose
    handler raised is re-armed ``retry.delay_ms`` after ``now`` (wall clock),
    or given up after ``retry.max_attempts`` failed attempts. An exception
    marked ``fatal`` is re-raised (the instance stops; nothing was committed).

    The caller emits ``outputs`` and commits them with the store changes
    (the fired timers' deletions, the re-armed entries): a timer is gone only
    in the commit that holds what its handler emitted.
    """
    stores = list(stores)
    result = Fired()
    if not due:
        return result

    def attempt(timers: Sequence[Timer]) -> tuple[list[OutRecord], BaseException | None]:
        for store in stores:
            store.begin()
        try:
            outputs = list(handler(timers) or ())
        except Exception as exc:
            for store in stores:
                store.rollback()
            if getattr(exc, "fatal", False):
                raise
            return [], exc
        for store in stores:
            store.release()
        return outputs, None

    outputs, error = attempt(due)
    if error is None:
        result.outputs, result.fired = outputs, list(due)
        return result
    failures: list[tuple[Timer, BaseException]] = []
    if len(due) == 1:
        failures.append((due[0], error))
    else:
        for timer in due:
            outputs, error = attempt([timer])
            if error is None:
                result.outputs.extend(outputs)
                result.fired.append(timer)
            else:
                failures.append((timer, error))
    for timer, error in failures:
        failed = timer.attempts + 1
        if failed >= retry.max_attempts:
            result.given_up.append((timer, error))
        else:
            at = now + retry.delay_ms(failed)
            service.retry(timer, at)
            result.retried.append((timer, error, at))
    return result
