"""Once serving, the collector keeps its start-up heap out of the GC and collects cycles on a clock."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator

import pytest

from passerelle.connectors.collector.app import settle_heap

pytestmark = pytest.mark.unit


@pytest.fixture
def restored_gc() -> Iterator[None]:
    enabled = gc.isenabled()
    yield
    if enabled:
        gc.enable()
    gc.unfreeze()


class Node:
    other: Node


def cycle() -> weakref.ref[Node]:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


def test_settling_freezes_what_exists_and_stops_counted_collections(restored_gc: None) -> None:
    async def scenario() -> None:
        kept = [{"made": "at start-up"}]
        undo = settle_heap(asyncio.get_running_loop(), interval_s=60)
        assert not gc.isenabled()
        assert gc.is_tracked(kept) and gc.get_freeze_count() > 0
        assert not any(obj is kept for obj in gc.get_objects())  # frozen: no collection walks it
        undo()
        assert gc.isenabled()

    asyncio.run(scenario())


def test_cycles_made_after_are_collected_by_the_clock(restored_gc: None) -> None:
    async def scenario() -> None:
        undo = settle_heap(asyncio.get_running_loop(), interval_s=0.05)
        try:
            garbage = cycle()
            assert garbage() is not None  # counted collections are off: nothing else frees a cycle
            for _ in range(200):  # up to 10 s on a loaded machine; a few ticks otherwise
                await asyncio.sleep(0.05)
                if garbage() is None:
                    break
            assert garbage() is None, "a garbage cycle outlived the clock's collections"
        finally:
            undo()

    asyncio.run(scenario())


def test_undo_stops_the_clock(restored_gc: None) -> None:
    async def scenario() -> None:
        settle_heap(asyncio.get_running_loop(), interval_s=0.01)()
        gc.disable()  # only the clock could collect now
        garbage = cycle()
        await asyncio.sleep(0.1)
        assert garbage() is not None
        gc.enable()

    asyncio.run(scenario())
