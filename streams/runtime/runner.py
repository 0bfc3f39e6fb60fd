"""The runner: a consumer-group member that feeds a processor and commits its effects.

Per loop: consume a batch, decode it (Confluent Avro with the project serde, or
Kafka Connect JSON for topics at the Connect edge: ``codecs.py``), hand each input
partition's records to the processor with that partition's state, encode and
produce what it returns, fire due timers, and every commit interval write the
changed state to the changelogs and commit. With exactly-once the outputs,
the changelog writes, the dead letters and the consumed offsets form one Kafka
transaction (``send_offsets_to_transaction``), committed per interval, never
per record.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    IsolationLevel,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import NewTopic, OffsetSpec

from passerelle.schemas import clients
from passerelle.schemas.clients.kafka import classify, topic_error
from passerelle.schemas.errors import RegistryUnavailableError, SerializationError
from passerelle.schemas.serde import AvroDecoder, AvroEncoder, SchemaCache, registry_fetcher
from passerelle.streams.runtime import codecs
from passerelle.streams.runtime.config import RunnerConfig
from passerelle.streams.runtime.deadletter import DeadLetterRefusedError, dead_letter_record, write_dead_letter
from passerelle.streams.runtime.metrics import RuntimeMetrics
from passerelle.streams.runtime.processor import Context, Processor, make_context, partition_restored, table_changed
from passerelle.streams.runtime.records import InRecord, OutRecord
from passerelle.streams.runtime.restore import RestoreProgress
from passerelle.streams.runtime.state import StoreSpec
from passerelle.streams.runtime.stores import StateConfig
from passerelle.streams.runtime.tables import LookupTable
from passerelle.streams.runtime.timers import TIMER_STORE, Timer, TimerKind, fire

log = logging.getLogger(__name__)

LATENCY_SAMPLE = 16  # records per batch whose event-to-emit latency is observed
STABLE_WAIT_S = 5.0  # longest wait for a just-committed transaction's markers before a restore (``_changelog_ends``)


class FatalRuntimeError(Exception):
    """The instance cannot go on (fenced, misconfigured): exit and let the supervisor restart it."""

    user_error = True
    exit_code = 5
    fatal = True  # never turned into a dead letter by the per-record handling


class RecordTooLargeError(SerializationError):
    """An output or a state value larger than a Kafka record may be: dead-lettered, never produced."""

    def __init__(self, message: str, stage: str = "produce") -> None:
        super().__init__(message, stage)


class NullValueError(SerializationError):
    """A null value (tombstone) on an input where records must carry a value."""


def _hidden(conn: clients.Connection) -> str:
    """Metadata leaves out topics an ACL does not let a principal describe: say so next to "does not exist"."""
    advice = " (run `passerelle topics create`)"
    if conn.principal:
        return f" or is not visible to '{conn.principal}'{advice[:-1]}, or grant it DESCRIBE)"
    return advice


class Runner:
    """Runs one ``Processor`` as a member of the consumer group ``config.app_id``."""

    def __init__(
        self,
        processor: Processor,
        config: RunnerConfig,
        metrics: RuntimeMetrics | None = None,
        state: StateConfig | None = None,
    ) -> None:
        self.processor = processor
        self.config = config
        self.state = state or StateConfig()
        self.metrics = metrics or RuntimeMetrics()
        self._name = processor.name
        self._stop = False
        self._contexts: dict[int, Context] = {}
        self._assigned: set[tuple[str, int]] = set()
        self._positions: dict[tuple[str, int], int] = {}
        self._uncommitted = False
        self._last_commit = 0
        self._tables: dict[str, LookupTable] = {}
        self._stores: list[StoreSpec] = [*processor.stores, TIMER_STORE]
        self._open_store = self.state.opener(config.app_id, config.instance_id)
        self._on_disk = any(self.state.backend_of(spec) != "memory" for spec in self._stores)
        self._changelog_next: dict[tuple[str, int], int] = {}  # next offset of each changelog partition we wrote
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._restore_consumer: Consumer | None = None
        self._in_transaction = False
        self._last_full_gc = time.monotonic()
        self._caught_up = False
        self._dropped = 0  # partition hand-overs so far (records fetched before one may be stale)
        self._aborts = 0
        self._closing = False
        self._parked: dict[int, tuple[Context, dict[str, int]]] = {}  # revoked in an eager rebalance (``_park``)
        self._strategy = ""
        self._eager = False
        self._admin: Any = None
        self._timer_retry = config.timer_retry
        self.records_in = 0  # plain counts for tools and benchmarks; Prometheus has the labelled ones
        self.records_out = 0
        m = self.metrics
        self._m_in = {t: m.records_in.labels(self._name, t) for t in processor.inputs}
        self._m_out = {t: m.records_out.labels(self._name, t) for t in processor.outputs}
        self._m_batch = m.batch_size.labels(self._name)
        self._m_proc = m.processing_seconds.labels(self._name)
        self._m_e2e = m.event_to_emit_seconds.labels(self._name)

    # --- lifecycle ------------------------------------------------------------

    def stop(self, *_: Any) -> None:
        """Ask the loop to finish its batch, commit and leave the group (signal-safe)."""
        self._stop = True

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def run(self, max_seconds: float | None = None, until: Callable[[], bool] | None = None) -> None:
        """Run until ``stop()``/SIGTERM, ``max_seconds`` or ``until()``, then commit and leave cleanly."""
        self._setup()
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        try:
            while not self._stop:
                if deadline is not None and time.monotonic() > deadline:
                    break
                if until is not None and until():
                    break
                self.step()
            self._commit(sync=True)
        finally:
            self._close()

    def step(self) -> None:
        """One loop turn: consume, table updates, process, timers, maybe commit."""
        assert self._consumer is not None
        self._begin()
        msgs = self._next_batch()
        now = self.config.clock()
        for table in self._tables.values():
            table.poll()
        if msgs:
            self._handle(msgs, now)
        self._fire_wall_timers(now)
        # The clock again: a slow turn (a registry outage, a huge batch) must not postpone the commit it made due.
        if self.config.commit_due(self.config.clock() - self._last_commit, self._caught_up, self._uncommitted):
            self._commit()

    def _next_batch(self) -> list[Any]:
        """Whatever is queued, else wait for the first record only.

        ``consume(n, timeout)`` waits until ``n`` records or the timeout, which
        adds up to the whole timeout of latency at low rates; this returns as
        soon as anything arrives and still forms full batches under load.
        """
        consumer = self._consumer
        assert consumer is not None
        msgs: list[Any] = consumer.consume(self.config.batch_size, timeout=0)
        if msgs:
            self._caught_up = self.config.caught_up(len(msgs), self.config.batch_size)
            return msgs
        self._caught_up = True  # nothing was waiting: we are at the head of the input
        first = consumer.poll(self.config.poll_timeout_s)
        if first is None:
            return []
        dropped = self._dropped
        msgs = [first, *consumer.consume(self.config.batch_size - 1, timeout=0)]
        if self._dropped != dropped:
            # Partitions were revoked by the second call, after ``first`` was fetched: its new owner
            # processes it from the committed offset, so must not we (nor write its state).
            msgs = [m for m in msgs if m.error() is not None or (m.topic(), m.partition()) in self._assigned]
        return msgs

    # --- set-up ---------------------------------------------------------------

    def _setup(self) -> None:
        cfg = self.config
        self._strategy = self._assignment_strategy()
        self._eager = "cooperative-sticky" not in self._strategy and (
            cfg.consumer_overrides.get("group.protocol", "classic") == "classic"
        )  # every partition is revoked on each rebalance
        self.processor.register_metrics(self.metrics.registry)
        if cfg.metrics_port is not None:
            self.metrics.serve(cfg.metrics_port)
        conn = cfg.conn
        self._watch = clients.ErrorWatch(conn)
        meta = clients.ensure_reachable(conn)
        registry = clients.registry_client(conn)
        cache = SchemaCache(registry_fetcher(registry))
        try:
            formats = codecs.wire_formats(cfg.wire_formats, (*self.processor.inputs, *self.processor.outputs),
                                          self._name)  # fmt: skip
        except ValueError as exc:
            raise FatalRuntimeError(str(exc)) from None
        self._decode_value = AvroDecoder(cache).decode  # lookup tables: whatever their writers registered
        self._decode_key = self._key_decoder(AvroDecoder(cache))
        # One decoder per input topic, chosen here: the per-record path is a dict lookup whatever the format.
        self._decoders: dict[str, codecs.Decode] = {}
        self._key_decoders: dict[str, codecs.DecodeKey] = {}
        for topic in self.processor.inputs:
            if formats[topic] == codecs.CONNECT_JSON:
                self._decoders[topic], self._key_decoders[topic] = codecs.decode_connect_json, codecs.decode_utf8_key
            else:
                self._decoders[topic] = AvroDecoder(cache, reader_schema=cfg.input_schemas.get(topic)).decode
                self._key_decoders[topic] = self._decode_key
        self._tombstone_inputs = frozenset(self.processor.tombstone_inputs)
        self._registry_backoff = 0.0
        self._registry_warned = 0.0
        self._encoders: dict[str, codecs.Encoder] = {}
        self._key_encoders: dict[str, codecs.Encoder] = {}
        for topic in self.processor.outputs:
            schema = cfg.output_schemas.get(topic)
            if formats[topic] == codecs.CONNECT_JSON:  # nothing registered: the schema travels in each record
                try:
                    self._key_encoders[topic], self._encoders[topic] = codecs.connect_json_encoders(topic, schema)
                except ValueError as exc:
                    raise FatalRuntimeError(f"output topic '{topic}': {exc}") from None
                continue
            if schema is None:
                raise FatalRuntimeError(f"no value schema configured for output topic '{topic}'")
            self._encoders[topic] = AvroEncoder.for_subject(
                registry, f"{topic}-value", schema, cfg.auto_register_schemas
            )
            self._key_encoders[topic] = AvroEncoder.for_subject(
                registry, f"{topic}-key", cfg.key_schema, cfg.auto_register_schemas
            )
        self._ensure_changelogs(meta)
        producer_conf: dict[str, Any] = {"linger.ms": 5, "queue.buffering.max.messages": 500_000}
        if cfg.exactly_once:
            producer_conf["transactional.id"] = cfg.transactional_id
            producer_conf["transaction.timeout.ms"] = cfg.transaction_timeout_ms
            # Right after a commit the coordinator is still writing markers and answers the next
            # transaction's first request with CONCURRENT_TRANSACTIONS; librdkafka retries after
            # retry.backoff.ms (100 ms by default), which made send_offsets_to_transaction take ~90 ms
            # (measured: p50 90 ms -> 9 ms with 10 ms). Java clients use a short backoff here too.
            producer_conf["retry.backoff.ms"] = 10
        producer_conf.update(cfg.producer_overrides)
        self._producer = clients.producer(conn, producer_conf, watch=self._watch)
        if cfg.exactly_once:
            try:
                self._producer.init_transactions(60)
            except KafkaException as exc:
                known = classify(exc.args[0], conn, f"'{cfg.transactional_id}'") if exc.args else None
                raise known or FatalRuntimeError(f"cannot initialise transactions: {exc}") from None
            self._begin()
        for spec in self.processor.tables:
            table = LookupTable(
                spec.name,
                spec.topic,
                conn,
                self._decode_key,
                self._decode_value,
                on_error=self._table_dead_letter,
            )
            started = time.monotonic()
            count = table.restore()
            log.info("lookup table %s: %d records in %.2fs", spec.name, count, time.monotonic() - started)
            self._tables[spec.name] = table
        self._table_data = {name: t.data for name, t in self._tables.items()}
        self._table_deleted = {name: t.deleted for name, t in self._tables.items()}
        for name, table in self._tables.items():
            table.on_change = self._table_changed(name)
        self._restore_consumer = clients.consumer(
            conn,
            f"{cfg.app_id}-restore",
            {
                "enable.partition.eof": True,
                "isolation.level": "read_committed",
                "fetch.wait.max.ms": 10,  # restore reads to the end: do not let the broker hold empty fetches
                # A restore reads as fast as the client can. By default librdkafka pauses a partition's fetches
                # for 1 s once its prefetch queue is full (64 MB): a bare read loop over bench state's changelog
                # topped at ~170,000 records/s here, with these ~540,000, and 180 MB of RSS rather than 230.
                "fetch.queue.backoff.ms": 5,
                "queued.max.messages.kbytes": 8192,
            },
            watch=self._watch,
        )
        consumer_conf: dict[str, Any] = {
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "partition.assignment.strategy": self._strategy,
            "session.timeout.ms": cfg.session_timeout_ms,
            "fetch.wait.max.ms": cfg.fetch_wait_max_ms,
            "fetch.min.bytes": cfg.fetch_min_bytes,
        }
        if cfg.static_membership:
            consumer_conf["group.instance.id"] = cfg.transactional_id
        consumer_conf.update(cfg.consumer_overrides)
        self._consumer = clients.consumer(conn, cfg.app_id, consumer_conf, watch=self._watch)
        self._consumer.subscribe(
            list(self.processor.inputs), on_assign=self._on_assign, on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )  # fmt: skip
        self._last_commit = cfg.clock()

    def _assignment_strategy(self) -> str:
        """The configured strategy; one that can split co-partitioned inputs is refused for several inputs.

        State, timers and changelogs are per partition number: partition N of
        every input must be on the instance that holds partition N's state, or
        two instances would write the same changelog partition. librdkafka's
        ``range`` gives partition N of every topic with the same partition
        count to the same member; ``roundrobin`` and ``cooperative-sticky`` do
        not promise it.
        """
        inputs = list(dict.fromkeys(self.processor.inputs))
        strategy = str(
            self.config.consumer_overrides.get("partition.assignment.strategy") or self.config.assignment_strategy
        )
        if len(inputs) > 1 and [s.strip() for s in strategy.split(",")] != ["range"]:
            raise FatalRuntimeError(
                f"processor {self._name} reads {len(inputs)} inputs ({', '.join(inputs)}) and keeps state per "
                f"partition number: it needs the 'range' assignment strategy, which keeps partition N of every "
                f"input on one instance, not '{strategy}'"
            )
        return strategy

    def _key_decoder(self, decoder: AvroDecoder) -> Any:
        decode = decoder.decode

        def decode_key(data: bytes | None) -> Any:
            # Keys from other tools may be plain UTF-8; Confluent-framed keys start with magic byte 0.
            if data is None:
                return None
            if len(data) >= 5 and data[0] == 0:
                return decode(data)
            return data.decode()

        return decode_key

    def _ensure_changelogs(self, meta: Any) -> None:
        """Changelogs are compacted and co-partitioned with the input: partition p holds p's state."""
        cfg = self.config
        conn = cfg.conn
        admin = self._admin = clients.admin_client(conn, watch=self._watch)
        counts: dict[str, int] = {}
        for topic in self.processor.inputs:
            denied = topic_error(meta, topic, conn, admin)
            if denied is not None:
                raise denied
            tmeta = meta.topics.get(topic)
            if tmeta is None or tmeta.error is not None:
                raise FatalRuntimeError(f"input topic '{topic}' does not exist{_hidden(conn)}")
            counts[topic] = len(tmeta.partitions)
        if len(set(counts.values())) > 1:
            listing = ", ".join(f"'{t}' has {n}" for t, n in counts.items())
            raise FatalRuntimeError(
                f"processor {self._name}: inputs are not co-partitioned ({listing} partitions); state is kept "
                f"per partition number, so every input needs the same partition count (and the same key and "
                f"partitioner)"
            )
        partitions = max(counts.values(), default=0)
        for spec in self._stores:
            existing = meta.topics.get(spec.changelog_topic(cfg.app_id))
            if existing is not None and existing.error is None and len(existing.partitions) != partitions:
                raise FatalRuntimeError(
                    f"changelog '{spec.changelog_topic(cfg.app_id)}' has {len(existing.partitions)} partitions, "
                    f"the inputs of {self._name} {partitions}: partition p's state would be read from the wrong "
                    f"place (the inputs were repartitioned: reset the application's state)"
                )
        for topic in (*self.processor.outputs, cfg.dead_letter_topic):
            denied = topic_error(meta, topic, conn, admin)
            if denied is not None:
                raise denied
            if topic not in meta.topics:
                raise FatalRuntimeError(f"output topic '{topic}' does not exist{_hidden(conn)}")
        missing = [
            NewTopic(
                spec.changelog_topic(cfg.app_id),
                partitions,
                cfg.changelog_replication,
                config={"cleanup.policy": "compact", "min.compaction.lag.ms": "0"},
            )
            for spec in self._stores
            if spec.changelog_topic(cfg.app_id) not in meta.topics
        ]
        if missing:
            for topic, fut in admin.create_topics(missing).items():
                try:
                    fut.result(30)
                except KafkaException as exc:
                    if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                        known = classify(exc.args[0], conn, f"'{topic}'")
                        raise known or FatalRuntimeError(f"cannot create changelog {topic}: {exc}") from None
            # A topic just created reaches the metadata of every broker a moment later: wait for it, or the
            # first restore asks for the end of a partition the clients do not know yet.
            names = {t.topic for t in missing}
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                listed = admin.list_topics(timeout=10).topics
                if all(n in listed and listed[n].error is None and len(listed[n].partitions) == partitions
                       for n in names):  # fmt: skip
                    break
                time.sleep(0.1)

    # --- rebalance ------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        fresh = []
        for tp in partitions:
            self._assigned.add((tp.topic, tp.partition))
            if tp.partition not in self._contexts and tp.partition not in fresh:
                fresh.append(tp.partition)
        self._check_copartitioned()
        self._restore_partitions(fresh)
        self._parked.clear()  # those that did not come back
        log.info("%s assigned %s", self._name, sorted((tp.topic, tp.partition) for tp in partitions))

    def _check_copartitioned(self) -> None:
        """Partition N of every input, or none of them: another member would hold the rest of N's state.

        ``range`` guarantees it when every member subscribes to the same
        inputs; a member of the group running another version (other inputs)
        would break it, and the state with it: stop rather than corrupt.
        """
        inputs = set(self.processor.inputs)
        if len(inputs) < 2:
            return
        per_topic: dict[str, set[int]] = {t: set() for t in inputs}
        for topic, partition in self._assigned:
            if topic in per_topic:
                per_topic[topic].add(partition)
        if len({frozenset(ps) for ps in per_topic.values()}) > 1:
            listing = "; ".join(f"{t}: {sorted(ps)}" for t, ps in sorted(per_topic.items()))
            raise FatalRuntimeError(
                f"processor {self._name} was assigned different partitions of its inputs ({listing}): do all "
                f"members of group '{self.config.app_id}' read the same inputs with the 'range' strategy?"
            )

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Commit everything processed so far before the partitions move on.
        aborts = self._aborts
        self._commit(sync=True)
        dropped = self._drop(partitions)
        # An eager rebalance (range) revokes every partition, and most come back: keep their state, so
        # that the next assignment restores only what someone else changed meanwhile (``_restore_partitions``).
        if dropped and self._eager and not self._closing and self._aborts == aborts and not self._on_disk:
            self._park(dropped)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Partitions already belong to someone else: our uncommitted work must not land.
        if self.config.exactly_once and self._in_transaction and self._producer is not None:
            self._abort()
        self._parked.clear()
        self._drop(partitions)

    def _drop(self, partitions: list[TopicPartition]) -> dict[int, Context]:
        """Forget revoked partitions; returns the contexts of the partition numbers no longer held at all."""
        self._dropped += 1
        for tp in partitions:
            self._assigned.discard((tp.topic, tp.partition))
            self._positions.pop((tp.topic, tp.partition), None)
        still = {p for _, p in self._assigned}
        dropped: dict[int, Context] = {}
        for tp in partitions:
            if tp.partition not in still and (ctx := self._contexts.pop(tp.partition, None)) is not None:
                dropped[tp.partition] = ctx
                self.processor.on_partition_revoked(ctx)
                for store in ctx.stores.values():
                    store.close()  # on disk: what was committed stays there (in memory: kept if parked)
        if dropped:
            for spec in self.processor.stores:
                self.metrics.state_keys.labels(self._name, spec.name).set(self._state_size(spec.name))
        return dropped

    def _park(self, contexts: dict[int, Context]) -> None:
        """Keep just-committed contexts, with the end offset of each changelog partition, until the next assignment.

        Everything they hold was committed (nothing aborted), so their state is
        their changelogs up to those offsets, plus at most the records of our
        own last transaction (the end a ``read_committed`` client sees stops
        before a transaction whose markers are not written yet). If a
        partition comes back, ``_restore_partitions`` replays its changelogs
        from those offsets onto the kept state: our own last records (the
        values it already holds) and whatever another owner wrote meanwhile.
        """
        assert self._restore_consumer is not None
        app = self.config.app_id
        self._parked.clear()
        for p, ctx in contexts.items():
            ends: dict[str, int] = {}
            try:
                for spec in self._stores:
                    topic = spec.changelog_topic(app)
                    ends[topic] = self._restore_consumer.get_watermark_offsets(
                        TopicPartition(topic, p), timeout=10, cached=False
                    )[1]
            except KafkaException as exc:
                log.debug("%s: partition %d not kept (%s): restored if it comes back", self._name, p, exc)
                continue
            self._parked[p] = (ctx, ends)

    def _changelog_ends(self, partitions: list[int]) -> dict[int, dict[str, tuple[int, int]]]:
        """(low, end) of each changelog partition, end = where a ``read_committed`` restore stops.

        That end (the last stable offset) stays before a transaction whose
        markers are not written yet. A transaction the previous owner committed
        just before handing the partition over can be in that state for a few
        milliseconds: a restore stopping there would miss its last writes. So,
        with transactions, wait (a bounded time) until the stable end reaches
        the high watermark seen at first; what still waits after that is an
        open transaction of a dead instance, which will be aborted.
        """
        rc = self._restore_consumer
        assert rc is not None
        app = self.config.app_id
        where = [(spec.changelog_topic(app), p) for p in partitions for spec in self._stores]

        def query(wanted: list[tuple[str, int]]) -> dict[tuple[str, int], tuple[int, int]]:
            return {(t, p): _watermarks(rc, t, p) for t, p in wanted}

        ends = query(where)
        if self.config.exactly_once and self._admin is not None and where:
            highs = self._high_watermarks(where)
            pending = [w for w in where if ends[w][1] < highs.get(w, -1)]
            deadline = time.monotonic() + STABLE_WAIT_S
            while pending and time.monotonic() < deadline:
                time.sleep(0.005)
                ends.update(query(pending))
                pending = [w for w in pending if ends[w][1] < highs[w]]
            if pending:
                log.warning("%s: changelog partitions %s still have an open transaction after %.0f s (a dead "
                            "instance's, aborted at its timeout): restoring what is committed", self._name,
                            sorted(pending), STABLE_WAIT_S)  # fmt: skip
        return {p: {t: ends[(t, q)] for t, q in where if q == p} for p in partitions}

    def _high_watermarks(self, where: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """High watermarks (``read_uncommitted`` ends) in one request; empty if the broker does not answer."""
        assert self._admin is not None
        try:
            futures = self._admin.list_offsets(
                {TopicPartition(t, p): OffsetSpec.latest() for t, p in where},
                isolation_level=IsolationLevel.READ_UNCOMMITTED, request_timeout=10,
            )  # fmt: skip
            return {(tp.topic, tp.partition): fut.result().offset for tp, fut in futures.items()}
        except Exception as exc:  # KafkaException, or a timeout of the future
            log.warning("%s: high watermarks of the changelogs not known (%s)", self._name, exc)
            return {}

    def _state_size(self, store: str) -> int:
        return sum(len(ctx.stores[store]) for ctx in self._contexts.values())

    def _restore_partition(self, partition: int) -> None:
        self._restore_partitions([partition])

    def _restore_partitions(self, partitions: list[int]) -> None:
        """Rebuild the partitions' stores from their changelogs before processing resumes.

        All changelog partitions are read at once, empty ones are skipped by
        their watermarks, and the loop never waits for a full batch: restoring
        an empty changelog used to cost ~1 s per partition inside the rebalance
        callback, which stalled every other partition of the instance.
        """
        assert self._restore_consumer is not None
        if not partitions:
            return
        started = time.monotonic()
        rc = self._restore_consumer
        app = self.config.app_id
        ends = self._changelog_ends(partitions)
        # State kept from an eager rebalance (``_park``) is read on from where it was committed, if the
        # changelogs still hold that offset; everything else from the beginning.
        kept: dict[int, dict[str, int]] = {}
        contexts: dict[int, Context] = {}
        for p in partitions:
            ctx = make_context(self.processor, p, self._table_data, self._table_deleted, self._open_store)
            ctx._seal = self._seal
            parked = self._parked.pop(p, None)
            if parked is not None and all(ends[p][t][0] <= at <= ends[p][t][1] for t, at in parked[1].items()):
                old, kept[p] = parked
                for name, store in ctx.stores.items():
                    store.take_over(old.stores[name])  # a new context: processors see a restored partition
                ctx.stream_time = old.stream_time
            contexts[p] = ctx
        targets: dict[tuple[str, int], Any] = {}
        starts: list[TopicPartition] = []
        totals: dict[int, int] = {}  # records to read per partition (offsets: compaction makes it an upper bound)
        resumed: set[int] = set()  # partitions whose stores on disk read on from their checkpoint
        for p, ctx in contexts.items():
            for spec in self._stores:
                topic = spec.changelog_topic(app)
                low, high = ends[p][topic]
                store = ctx.stores[spec.name]
                checkpoint = None if p in kept else store.start_offset(low, high)
                if checkpoint is not None:
                    resumed.add(p)
                start = kept[p][topic] if p in kept else low if checkpoint is None else checkpoint
                if high > start:
                    totals[p] = totals.get(p, 0) + high - start
                    targets[(topic, p)] = store
                    begin = OFFSET_BEGINNING if p not in kept and checkpoint is None else start
                    starts.append(TopicPartition(topic, p, begin))
        count = 0
        if targets:
            progress = RestoreProgress(self._name, totals, self._restore_progress)
            rc.assign(starts)
            # Millions of restored values are long-lived objects: with the cyclic GC on, it rescans all of them
            # again and again as they pile up. Off while reading, then frozen (``RunnerConfig.gc_freeze``).
            collecting = gc.isenabled()
            gc.disable()
            try:
                count = self._read_changelogs(targets, progress)
            finally:
                if collecting:
                    gc.enable()
            rc.unassign()
            progress.finish()
            self._manage_gc()
        for p, ctx in contexts.items():
            for spec in self._stores:
                ctx.stores[spec.name].restored(ends[p][spec.changelog_topic(app)][1])
        for p, ctx in contexts.items():
            ctx.timers.reload()
            self._contexts[p] = ctx
            produced = partition_restored(self.processor, ctx)
            if produced:
                self._uncommitted = True
                self._emit(produced)
        elapsed = time.monotonic() - started
        self.metrics.restore_seconds.labels(self._name).observe(elapsed)
        self.metrics.restored_records.labels(self._name).inc(count)
        log.info("%s partitions %s restored: %d changelog records in %.2fs%s%s", self._name, partitions, count,
                 elapsed, f" (state kept in memory and read on: {sorted(kept)})" if kept else "",
                 f" (read on from the local checkpoint: {sorted(resumed)})" if resumed else "")  # fmt: skip

    def _read_changelogs(self, targets: dict[tuple[str, int], Any], progress: RestoreProgress) -> int:
        """Apply every changelog record up to each partition's end; no time limit (progress is logged)."""
        rc = self._restore_consumer
        assert rc is not None
        pending = set(targets)
        count = 0
        while pending:
            batch: list[Any] = rc.consume(10_000, timeout=0.05)
            runs: dict[tuple[str, int], list[Any]] = {}  # per changelog partition, in order (stores apply a run)
            for msg in batch:
                where = (msg.topic(), msg.partition())
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        pending.discard(where)
                        continue
                    raise FatalRuntimeError(f"restoring {where[0]}[{where[1]}]: {err}")
                run = runs.get(where)
                if run is None:
                    run = runs[where] = []
                run.append(msg)
            for where, run in runs.items():
                targets[where].restore_records(run)
                progress.done[where[1]] += len(run)
                count += len(run)
            progress.report()
        return count

    def _restore_progress(self, partition: int, done: int, total: int) -> None:
        self.metrics.restore_done.labels(self._name, str(partition)).set(done)
        self.metrics.restore_total.labels(self._name, str(partition)).set(total)

    # --- processing -----------------------------------------------------------

    def _handle(self, msgs: list[Any], now: int) -> None:
        started = time.perf_counter()
        groups: dict[tuple[str, int], list[InRecord]] = {}
        positions = self._positions
        key_decoders, decoders = self._key_decoders, self._decoders
        tombstones = self._tombstone_inputs
        waiting: dict[tuple[str, int], int] = {}  # partitions stopped at a record whose schema cannot be fetched
        failures = 0
        for msg in msgs:
            err = msg.error()
            if err is not None:
                known = classify(err, self.config.conn)
                if known is not None:
                    raise known
                if err.fatal():
                    raise FatalRuntimeError(f"consumer error: {err}")
                log.warning("consumer: %s", err)
                continue
            topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
            where = (topic, partition)
            if where in waiting:
                continue  # the partition goes on from the record that waits, in order
            raw_key, raw_value = msg.key(), msg.value()
            try:
                key = key_decoders[topic](raw_key)
                if raw_value is not None:
                    value = decoders[topic](raw_value)
                elif topic in tombstones:
                    value = None
                else:
                    raise NullValueError("null value (a tombstone) on a topic whose records must carry one")
            except RegistryUnavailableError as exc:
                waiting[where] = offset
                self._registry_unavailable(exc)
                continue
            except Exception as exc:
                positions[where] = offset + 1
                self._dead_letter_raw(topic, partition, offset, raw_key, raw_value, msg.headers(), exc, "deserialize")
                failures += 1
                continue
            positions[where] = offset + 1
            record = InRecord(
                topic, partition, offset, msg.timestamp()[1], key, value, msg.headers(), raw_key, raw_value
            )
            group = groups.get((topic, partition))
            if group is None:
                groups[(topic, partition)] = [record]
            else:
                group.append(record)
        self._uncommitted = True
        for (topic, partition), records in groups.items():
            self._m_in[topic].inc(len(records))
            ctx = self._contexts.get(partition)
            if ctx is None:  # assigned without restore should not happen; restore now to be safe
                self._restore_partition(partition)
                ctx = self._contexts[partition]
            ctx.tick(now)
            latest = max(r.timestamp for r in records)
            if latest > ctx.stream_time:
                ctx.stream_time = latest
            try:
                outputs = self.processor.process(records, ctx)
                self._emit(outputs)
            except Exception as exc:
                for record in records:
                    self._dead_letter(record, exc, "process")
                failures += len(records)
            if ctx._failures:
                dead = ctx.take_failures()
                for record, error, stage in dead:
                    self._dead_letter(record, error, stage)
                failures += len(dead)
            self._fire(ctx, "event", ctx.stream_time, now)
            sample = records[-LATENCY_SAMPLE:]
            emit_ms = self.config.clock()
            for record in sample:
                self._m_e2e.observe(max(0, emit_ms - record.timestamp) / 1000)
        if waiting:
            self._wait_for_registry(waiting)
        else:
            self._registry_backoff = 0.0
        self.records_in += len(msgs)
        self._m_batch.observe(len(msgs))
        self._m_proc.observe(time.perf_counter() - started)
        self.config.error_budget.record(len(msgs), failures)
        assert self._producer is not None
        self._producer.poll(0)

    def _wait_for_registry(self, waiting: dict[tuple[str, int], int]) -> None:
        """Rewind the partitions stopped at a record the registry could not describe, then back off.

        The partition goes on from that very record once the registry answers:
        nothing is dead-lettered, nothing is skipped, its order is kept.
        """
        consumer = self._consumer
        assert consumer is not None
        for (topic, partition), offset in waiting.items():
            try:
                consumer.seek(TopicPartition(topic, partition, offset))
            except KafkaException as exc:  # revoked meanwhile: its next owner starts from the committed offset
                log.debug("seek %s[%d]@%d: %s", topic, partition, offset, exc)
        self._registry_backoff = min(self.config.registry_retry_max_s, max(0.1, self._registry_backoff * 2))
        time.sleep(self._registry_backoff)

    def _registry_unavailable(self, exc: RegistryUnavailableError) -> None:
        self.metrics.registry_retries.labels(self._name).inc()
        now = time.monotonic()
        if now - self._registry_warned >= 10:
            self._registry_warned = now
            log.warning("%s: %s; retrying (records wait, none is dead-lettered)", self._name, exc)

    def _encode(self, out: OutRecord) -> tuple[bytes | None, bytes | None]:
        """Key and value bytes of an output, or an error saying why it cannot be written."""
        topic = out.topic
        encoder = self._encoders.get(topic)
        if encoder is None:
            raise FatalRuntimeError(f"processor {self._name} emitted to undeclared topic '{topic}'")
        value = None if out.value is None else encoder.encode(out.value)
        key = None if out.key is None else self._key_encoders[topic].encode(out.key)
        size = (len(value) if value else 0) + (len(key) if key else 0)
        if out.headers:
            size += sum(len(name) + len(data or b"") for name, data in out.headers)
        if size > self.config.max_record_bytes:
            raise RecordTooLargeError(
                f"output to {topic} of {size} bytes exceeds the {self.config.max_record_bytes}-byte record limit"
            )
        return key, value

    def _seal(self, outputs: Sequence[OutRecord]) -> None:
        """Encode one input record's outputs now, so one that cannot be written fails that record alone."""
        for out in outputs:
            out.encoded = self._encode(out)

    def _emit(self, outputs: Iterable[OutRecord]) -> None:
        produce = self._producer.produce  # type: ignore[union-attr]
        per_topic: dict[str, int] = {}
        for out in outputs:
            topic = out.topic
            if out.encoded is not None:
                key, value = out.encoded
            else:  # timers, table changes, restores: no input record to fail, the output alone is dead-lettered
                try:
                    key, value = self._encode(out)
                except FatalRuntimeError:
                    raise
                except Exception as exc:
                    self._dead_letter_output(out, exc)
                    continue
            try:
                if out.partition is None and out.timestamp is None and not out.headers:
                    produce(topic, value, key)
                else:
                    produce(topic, value, key, **self._produce_kwargs(out))
            except BufferError:
                clients.produce(self._producer, topic, value, key, **self._produce_kwargs(out))  # type: ignore[arg-type]
            except KafkaException as exc:  # refused by the client (size, unknown partition): never the whole batch
                self._dead_letter_output(out, exc, key, value)
                continue
            per_topic[topic] = per_topic.get(topic, 0) + 1
        for topic, count in per_topic.items():
            self._m_out[topic].inc(count)
            self.records_out += count

    @staticmethod
    def _produce_kwargs(out: OutRecord) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        if out.partition is not None:
            kwargs["partition"] = out.partition
        if out.timestamp is not None:
            kwargs["timestamp"] = out.timestamp
        if out.headers:
            kwargs["headers"] = out.headers
        return kwargs

    def _fire_wall_timers(self, now: int) -> None:
        for ctx in list(self._contexts.values()):
            ctx.tick(now)
            self._fire(ctx, "wall", now, now)
            retries = ctx.timers.due_retries(now)
            if retries:
                for kind in ("event", "wall"):
                    self._run_timers(ctx, kind, [t for t in retries if t.kind == kind], now)

    def _fire(self, ctx: Context, kind: TimerKind, at: int, now: int) -> None:
        """Fire the timers of ``kind`` due at ``at`` (stream time or wall clock); ``now`` is the wall clock."""
        due = ctx.timers.due(kind, at)
        if due:
            self._run_timers(ctx, kind, due, now)

    def _run_timers(self, ctx: Context, kind: TimerKind, due: list[Timer], now: int) -> None:
        """Handle due timers; one whose handler raises is re-armed with back-off, or dead-lettered in the end.

        Their deletion from the timer store (a changelog write) commits with
        what their handlers emitted: a timer is never lost, and never fires
        twice once its outputs are committed.
        """
        if not due:
            return
        self._uncommitted = True
        done = fire(due, lambda timers: self.processor.on_timer(timers, ctx), ctx.stores.values(), ctx.timers,
                    now, self._timer_retry)  # fmt: skip
        if done.fired:
            self.metrics.timers_fired.labels(self._name, kind).inc(len(done.fired))
        self._emit(done.outputs)
        for timer, error, at in done.retried:
            log.warning("%s: on_timer raised for %s timer %r (attempt %d), retrying in %d ms: %r", self._name,
                        kind, timer.key, timer.attempts + 1, at - now, error)  # fmt: skip
        if done.retried:
            self.metrics.timer_retries.labels(self._name, kind).inc(len(done.retried))
        for timer, error in done.given_up:
            log.error("%s: on_timer raised for %s timer %r %d times, dead-lettered: %r", self._name, kind,
                      timer.key, timer.attempts + 1, error)  # fmt: skip
            self._dead_letter_timer(ctx, timer, error)

    def _dead_letter_timer(self, ctx: Context, timer: Timer, error: BaseException) -> None:
        """A timer given up: its key, and its entry (kind, when, payload, attempts) as JSON, stage ``timer``."""
        entry = {"kind": timer.kind, "when": timer.when, "payload": timer.payload, "attempts": timer.attempts + 1}
        try:
            value = TIMER_STORE.encode(entry)
        except Exception:  # a payload the store could hold always encodes; keep its text if not
            value = repr(entry).encode(errors="replace")
        topic = TIMER_STORE.changelog_topic(self.config.app_id)
        self._dead_letter_raw(topic, ctx.partition, -1, timer.key.encode(), value, None, error, "timer")

    # --- dead letters ---------------------------------------------------------

    def _dead_letter(self, record: InRecord, error: BaseException, stage: str) -> None:
        self._dead_letter_raw(
            record.topic,
            record.partition,
            record.offset,
            record.raw_key,
            record.raw_value,
            record.headers,
            error,
            stage,
        )

    def _dead_letter_raw(
        self,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]] | None,
        error: BaseException,
        stage: str,
    ) -> None:
        letter = dead_letter_record(
            topic=topic, partition=partition, offset=offset, key=key, value=value, headers=list(headers or ()),
            error=error,
            stage=stage, processor=self._name, max_record_bytes=self.config.max_record_bytes,
        )  # fmt: skip
        assert self._producer is not None
        try:
            write_dead_letter(self._producer, self.config.dead_letter_topic, letter)
        except DeadLetterRefusedError as exc:
            raise FatalRuntimeError(str(exc)) from None
        self.metrics.dead_letters.labels(self._name, stage).inc()
        log.debug("dead letter %s[%d]@%d (%s): %s", topic, partition, offset, stage, error)

    def _dead_letter_output(
        self, out: OutRecord, error: BaseException, key: bytes | None = None, value: bytes | None = None
    ) -> None:
        """An output that cannot be written (no input record to blame): its bytes, or its text, as a dead letter."""
        if value is None and out.value is not None:
            value = repr(out.value).encode(errors="replace")
        if key is None and out.key is not None:
            key = str(out.key).encode(errors="replace")
        stage = getattr(error, "stage", "produce") if isinstance(error, SerializationError) else "produce"
        log.error("%s: output to %s not written (%s): %s", self._name, out.topic, stage, error)
        self._dead_letter_raw(out.topic, -1, -1, key, value, out.headers, error, stage)

    def _table_changed(self, name: str) -> Callable[[Any, Any, Any], None]:
        spec = next(t for t in self.processor.tables if t.name == name)

        def changed(key: Any, old: Any, new: Any) -> None:
            for ctx in list(self._contexts.values()):
                self._uncommitted = True
                self._emit(table_changed(self.processor, ctx, spec, key, old, new))

        return changed

    def _table_dead_letter(self, topic: str, key: bytes | None, value: bytes | None, error: BaseException) -> None:
        if self._producer is not None:
            self._dead_letter_raw(topic, -1, -1, key, value, None, error, "table")

    # --- commit -----------------------------------------------------------------

    def _begin(self) -> None:
        if self.config.exactly_once and not self._in_transaction:
            assert self._producer is not None
            self._producer.begin_transaction()
            self._in_transaction = True

    def _write_changelogs(self) -> bool:
        producer = self._producer
        assert producer is not None
        wrote = False
        app = self.config.app_id
        now = self.config.clock()
        for partition, ctx in self._contexts.items():
            for spec in self._stores:
                changes = ctx.stores[spec.name].take_changes()
                if not changes:
                    continue
                wrote = True
                topic = spec.changelog_topic(app)
                store = ctx.stores[spec.name]
                for key, value in changes:
                    if value is not None and len(key) + len(value) > self.config.max_record_bytes:
                        self._state_too_large(store, topic, partition, key, value)
                        value = None  # the key's tombstone: a restore finds what memory holds
                    # Stamped with the runner's clock: a restore counts a key's idle time (``ttl_ms``) from it.
                    if self._on_disk:
                        clients.produce(producer, topic, value, key, partition=partition, timestamp=now,
                                        on_delivery=self._delivered)  # fmt: skip
                    else:
                        clients.produce(producer, topic, value, key, partition=partition, timestamp=now)
        return wrote

    def _delivered(self, err: Any, msg: Any) -> None:
        """A changelog record acknowledged: its offset + 1 is the checkpoint a store on disk may write."""
        if err is None:
            where = (msg.topic(), msg.partition())
            self._changelog_next[where] = max(self._changelog_next.get(where, -1), msg.offset() + 1)

    def _stores_committed(self) -> None:
        """The commit succeeded: stores on disk write its changes with the changelog offset they reflect."""
        if not self._on_disk:
            return
        assert self._producer is not None
        self._producer.poll(0)  # serve the changelog records' delivery reports (all acknowledged by now)
        app = self.config.app_id
        for partition, ctx in self._contexts.items():
            for spec in self._stores:
                ctx.stores[spec.name].committed(self._changelog_next.pop((spec.changelog_topic(app), partition), None))

    def _state_too_large(self, store: Any, topic: str, partition: int, key: bytes, value: bytes) -> None:
        """A state value no changelog record can hold: dead-letter it and forget the key (memory = changelog)."""
        size = len(key) + len(value)
        error = RecordTooLargeError(
            f"state {store.name}[{key.decode(errors='replace')}] of {size} bytes exceeds the "
            f"{self.config.max_record_bytes}-byte record limit: forgotten", stage="state"
        )  # fmt: skip
        log.error("%s: %s", self._name, error)
        self._dead_letter_raw(topic, partition, -1, key, value, None, error, "state")
        store.forget(key.decode())

    def _commit(self, sync: bool = False) -> None:
        """Flush state, outputs and offsets together; per interval, never per record.

        At-least-once commits offsets asynchronously between intervals (the
        outputs are already acknowledged, a lost commit only means re-processing)
        and synchronously when partitions are handed over or the process stops.
        """
        if self._producer is None or self._consumer is None:
            return
        self._last_commit = self.config.clock()
        self._begin()
        self._expire(self._last_commit)
        if self.config.exactly_once:
            wrote = self._write_changelogs()
        else:
            wrote = any(store.has_changes() for ctx in self._contexts.values() for store in ctx.stores.values())
        if not (self._uncommitted or wrote):
            return
        offsets = [TopicPartition(t, p, o) for (t, p), o in self._positions.items() if (t, p) in self._assigned]
        started = time.perf_counter()
        if self.config.exactly_once:
            aborts = self._aborts
            self._commit_transaction(offsets)
            if self._aborts == aborts:
                self._stores_committed()
        else:
            # Outputs acknowledged first, state after: a fired timer's deletion (a changelog tombstone) must
            # not reach the broker unless what its handler emitted did.
            self._flush()
            if self._write_changelogs():
                self._flush()
            if offsets:
                try:
                    if sync:
                        self._consumer.commit(offsets=offsets, asynchronous=False)
                    else:
                        self._consumer.commit(offsets=offsets, asynchronous=True)
                except KafkaException as exc:
                    log.warning("offset commit failed (records will be re-processed): %s", exc)
            self._stores_committed()
        self._uncommitted = False
        self.metrics.commit_seconds.labels(self._name).observe(time.perf_counter() - started)
        self.metrics.commits.labels(self._name).inc()
        self._manage_gc()
        for spec in self.processor.stores:
            self.metrics.state_keys.labels(self._name, spec.name).set(self._state_size(spec.name))
        for name, table in self._tables.items():
            self.metrics.table_records.labels(self._name, name).set(len(table.data))
        self._update_lag()

    def _expire(self, now: int) -> None:
        """Keys idle longer than their store's ``ttl_ms`` deleted: their tombstones go in this commit."""
        for ctx in self._contexts.values():
            ctx.tick(now)
            for store, count in ctx.expire().items():
                self.metrics.expired_keys.labels(self._name, store).inc(count)

    def _flush(self) -> None:
        assert self._producer is not None
        remaining = self._producer.flush(60)
        if remaining:
            raise FatalRuntimeError(f"{remaining} records not acknowledged by the broker within 60 s")

    def _manage_gc(self) -> None:
        """Keep long-lived state out of generation-2 scans (see ``RunnerConfig.gc_freeze``)."""
        if not self.config.gc_freeze:
            return
        now = time.monotonic()
        if now - self._last_full_gc >= self.config.full_gc_interval_s:
            gc.unfreeze()
            gc.collect()
            self._last_full_gc = now
        gc.freeze()

    def _commit_transaction(self, offsets: list[TopicPartition]) -> None:
        producer, consumer = self._producer, self._consumer
        assert producer is not None and consumer is not None
        try:
            if offsets:
                producer.send_offsets_to_transaction(offsets, consumer.consumer_group_metadata(), 60)
            producer.commit_transaction(60)
            self._in_transaction = False
        except KafkaException as exc:
            err = exc.args[0]
            if err.txn_requires_abort():
                log.warning("transaction must abort (%s): rewinding to the last commit", err)
                self._abort()
                self._rewind()
            elif err.retriable():
                producer.commit_transaction(60)
                self._in_transaction = False
            else:
                raise FatalRuntimeError(f"transaction failed fatally (fenced by a newer instance?): {err}") from exc
        self._begin()

    def _abort(self) -> None:
        assert self._producer is not None
        try:
            self._producer.abort_transaction(60)
        except KafkaException as exc:
            raise FatalRuntimeError(f"cannot abort transaction: {exc}") from exc
        self._in_transaction = False
        self._aborts += 1
        self.metrics.aborts.labels(self._name).inc()

    def _rewind(self) -> None:
        """After an abort: state back to the changelog, positions back to the committed offsets."""
        assert self._consumer is not None
        assigned = [TopicPartition(t, p) for t, p in self._assigned]
        partitions = {p for _, p in self._assigned}
        for ctx in self._contexts.values():
            self.processor.on_partition_revoked(ctx)
            for store in ctx.stores.values():
                store.discard()  # the aborted transaction's writes: never on disk, now not in memory either
                store.close()
        self._contexts.clear()
        self._parked.clear()
        self._restore_partitions(sorted(partitions))
        committed = self._consumer.committed(assigned, timeout=30)
        for tp in committed:
            self._positions.pop((tp.topic, tp.partition), None)
            offset = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
            self._consumer.seek(TopicPartition(tp.topic, tp.partition, offset))

    def _update_lag(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        for (topic, partition), position in list(self._positions.items()):
            try:
                _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
            except KafkaException:
                continue
            if high >= 0:
                self.metrics.consumer_lag.labels(self._name, topic, str(partition)).set(max(0, high - position))

    def _close(self) -> None:
        self._closing = True
        if self._consumer is not None:
            try:
                self._consumer.close()  # leaves the group; revoke callback commits what is pending
            except Exception as exc:
                log.warning("closing consumer: %s", exc)
        if self._producer is not None:
            if self.config.exactly_once and self._in_transaction:
                with contextlib.suppress(KafkaException):
                    self._producer.abort_transaction(10)  # empty by now: everything was committed
            self._producer.flush(30)
        if self._restore_consumer is not None:
            self._restore_consumer.close()
        for ctx in self._contexts.values():
            for store in ctx.stores.values():
                store.close()
        for table in self._tables.values():
            table.close()


UNKNOWN_YET = (
    KafkaError._UNKNOWN_PARTITION,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
)
"""What a client says of a partition its metadata does not have yet (a changelog created a moment ago, its
leader not elected or not known to the client yet)."""


def _watermarks(client: Any, topic: str, partition: int, patience_s: float = 30.0) -> tuple[int, int]:
    """(low, high) of a partition from the broker, waiting a bounded time for the client to learn of the topic.

    librdkafka answers "Unknown partition" at once, without asking the broker,
    while its metadata lacks the topic: refresh it and ask again rather than
    let a just-created changelog stop the processor.
    """
    deadline = time.monotonic() + patience_s
    while True:
        try:
            low, high = client.get_watermark_offsets(TopicPartition(topic, partition), timeout=30, cached=False)
            return int(low), int(high)
        except KafkaException as exc:
            if exc.args[0].code() not in UNKNOWN_YET or time.monotonic() > deadline:
                raise
        with contextlib.suppress(KafkaException):
            client.list_topics(topic, timeout=5)
        time.sleep(0.1)
