"""State benchmark: the in-memory store vs the RocksDB store, side by side in one run.

    fill        N visitor states (~580 bytes of JSON each, the enrichment's shape) written to the
                ``visitors`` changelog (6 partitions), as the enrichment leaves them
    memory      a runner restores them into the in-memory store (what every start does)
    rocksdb     a runner restores them into RocksDB from an empty disk, then restarts on the same
                disk (local checkpoint: only the changelog's tail, here empty)
    throughput  the enrichment processor (the test driver, no broker: the store's cost is what
                differs) on random visitors of the N, over each store

Each phase runs in its own process: RSS per key is (peak RSS - RSS before the runner)/N.
The last line reads ``ratios: rss_kb_per_key=<rocksdb> restore_keys_per_s=<rocksdb, empty disk>
throughput=<rocksdb/memory>``.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from confluent_kafka.admin import NewTopic

from bench.report import ROOT
from bench.runtime import cleanup
from passerelle.schemas.clients import Connection, admin_client, produce, producer

PARTITIONS = 6
PREFIX = "bench-state-"
HITS_TOPIC = "hits.raw"  # the driver does not read Kafka: the enrichment's default input name


def visitor_key(i: int) -> str:
    return f"v{i:09d}"


def visitor_state(i: int, now_ms: int) -> dict[str, Any]:
    """A visitor as the enrichment keeps it (campaign, visit, customer id): the fill's value."""
    source = {"medium": "email", "source": None, "campaign": f"EREC-{i % 500}", "term": None,
              "content": "soldes", "click_id": None, "network": None}  # fmt: skip
    return {
        "visit_number": 1 + i % 7, "campaign": {"source": source, "declared": None, "undeclared": True, "at": now_ms},
        "visit_id": f"{visitor_key(i)}:{1 + i % 7}", "visit_source": source, "visit_declared": None,
        "visit_undeclared": True, "visit_params": {"xtor": f"EREC-{i % 500}-[soldes]-20261128-[]-contact@list"},
        "last_seen": now_ms, "customer_id": f"C{i % 100_000:06d}" if i % 4 == 0 else None,
    }  # fmt: skip


