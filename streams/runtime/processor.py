"""The processor contract: pure logic over decoded records and explicit state.

A processor declares what it reads, writes and keeps; the runner does all the
Kafka work. Logic never imports Kafka, so it is tested without a broker:
``passerelle.streams.runtime.testing.ProcessorDriver`` feeds it records, moves the clocks
and fires its timers in the runner's order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client.registry import Collector

from passerelle.streams.runtime.records import InRecord, OutRecord
from passerelle.streams.runtime.state import EXPIRY_BUDGET, KeyValueStore, StoreSpec
from passerelle.streams.runtime.timers import TIMER_STORE, Timer, TimerService

V = TypeVar("V")

Failure = tuple[InRecord, BaseException, str]
"""A dead letter to write: the record, the error, the stage."""


@dataclass(frozen=True)
class TableSpec:
    """A compacted topic replicated whole into every instance (global-table style)."""

    name: str
    topic: str
    erases: bool = False
    """A tombstone on this table erases a person (its key): every store declaring ``person`` forgets their keys."""
    erasures: Callable[[Any, Any], Erasure | None] | None = None
    """For a table of requests rather than tombstones: who a record (key, value) erases, or None."""


@dataclass(frozen=True)
class Erasure:
    """Who a table record erases: persons (every key the index holds for them) and single keys (a visitor)."""

    persons: Sequence[str] = ()
    keys: Sequence[str] = ()


@dataclass
class Context:
    """What a processor sees of one input partition: its stores, the tables, timers, time.

    The runner (or the test driver) sets the clock, collects dead letters and
    seals outputs through the underscored fields; a processor uses the methods.
    """

    partition: int
    stores: dict[str, KeyValueStore[Any]]
    tables: Mapping[str, Mapping[str, Any]]
    timers: TimerService
    deleted: Mapping[str, set[Any]] = field(default_factory=dict)
    """Keys each table has deleted (tombstones): erasures to honour for records that arrive late."""
    stream_time: int = -1
    _now: int = field(default=0, repr=False)
    _failures: list[Failure] = field(default_factory=list, repr=False)
    _seal: Callable[[Sequence[OutRecord]], None] | None = field(default=None, repr=False)
    """Encodes one record's outputs now and raises if one cannot be written."""

    def store(self, spec: StoreSpec[V]) -> KeyValueStore[V]:
        """The partition's store declared by ``spec`` (the processor's ``stores`` must include it)."""
        return self.stores[spec.name]

    def table(self, name: str) -> Mapping[str, Any]:
        return self.tables[name]

    def now(self) -> int:
        """Wall-clock time in UTC milliseconds, read once per batch from the runner's (drivable) clock."""
        return self._now

    def tick(self, now: int) -> None:
        """Runner side: the wall clock of this batch, for the processor and for the stores (write times)."""
        self._now = now
        for store in self.stores.values():
            store.now = now

    def expire(self, budget: int = EXPIRY_BUDGET) -> dict[str, int]:
        """Runner side, at commit: delete keys idle longer than their store's ``ttl_ms``; count per store."""
        expired = {}
        for name, store in self.stores.items():
            if store.spec.ttl_ms is not None and (count := store.expire(budget)):
                expired[name] = count
        return expired

    def fail(self, record: InRecord, error: BaseException, stage: str = "process") -> None:
        """Hand a record to the dead-letter topic; processing of the others goes on."""
        self._failures.append((record, error, stage))

    def take_failures(self) -> list[Failure]:
        """Runner side: the dead letters handed over since the last call."""
        failures, self._failures = self._failures, []
        return failures

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
            if outputs and self._seal is not None:
                stage = "serialize"
                self._seal(outputs)
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
    metrics: Sequence[Collector] = ()
    """The processor's own metrics, created unregistered when it is built (``registry=None``): the runner
    registers them in the registry it serves, the test driver in its own."""

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
        """Register ``metrics`` in the registry the runner serves."""
        for collector in self.metrics:
            registry.register(collector)

    def on_partition_restored(self, ctx: Context) -> Iterable[OutRecord] | None:
        """A partition is now processed here, its state restored (erasures already enforced)."""
        return None

    def on_partition_revoked(self, ctx: Context) -> None:
        """A partition is no longer processed here (rebalance, shutdown, lost): forget what you keep about it.

        Its stores were committed (or, for a lost partition, the next owner
        restores what was); nothing can be emitted any more. Counters and
        caches kept outside the stores are what this hook is for.
        """

    def on_erased(self, store: StoreSpec[Any], key: str, value: Any, ctx: Context) -> Iterable[OutRecord] | None:
        """A key of a ``person`` store was deleted because its person was erased: retract what it emitted."""
        return None

    def on_table_change(self, table: str, key: Any, old: Any, new: Any, ctx: Context) -> Iterable[OutRecord]:
        """A lookup table changed while running (``new is None``: tombstone); called once per partition.

        Every instance holds the whole table, so each one reacts for its own
        partitions: an erasure purges state everywhere without a broadcast.
        """
        return ()


