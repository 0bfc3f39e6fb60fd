"""Enrichment bench workers: the raw confluent-kafka loop and the runtime processor, one process each.

    python -m bench.enrich_workers raw|alo|eos --bootstrap B --registry R --input T --output O
        --campaigns C --crm P --records N --group G [--commit-ms MS]

Both do the same work per hit: decode, ``Enricher.enrich`` against the
visitor's state and the campaign/CRM tables, encode ``EnrichedHit``, produce.
The raw loop keeps its state in a dict and commits offsets asynchronously: no
changelog, no transactions; that is the ceiling the runtime is compared to.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from bench.loops import RawLoop, output_codec
from passerelle.schemas import clients
from passerelle.schemas.clients import DEAD_LETTER_TOPIC, Connection


def read_table(conn: Connection, topic: str) -> dict[str, Any]:
    """Load a compacted topic into a dict, as the runtime's lookup table does."""
    from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

    from passerelle.schemas.serde import AvroDecoder, SchemaCache, registry_fetcher

    decoder = AvroDecoder(SchemaCache(registry_fetcher(clients.registry_client(conn))))
    consumer = clients.consumer(conn, "bench-table", {"enable.partition.eof": True})
    parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
    table: dict[str, Any] = {}
    eof: set[int] = set()
    while len(eof) < len(parts):
        batch: list[Any] = consumer.consume(1000, timeout=1)
        for msg in batch:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    eof.add(msg.partition())
                continue
            key = decoder.decode(msg.key())
            if msg.value() is None:
                table.pop(key, None)
            else:
                table[key] = decoder.decode(msg.value())
    consumer.close()
    return table


def run_raw(args: argparse.Namespace) -> None:
    import fastavro

    from passerelle.schemas.catalog import load_catalog
    from passerelle.streams.enrichment.enricher import Enricher

    conn = Connection.plain(args.bootstrap, args.registry)
    writer, header, key_enc, cache = output_codec(conn, args.output, load_catalog().schema_text("EnrichedHit"))
    campaigns = read_table(conn, args.campaigns)
    crm = read_table(conn, args.crm)
    enricher = Enricher()
    state: dict[str, Any] = {}
    loop = RawLoop(conn, args.group, [args.input])
    producer, done = loop.producer, 0
    reader, write = fastavro.schemaless_reader, fastavro.schemaless_writer
    while done < args.records:
        msgs = loop.batch()
        if not msgs:
            continue
        now = time.time_ns() // 1_000_000
        for msg in msgs:
            if msg.error():
                continue
            raw: Any = msg.value()
            hit: Any = reader(io.BytesIO(raw[5:]), cache.get(int.from_bytes(raw[1:5], "big")), None)
            visitor = hit["visitor_id"]
            result, state[visitor] = enricher.enrich(hit, state.get(visitor), campaigns, crm, now)
            out = io.BytesIO()
            out.write(header)
            write(out, writer, result.hit)
            try:
                producer.produce(args.output, out.getvalue(), key_enc.encode(visitor))
            except BufferError:  # queue full: wait for delivery reports (off the measured fast path)
                clients.produce(producer, args.output, out.getvalue(), key_enc.encode(visitor))
            done += 1
        loop.end_batch()
    loop.finish(done)


def run_runtime(args: argparse.Namespace, exactly_once: bool) -> None:
    from bench.runner import run_timed, runner_config
    from passerelle.schemas.catalog import load_catalog
    from passerelle.streams.enrichment.processor import EnrichmentProcessor, EnrichmentTopics
    from passerelle.streams.runtime import Runner

    catalog = load_catalog()
    topics = EnrichmentTopics(
        hits_raw=args.input, hits_enriched=args.output, identity_links=args.output + ".links",
        campaigns=args.campaigns, undeclared=args.output + ".undeclared", crm_profiles=args.crm,
        privacy_requests=None,  # the bench's topics have no privacy requests: measured as before
    )  # fmt: skip
    output_schemas = {
        topics.hits_enriched: catalog.schema_text("EnrichedHit"),
        topics.identity_links: catalog.schema_text("IdentityLink"),
        topics.undeclared: catalog.schema_text("Campaign"),
    }
    runner = Runner(EnrichmentProcessor(topics), runner_config(args, output_schemas, exactly_once))
    tail = _TailProbe(runner) if args.probe else None

    def probed() -> None:  # the probe's line before the result line, which stays the last
        if tail is not None:
            print(json.dumps(tail.summary()), flush=True)

    run_timed(runner, args.records, "in+out", then=probed)