def rss_kb() -> tuple[int, int]:
    """(current, peak) resident set size of this process, in KB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


# --- phases (each in its own process) ------------------------------------------------------


def fill(conn: Connection, topic: str, keys: int, now_ms: int) -> float:
    out = producer(conn, {"linger.ms": 50, "queue.buffering.max.messages": 1_000_000, "compression.type": "lz4"})
    started = time.perf_counter()
    for i in range(keys):
        value = json.dumps(visitor_state(i, now_ms), separators=(",", ":")).encode()
        produce(out, topic, value, visitor_key(i).encode(), partition=i % PARTITIONS, timestamp=now_ms)
    out.flush(300)
    return keys / (time.perf_counter() - started)


def restore(args: argparse.Namespace) -> dict[str, Any]:
    """Start a runner over the filled changelog; stop once its partitions are restored."""
    from passerelle.streams.enrichment.processor import VISITORS
    from passerelle.streams.runtime import Processor, Runner, RunnerConfig
    from passerelle.streams.runtime.stores import StateConfig

    before, _ = rss_kb()

    class Holder(Processor):
        name = "bench-state"
        inputs = (args.input,)
        stores = (VISITORS,)

    config = RunnerConfig(app_id=args.app, bootstrap_servers=args.bootstrap, schema_registry_url=args.registry,
                          output_schemas={}, dead_letter_topic=args.dlq)  # fmt: skip
    runner = Runner(Holder(), config, state=StateConfig(args.backend, Path(args.dir)))
    sample = runner.metrics.registry.get_sample_value
    labels = {"processor": "bench-state"}
    started = time.perf_counter()
    runner.run(max_seconds=3600, until=lambda: (sample("passerelle_state_restore_seconds_count", labels) or 0) >= 1)
    elapsed = time.perf_counter() - started
    restored = sample("passerelle_state_restore_seconds_sum", labels) or 0.0
    records = sample("passerelle_state_restored_records_total", labels) or 0.0
    _, peak = rss_kb()
    return {"start_s": elapsed, "restore_s": restored, "records": records, "rss_kb": peak - before}


def throughput(args: argparse.Namespace) -> dict[str, Any]:
    """The enrichment over a store holding the N visitors: hits/s on random visitors among them."""
    from bench.enrich import bench_hit
    from passerelle.streams.enrichment.processor import VISITORS, EnrichmentProcessor
    from passerelle.streams.runtime.stores import StateConfig
    from passerelle.streams.runtime.testing import ProcessorDriver

    now = int(time.time() * 1000)
    state = StateConfig(args.backend, Path(args.dir))
    driver = ProcessorDriver(EnrichmentProcessor(), partitions=range(PARTITIONS),
                             open_store=state.opener(args.app, "0"), now=now)  # fmt: skip
    if args.backend == "memory":  # the restore's work, without Kafka: the same N states in the dict
        for i in range(args.keys):
            value = json.dumps(visitor_state(i, now), separators=(",", ":")).encode()
            driver.store(VISITORS, i % PARTITIONS).restore(visitor_key(i).encode(), value, now)
    gc.freeze()  # the restored state out of the collector's scans, as the runner does
    rng = random.Random(11)
    batches = []
    for b in range(args.hits // 2000):
        records = []
        for j in range(2000):
            idx = rng.randrange(args.keys)
            hit = bench_hit(b * 2000 + j, now)
            hit["visitor_id"] = visitor_key(idx)
            records.append(driver.record(HITS_TOPIC, hit["visitor_id"], hit, now, partition=idx % PARTITIONS))
        batches.append(records)
    started = time.perf_counter()
    for records in batches:
        driver.feed(*records, now=now)
        gc.freeze()  # the runner freezes after each commit (``RunnerConfig.gc_freeze``); a feed is one commit
    elapsed = time.perf_counter() - started
    return {"hits_per_s": len(batches) * 2000 / elapsed, "rss_kb": rss_kb()[1]}


def worker(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("phase", choices=("restore", "throughput"))
    for name in ("--backend", "--dir", "--app", "--input", "--dlq", "--bootstrap", "--registry"):
        p.add_argument(name, default="")
    p.add_argument("--keys", type=int, default=0)
    p.add_argument("--hits", type=int, default=0)
    args = p.parse_args(argv)
    result = restore(args) if args.phase == "restore" else throughput(args)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


def median(results: list[dict[str, Any]]) -> dict[str, Any]:
    ordered = sorted(results, key=lambda r: float(r["hits_per_s"]))
    return ordered[len(ordered) // 2]


def run_worker(*argv: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "bench.state", "worker", *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=7200)  # fmt: skip
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return dict(json.loads(line[7:]))
    raise RuntimeError(f"bench worker {argv[0]} failed:\n{proc.stderr[-3000:]}")


# --- the run ----------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--keys", type=int, default=1_000_000, help="visitor states (default 1,000,000)")
    p.add_argument("--hits", type=int, default=40_000, help="hits of the throughput phase (default 40,000)")
    p.add_argument("--dir", default="", help="where the RocksDB stores go (default: a temporary directory)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved throughput rounds per store (median)")
    p.add_argument("--skip-memory", action="store_true",
                   help="RocksDB only (10M keys do not fit in memory here: ~3.4 KB per key)")  # fmt: skip


def run(args: argparse.Namespace, bootstrap: str, registry: str) -> int:
    conn = Connection.plain(bootstrap, registry)
    tag = uuid.uuid4().hex[:8]
    app, topic_in, dlq = f"{PREFIX}{tag}", f"{PREFIX}{tag}.in", f"{PREFIX}{tag}.dlq"
    changelog = f"{app}-visitors-changelog"
    admin = admin_client(conn)
    compact = {"cleanup.policy": "compact", "min.compaction.lag.ms": "0"}
    topics = [
        NewTopic(topic_in, PARTITIONS, 1),
        NewTopic(dlq, 1, 1),
        NewTopic(changelog, PARTITIONS, 1, config=compact),
    ]
    for fut in admin.create_topics(topics).values():
        fut.result(30)
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench-state-"))
    now = int(time.time() * 1000)
    rows: dict[str, dict[str, Any]] = {}
    try:
        rate = fill(conn, changelog, args.keys, now)
        print(f"fill: {args.keys:,} visitor states written to {changelog} at {rate:,.0f} records/s", flush=True)
        common = ["--app", app, "--input", topic_in, "--dlq", dlq, "--bootstrap", bootstrap, "--registry", registry,
                  "--keys", str(args.keys)]  # fmt: skip
        if not args.skip_memory:
            rows["memory: restore"] = run_worker("restore", "--backend", "memory", "--dir", str(root / "m"), *common)
        rows["rocksdb: restore, empty disk"] = run_worker("restore", "--backend", "rocksdb", "--dir",
                                                          str(root / "r"), *common)  # fmt: skip
        rows["rocksdb: restart, local checkpoint"] = run_worker("restore", "--backend", "rocksdb", "--dir",
                                                                str(root / "r"), *common)  # fmt: skip
        for name, row in rows.items():
            per_s = row["records"] / max(row["restore_s"], 1e-9)
            mb, per_key = row["rss_kb"] / 1024, row["rss_kb"] / args.keys
            print(f"  {name:<36} start {row['start_s']:7.2f} s  restore {row['restore_s']:7.2f} s  "
                  f"{row['records']:>11,.0f} records  {per_s:>10,.0f} keys/s  "
                  f"RSS +{mb:8.1f} MB = {per_key:.3f} KB/key", flush=True)  # fmt: skip
        hits = ["--hits", str(args.hits), "--app", app, "--keys", str(args.keys)]
        # Interleaved rounds, medians: one pair of runs on a shared machine is noise (0.5x to 1.2x seen).
        mems: list[dict[str, Any]] = []
        rockses: list[dict[str, Any]] = []
        for _ in range(args.rounds):
            if not args.skip_memory:
                mems.append(run_worker("throughput", "--backend", "memory", "--dir", str(root / "m"), *hits))
            # The app's stores under <dir>/<app>/0: a copy of the RocksDB databases the restore left, so every round
            # starts from the restored visitors as the memory rounds do (a round writes the visitors it enriches,
            # and the next one, on the same visitors and hits, would take the enrichment's cheaper paths).
            shutil.rmtree(root / "round", ignore_errors=True)
            shutil.copytree(root / "r", root / "round")
            rockses.append(run_worker("throughput", "--backend", "rocksdb", "--dir", str(root / "round"), *hits))
        shutil.rmtree(root / "round", ignore_errors=True)
        mem = median(mems) if mems else {"hits_per_s": float("nan"), "rss_kb": 0}
        rocks = median(rockses)
        pairs = zip(mems, rockses, strict=False)  # none with --skip-memory
        rounds = ", ".join(f"{m['hits_per_s']:,.0f}/{r['hits_per_s']:,.0f}" for m, r in pairs)
        if rounds:
            print(f"  throughput rounds (memory/rocksdb hits/s): {rounds}", flush=True)
        print(f"  enrichment throughput (driver, {args.hits:,} hits on random visitors): memory "
              f"{mem['hits_per_s']:,.0f} hits/s (peak RSS {mem['rss_kb'] / 1024:,.0f} MB), rocksdb "
              f"{rocks['hits_per_s']:,.0f} hits/s (peak RSS {rocks['rss_kb'] / 1024:,.0f} MB)", flush=True)  # fmt: skip
        disk = sum(f.stat().st_size for f in (root / "r").rglob("*") if f.is_file())
        print(f"  rocksdb on disk after the run: {disk / 1e6:,.0f} MB ({disk / args.keys:,.0f} bytes/key)")
        empty = rows["rocksdb: restore, empty disk"]
        print(f"ratios: rss_kb_per_key={empty['rss_kb'] / args.keys:.3f} "
              f"restore_keys_per_s={empty['records'] / max(empty['restore_s'], 1e-9):.0f} "
              f"throughput={rocks['hits_per_s'] / mem['hits_per_s']:.2f}")  # fmt: skip
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)
        cleanup(conn, app)
    return 0


def main(argv: Sequence[str] | None = None, bootstrap: str | None = None, registry: str | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["worker"]:
        return worker(argv[1:])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bootstrap", default=bootstrap or "localhost:9092")
    p.add_argument("--registry", default=registry or "http://localhost:8081")
    add_arguments(p)
    args = p.parse_args(argv)
    return run(args, args.bootstrap, args.registry)


if __name__ == "__main__":
    sys.exit(main())
