"""Conversion-paths benchmark: the raw confluent-kafka loop doing the same per-person bookkeeping vs the processor.

    (a) raw  confluent-kafka batch loop over both inputs: decode, the ``Paths`` rules (``rules.py``) with the
             visitors and the persons in two dicts, both stages in-process (an identified visitor's touchpoints
             and conversions go straight to the customer's state: no internal topic, no re-keying), encode
             ``ConversionPath`` (Avro) and the CRM rows (``CrmConversionPath``, ``CustomerChannels``: Connect
             JSON), produce, commit offsets asynchronously (no changelog, no transactions: the ceiling)
    (b) alo  ``ConversionPathsProcessor`` on the runtime, at-least-once
    (c) eos  ``ConversionPathsProcessor`` on the runtime, exactly-once

The processor runs its two stages as it does in production: stage 1 (per
visitor) writes the identified visitors' events to the worker's own
``conversions.paths.events`` topic (6 partitions, keyed by customer id), which
it reads back for stage 2 (per customer). Neither implementation reads the
CRM or privacy tables' erasures nor runs the hourly sweep (it never fires in
a run).

Input: ``--records`` enriched hits of 20,000 visitors (a new visit every 4
hits of a visitor; a third of them order on their 7th hit) on 6 partitions,
and a tenth as many ``ads.postview`` exposures of half of those visitors (10
display campaigns, served 1-30 h before) on 6 co-partitioned ones, produced
once, post-views first. Half of the visitors are identified, two devices per
customer (5,000 customers): one device from its first hit, the other from its
6th hit, in its second visit (its two anonymous touchpoints are then handed
over, a ``merge``); the other half stay anonymous (their paths are kept and
converted in stage 1, without CRM rows). With 150,000 hits (7 or 8 per
visitor): 40,000 visits and 6,667 orders; with 200,000: 60,000 and 6,667.
Each worker (its own process, consumer group and output topics) drains both
inputs; rates are input records (post-views + hits; not the internal topic's)
per second from the first record consumed to the last output acknowledged,
medians of ``--rounds`` interleaved rounds. The processor runs as
``passerelle conversion-paths`` does: batches of 2,000, commit every 100 ms,
early commit after 30 ms when caught up, reader schemas from the catalog,
Connect JSON CRM rows. The last line reads ``ratios: alo=<b/a> eos=<c/a>``.

    python -m bench.paths [--records 200000] [--rounds 3]
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
from bench.enrich import create
from bench.loops import RawLoop, output_codec
from bench.postview import produce_all
from bench.runtime import cleanup, delete
from passerelle.schemas import clients
from passerelle.schemas.catalog import load_catalog
from passerelle.schemas.clients import Connection

IMPLS = ("raw", "alo", "eos")
VISITORS = 20_000
CAMPAIGNS = 10
SITE = "shop.example"
HOUR_MS = 3_600_000
HITS_PER_VISIT = 4
LOGIN_HIT = 5  # the second device of a customer is identified on its 6th hit (in its second visit)
ORDER_HIT = 6  # a third of the visitors order on their 7th hit (and every 10 hits after)
CONNECT_JSON = "connect-json"


def outputs_of(prefix: str) -> dict[str, str]:
    """A worker's topics: the internal events (the processor only), the paths, the CRM rows."""
    return {kind: f"{prefix}.{kind}" for kind in ("events", "paths", "crm", "channels")}


# --- the input --------------------------------------------------------------------------------------------


def customer_of(vis: int, k: int) -> str | None:
    """Visitors 4m and 4m+1 are two devices of customer C(m): the first identified from its first hit, the
    second from its hit number ``LOGIN_HIT`` (from 0); visitors 4m+2 and 4m+3 stay anonymous."""
    if vis % 4 == 0 or (vis % 4 == 1 and k >= LOGIN_HIT):
        return f"C{vis // 4:06d}"
    return None


