"""Post-view benchmark: the raw confluent-kafka loop doing the same join vs the post-view processor.

    (a) raw  confluent-kafka batch loop over both topics: decode, ``PostView`` rules with dict state, encode
             ``PostView``, produce, commit offsets asynchronously (no changelog, no transactions: the ceiling)
    (b) alo  ``PostViewProcessor`` on the runtime, at-least-once
    (c) eos  ``PostViewProcessor`` on the runtime, exactly-once

Input: ``--records`` enriched hits of 20,000 visitors (a new visit every 5
hits of a visitor; a third of them order on their 10th hit) on 6 partitions,
and a quarter as many ad impressions of half of those visitors (10 display
campaigns, served 0-30 h before, one in ten for another site) on 6
co-partitioned ones, produced once, impressions first: with 200,000 hits,
40,000 visits and 6,667 orders, of which 18,000 and 3,001 are credited when
every impression is read before the hits (a worker reads both topics at
once, so a few impressions may come after their visit and not be credited).
Each worker (its own process, consumer group and output topic) drains both
topics; rates are input records (impressions + hits) per second from the
first record consumed to the last output acknowledged,
medians of ``--rounds`` interleaved rounds. The processor runs as
``passerelle postview`` does: batches of 2,000, commit every 100 ms, early
commit after 30 ms when caught up, reader schemas from the catalog. The last
line reads ``ratios: alo=<b/a> eos=<c/a>``.

    python -m bench.postview [--records 200000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import io
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from bench import report
from bench.enrich import Producer_, create
from bench.loops import RawLoop, output_codec
from bench.runtime import cleanup, delete
from passerelle.schemas import clients
from passerelle.schemas.catalog import load_catalog
from passerelle.schemas.clients import Connection

IMPLS = ("raw", "alo", "eos")
VISITORS = 20_000
CAMPAIGNS = 10
SITE = "shop.example"
HOUR_MS = 3_600_000


# --- the input --------------------------------------------------------------------------------------------


def hits(count: int, now: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """Enriched hits: visitor by visitor as the enrichment numbers them (a visit every 5 hits, an order every 20)."""
    seen: dict[int, int] = {}
    for i in range(count):
        vis = (i * 7919) % VISITORS
        k = seen.get(vis, 0)
        seen[vis] = k + 1
        v, visit, order = f"v{vis:06d}", 1 + k // 5, k % 10 == 9 and vis % 3 == 0
        yield (v, {
            "event_id": f"h{i:012d}", "site": SITE, "visitor_id": v, "customer_id": f"C{vis:06d}" if vis % 8 == 0
            else None, "event_time": now + k * 1000, "type": "order" if order else "page_view",
            "url": f"https://{SITE}/p/{i % 977}", "referrer": None, "page": None, "campaign_params": {},
            "product": None,
            "order": {"order_id": f"O-{vis}-{k}", "revenue": 10.0 + k, "currency": "EUR", "lines": []}
            if order else None,
            "consent": {"analytics": True, "marketing": True}, "user_agent": None, "ip_truncated": None,
            "visit_id": f"{v}:{visit}", "visit_number": visit,
            "traffic_source": {"medium": ("direct", "email", "search")[vis % 3], "source": None, "campaign": None,
                               "term": None, "content": None, "click_id": None, "network": None},
            "declared_campaign": None, "campaign_undeclared": False, "crm": None, "enriched_at": now,
        })  # fmt: skip


def impressions(count: int, now: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """Ad impressions of the same visitors, served up to 30 h before ``now`` (some outside the 24 h window)."""
    for i in range(count):
        vis = 2 * ((i * 104_729) % (VISITORS // 2))  # half the visitors are exposed
        v = f"v{vis:06d}"
        yield (v, {
            "impression_id": f"imp{i:010d}", "visitor_id": v, "site": "other.example" if i % 10 == 9 else SITE,
            "campaign_key": f"DISP-{i % CAMPAIGNS}", "creative": "300x250", "placement": f"pl-{i % 31}",
            "ad_server": "ads.example", "event_time": now - (i * 7_919_993) % (30 * HOUR_MS) - 1,
        })  # fmt: skip


def produce_all(conn: Connection, topic: str, stem: str, records: Iterator[tuple[str, dict[str, Any]]]) -> None:
    """Produce as generated: the orchestrator never holds the input (a worker's peak RSS starts from its parent's:
    Linux keeps ``ru_maxrss`` across fork and exec)."""
    feeder = Producer_(conn, topic, stem)
    for key, value in records:
        feeder._produce(key, value)
    feeder.producer.flush(120)


# --- the workers (one process each) -------------------------------------------------------------------------


def run_raw(args: argparse.Namespace) -> None:
    """(a) The plain confluent-kafka batch loop doing the same join with the same rules, state in a dict."""
    import fastavro

    from passerelle.streams.postview.rules import PostView

    conn = Connection.plain(args.bootstrap, args.registry)
    writer, header, key_enc, cache = output_codec(conn, args.output, load_catalog().schema_text("PostView"))
    rules = PostView()
    state: dict[str, Any] = {}
    loop = RawLoop(conn, args.group, [args.impressions, args.hits])
    producer, done = loop.producer, 0
    reader, write = fastavro.schemaless_reader, fastavro.schemaless_writer
    imp_topic = args.impressions
    while done < args.records:
        msgs = loop.batch()
        if not msgs:
            continue
        now = time.time_ns() // 1_000_000
        for msg in msgs:
            if msg.error():
                continue
            raw: Any = msg.value()
            value: Any = reader(io.BytesIO(raw[5:]), cache.get(int.from_bytes(raw[1:5], "big")), None)
            visitor = value["visitor_id"]
            done += 1
            old = state.get(visitor)
            if msg.topic() == imp_topic:
                imp_step = rules.on_impression(old, value, now)
                if imp_step.state is not None and imp_step.state is not old:
                    state[visitor] = imp_step.state
                continue
            step = rules.on_hit(old, value, now)
            if step.state is old:
                continue
            if step.state is not None:
                state[visitor] = step.state
            for pv in step.postviews:
                out = io.BytesIO()
                out.write(header)
                write(out, writer, pv)
                try:
                    producer.produce(args.output, out.getvalue(), key_enc.encode(visitor))
                except BufferError:
                    clients.produce(producer, args.output, out.getvalue(), key_enc.encode(visitor))
        loop.end_batch()
    loop.finish(done)


def run_runtime(args: argparse.Namespace, exactly_once: bool) -> None:
    """(b), (c) The processor as `passerelle postview` runs it."""
    from bench.runner import run_processor
    from passerelle.streams.postview.processor import PostViewProcessor, PostViewTopics

    catalog = load_catalog()
    topics = PostViewTopics(impressions=args.impressions, hits_enriched=args.hits, postview=args.output,
                            crm_profiles=args.crm, privacy_requests=None)  # fmt: skip
    inputs = {args.impressions: catalog.schema_text("AdImpression"), args.hits: catalog.schema_text("EnrichedHit")}
    outputs = {args.output: catalog.schema_text("PostView")}
    run_processor(PostViewProcessor(topics), args, outputs, exactly_once, input_schemas=inputs)


def worker(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.postview --worker")
    parser.add_argument("impl", choices=IMPLS)
    for name in ("bootstrap", "registry", "impressions", "hits", "output", "crm", "group", "dlq"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--records", type=int, required=True)
    parser.add_argument("--commit-ms", type=int, default=100)
    parser.add_argument("--min-commit-ms", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=2000)
    args = parser.parse_args(argv)
    if args.impl == "raw":
        run_raw(args)
    else:
        run_runtime(args, exactly_once=args.impl == "eos")
    sys.stdout.flush()


# --- the orchestration ---------------------------------------------------------------------------------------


def throughput(impl: str, args: argparse.Namespace, conn: Connection, env: dict[str, str], tag: str) -> dict[str, Any]:
    output = f"bench.postview.out.{impl}.{tag}"
    create(conn, {output: 6})
    group = f"bench-postview-{impl}-{tag}"
    cmd = [
        sys.executable, "-m", "bench.postview", "--worker", impl, "--bootstrap", conn.bootstrap_servers,
        "--registry", conn.registry_url, "--impressions", env["impressions"], "--hits", env["hits"],
        "--output", output, "--crm", env["crm"], "--group", group, "--dlq", env["dlq"],
        "--records", str(env["total"]), "--commit-ms", str(args.commit_ms), "--min-commit-ms", str(args.min_commit_ms),
        "--batch-size", str(args.batch_size),
    ]  # fmt: skip
    try:
        return report.worker_result(impl, cmd, args.timeout)
    finally:
        delete(conn, [output])
        cleanup(conn, group)  # its changelogs, group and subjects: compacting them would load the broker


def run(args: argparse.Namespace, conn: Connection) -> str:
    tag = uuid.uuid4().hex[:6]
    env = {"impressions": f"bench.pv.imps.{tag}", "hits": f"bench.pv.hits.{tag}", "crm": f"bench.pv.crm.{tag}",
           "dlq": f"bench.pv.dlq.{tag}"}  # fmt: skip
    create(conn, {env["impressions"]: 6, env["hits"]: 6, env["dlq"]: 1})
    create(conn, {env["crm"]: 1}, compact=True)
    now = time.time_ns() // 1_000_000
    n_imps = args.records // 4
    print(f"producing {n_imps} impressions and {args.records} hits ...", file=sys.stderr, flush=True)
    produce_all(conn, env["impressions"], "AdImpression", impressions(n_imps, now))
    produce_all(conn, env["hits"], "EnrichedHit", hits(args.records, now))
    env["total"] = str(n_imps + args.records)
    try:
        rates, rss = report.interleaved(
            IMPLS, args.rounds, lambda impl, round_: throughput(impl, args, conn, env, f"{tag}-{round_}"), "records/s"
        )
    finally:
        cleanup(conn, "bench.pv.", tag)
        cleanup(conn, "bench-postview-", tag)
    med = report.medians(rates)
    labels = {"raw": "(a) raw loop, same join", "alo": "(b) postview at-least-once",
              "eos": "(c) postview exactly-once"}  # fmt: skip
    lines = [
        f"post-view bench: {n_imps} impressions + {args.records} hits, {VISITORS} visitors, {args.rounds} round(s), "
        f"medians; commit interval {args.commit_ms} ms, batches of {args.batch_size}",
        *report.table(labels, med, rss, "records/s", 11),
    ]
    each = "; ".join(f"{impl} " + " / ".join(f"{r:,.0f}" for r in rates[impl]) for impl in IMPLS)
    lines.append(f"rounds: {each}")
    lines.append(f"ratios: alo={med['alo'] / med['raw']:.2f} eos={med['eos'] / med['raw']:.2f}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--records", type=int, default=200_000, help="hits per run; impressions: a quarter (200000)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds, medians reported (default 3)")
    parser.add_argument("--commit-ms", type=int, default=100, help="processor commit interval (default 100)")
    parser.add_argument(
        "--min-commit-ms", type=int, default=30, help="commit this early when caught up with the input (default 30)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=2000, help="most records per loop turn (default 2000, as passerelle postview)"
    )
    parser.add_argument("--timeout", type=float, default=900, help="per-worker timeout in seconds")


def main(argv: Sequence[str] | None = None, bootstrap: str | None = None, registry: str | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        worker(argv[1:])
        return 0
    return report.main("python -m bench.postview", __doc__, add_arguments, run, argv, bootstrap, registry)


if __name__ == "__main__":
    sys.exit(main())
