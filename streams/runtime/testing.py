"""A driver for processors' unit tests: the runner's loop without Kafka.

A processor's behaviour depends on when the runner calls it: stream time
moves before ``process``, event-time timers fire after each partition's
records, wall-clock timers after the whole batch, a raising timer is re-armed
by ``timers.fire``, a table change reaches every partition, a restored
partition starts from its changelog. Tests that re-created that order by hand
each had their own version of it, and could pass where the runner would not
behave the same. ``ProcessorDriver`` does it once, in the order of
``Runner.step`` (keep the two in step when the runner changes):

1. lookup-table records (``table_update``): the table changes, then
   the erasure (a tombstone on a table declared ``erases``) and
   ``on_table_change`` run for every partition held; if one raises, the table
   record becomes a dead letter (stage ``table``) and the remaining partitions
   are skipped, as ``LookupTable.poll`` does;
2. input records, grouped per (topic, partition) in arrival order; per group:
   the context's clock set to the wall clock, stream time raised to the group's
   latest timestamp, ``Processor.process`` (each record a unit, through
   ``Context.apply``), its dead letters, then the event-time timers due at
   stream time;
3. on every partition held: wall-clock timers due at the wall clock, then
   timers re-armed after a failure whose retry is due;
4. a commit: keys idle longer than their store's ``ttl_ms`` are deleted
   (``Step.expired``), then every store's changes go to the driver's changelog, from which
   ``restore`` rebuilds a partition (the runner commits per interval; here
   each step is followed by one).

Stream time moves only with records, as in the runner: an idle partition's
event-time timers wait for its next record. What the driver leaves out is
Kafka's part: bytes (records come in decoded, outputs are not encoded unless
a ``seal`` or ``output_schemas`` is given), offsets and the error budget. An
output to a topic the processor does not declare raises at once: the runner
refuses it too.

Bytes, where no registry is needed: records of ``connect-json`` inputs
(``wire_formats``) can be fed as the connector wrote them (``raw``) and are
decoded in the step with the runner's codec, a record that cannot be decoded
becoming a dead letter (stage ``deserialize``); with ``output_schemas``,
outputs are encoded as the runner would (Connect JSON as written, Avro without
the registry's 5-byte header), so a value its contract refuses fails its
record.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry

from passerelle.schemas.errors import SerializationError
from passerelle.schemas.serde import encode_body, parse
from passerelle.streams.runtime import codecs
from passerelle.streams.runtime.processor import (
    Context,
    Failure,
    Processor,
    StoreOpener,
    make_context,
    partition_restored,
    table_changed,
)
from passerelle.streams.runtime.records import Headers, InRecord, OutRecord
from passerelle.streams.runtime.state import KeyValueStore, StoreSpec
from passerelle.streams.runtime.timers import TIMER_STORE, Timer, TimerKind, TimerRetry, fire

KINDS: tuple[TimerKind, ...] = ("event", "wall")
V = TypeVar("V")
_UNDECODED: Any = object()  # the value of a ``raw`` record until its step decodes it

__all__ = ["Failure", "ProcessorDriver", "Step", "offline_seal"]


class _AvroBody:
    """An Avro output as the runner encodes it, minus the registry's header: the schema still judges the value."""

    def __init__(self, schema_text: str) -> None:
        self.schema = parse(schema_text)

    def encode(self, value: Any) -> bytes:
        return encode_body(self.schema, value)


def offline_seal(
    processor: Processor, output_schemas: Mapping[str, str], wire_formats: Mapping[str, str] | None = None
) -> Callable[[Sequence[OutRecord]], None]:
    """A ``seal`` encoding each output with its topic's codec, as the runner does, without a registry."""
    formats = codecs.wire_formats(wire_formats or {}, processor.outputs, processor.name)
    encoders: dict[str, tuple[codecs.Encoder, codecs.Encoder]] = {}
    for topic, fmt in formats.items():
        schema = output_schemas.get(topic)
        if fmt == codecs.CONNECT_JSON:
            encoders[topic] = codecs.connect_json_encoders(topic, schema)
        elif schema is None:
            raise ValueError(f"no value schema configured for output topic '{topic}'")
        else:
            encoders[topic] = (_AvroBody('"string"'), _AvroBody(schema))

    def seal(outputs: Sequence[OutRecord]) -> None:
        for out in outputs:
            keys, values = encoders[out.topic]
            out.encoded = (
                None if out.key is None else keys.encode(out.key),
                None if out.value is None else values.encode(out.value),
            )

    return seal


