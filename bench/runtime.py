"""Runtime benchmark: the same enrichment job four ways, side by side in one run.

    (a) raw   the plain confluent-kafka batch loop (the ceiling)
    (b) alo   a passerelle processor, at-least-once
    (c) eos   a passerelle processor, exactly-once (transactions per commit interval)
    (d) faust a plain faust-streaming agent

Throughput: N hits are produced once; each worker (its own process, its own
consumer group and output topic) drains them, ``--rounds`` times in
interleaved order; medians are reported. Latency: each worker then runs on a
fresh topic fed at a fixed, modest rate; event-to-emit latency is the output
record's CreateTime minus the hit's ``event_time`` (set when it was produced).
The last line reads ``ratios: alo=<b/a> eos=<c/a> faust=<d/a>``.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka.admin import NewTopic

from bench import report as side_by_side
from bench.job import HIT_SCHEMA, hit, visitor
from bench.report import ROOT
from passerelle.schemas.clients import (
    DEAD_LETTER_TOPIC,
    Connection,
    admin_client,
    consumer,
    produce,
    producer,
    registry_client,
)
from passerelle.schemas.serde import AvroDecoder, AvroEncoder, SchemaCache, registry_fetcher

IMPLS = ("raw", "alo", "eos", "faust")


@dataclass
class Result:
    rates: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)
    p50_ms: float | None = None
    p99_ms: float | None = None


def create(conn: Connection, *topics: str, partitions: int = 6) -> None:
    admin = admin_client(conn)
    for fut in admin.create_topics([NewTopic(t, partitions, 1) for t in topics]).values():
        fut.result(30)


def delete(conn: Connection, topics: Sequence[str]) -> None:
    admin = admin_client(conn)
    for fut in admin.delete_topics(list(topics)).values():
        with contextlib.suppress(Exception):
            fut.result(30)


def cleanup(conn: Connection, prefix: str, tag: str = "") -> None:
    """Delete every topic, consumer group and registry subject named ``prefix*`` (and containing ``tag``).

    Runs leave changelog topics, groups and subjects behind; hundreds of
    leftover compacted partitions keep the broker's log cleaner busy and skew
    every later measurement on the same broker.
    """

    def ours(name: str) -> bool:
        return name.startswith(prefix) and tag in name

    admin = admin_client(conn)
    topics = [t for t in admin.list_topics(timeout=30).topics if ours(t)]
    if topics:
        for fut in admin.delete_topics(topics).values():
            with contextlib.suppress(Exception):
                fut.result(30)
    with contextlib.suppress(Exception):
        groups = [g.group_id for g in admin.list_consumer_groups().result(30).valid if ours(g.group_id)]
        if groups:
            for fut in admin.delete_consumer_groups(groups).values():
                with contextlib.suppress(Exception):
                    fut.result(30)
    client = registry_client(conn)
    with contextlib.suppress(Exception):
        for subject in client.get_subjects():
            if ours(subject):
                with contextlib.suppress(Exception):
                    client.delete_subject(subject)
                    client.delete_subject(subject, permanent=True)


class Feeder:
    """Produces bench hits; created once so producer start-up never counts as latency."""

    def __init__(self, conn: Connection, topic: str, paced: bool = False) -> None:
        client = registry_client(conn)
        self.topic = topic
        self.value_enc = AvroEncoder.for_subject(client, f"{topic}-value", HIT_SCHEMA)
        self.key_enc = AvroEncoder.for_subject(client, f"{topic}-key", '"string"')
        # Idempotent, acks=all, murmur2_random: the factory's defaults.
        self.producer = producer(conn, {"linger.ms": 0 if paced else 20, "queue.buffering.max.messages": 1_000_000})

    def send(self, start: int, count: int, rate: float | None = None) -> None:
        feed, topic = self.producer, self.topic
        t0 = time.perf_counter()
        for i in range(start, start + count):
            if rate:
                wait = t0 + (i - start) / rate - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
            record = hit(i, time.time_ns() // 1_000_000)
            value, key = self.value_enc.encode(record), self.key_enc.encode(visitor(i * 7919))
            try:
                feed.produce(topic, value, key)
            except BufferError:
                produce(feed, topic, value, key)
            if rate:
                feed.poll(0)
        feed.flush(120)


def produce_hits(conn: Connection, topic: str, start: int, count: int) -> None:
    Feeder(conn, topic).send(start, count)


def run_worker(
    impl: str, args: argparse.Namespace, conn: Connection, input_topic: str, records: int, tag: str
) -> dict[str, Any]:
    output = f"bench.out.{impl}.{tag}"
    create(conn, output)
    cmd = [
        sys.executable, "-m", "bench.workers", impl, "--bootstrap", conn.bootstrap_servers,
        "--registry", conn.registry_url,
        "--input", input_topic, "--output", output, "--group", f"bench-{impl}-{tag}", "--records", str(records),
        "--dlq", args.dlq, "--commit-ms", str(args.commit_ms),
    ]  # fmt: skip
    result = side_by_side.worker_result(impl, cmd, args.timeout)
    result["output"] = output
    cleanup(conn, f"bench-{impl}-{tag}")  # its changelogs now, not while others run
    return result


def latency_run(impl: str, args: argparse.Namespace, conn: Connection, tag: str) -> tuple[float, float]:
    """Feed a fresh topic at ``args.rate`` while the worker runs; percentiles of CreateTime - event_time."""
    topic = f"bench.lat.{impl}.{tag}"
    create(conn, topic)
    count = int(args.rate * args.latency_seconds)
    output = f"bench.out.{impl}.{tag}"
    create(conn, output)
    cmd = [
        sys.executable, "-m", "bench.workers", impl, "--bootstrap", conn.bootstrap_servers,
        "--registry", conn.registry_url,
        "--input", topic, "--output", output, "--group", f"bench-lat-{impl}-{tag}", "--records", str(count + 1),
        "--dlq", args.dlq, "--commit-ms", str(args.commit_ms),
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    decoder = AvroDecoder(SchemaCache(registry_fetcher(registry_client(conn))))
    reader = consumer(conn, f"lat-reader-{tag}-{impl}", {"auto.offset.reset": "earliest"})
    reader.subscribe([output])
    # One warm-up hit: the worker is ready (assigned, schemas registered) once it comes out,
    # and the feeder's producer is connected before the paced hits start.
    feeder = Feeder(conn, topic, paced=True)
    feeder.send(0, 1)
    deadline = time.monotonic() + 120
    seen = 0
    while not seen and time.monotonic() < deadline:
        seen += len([m for m in reader.consume(100, timeout=0.5) if not m.error()])
    feeder.send(1, count, rate=args.rate)
    latencies: list[float] = []
    deadline = time.monotonic() + 120
    while len(latencies) < count and time.monotonic() < deadline:
        for msg in reader.consume(5000, timeout=0.5):
            if msg.error():
                continue
            value = decoder.decode(msg.value())
            latencies.append(msg.timestamp()[1] - value["event_time"])
    reader.close()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
    delete(conn, [topic, output])
    cleanup(conn, f"bench-lat-{impl}-{tag}")
    if len(latencies) < 2:
        return float("nan"), float("nan")
    q = statistics.quantiles(latencies, n=100)
    return q[49], q[98]


def run(args: argparse.Namespace, conn: Connection) -> dict[str, Result]:
    tag = uuid.uuid4().hex[:6]
    input_topic = f"bench.hits.{tag}"
    create(conn, input_topic)
    if args.dlq not in admin_client(conn).list_topics(timeout=10).topics:
        create(conn, args.dlq, partitions=1)
    print(f"producing {args.records} hits to {input_topic} ...", file=sys.stderr, flush=True)
    produce_hits(conn, input_topic, 0, args.records)
    results = {impl: Result() for impl in IMPLS}
    impls = [i for i in IMPLS if i not in args.skip]
    for round_ in range(args.rounds):
        order = impls if round_ % 2 == 0 else list(reversed(impls))
        for impl in order:
            records = min(args.records, args.faust_records) if impl == "faust" else args.records
            res = run_worker(impl, args, conn, input_topic, records, f"{tag}-{round_}")
            rate = res["records"] / res["elapsed"]
            results[impl].rates.append(rate)
            results[impl].rss_mb.append(res["peak_rss_mb"])
            print(f"round {round_ + 1} {impl:<5} {rate:>10,.0f} events/s", file=sys.stderr, flush=True)
            delete(conn, [res["output"]])
    if args.rate > 0:
        for impl in impls:
            p50, p99 = latency_run(impl, args, conn, f"{tag}-lat")
            results[impl].p50_ms, results[impl].p99_ms = p50, p99
            print(f"latency {impl:<5} p50 {p50:.1f} ms p99 {p99:.1f} ms", file=sys.stderr, flush=True)
    cleanup(conn, "bench", tag)  # inputs, outputs, changelogs, groups, subjects
    return results


def report(results: dict[str, Result], args: argparse.Namespace) -> str:
    raw = statistics.median(results["raw"].rates) if results["raw"].rates else float("nan")
    labels = {
        "raw": "(a) raw confluent-kafka loop",
        "alo": "(b) passerelle at-least-once",
        "eos": "(c) passerelle exactly-once",
        "faust": "(d) faust-streaming agent",
    }
    lines = [
        f"runtime bench: {args.records} hits, {args.rounds} round(s), medians; "
        f"latency at {args.rate:.0f} hits/s for {args.latency_seconds:.0f} s; commit interval {args.commit_ms} ms",
        f"{'implementation':<32}{'events/s':>12}{'x raw':>8}{'p50 ms':>9}{'p99 ms':>9}{'peak RSS MB':>13}",
    ]
    ratios: dict[str, float] = {}
    for impl in IMPLS:
        r = results[impl]
        if not r.rates:
            continue
        rate = statistics.median(r.rates)
        ratios[impl] = rate / raw
        p50 = f"{r.p50_ms:.1f}" if r.p50_ms is not None else "-"
        p99 = f"{r.p99_ms:.1f}" if r.p99_ms is not None else "-"
        lines.append(f"{labels[impl]:<32}{rate:>12,.0f}{ratios[impl]:>8.2f}{p50:>9}{p99:>9}{max(r.rss_mb):>13.0f}")
    faust = ratios.get("faust", float("nan"))
    alo, eos = ratios.get("alo", float("nan")), ratios.get("eos", float("nan"))
    lines.append(f"alo/faust={alo / faust:.1f}x eos/faust={eos / faust:.1f}x")
    lines.append(
        f"ratios: alo={ratios.get('alo', float('nan')):.2f} eos={ratios.get('eos', float('nan')):.2f} faust={faust:.3f}"
    )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``python -m bench.runtime`` and ``passerelle bench runtime``."""
    parser.add_argument("--records", type=int, default=200_000, help="hits to process per run (default 200000)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians reported (default 3)")
    parser.add_argument(
        "--faust-records", type=int, default=30_000, help="cap for the (slow) Faust agent's runs (default 30000)"
    )
    parser.add_argument("--rate", type=float, default=1000, help="hits/s for the latency runs; 0 skips them")
    parser.add_argument("--latency-seconds", type=float, default=5, help="length of each latency run (default 5)")
    parser.add_argument("--commit-ms", type=int, default=100, help="passerelle commit interval (default 100)")
    parser.add_argument("--skip", nargs="*", default=[], choices=IMPLS, help="implementations to leave out")
    parser.add_argument("--dlq", default=DEAD_LETTER_TOPIC, help="dead-letter topic for the processors")
    parser.add_argument("--timeout", type=float, default=900, help="per-worker timeout in seconds")


def main(argv: Sequence[str] | None = None, bootstrap: str | None = None, registry: str | None = None) -> int:
    return side_by_side.main(
        "python -m bench.runtime", __doc__, add_arguments, lambda args, conn: report(run(args, conn), args),
        argv, bootstrap, registry,
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