class _TailProbe:
    """Where a visible-latency tail comes from: each commit's duration, the gaps between commits, GC pauses.

    A ``read_committed`` reader sees a record when the transaction holding it
    commits, so its latency is the wait for the next commit to start plus that
    commit's duration: the two distributions below, measured in the worker.
    """

    def __init__(self, runner: Any) -> None:
        import gc

        self.durations: list[float] = []
        self.parts: dict[str, list[float]] = {"changelogs": [], "transaction": [], "handle": []}
        self.gaps: list[float] = []
        self.gc_pauses: list[float] = []
        self._last_end = 0.0
        self._gc_start = 0.0
        commit = runner._commit

        def timed(*a: Any, **kw: Any) -> None:
            begin = time.perf_counter()
            commits = runner.metrics.commits.labels(runner._name)._value.get()
            commit(*a, **kw)
            if runner.metrics.commits.labels(runner._name)._value.get() > commits:  # a commit happened
                end = time.perf_counter()
                self.durations.append(end - begin)
                if self._last_end:
                    self.gaps.append(begin - self._last_end)
                self._last_end = end

        runner._commit = timed
        for part, method in (("changelogs", "_write_changelogs"), ("transaction", "_commit_transaction"),
                             ("handle", "_handle")):  # fmt: skip
            setattr(runner, method, self._time(part, getattr(runner, method)))
        gc.callbacks.append(self._gc)

    def _time(self, part: str, method: Any) -> Any:
        def timed(*a: Any, **kw: Any) -> Any:
            begin = time.perf_counter()
            try:
                return method(*a, **kw)
            finally:
                self.parts[part].append(time.perf_counter() - begin)

        return timed

    def _gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_start = time.perf_counter()
        elif self._gc_start:
            self.gc_pauses.append(time.perf_counter() - self._gc_start)

    def summary(self) -> dict[str, Any]:
        def pct(values: list[float], q: float) -> float:
            ordered = sorted(values) or [0.0]
            return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)

        return {
            "probe": True, "commits": len(self.durations),
            "commit_p50_ms": pct(self.durations, 0.5), "commit_p99_ms": pct(self.durations, 0.99),
            "commit_max_ms": pct(self.durations, 1.0),
            "gap_p50_ms": pct(self.gaps, 0.5), "gap_p99_ms": pct(self.gaps, 0.99), "gap_max_ms": pct(self.gaps, 1.0),
            "gc_pauses": len(self.gc_pauses), "gc_max_ms": pct(self.gc_pauses, 1.0),
            **{f"{part}_p99_ms": pct(values, 0.99) for part, values in self.parts.items()},
        }  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.enrich_workers")
    parser.add_argument("impl", choices=["raw", "alo", "eos"])
    for name in ("bootstrap", "registry", "input", "output", "campaigns", "crm", "group"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--records", type=int, required=True)
    parser.add_argument("--dlq", default=DEAD_LETTER_TOPIC)
    parser.add_argument("--commit-ms", type=int, default=100)
    parser.add_argument("--min-commit-ms", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--probe", action="store_true", help="print commit durations, gaps and GC pauses first")
    args = parser.parse_args(argv)
    if args.impl == "raw":
        run_raw(args)
    else:
        run_runtime(args, exactly_once=args.impl == "eos")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