@dataclass
class Step:
    """What one driver step did: what the runner would produce, dead-letter and commit."""

    outputs: list[OutRecord] = field(default_factory=list)
    dead_letters: list[Failure] = field(default_factory=list)
    fired: list[Timer] = field(default_factory=list)
    """Timers whose handler ran to completion (their outputs are in ``outputs``)."""
    retried: list[tuple[Timer, BaseException, int]] = field(default_factory=list)
    """Timers whose handler raised, re-armed: (timer, error, wall-clock time of the next attempt)."""
    given_up: list[tuple[Timer, BaseException]] = field(default_factory=list)
    """Timers whose handler raised too many times: dead-lettered (stage ``timer``) by the runner."""
    changelog: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    """What the commit wrote, per (store, partition): key -> decoded value, ``None`` for a tombstone."""
    expired: dict[str, int] = field(default_factory=dict)
    """Keys the commit deleted for being idle longer than their store's ``ttl_ms``, per store."""


class ProcessorDriver:
    """Runs one processor over hand-fed records, a driven wall clock and hand-fed table changes.

    ``tables`` are the lookup tables as restored at start (no change events);
    ``partitions`` are assigned at once (``started`` holds what their restore
    emitted). ``now`` is the wall clock: each step reads it, ``now=`` moves it.
    The processor's metrics are registered in ``registry``, as the runner does.
    """

    def __init__(
        self,
        processor: Processor,
        *,
        tables: Mapping[str, Mapping[Any, Any]] | None = None,
        partitions: Iterable[int] = (0,),
        now: int = 0,
        timer_retry: TimerRetry | None = None,
        seal: Callable[[Sequence[OutRecord]], None] | None = None,
        wire_formats: Mapping[str, str] | None = None,
        output_schemas: Mapping[str, str] | None = None,
        open_store: StoreOpener = KeyValueStore,
    ) -> None:
        self.processor = processor
        self.open_store = open_store
        self.now = now
        self.timer_retry = timer_retry or TimerRetry()
        self.formats = codecs.wire_formats(wire_formats or {}, (*processor.inputs, *processor.outputs), processor.name)
        if seal is None and output_schemas is not None:
            seal = offline_seal(processor, output_schemas, wire_formats)
        self.seal = seal
        declared = {spec.name for spec in processor.tables}
        unknown = set(tables or {}) - declared
        if unknown:
            raise ValueError(f"tables {sorted(unknown)} are not declared by {processor.name}: {sorted(declared)}")
        self.tables: dict[str, dict[Any, Any]] = {name: dict((tables or {}).get(name, {})) for name in declared}
        self.deleted: dict[str, set[Any]] = {name: set() for name in declared}
        self._specs: dict[str, StoreSpec] = {spec.name: spec for spec in (*processor.stores, TIMER_STORE)}
        self.registry = CollectorRegistry()
        processor.register_metrics(self.registry)
        self._contexts: dict[int, Context] = {}
        self._changelogs: dict[tuple[str, int], dict[bytes, bytes]] = {}
        self._written_at: dict[tuple[str, int], dict[bytes, int]] = {}  # the records' timestamps (wall clock)
        self._offsets: dict[tuple[str, int], int] = {}
        self.started = Step()
        for partition in partitions:
            self._assign(partition, self.started)
        self._commit(self.started)

    # --- state --------------------------------------------------------------------

    def context(self, partition: int = 0) -> Context:
        """The live context of an assigned partition: its stores, timers, stream time."""
        return self._contexts[partition]

    def store(self, spec: StoreSpec[V], partition: int = 0) -> KeyValueStore[V]:
        """A store of an assigned partition."""
        return self._contexts[partition].store(spec)

    def changelog(self, spec: StoreSpec[Any], partition: int = 0) -> dict[str, Any]:
        """A store as its changelog holds it after the last commit: what a restore would find."""
        decode = self._specs[spec.name].decode
        return {k.decode(): decode(v) for k, v in self._changelogs.get((spec.name, partition), {}).items()}

    def metric(self, name: str, **labels: str) -> float | None:
        """A sample of the processor's own metrics."""
        return self.registry.get_sample_value(name, labels)

    # --- steps ----------------------------------------------------------------------

    def record(
        self, topic: str, key: Any, value: Any, timestamp: int, partition: int = 0, headers: Headers | None = None
    ) -> InRecord:
        """An input record at the next offset of its partition."""
        offset = self._offsets.get((topic, partition), 0)
        self._offsets[(topic, partition)] = offset + 1
        return InRecord(topic, partition, offset, timestamp, key, value, headers)

    def raw(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        timestamp: int,
        partition: int = 0,
        headers: Headers | None = None,
    ) -> InRecord:
        """A record of a ``connect-json`` input as its bytes; the step decodes it as the runner does.

        Only Connect JSON: Avro bytes would need the registry (feed those decoded).
        """
        if self.formats.get(topic) != codecs.CONNECT_JSON:
            raise ValueError(f"'{topic}' is not a connect-json input of {self.processor.name}: feed it decoded")
        record = self.record(topic, None, _UNDECODED, timestamp, partition, headers)
        record.raw_key, record.raw_value = key, value
        return record

    def feed(self, *records: InRecord, now: int | None = None) -> Step:
        """One runner step with these records as its batch."""
        return self._step(records, now)

    def send(
        self, topic: str, key: Any, value: Any, timestamp: int, *, partition: int = 0, now: int | None = None
    ) -> Step:
        """One runner step with a single record."""
        return self._step([self.record(topic, key, value, timestamp, partition)], now)

    def advance(self, now: int) -> Step:
        """A step without records: the wall clock moves to ``now`` and due wall-clock timers fire."""
        return self._step((), now)

    def table_update(self, table: str, key: Any, value: Any, now: int | None = None) -> Step:
        """A step in which a lookup-table record arrives (``value=None``: a tombstone)."""
        if table not in self.tables:
            raise ValueError(f"table '{table}' is not declared by {self.processor.name}")
        return self._step((), now, (table, key, value))

    def revoke(self, partition: int = 0) -> Step:
        """The partition moves away: committed, ``on_partition_revoked``, its context dropped (until ``restore``)."""
        step = Step()
        self._commit(step)
        ctx = self._contexts.pop(partition)
        self.processor.on_partition_revoked(ctx)
        for store in ctx.stores.values():
            store.close()
        return step

    def restore(self, partition: int = 0) -> Step:
        """(Re)assign a partition: state rebuilt from the changelog, then ``on_partition_restored``.

        After a crash or a rebalance: what was not committed is gone, stream
        time starts over (the runner keeps it in memory only).
        """
        step = Step()
        self._assign(partition, step)
        self._commit(step)
        return step

    # --- the runner's order ------------------------------------------------------------

    def _step(self, records: Sequence[InRecord], now: int | None, table: tuple[str, Any, Any] | None = None) -> Step:
        if now is not None:
            self.now = now
        now = self.now
        step = Step()
        if table is not None:
            self._table_changed(step, *table)
        groups: dict[tuple[str, int], list[InRecord]] = {}
        for record in records:
            if record.topic not in self.processor.inputs:
                raise ValueError(f"{self.processor.name} does not read '{record.topic}'")
            if record.value is _UNDECODED:
                try:
                    record.key = codecs.decode_utf8_key(record.raw_key)
                    record.value = None if record.raw_value is None else codecs.decode_connect_json(record.raw_value)
                except Exception as exc:
                    record.value = None
                    step.dead_letters.append((record, exc, "deserialize"))
                    continue
            if record.value is None and record.topic not in self.processor.tombstone_inputs:
                error = SerializationError("null value (a tombstone) on a topic whose records must carry one")
                step.dead_letters.append((record, error, "deserialize"))
                continue
            groups.setdefault((record.topic, record.partition), []).append(record)
        for (_, partition), group in groups.items():
            ctx = self._contexts.get(partition)
            if ctx is None:  # the runner restores a partition it has records for but no context
                ctx = self._assign(partition, step)
            ctx.tick(now)
            ctx.stream_time = max(ctx.stream_time, max(r.timestamp for r in group))
            try:
                outputs = list(self.processor.process(group, ctx))
            except Exception as exc:
                step.dead_letters.extend((record, exc, "process") for record in group)
            else:
                self._emit(step, outputs, sealed=True)
            step.dead_letters.extend(ctx.take_failures())
            self._fire(step, ctx, ctx.timers.due("event", ctx.stream_time), now)
        for ctx in list(self._contexts.values()):
            ctx.tick(now)
            self._fire(step, ctx, ctx.timers.due("wall", now), now)
            retries = ctx.timers.due_retries(now)
            for kind in KINDS:
                self._fire(step, ctx, [t for t in retries if t.kind == kind], now)
        self._commit(step)
        return step

    def _assign(self, partition: int, step: Step) -> Context:
        ctx = make_context(self.processor, partition, self.tables, self.deleted, self.open_store)
        ctx._seal = self.seal
        ctx.tick(self.now)
        for name, store in ctx.stores.items():
            records = self._changelogs.get((name, partition))
            if records is None:  # nothing written here: a store on disk keeps what it holds
                continue
            stamps = self._written_at.get((name, partition), {})
            store.start_offset(0, 0)  # the driver's changelog has no offsets: it is replayed whole
            for key, value in records.items():
                store.restore(key, value, stamps.get(key))
            store.restored(0)
        ctx.timers.reload()
        self._contexts[partition] = ctx
        self._emit(step, partition_restored(self.processor, ctx))
        return ctx

    def _table_changed(self, step: Step, table: str, key: Any, new: Any) -> None:
        data = self.tables[table]
        old = data.get(key)
        if new is None:
            data.pop(key, None)
            self.deleted[table].add(key)
        else:
            data[key] = new
            self.deleted[table].discard(key)
        spec = next(spec for spec in self.processor.tables if spec.name == table)
        try:
            for ctx in list(self._contexts.values()):
                self._emit(step, table_changed(self.processor, ctx, spec, key, old, new))
        except Exception as exc:
            topic = spec.topic
            step.dead_letters.append((InRecord(topic, -1, -1, self.now, key, new), exc, "table"))

    def _fire(self, step: Step, ctx: Context, due: list[Timer], now: int) -> None:
        if not due:
            return
        handler = self.processor.on_timer
        done = fire(due, lambda timers: handler(timers, ctx), ctx.stores.values(), ctx.timers, now, self.timer_retry)
        self._emit(step, done.outputs)
        step.fired.extend(done.fired)
        step.retried.extend(done.retried)
        step.given_up.extend(done.given_up)

    def _emit(self, step: Step, outputs: list[OutRecord], sealed: bool = False) -> None:
        """Outputs of ``process`` were sealed record by record; others are sealed here, one by one."""
        for out in outputs:
            if out.topic not in self.processor.outputs:
                raise AssertionError(f"{self.processor.name} emitted to undeclared topic '{out.topic}': {out!r}")
            if not sealed and self.seal is not None:
                try:
                    self.seal([out])
                except Exception as exc:
                    stage = getattr(exc, "stage", "produce") if isinstance(exc, SerializationError) else "produce"
                    stand_in = InRecord(out.topic, -1, -1, -1 if out.timestamp is None else out.timestamp,
                                        out.key, out.value)  # fmt: skip
                    step.dead_letters.append((stand_in, exc, stage))
                    continue
            step.outputs.append(out)

    def _commit(self, step: Step) -> None:
        for partition, ctx in self._contexts.items():
            ctx.tick(self.now)
            for name, count in ctx.expire().items():
                step.expired[name] = step.expired.get(name, 0) + count
            for name, store in ctx.stores.items():
                changes = store.take_changes()
                store.committed()  # a store on disk writes what the commit holds
                if not changes:
                    continue
                log = self._changelogs.setdefault((name, partition), {})
                stamps = self._written_at.setdefault((name, partition), {})
                written = step.changelog.setdefault((name, partition), {})
                for key, value in changes:
                    if value is None:
                        log.pop(key, None)
                        stamps.pop(key, None)
                    else:
                        log[key] = value
                        stamps[key] = self.now
                    written[key.decode()] = None if value is None else self._specs[name].decode(value)