def hits(count: int, now: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """Enriched hits: visitor by visitor as the enrichment numbers them (a visit every 4 hits, orders)."""
    seen: dict[int, int] = {}
    for i in range(count):
        vis = (i * 7919) % VISITORS
        k = seen.get(vis, 0)
        seen[vis] = k + 1
        v, visit, order = f"v{vis:06d}", 1 + k // HITS_PER_VISIT, k % 10 == ORDER_HIT and vis % 3 == 0
        yield (v, {
            "event_id": f"h{i:012d}", "site": SITE, "visitor_id": v, "customer_id": customer_of(vis, k),
            "event_time": now + k * 1000, "type": "order" if order else "page_view",
            "url": f"https://{SITE}/p/{i % 977}", "referrer": None, "page": None, "campaign_params": {},
            "product": None,
            "order": {"order_id": f"O-{vis}-{k}", "revenue": 10.0 + k, "currency": "EUR", "lines": []}
            if order else None,
            "consent": {"analytics": True, "marketing": True}, "user_agent": None, "ip_truncated": None,
            "visit_id": f"{v}:{visit}", "visit_number": visit,
            "traffic_source": {"medium": ("direct", "email", "search", "social")[(vis + visit) % 4],
                               "source": None, "campaign": None, "term": None, "content": None, "click_id": None,
                               "network": None},
            "declared_campaign": None, "campaign_undeclared": False, "crm": None, "enriched_at": now,
        })  # fmt: skip


def postviews(count: int, now: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """Post-view exposures (``ads.postview``) of half the visitors, their impressions served 1-30 h before."""
    for i in range(count):
        vis = 2 * ((i * 104_729) % (VISITORS // 2))
        v, served = f"v{vis:06d}", now - HOUR_MS - (i * 7_919_993) % (29 * HOUR_MS)
        yield (v, {
            "postview_id": f"pv{i:010d}", "kind": "visit", "visitor_id": v, "customer_id": customer_of(vis, 0),
            "site": SITE, "campaign_key": f"DISP-{i % CAMPAIGNS}", "impression_id": f"imp{i:010d}",
            "impression_time": served, "impressions": 1, "event_id": f"h{i:012d}", "visit_id": f"{v}:1",
            "event_time": now, "delay_ms": now - served, "visit_medium": "direct", "visit_campaign": None,
            "order_id": None, "revenue": None, "currency": None,
        })  # fmt: skip


# --- the workers (one process each) -------------------------------------------------------------------------


def run_raw(args: argparse.Namespace) -> None:
    """(a) The plain confluent-kafka batch loop doing the same bookkeeping with the same rules, state in dicts,
    both stages in-process."""
    import fastavro

    from passerelle.schemas.connect_json import ConnectJsonEncoder, encode_key
    from passerelle.streams.conversion_paths.rules import (
        ConversionRecord,
        Paths,
        PersonState,
        PersonStep,
        TouchRecord,
        VisitorState,
    )

    catalog = load_catalog()
    conn = Connection.plain(args.bootstrap, args.registry)
    topics = outputs_of(args.out)
    paths_topic, crm_topic, channels_topic = topics["paths"], topics["crm"], topics["channels"]
    writer, header, key_enc, cache = output_codec(conn, paths_topic, catalog.schema_text("ConversionPath"))
    crm_enc = ConnectJsonEncoder(catalog.schema_text("CrmConversionPath"))
    channels_enc = ConnectJsonEncoder(catalog.schema_text("CustomerChannels"))
    rules = Paths()
    visitors: dict[str, VisitorState] = {}
    persons: dict[str, PersonState] = {}
    loop = RawLoop(conn, args.group, [args.postview, args.hits])
    producer, done = loop.producer, 0
    counts = {"paths": 0, "crm": 0, "channels": 0}
    reader, write = fastavro.schemaless_reader, fastavro.schemaless_writer
    pv_topic = args.postview

    def produce(topic: str, value: bytes, key: bytes) -> None:
        try:
            producer.produce(topic, value, key)
        except BufferError:
            clients.produce(producer, topic, value, key)

    def publish(step: PersonStep, customer: str | None, now: int) -> None:
        """The paths of a step (and, for a customer, their CRM rows)."""
        for e in step.emissions:
            models = rules.attribution(e)
            out = io.BytesIO()
            out.write(header)
            write(out, writer, rules.path_record(e, models))
            produce(paths_topic, out.getvalue(), key_enc.encode(e.conv["visitor_id"]))
            counts["paths"] += 1
            if customer is not None:
                cid = e.conv["conversion_id"]
                produce(crm_topic, crm_enc.encode(rules.crm_path_record(e, models, now)), encode_key(cid))
                counts["crm"] += 1

    def person_step(customer: str, touches: Sequence[TouchRecord], conv: ConversionRecord | None, now: int) -> None:
        """Stage 2 for one event of a customer, in-process: what the processor reads back from its events."""
        old = persons.get(customer)
        if conv is not None:
            step = rules.convert(old, conv, customer, now)
        elif len(touches) == 1:
            step = rules.add_touch(old, touches[0], customer, now)
        else:
            step = rules.merge(old, touches, customer, now)
        if step.state is old:
            return
        persons[customer] = step.state
        publish(step, customer, now)
        channels = channels_enc.encode(rules.channels_record(customer, step.state, now))
        produce(channels_topic, channels, encode_key(customer))
        counts["channels"] += 1

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
            old = visitors.get(visitor)
            conversions: Sequence[ConversionRecord] = ()
            if msg.topic() == pv_topic:
                base: VisitorState = old if old is not None else {
                    "customer_id": None, "visit": 0, "goals": [], "orders": [], "person": None, "seen": now,
                }  # fmt: skip
                known = base["customer_id"] or value.get("customer_id")
                state: VisitorState = {**base, "customer_id": str(known) if known else None, "seen": now}
                touches: Sequence[TouchRecord] = (rules.touch_of_postview(value),)
            else:
                step = rules.on_hit(old, value, now)
                if step.state is old or step.state is None:
                    continue  # the common case: a page of a visit already seen
                state, touches, conversions = step.state, step.touches, step.conversions
            customer = state["customer_id"]
            if customer is None:  # anonymous: the path kept and converted in stage 1
                person = state["person"]
                for touch in touches:
                    ps = rules.add_touch(person, touch, None, now)
                    person = ps.state
                    publish(ps, None, now)
                for conv in conversions:
                    ps = rules.convert(person, conv, None, now)
                    person = ps.state
                    publish(ps, None, now)
                visitors[visitor] = {**state, "person": person}
                continue
            if state["person"] is not None:  # just identified: the anonymous touchpoints go first (a merge)
                pending = rules.pending(state["person"])
                if pending:
                    person_step(customer, pending, None, now)
                state = {**state, "person": None}
            visitors[visitor] = state
            for touch in touches:
                person_step(customer, (touch,), None, now)
            for conv in conversions:
                person_step(customer, (), conv, now)
        loop.end_batch()
    loop.finish(done, {"outputs": {topics[k]: n for k, n in counts.items()}})


def run_runtime(args: argparse.Namespace, exactly_once: bool) -> None:
    """(b), (c) The processor as `passerelle conversion-paths` runs it, on topics of its own."""
    from bench.runner import run_timed, runner_config
    from passerelle.streams.conversion_paths.processor import ConversionPathsProcessor, ConversionPathsTopics
    from passerelle.streams.runtime import Runner

    catalog = load_catalog()
    out = outputs_of(args.out)
    topics = ConversionPathsTopics(hits_enriched=args.hits, postview=args.postview, events=out["events"],
                                   paths=out["paths"], crm_paths=out["crm"], customer_channels=out["channels"],
                                   crm_profiles=args.crm, privacy_requests=None)  # fmt: skip
    schema = catalog.schema_text
    inputs = {args.hits: schema("EnrichedHit"), args.postview: schema("PostView"), out["events"]: schema("PathEvent")}
    outputs = {out["events"]: schema("PathEvent"), out["paths"]: schema("ConversionPath"),
               out["crm"]: schema("CrmConversionPath"), out["channels"]: schema("CustomerChannels")}  # fmt: skip
    formats = {out["crm"]: CONNECT_JSON, out["channels"]: CONNECT_JSON}
    runner = Runner(ConversionPathsProcessor(topics), runner_config(args, outputs, exactly_once, inputs, formats))
    run_timed(runner, args.records, internal=out["events"])


def worker(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.paths --worker")
    parser.add_argument("impl", choices=IMPLS)
    for name in ("bootstrap", "registry", "postview", "hits", "out", "crm", "group", "dlq"):
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
    prefix = f"bench.paths.out.{impl}.{tag}"
    out = outputs_of(prefix)
    if impl != "raw":
        create(conn, {out["events"]: 6})
    create(conn, {out["paths"]: 6})
    create(conn, {out["crm"]: 3, out["channels"]: 3}, compact=True)
    group = f"bench-paths-{impl}-{tag}"
    cmd = [
        sys.executable, "-m", "bench.paths", "--worker", impl, "--bootstrap", conn.bootstrap_servers,
        "--registry", conn.registry_url, "--postview", env["postview"], "--hits", env["hits"],
        "--out", prefix, "--crm", env["crm"], "--group", group, "--dlq", env["dlq"],
        "--records", str(env["total"]), "--commit-ms", str(args.commit_ms), "--min-commit-ms", str(args.min_commit_ms),
        "--batch-size", str(args.batch_size),
    ]  # fmt: skip
    try:
        result = report.worker_result(impl, cmd, args.timeout)
    finally:
        delete(conn, list(out.values()))
        cleanup(conn, prefix + ".")  # the output subjects
        cleanup(conn, group)  # its changelogs, group and subjects: compacting them would load the broker
    produced = result.get("outputs", {})
    result["produced"] = {kind: int(produced.get(topic, 0)) for kind, topic in out.items()}
    print(f"         {impl:<4} produced " + ", ".join(f"{k} {n:,}" for k, n in result["produced"].items()),
          file=sys.stderr, flush=True)  # fmt: skip
    return result


def run(args: argparse.Namespace, conn: Connection) -> str:
    tag = uuid.uuid4().hex[:6]
    env = {"postview": f"bench.paths.pv.{tag}", "hits": f"bench.paths.hits.{tag}", "crm": f"bench.paths.crm.{tag}",
           "dlq": f"bench.paths.dlq.{tag}"}  # fmt: skip
    create(conn, {env["postview"]: 6, env["hits"]: 6, env["dlq"]: 1})
    create(conn, {env["crm"]: 1}, compact=True)
    now = time.time_ns() // 1_000_000
    n_pv = args.records // 10
    produced: dict[str, dict[str, int]] = {}

    def measure(impl: str, round_: int) -> dict[str, Any]:
        result = throughput(impl, args, conn, env, f"{tag}-{round_}")
        produced[impl] = result["produced"]
        return result

    try:
        print(f"producing {n_pv} post-views and {args.records} hits ...", file=sys.stderr, flush=True)
        produce_all(conn, env["postview"], "PostView", postviews(n_pv, now))
        produce_all(conn, env["hits"], "EnrichedHit", hits(args.records, now))
        env["total"] = str(n_pv + args.records)
        rates, rss = report.interleaved(IMPLS, args.rounds, measure, "records/s")
    finally:
        cleanup(conn, "bench.paths.", tag)
        cleanup(conn, "bench-paths-", tag)
    med = report.medians(rates)
    labels = {"raw": "(a) raw loop, same bookkeeping", "alo": "(b) paths at-least-once",
              "eos": "(c) paths exactly-once"}  # fmt: skip
    lines = [
        f"conversion-paths bench: {n_pv} post-views + {args.records} hits, {VISITORS} visitors (half identified, "
        f"2 devices per customer), {args.rounds} round(s), medians; commit interval {args.commit_ms} ms, "
        f"batches of {args.batch_size}",
        *report.table(labels, med, rss, "records/s", 11),
    ]
    each = "; ".join(f"{impl} " + " / ".join(f"{r:,.0f}" for r in rates[impl]) for impl in IMPLS)
    lines.append(f"rounds: {each}")
    outs = "; ".join(
        f"{impl} " + " / ".join(f"{produced[impl].get(k, 0):,}" for k in ("paths", "crm", "channels", "events"))
        for impl in IMPLS
    )
    lines.append(f"outputs of the last round (paths / CRM paths / channel rows / internal events): {outs}")
    lines.append(f"ratios: alo={med['alo'] / med['raw']:.2f} eos={med['eos'] / med['raw']:.2f}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--records", type=int, default=200_000, help="hits per run; post-views: a tenth (200000)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds, medians reported (default 3)")
    parser.add_argument("--commit-ms", type=int, default=100, help="processor commit interval (default 100)")
    parser.add_argument(
        "--min-commit-ms", type=int, default=30, help="commit this early when caught up with the input (default 30)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=2000,
        help="most records per loop turn (default 2000, as passerelle conversion-paths)",
    )  # fmt: skip
    parser.add_argument("--timeout", type=float, default=900, help="per-worker timeout in seconds")


def main(argv: Sequence[str] | None = None, bootstrap: str | None = None, registry: str | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        worker(argv[1:])
        return 0
    return report.main("python -m bench.paths", __doc__, add_arguments, run, argv, bootstrap, registry)


if __name__ == "__main__":
    sys.exit(main())
