"""Timers that survive restarts: kept in a state store, so their changelog carries them.

A fired timer is deleted from the store in the same commit (transaction) as
the records its handler emits, so after a crash it either fired and is gone,
or did not and fires again: never lost, never doubled.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from streams.runtime.state import KeyValueStore, StoreSpec

TimerKind = Literal["event", "wall"]
TIMER_STORE = StoreSpec("timers")


@dataclass(frozen=True)
class Timer:
    """A due timer handed to ``Processor.on_timer``."""

    key: str
    when: int
    kind: TimerKind
    payload: Any = None


class TimerService:
    """Timers of one partition: one pending timer per (kind, key); rescheduling replaces it."""

    def __init__(self, store: KeyValueStore) -> None:
        self._store = store
        self._heaps: dict[str, list[tuple[int, str]]] = {"event": [], "wall": []}
        self.reload()

    def reload(self) -> None:
        """Rebuild the in-memory heaps from the store (after a restore)."""
        for heap in self._heaps.values():
            heap.clear()
        for skey, entry in self._store.items():
            kind, key = skey.split("|", 1)
            self._heaps[kind].append((int(entry["when"]), key))
        for heap in self._heaps.values():
            heapq.heapify(heap)

    def schedule(self, key: str, when: int, kind: TimerKind = "event", payload: Any = None) -> None:
        """Fire ``on_timer`` for ``key`` once time reaches ``when`` (ms): event time or wall clock."""
        self._store.put(f"{kind}|{key}", {"when": when, "payload": payload})
        heapq.heappush(self._heaps[kind], (when, key))

    def cancel(self, key: str, kind: TimerKind = "event") -> None:
        skey = f"{kind}|{key}"
        if skey in self._store:
            self._store.delete(skey)

    def get(self, key: str, kind: TimerKind = "event") -> int | None:
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
            if entry is None or int(entry["when"]) != when:
                continue
            self._store.delete(skey)
            fired.append(Timer(key, when, kind, entry.get("payload")))
        return fired

    def next_due(self, kind: TimerKind) -> int | None:
        heap = self._heaps[kind]
        while heap:
            when, key = heap[0]
            entry = self._store.get(f"{kind}|{key}")
            if entry is not None and int(entry["when"]) == when:
                return when
            heapq.heappop(heap)
        return None


Clock = Callable[[], int]
