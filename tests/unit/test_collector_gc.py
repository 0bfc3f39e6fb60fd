"""Once serving, the collector keeps its start-up heap out of the GC and collects young objects less often."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from passerelle.connectors.collector.app import GC_YOUNG_THRESHOLD, settle_heap

pytestmark = pytest.mark.unit


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.set_threshold(*threshold)
    gc.unfreeze()


def test_settling_freezes_what_exists_and_raises_only_the_young_threshold(restored_gc: None) -> None:
    gc.set_threshold(700, 10, 10)
    kept = [{"made": "at start-up"}]
    settle_heap()
    assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, 10, 10)
    assert gc.is_tracked(kept) and gc.get_freeze_count() > 0
    assert not any(obj is kept for obj in gc.get_objects())  # frozen: no collection walks it


def test_cycles_made_after_are_still_collected(restored_gc: None) -> None:
    settle_heap()

    class Node:
        other: Node

    a, b = Node(), Node()
    a.other, b.other = b, a
    del a, b
    assert gc.collect() >= 2
