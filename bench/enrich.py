"""Enrichment benchmark: the raw confluent-kafka loop doing the same join vs the enrichment processor.

    (a) raw  confluent-kafka batch loop: decode, Enricher.enrich with dict state and tables, encode, produce
    (b) alo  EnrichmentProcessor on the runtime, at-least-once
    (c) eos  EnrichmentProcessor on the runtime, exactly-once

Throughput: N realistic hits (campaign tags, identified visitors, CRM
profiles, declared campaigns) are produced once and drained by each worker in
interleaved rounds; medians are reported. Latency: the exactly-once processor
is then fed at half of its measured maximum rate; hit-to-enriched latency is
the time a read_committed consumer receives the enriched hit minus the hit's
event time (emit latency, the output's CreateTime minus event time, is shown
too). The first ``--warmup-seconds`` of the feed are not measured: they are
when the processor first meets each of the 20,000 visitors (a steady state is
what the figure describes; a restarted processor restores its state instead).
The processor runs as ``passerelle enrich`` does: batches of 2,000, commit
every 100 ms, early commit after 30 ms when caught up. Latency runs are
repeated (``--latency-runs``, 3), at-least-once and exactly-once interleaved;
the last line reads ``ratios: alo=<b/a> eos=<c/a> p99_ms=<median of the
exactly-once runs' visible p99>``: one run's p99 on a shared 2-core machine
is too noisy to hold a target to.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any

from confluent_kafka.admin import NewTopic

from bench import report
from bench.report import ROOT
from bench.runtime import cleanup, delete
from passerelle.schemas.catalog import load_catalog
from passerelle.schemas.clients import Connection, admin_client, produce, producer, registry_client
from passerelle.schemas.serde import AvroEncoder, write_long

IMPLS = ("raw", "alo", "eos")
VISITORS = 20_000
CUSTOMERS = 5_000
TAGS = (
    {"xtor": "EREC-123-[soldes]-20261128-[]-contact@list"},
    {"xtor": "SEC-9-GOO-[chaussures trail]"},
    {"xtor": "AL-72-[partnerx]"},
    {"utm_source": "newsletter", "utm_medium": "email", "utm_campaign": "black_friday"},
    {"utm_source": "blog", "utm_medium": "referral", "utm_campaign": "never-declared"},
    {"gclid": "EAIaIQobChMI"},
)
DECLARED = ("EREC-123", "SEC-9", "AL-72", "black_friday")
REFERRERS = (None, None, "https://www.google.fr/search?q=shoes", "https://www.facebook.com/", "https://blog.example/")


def bench_hit(i: int, now_ms: int) -> dict[str, Any]:
    vis = (i * 7919) % VISITORS
    identified = vis % 4 == 0 and i % 20 == 0
    return {
        "event_id": f"h{i:012d}", "site": "shop.example", "visitor_id": f"v{vis:06d}",
        "customer_id": f"C{vis % CUSTOMERS:05d}" if identified else None, "event_time": now_ms,
        "type": "page_view" if i % 3 else "product_view", "url": f"https://shop.example/p/{i % 977}",
        "referrer": REFERRERS[i % len(REFERRERS)], "page": None,
        "campaign_params": TAGS[i % len(TAGS)] if i % 17 == 0 else {}, "product": None, "order": None,
        "consent": {"analytics": True, "marketing": vis % 3 != 0}, "user_agent": None, "ip_truncated": None,
    }  # fmt: skip


def tables(now_ms: int) -> tuple[list[tuple[str, dict[str, Any]]], list[tuple[str, dict[str, Any]]]]:
    campaigns = [
        (key, {"key": key, "name": f"campaign {key}", "partner": "partner", "channel": "email", "medium": "email",
               "tagged_url_template": "https://shop.example/", "valid_from": None, "valid_to": None,
               "cost_model": None, "cost_amount": None, "currency": None, "declared_at": now_ms})
        for key in DECLARED
    ]  # fmt: skip
    profiles = [
        (f"C{c:05d}", {"customer_id": f"C{c:05d}", "email": f"c{c}@example.com", "gender": "FMX"[c % 3],
                       "birth_year": 1950 + c % 50, "age_band": None, "csp": ("cadre", "employe", "retraite")[c % 3],
                       "loyalty_tier": ("gold", "silver", None)[c % 3], "marketing_consent": c % 2 == 0,
                       "updated_at": now_ms})
        for c in range(CUSTOMERS)
    ]  # fmt: skip
    return campaigns, profiles


class Producer_:
    """Avro producer for one topic, connected up front so start-up never counts as latency."""

    def __init__(self, conn: Connection, topic: str, stem: str, paced: bool = False) -> None:
        catalog = load_catalog()
        client = registry_client(conn)
        self.topic = topic
        self.enc = AvroEncoder.for_subject(client, f"{topic}-value", catalog.schema_text(stem))
        self.key = AvroEncoder.for_subject(client, f"{topic}-key", '"string"')
        # Idempotent, acks=all, murmur2_random: the factory's defaults.
        self.producer = producer(conn, {"linger.ms": 1 if paced else 20, "queue.buffering.max.messages": 1_000_000})

    def send(self, records: Sequence[tuple[str, dict[str, Any]]]) -> None:
        for key, value in records:
            self._produce(key, value)
        self.producer.flush(120)

    def _produce(self, key: str, value: dict[str, Any]) -> None:
        produce(self.producer, self.topic, self.enc.encode(value), self.key.encode(key))

    def hits(self, start: int, count: int) -> None:
        """Produce hits as fast as the producer takes them (the throughput runs' input)."""
        for i in range(start, start + count):
            hit = bench_hit(i, time.time_ns() // 1_000_000)
            self._produce(hit["visitor_id"], hit)
        self.producer.flush(120)

    def prepare(self, start: int, count: int) -> list[tuple[bytes, bytes, bytes]]:
        """Pre-encode hits so the paced feeder barely competes for the cores it measures.

        Only ``event_time`` (a zigzag varint inside the Avro body) is filled in at send time.
        """
        prepared = []
        for i in range(start, start + count):
            hit = bench_hit(i, 0)
            zero, one = self.enc.encode(hit), self.enc.encode({**hit, "event_time": 1})
            at = next(n for n in range(len(zero)) if zero[n] != one[n])  # the 1-byte varint of event_time 0
            prepared.append((self.key.encode(hit["visitor_id"]), zero[:at], zero[at + 1 :]))
        return prepared

    def paced(self, prepared: list[tuple[bytes, bytes, bytes]], rate: float) -> None:
        """Send prepared hits at ``rate`` per second, stamping each with the time it is handed to the producer."""
        send, topic = self.producer.produce, self.topic
        t0 = time.perf_counter()
        for n, (key, head, tail) in enumerate(prepared):
            if n % 50 == 0:
                wait = t0 + n / rate - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                self.producer.poll(0)
            value = head + write_long(time.time_ns() // 1_000_000) + tail
            try:
                send(topic, value, key)
            except BufferError:
                produce(self.producer, topic, value, key)
        self.producer.flush(120)


def create(conn: Connection, topics: dict[str, int], compact: bool = False) -> None:
    admin = admin_client(conn)
    config = {"cleanup.policy": "compact"} if compact else {}
    for fut in admin.create_topics([NewTopic(t, n, 1, config=config) for t, n in topics.items()]).values():
        fut.result(30)


def worker_cmd(
    impl: str,
    args: argparse.Namespace,
    conn: Connection,
    env: dict[str, str],
    records: int,
    group: str,
    commit_ms: int | None = None,
    batch_size: int | None = None,
) -> list[str]:
    return [
        sys.executable, "-m", "bench.enrich_workers", impl, "--bootstrap", conn.bootstrap_servers,
        "--registry", conn.registry_url,
        "--input", env["input"], "--output", env["output"], "--campaigns", env["campaigns"], "--crm", env["crm"],
        "--records", str(records), "--group", group, "--dlq", env["dlq"],
        "--commit-ms", str(commit_ms or args.commit_ms), "--min-commit-ms", str(args.min_commit_ms),
        "--batch-size", str(batch_size or args.batch_size),
    ]  # fmt: skip


def outputs(conn: Connection, output: str) -> None:
    create(conn, {output: 6, output + ".links": 6})
    create(conn, {output + ".undeclared": 1}, compact=True)


def throughput(impl: str, args: argparse.Namespace, conn: Connection, env: dict[str, str], tag: str) -> dict[str, Any]:
    env = {**env, "output": f"bench.enriched.{impl}.{tag}"}
    outputs(conn, env["output"])
    cmd = worker_cmd(impl, args, conn, env, args.records, f"bench-enrich-{impl}-{tag}")
    try:
        return report.worker_result(impl, cmd, args.timeout)
    finally:
        delete(conn, [env["output"], env["output"] + ".links", env["output"] + ".undeclared"])
        # Its changelogs too, now: compacting them would load the broker during the next runs.
        cleanup(conn, f"bench-enrich-{impl}-{tag}")


def latency(
    impl: str, rate: float, args: argparse.Namespace, conn: Connection, env: dict[str, str], tag: str
) -> dict[str, float]:
    """Run ``impl`` on a fresh topic fed at ``rate``; percentiles of visible and emit latency (ms)."""
    import json

    env = {**env, "input": f"bench.lat.in.{impl}.{tag}", "output": f"bench.lat.out.{impl}.{tag}"}
    create(conn, {env["input"]: 6})
    outputs(conn, env["output"])
    count = int(rate * (args.latency_seconds + args.warmup_seconds))
    feeder = Producer_(conn, env["input"], "Hit", paced=True)
    cmd = worker_cmd(
        impl, args, conn, env, count + 1, f"bench-lat-{impl}-{tag}", args.latency_commit_ms, args.latency_batch_size
    )
    worker = subprocess.Popen([*cmd, "--probe"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    reader = subprocess.Popen(
        [sys.executable, "-m", "bench.latency_reader", "--bootstrap", conn.bootstrap_servers,
         "--registry", conn.registry_url,
         "--topic", env["output"], "--count", str(count), "--timeout", str(args.latency_seconds + 120),
         "--skip-seconds", str(args.warmup_seconds)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert reader.stdout is not None
    prepared = feeder.prepare(1, count)
    feeder.hits(0, 1)  # first hit: once it comes out, the worker is assigned and its tables are loaded
    if reader.stdout.readline().strip() != "ready":
        raise RuntimeError(f"{impl}: the first hit never came out")
    feeder.paced(prepared, rate)
    out, _ = reader.communicate(timeout=args.latency_seconds + 180)
    try:
        worker_out, _ = worker.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker_out = ""
    delete(conn, [env["input"], env["output"], env["output"] + ".links", env["output"] + ".undeclared"])
    cleanup(conn, f"bench-lat-{impl}-{tag}")  # its changelogs, group and subjects
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    result["rate"] = rate
    for line in worker_out.splitlines():
        if line.startswith('{"probe"'):
            result.update({k: v for k, v in json.loads(line).items() if k != "probe"})
    return result


def run(args: argparse.Namespace, conn: Connection) -> str:
    tag = uuid.uuid4().hex[:6]
    env = {"input": f"bench.hits.{tag}", "campaigns": f"bench.campaigns.{tag}", "crm": f"bench.crm.{tag}",
           "dlq": f"bench.dlq.{tag}"}  # fmt: skip
    create(conn, {env["input"]: 6, env["dlq"]: 1})
    create(conn, {env["campaigns"]: 1, env["crm"]: 3}, compact=True)
    now = time.time_ns() // 1_000_000
    campaigns, profiles = tables(now)
    Producer_(conn, env["campaigns"], "Campaign").send(campaigns)
    Producer_(conn, env["crm"], "CrmProfile").send(profiles)
    print(f"producing {args.records} hits ...", file=sys.stderr, flush=True)
    Producer_(conn, env["input"], "Hit").hits(0, args.records)
    if args.latency_only:
        only = latency(args.latency_impl, args.latency_only, args, conn, env, tag)
        cleanup(conn, "bench", tag)
        return json.dumps(only)
    rates, rss = report.interleaved(
        IMPLS, args.rounds, lambda impl, round_: throughput(impl, args, conn, env, f"{tag}-{round_}"), "hits/s"
    )
    med = report.medians(rates)
    runs: dict[str, list[dict[str, float]]] = {"alo": [], "eos": []}
    if args.latency_seconds > 0:
        for n in range(args.latency_runs):  # interleaved, so that a noisy moment hits both guarantees
            for impl in ("alo", "eos") if n % 2 == 0 else ("eos", "alo"):
                runs[impl].append(latency(impl, med["eos"] * args.load, args, conn, env, f"{tag}-{n}"))
                print(f"latency {impl} run {n + 1}: {runs[impl][-1]}", file=sys.stderr, flush=True)
    lat = {impl: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for impl, rs in runs.items() if rs}
    cleanup(conn, "bench", tag)  # inputs, outputs, changelogs, groups, subjects
    labels = {"raw": "(a) raw loop, same join", "alo": "(b) enrichment at-least-once",
              "eos": "(c) enrichment exactly-once"}  # fmt: skip
    lines = [
        f"enrichment bench: {args.records} hits, {VISITORS} visitors, {CUSTOMERS} CRM profiles, {args.rounds} "
        f"round(s), medians; commit interval {args.commit_ms} ms (latency runs: "
        f"{args.latency_commit_ms or args.commit_ms} ms)",
        *report.table(labels, med, rss, "hits/s", 10),
    ]
    for impl, r in lat.items():
        each = " / ".join(f"{x['p99']:.1f}" for x in runs[impl])
        lines.append(
            f"latency {impl} at {r['rate']:,.0f} hits/s ({args.load:.0%} of eos max, after {args.warmup_seconds:g} s), "
            f"median of {len(runs[impl])} run(s): hit-to-enriched p50 {r['p50']:.1f} ms p99 {r['p99']:.1f} ms "
            f"(runs: {each}); "
            f"emit p50 {r['emit_p50']:.1f} ms p99 {r['emit_p99']:.1f} ms"
        )
        if "commits" in r:
            lines.append(
                f"  {impl} worker: commit (loop stall) p50 {r['commit_p50_ms']:.1f} p99 {r['commit_p99_ms']:.1f} "
                f"max {r['commit_max_ms']:.1f} ms; between commits p50 {r['gap_p50_ms']:.1f} p99 {r['gap_p99_ms']:.1f} "
                f"max {r['gap_max_ms']:.1f} ms; p99 of: changelog writes {r['changelogs_p99_ms']:.1f}, transaction "
                f"commit {r['transaction_p99_ms']:.1f}, batch handling {r['handle_p99_ms']:.1f} ms; GC pauses "
                f"{r['gc_pauses']:.0f}, longest {r['gc_max_ms']:.1f} ms"
            )
    p99 = lat["eos"]["p99"] if "eos" in lat else float("nan")
    lines.append(f"ratios: alo={med['alo'] / med['raw']:.2f} eos={med['eos'] / med['raw']:.2f} p99_ms={p99:.1f}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--records", type=int, default=200_000, help="hits per throughput run (default 200000)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds, medians reported (default 3)")
    parser.add_argument("--latency-seconds", type=float, default=5, help="length of the latency runs; 0 skips them")
    parser.add_argument(
        "--latency-runs", type=int, default=3,
        help="latency runs per guarantee, interleaved; the last line gives the median p99 (default 3)",
    )  # fmt: skip
    parser.add_argument(
        "--warmup-seconds",
        type=float,
        default=3,
        help="latency runs feed at the rate this long before measuring: every visitor is seen once (default 3)",
    )
    parser.add_argument("--commit-ms", type=int, default=100, help="processor commit interval (default 100)")
    parser.add_argument(
        "--latency-commit-ms", type=int, default=None, help="commit interval of the latency runs (default: --commit-ms)"
    )
    parser.add_argument(
        "--min-commit-ms", type=int, default=30, help="commit this early when caught up with the input (default 30)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=2000, help="most records per loop turn (default 2000, as passerelle enrich)"
    )
    parser.add_argument(
        "--latency-batch-size", type=int, default=None, help="batch size of the latency runs (default: --batch-size)"
    )
    parser.add_argument("--load", type=float, default=0.5, help="latency-run rate as a share of eos max (default 0.5)")
    parser.add_argument("--latency-only", type=float, default=0, help="only one latency run, at this rate (hits/s)")
    parser.add_argument("--latency-impl", choices=("alo", "eos"), default="eos", help="with --latency-only")
    parser.add_argument("--timeout", type=float, default=900, help="per-worker timeout in seconds")


def main(argv: Sequence[str] | None = None, bootstrap: str | None = None, registry: str | None = None) -> int:
    return report.main("python -m bench.enrich", __doc__, add_arguments, run, argv, bootstrap, registry)


if __name__ == "__main__":
    sys.exit(main())
