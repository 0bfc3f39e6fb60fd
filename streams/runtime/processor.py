"""The processor contract: pure logic over decoded records and explicit state.

A processor declares what it reads, writes and keeps; the runner does all the
Kafka work. Logic never imports Kafka, so it is tested without a broker:
``streams.runtime.testing.ProcessorDriver`` feeds it records, moves the clocks
and fires its timers in the runner's order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry

from streams.runtime.records import InRecord, OutRecord
from streams.runtime.state import KeyValueStore, StoreSpec
from streams.runtime.timers import TIMER_STORE, Timer, TimerService


@dataclass(frozen=True)
class TableSpec:
    """A compacted topic replicated whole into every instance (global-table style)."""

    name: str
    topic: str


@dataclass
class Context:
    """What a processor sees of one input partition: its stores, the tables, timers, time."""

    partition: int
    stores: dict[str, KeyValueStore]
    tables: Mapping[str, Mapping[str, Any]]
    timers: TimerService
    deleted: Mapping[str, set[Any]] = field(default_factory=dict)
    now_ms: int = 0
    stream_time: int = -1
    failures: list[tuple[InRecord, BaseException, str]] = field(default_factory=list)
    seal: Callable[[Sequence[OutRecord]], None] | None = None
    """Set by the runner: encodes one record's outputs now and raises if one cannot be written."""

    def store(self, name: str) -> KeyValueStore:
        return self.stores[name]

    def table(self, name: str) -> Mapping[str, Any]:
        return self.tables[name]

    def now(self) -> int:
        """Wall-clock time in UTC milliseconds, from the runner's (drivable) clock."""
        return self.now_ms

    def fail(self, record: InRecord, error: BaseException, stage: str = "process") -> None:
        """Hand a record to the dead-letter topic; processing of the others goes on."""
        self.failures.append((record, error, stage))

    def apply(
        self, record: InRecord, handle: Callable[[InRecord, Context], Iterable[OutRecord] | None]
    ) -> Sequence[OutRecord]:
        """Run ``handle`` on one record as a unit: its outputs and state changes, or a dead letter and nothing.

        A record whose processing raises, or one of whose outputs cannot be
        encoded or is too large to write, leaves no trace but its dead letter:
        the state it changed is rolled back, the records before and after it
        are untouched.
        """
        stores = self.stores.values()
        for store in stores:
            store.begin()
        stage = "process"
        try:
            produced = handle(record, self)
            outputs: Sequence[OutRecord] = produced if isinstance(produced, list) else list(produced or ())
            if outputs and self.seal is not None:
                stage = "serialize"
                self.seal(outputs)
        except Exception as exc:
            for store in stores:
                store.rollback()
            if getattr(exc, "fatal", False):
                raise
            self.fail(record, exc, getattr(exc, "stage", stage) if stage == "serialize" else stage)
            return ()
        for store in stores:
            store.release()
        return outputs


class Processor:
    """Base class: override ``process_one`` (or ``process`` for batch logic) and ``on_timer``."""

    # Declared on the class for fixed processors, or set per instance when topic names are configurable.
    name: str = "processor"
    inputs: Sequence[str] = ()
    outputs: Sequence[str] = ()
    stores: Sequence[StoreSpec] = ()
    tables: Sequence[TableSpec] = ()
    tombstone_inputs: Sequence[str] = ()
    """Inputs where a null value means something (a compacted table read as a stream); elsewhere it is poison."""

    def process(self, records: Sequence[InRecord], ctx: Context) -> Iterable[OutRecord]:
        """Default batch handling: one record at a time, a failing record becomes a dead letter."""
        out: list[OutRecord] = []
        for record in records:
            out.extend(ctx.apply(record, self.process_one))
        return out

    def process_one(self, record: InRecord, ctx: Context) -> Iterable[OutRecord] | None:
        raise NotImplementedError

    def on_timer(self, timers: Sequence[Timer], ctx: Context) -> Iterable[OutRecord]:
        """Emit on the absence of events; the default has no timers."""
        return ()

    def register_metrics(self, registry: CollectorRegistry) -> None:
        """Create the processor's own metrics in the registry the runner serves (default: none)."""

    def on_partition_restored(self, ctx: Context) -> Iterable[OutRecord] | None:
        """Hook after a partition's state is restored: rebuild derived indexes, enforce erasures."""
        return None

    def on_table_change(self, table: str, key: Any, old: Any, new: Any, ctx: Context) -> Iterable[OutRecord]:
        """A lookup table changed while running (``new is None``: tombstone); called once per partition.

        Every instance holds the whole table, so each one reacts for its own
        partitions: an erasure purges state everywhere without a broadcast.
        """
        return ()


def make_context(
    processor: Processor,
    partition: int,
    tables: Mapping[str, Mapping[str, Any]] | None = None,
    deleted: Mapping[str, set[Any]] | None = None,
) -> Context:
    """A context with empty stores: what the runner (and the test driver) builds before restore."""
    stores = {spec.name: KeyValueStore(spec, partition) for spec in processor.stores}
    stores[TIMER_STORE.name] = KeyValueStore(TIMER_STORE, partition)
    return Context(
        partition=partition,
        stores=stores,
        tables=tables if tables is not None else {t.name: {} for t in processor.tables},
        timers=TimerService(stores[TIMER_STORE.name]),
        deleted=deleted if deleted is not None else {t.name: set() for t in processor.tables},
    )