def erase(processor: Processor, ctx: Context, person: str | None = None, *, key: str | None = None) -> list[OutRecord]:
    """Delete every key of ``person`` (or the one ``key``) in the partition's ``person`` stores; ``on_erased`` for each.

    ``key`` serves requests that name one visitor rather than a person: in
    the stores keyed by visitor id, that visitor's record alone.
    """
    out: list[OutRecord] = []
    for spec in processor.stores:
        if spec.person is None:
            continue
        store = ctx.stores[spec.name]
        keys = store.keys_of(person) if person is not None else [key] if key is not None and key in store else []
        for erased in keys:
            value = store.get(erased)
            store.delete(erased)
            out.extend(processor.on_erased(spec, erased, value, ctx) or ())
    return out


def _apply(processor: Processor, ctx: Context, erasure: Erasure | None) -> list[OutRecord]:
    out: list[OutRecord] = []
    if erasure is not None:
        for person in erasure.persons:
            out.extend(erase(processor, ctx, person))
        for key in erasure.keys:
            out.extend(erase(processor, ctx, key=key))
    return out


def table_changed(
    processor: Processor, ctx: Context, table: TableSpec, key: Any, old: Any, new: Any
) -> list[OutRecord]:
    """What one partition does on a table change: the erasure first, then the processor's own hook."""
    out = erase(processor, ctx, str(key)) if table.erases and new is None else []
    if table.erasures is not None and new is not None:
        out.extend(_apply(processor, ctx, table.erasures(key, new)))
    out.extend(processor.on_table_change(table.name, key, old, new, ctx) or ())
    return out


def partition_restored(processor: Processor, ctx: Context) -> list[OutRecord]:
    """After a restore: erasures that happened while the partition was elsewhere, then the processor's hook.

    Tombstones are in ``ctx.deleted``; erasure requests are the table's records
    (held as long as the table's topic keeps them).
    """
    out: list[OutRecord] = []
    for table in processor.tables:
        erased = ctx.deleted.get(table.name) if table.erases else None
        if erased:
            # Per erased person, not over every person held: a store on disk looks each one up in its index.
            for person in sorted({str(k) for k in erased}):
                out.extend(erase(processor, ctx, person))
        if table.erasures is not None:
            for key, value in list(ctx.tables.get(table.name, {}).items()):
                out.extend(_apply(processor, ctx, table.erasures(key, value)))
    out.extend(processor.on_partition_restored(ctx) or ())
    return out


def is_erased(processor: Processor, ctx: Context, *ids: str | None) -> bool:
    """Whether any of these ids (a customer, a visitor) was erased by a table: late records must not bring
    the person back (while the table holds the tombstone or the request)."""
    for table in processor.tables:
        if table.erases and any(i is not None and i in ctx.deleted.get(table.name, ()) for i in ids):
            return True
        if table.erasures is not None:
            records = ctx.tables.get(table.name, {})
            for i in ids:
                value = records.get(i) if i is not None else None
                if value is not None and table.erasures(i, value) is not None:
                    return True
    return False


StoreOpener = Callable[[StoreSpec[Any], int], KeyValueStore[Any]]
"""Builds the store of one partition: in memory, or on disk (``stores.StateConfig.opener``)."""


def make_context(
    processor: Processor,
    partition: int,
    tables: Mapping[str, Mapping[str, Any]] | None = None,
    deleted: Mapping[str, set[Any]] | None = None,
    open_store: StoreOpener = KeyValueStore,
) -> Context:
    """A context with its stores as they are before restore: what the runner (and the test driver) builds."""
    stores = {spec.name: open_store(spec, partition) for spec in processor.stores}
    stores[TIMER_STORE.name] = open_store(TIMER_STORE, partition)
    return Context(
        partition=partition,
        stores=stores,
        tables=tables if tables is not None else {t.name: {} for t in processor.tables},
        timers=TimerService(stores[TIMER_STORE.name]),
        deleted=deleted if deleted is not None else {t.name: set() for t in processor.tables},
    )
