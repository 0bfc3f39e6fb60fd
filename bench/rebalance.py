"""Rebalance benchmark: what scaling out and in costs with each partition assignment strategy.

    python -m bench.rebalance --bootstrap B --registry R [--strategy range|cooperative-sticky|both]
                              [--rate 2000] [--partitions 6] [--state] [--no-keep]

Per strategy, on fresh ``rebal.<tag>.*`` topics (deleted at the end):

1. instance A of the bench job (decode a hit, join CRM attributes, encode;
   exactly-once, ``bench.rebalance_worker``) starts; one warm-up hit tells
   when it is assigned and producing;
2. a feeder process produces hits at ``--rate`` for ``leave_at + after_leave``
   seconds (``event_time`` = when produced);
3. ``join_at`` s into the feed instance B starts (same app id); ``leave_at``
   s into the feed B gets SIGTERM (graceful leave); when the feed is over
   and every hit came out, A gets SIGTERM;
4. a read_committed reader in this process notes, per output record, when
   it became visible (receive time), its partition, event id and event time.

From that: the longest gap in output per partition (the worst stalled
partition; the figure the last line reports as ``*_pause_ms``) and across
all partitions (the whole job stopped) in the 10 s after each membership
change, against the steady state before B starts; p50/p99/max end-to-end
latency (receive time minus event time) of the hits produced in the 10 s
after each change, against the steady state; and whether every hit fed came
out exactly once (event ids). The membership changes are timed from B's own
report: when it subscribed (join) and when it got SIGTERM (leave).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import multiprocessing
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from confluent_kafka import OFFSET_BEGINNING, TopicPartition
from confluent_kafka.admin import NewTopic

from bench.runtime import cleanup
from passerelle.schemas.clients import Connection, admin_client, consumer, registry_client
from passerelle.schemas.serde import AvroDecoder, SchemaCache, registry_fetcher

ROOT = Path(__file__).resolve().parent.parent
STRATEGIES = ("range", "cooperative-sticky")
SHORT = {"range": "range", "cooperative-sticky": "coop"}
WINDOW_MS = 10_000  # "after a membership change"
STEADY_SKIP_MS = 3_000  # feed start-up left out of the steady state
STALL_MS = 1_000  # a partition whose output stops longer than this counts as stalled


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _feed(conn: Connection, topic: str, start: int, count: int, rate: float) -> None:
    """The feeder process: ``count`` hits at ``rate``/s (its own process: pacing and GIL stay out of the reader)."""
    from bench.runtime import Feeder

    Feeder(conn, topic, paced=True).send(start, count, rate=rate)


@dataclass
class Instance:
    """One worker process and where its output goes."""

    name: str
    proc: subprocess.Popen[str]
    out_path: Path
    err_path: Path
    files: list[TextIO]
    started_ms: int
    stopped_ms: int | None = None

    def events(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        for line in self.out_path.read_text().splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    events.append(json.loads(line))
        return events

    def problems(self) -> list[str]:
        keep = ("WARNING", "ERROR", "CRITICAL", "Traceback", "Error")
        return [line for line in self.err_path.read_text().splitlines() if any(k in line for k in keep)]

    def stop(self) -> None:
        if self.stopped_ms is None and self.proc.poll() is None:
            self.stopped_ms = now_ms()
            self.proc.send_signal(signal.SIGTERM)

    def reap(self, timeout: float) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(10)
        for f in self.files:
            f.close()
        return code


@dataclass
class Run:
    """What one strategy's run observed."""

    strategy: str
    fed: int = 0
    records: list[tuple[int, int, int, int]] = field(default_factory=list)  # (received ms, partition, id, event ms)
    feed_start_ms: int = 0
    feed_end_ms: int = 0
    b_spawn_ms: int = 0
    join_ms: int = 0
    leave_ms: int = 0
    a_stop_ms: int = 0
    a_events: list[dict[str, Any]] = field(default_factory=list)
    b_events: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    exit_codes: dict[str, int] = field(default_factory=dict)
    log_dir: str = ""


def create_topics(conn: Connection, topics: dict[str, int]) -> None:
    admin = admin_client(conn)
    for fut in admin.create_topics([NewTopic(t, n, 1) for t, n in topics.items()]).values():
        fut.result(30)


def spawn(
    name: str, strategy: str, args: argparse.Namespace, conn: Connection, topics: dict[str, str], log_dir: Path
) -> Instance:
    out_path, err_path = log_dir / f"{name}.out", log_dir / f"{name}.err"
    out, err = out_path.open("w"), err_path.open("w")
    cmd = [
        sys.executable, "-m", "bench.rebalance_worker", strategy, name, "--bootstrap", conn.bootstrap_servers,
        "--registry", conn.registry_url, "--input", topics["input"], "--output", topics["output"],
        "--dlq", topics["dlq"], "--app-id", topics["app"], "--commit-ms", str(args.commit_ms),
        "--max-seconds", str(args.join_at + args.leave_at + args.after_leave + 180),
    ]  # fmt: skip
    if args.heartbeat_ms is not None:
        cmd += ["--heartbeat-ms", str(args.heartbeat_ms)]
    if args.state:
        cmd.append("--state")
    if args.no_keep:
        cmd.append("--no-keep")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=err, text=True)
    return Instance(name, proc, out_path, err_path, [out, err], now_ms())


def run_strategy(strategy: str, args: argparse.Namespace, conn: Connection, tag: str) -> Run:
    base = f"rebal.{tag}.{SHORT[strategy]}"
    topics = {"input": f"{base}.in", "output": f"{base}.out", "dlq": f"{base}.dlq", "app": base}
    create_topics(conn, {topics["input"]: args.partitions, topics["output"]: args.partitions,
                         topics["dlq"]: 1})  # fmt: skip
    log_dir = Path(tempfile.mkdtemp(prefix=f"rebal-{tag}-{SHORT[strategy]}-"))
    run = Run(strategy, log_dir=str(log_dir))
    decode = AvroDecoder(SchemaCache(registry_fetcher(registry_client(conn)))).decode
    reader = consumer(conn, f"{base}.reader", {"isolation.level": "read_committed", "fetch.wait.max.ms": 10})
    reader.assign([TopicPartition(topics["output"], p, OFFSET_BEGINNING) for p in range(args.partitions)])
    seen = 0

    def read(timeout: float) -> int:
        msgs: list[Any] = reader.consume(5000, timeout=0)
        if not msgs:
            first = reader.poll(timeout)
            msgs = [] if first is None else [first, *reader.consume(4999, timeout=0)]
        received = now_ms()
        got = 0
        for msg in msgs:
            if msg.error():
                continue
            value = decode(msg.value())
            run.records.append((received, msg.partition(), int(value["event_id"]), value["event_time"]))
            got += 1
        return got

    a = spawn("A", strategy, args, conn, topics, log_dir)
    instances = [a]
    b: Instance | None = None
    feeder: Any = None
    try:
        # Warm-up: A is assigned, restored and producing once this hit comes out.
        warm = multiprocessing.get_context("spawn").Process(target=_feed, args=(conn, topics["input"], 0, 1, 0.0))
        warm.start()
        deadline = time.monotonic() + 120
        while seen == 0 and time.monotonic() < deadline:
            if a.proc.poll() is not None:
                raise RuntimeError(f"instance A exited ({a.proc.returncode}); see {a.err_path}")
            seen += read(0.1)
        warm.join(30)
        if seen == 0:
            raise RuntimeError(f"no warm-up output within 120 s; see {log_dir}")
        feed_seconds = args.join_at + args.leave_at + args.after_leave
        count = int(args.rate * feed_seconds)
        run.fed = 1 + count
        feeder = multiprocessing.get_context("spawn").Process(
            target=_feed, args=(conn, topics["input"], 1, count, args.rate)
        )
        feeder.start()
        run.feed_start_ms = now_ms()
        a_stop_not_before = 0.0
        deadline = time.monotonic() + feed_seconds + args.drain_timeout + 120
        while time.monotonic() < deadline:
            seen += read(0.05)
            elapsed = (now_ms() - run.feed_start_ms) / 1000
            if b is None and elapsed >= args.join_at:
                b = spawn("B", strategy, args, conn, topics, log_dir)
                instances.append(b)
                run.b_spawn_ms = b.started_ms
                print(f"  {strategy}: B started at +{elapsed:.1f} s", file=sys.stderr, flush=True)
            if b is not None and b.stopped_ms is None and elapsed >= args.join_at + args.leave_at:
                b.stop()
                run.leave_ms = b.stopped_ms or now_ms()
                print(f"  {strategy}: B stopped (SIGTERM) at +{elapsed:.1f} s", file=sys.stderr, flush=True)
            if not run.feed_end_ms and not feeder.is_alive():
                run.feed_end_ms = now_ms()
                a_stop_not_before = time.monotonic() + args.drain_timeout
            if a.stopped_ms is None and run.feed_end_ms and (seen >= run.fed or time.monotonic() > a_stop_not_before):
                a.stop()
                run.a_stop_ms = a.stopped_ms or now_ms()
                print(f"  {strategy}: A stopped (SIGTERM) at +{elapsed:.1f} s, {seen}/{run.fed} out",
                      file=sys.stderr, flush=True)  # fmt: skip
                a_stop_not_before = time.monotonic()
            if a.stopped_ms is not None and all(i.proc.poll() is not None for i in instances):
                # Both gone: read what is left (late duplicates would show here), then stop.
                tail = time.monotonic() + 2
                while time.monotonic() < tail:
                    seen += read(0.1)
                break
            if any(i.proc.poll() is not None and i.stopped_ms is None for i in instances):
                crashed = [i.name for i in instances if i.proc.poll() is not None and i.stopped_ms is None]
                run.problems.append(f"instance(s) {crashed} exited without being asked")
                break
    finally:
        for inst in instances:
            inst.stop()
        for inst in instances:
            run.exit_codes[inst.name] = inst.reap(30)
        if feeder is not None:
            feeder.join(10)
            if feeder.is_alive():
                feeder.terminate()
                feeder.join(10)
        reader.close()
    run.a_events = a.events()
    run.b_events = b.events() if b is not None else []
    for inst in instances:
        run.problems.extend(f"{inst.name}: {line}" for line in inst.problems())
    subscribed = [e["t"] for e in run.b_events if e["event"] == "subscribed"]
    run.join_ms = subscribed[0] if subscribed else run.b_spawn_ms
    return run


# --- analysis -------------------------------------------------------------------------------------------------------


def longest_gap(times: Sequence[int], lo: int, hi: int) -> int:
    """The longest interval without output that overlaps [lo, hi); ``times`` sorted."""
    best = 0
    for prev, cur in itertools.pairwise(times):
        if cur > lo and prev < hi:
            best = max(best, cur - prev)
    return best


def gaps(run: Run, lo: int, hi: int) -> tuple[int, int, int, int]:
    """(worst partition gap, its partition, gap across all partitions, partitions stalled > STALL_MS)."""
    per: dict[int, list[int]] = {}
    for received, partition, _, _ in run.records:
        per.setdefault(partition, []).append(received)
    overall = longest_gap(sorted(r[0] for r in run.records), lo, hi)
    worst, worst_p, stalled = 0, -1, 0
    for partition, times in per.items():
        g = longest_gap(sorted(times), lo, hi)
        if g > worst:
            worst, worst_p = g, partition
        if g > STALL_MS:
            stalled += 1
    return worst, worst_p, overall, stalled


def latency(run: Run, lo: int, hi: int) -> tuple[float, float, float, int]:
    """p50, p99, max of receive - event time for the hits produced in [lo, hi) (first receipt of each)."""
    first: dict[int, int] = {}
    for received, _, event_id, event_ms in run.records:
        if event_id and lo <= event_ms < hi and event_id not in first:
            first[event_id] = received - event_ms
    values = list(first.values())
    if len(values) < 2:
        return float("nan"), float("nan"), float("nan"), len(values)
    q = statistics.quantiles(values, n=100)
    return q[49], q[98], float(max(values)), len(values)


def partitions_of(events: list[dict[str, Any]], kind: str, lo: int, hi: int) -> list[int]:
    out: list[int] = []
    for e in events:
        if e["event"] == kind and lo <= e["t"] < hi:
            out.extend(e["partitions"])
    return sorted(out)


def analyse(run: Run) -> dict[str, Any]:
    ids = [r[2] for r in run.records]
    unique = set(ids)
    steady_lo, steady_hi = run.feed_start_ms + STEADY_SKIP_MS, run.b_spawn_ms
    join_lo, leave_lo = run.join_ms, run.leave_ms
    m: dict[str, Any] = {
        "fed": run.fed,
        "out": len(ids),
        "duplicates": len(ids) - len(unique),
        "missing": len(set(range(run.fed)) - unique),
    }
    for name, lo, hi in (
        ("steady", steady_lo, steady_hi),
        ("join", join_lo, join_lo + WINDOW_MS),
        ("leave", leave_lo, leave_lo + WINDOW_MS),
    ):
        worst, worst_p, overall, stalled = gaps(run, lo, hi)
        p50, p99, mx, n = latency(run, lo, hi)
        m.update({f"{name}_gap_ms": worst, f"{name}_gap_partition": worst_p, f"{name}_gap_all_ms": overall,
                  f"{name}_stalled": stalled, f"{name}_p50_ms": p50, f"{name}_p99_ms": p99,
                  f"{name}_max_ms": mx, f"{name}_n": n})  # fmt: skip
    b_assign = [e["t"] for e in run.b_events if e["event"] == "assign" and e["partitions"]]
    m["b_subscribe_to_assign_ms"] = (b_assign[0] - run.join_ms) if b_assign else float("nan")
    m["a_revoked_at_join"] = partitions_of(run.a_events, "revoke", join_lo, leave_lo)
    m["a_assigned_at_join"] = partitions_of(run.a_events, "assign", join_lo, leave_lo)
    m["b_assigned"] = partitions_of(run.b_events, "assign", 0, leave_lo)
    m["a_revoked_at_leave"] = partitions_of(run.a_events, "revoke", leave_lo, run.a_stop_ms or 2**62)
    m["a_assigned_at_leave"] = partitions_of(run.a_events, "assign", leave_lo, run.a_stop_ms or 2**62)
    exits = [e["t"] for e in run.b_events if e["event"] == "exit"]
    m["b_sigterm_to_exit_ms"] = (exits[0] - run.leave_ms) if exits else float("nan")
    revoke_cb = [e["callback_ms"] for e in run.a_events + run.b_events if e["event"] == "revoke"]
    assign_cb = [e["callback_ms"] for e in run.a_events + run.b_events if e["event"] == "assign"]
    m["max_revoke_cb_ms"] = max(revoke_cb, default=0.0)
    m["max_assign_cb_ms"] = max(assign_cb, default=0.0)
    m["lost_events"] = sum(1 for e in run.a_events + run.b_events if e["event"] == "lost")
    m["problems"] = len(run.problems)
    m["exit_codes"] = ",".join(f"{k}={v}" for k, v in run.exit_codes.items())
    return m


ROWS: list[tuple[str, str]] = [
    ("fed", "hits fed (incl. warm-up)"),
    ("out", "records out"),
    ("duplicates", "duplicates (event id)"),
    ("missing", "missing (event id)"),
    ("steady_gap_ms", "steady: worst partition gap ms"),
    ("steady_gap_all_ms", "steady: gap all partitions ms"),
    ("steady_p50_ms", "steady: p50 latency ms"),
    ("steady_p99_ms", "steady: p99 latency ms"),
    ("steady_max_ms", "steady: max latency ms"),
    ("b_subscribe_to_assign_ms", "join: B subscribe -> assigned ms"),
    ("a_revoked_at_join", "join: A revoked"),
    ("a_assigned_at_join", "join: A (re)assigned"),
    ("b_assigned", "join: B assigned"),
    ("join_gap_ms", "join: worst partition gap ms"),
    ("join_gap_all_ms", "join: gap all partitions ms"),
    ("join_stalled", f"join: partitions stalled >{STALL_MS} ms"),
    ("join_p50_ms", "join +10 s: p50 latency ms"),
    ("join_p99_ms", "join +10 s: p99 latency ms"),
    ("join_max_ms", "join +10 s: max latency ms"),
    ("b_sigterm_to_exit_ms", "leave: B SIGTERM -> exit ms"),
    ("a_revoked_at_leave", "leave: A revoked"),
    ("a_assigned_at_leave", "leave: A (re)assigned"),
    ("leave_gap_ms", "leave: worst partition gap ms"),
    ("leave_gap_all_ms", "leave: gap all partitions ms"),
    ("leave_stalled", f"leave: partitions stalled >{STALL_MS} ms"),
    ("leave_p50_ms", "leave +10 s: p50 latency ms"),
    ("leave_p99_ms", "leave +10 s: p99 latency ms"),
    ("leave_max_ms", "leave +10 s: max latency ms"),
    ("max_revoke_cb_ms", "longest revoke callback ms"),
    ("max_assign_cb_ms", "longest assign callback ms"),
    ("lost_events", "partitions-lost callbacks"),
    ("problems", "worker warnings/errors"),
    ("exit_codes", "exit codes"),
]


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return "-" if value != value else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, list):
        return ",".join(map(str, value)) or "-"
    return str(value)


def report(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    names = list(results)
    lines = [
        f"rebalance bench: {args.partitions} partitions, {args.rate:.0f} hits/s, exactly-once, commit "
        f"{args.commit_ms} ms, heartbeat {args.heartbeat_ms or 'default'} ms, "
        f"{'per-visitor state' if args.state else 'stateless'}{', state not kept' if args.no_keep else ''};"
        f" B joins at +{args.join_at:.0f} s, leaves (SIGTERM) {args.leave_at:.0f} s later, "
        f"feed ends {args.after_leave:.0f} s after that",
        f"{'':<36}" + "".join(f"{n:>20}" for n in names),
    ]
    for key, label in ROWS:
        lines.append(f"{label:<36}" + "".join(f"{fmt(results[n][key]):>20}" for n in names))
    fields = []
    for phase in ("join", "leave"):
        for n in names:
            fields.append(f"{SHORT[n]}_{phase}_pause_ms={results[n][f'{phase}_gap_ms']}")
    extra = [f"{SHORT[n]}_{phase}_all_ms={results[n][f'{phase}_gap_all_ms']}" for phase in ("join", "leave")
             for n in names]  # fmt: skip
    order = sorted(fields, key=lambda f: ("join" not in f, f.split("_")[0] != "range"))
    lines.append("rebalance: " + " ".join(order + extra))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rebalance", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--registry", default="http://127.0.0.1:8081")
    parser.add_argument("--strategy", choices=[*STRATEGIES, "both"], default="both")
    parser.add_argument("--rate", type=float, default=2000, help="hits/s fed (default 2000)")
    parser.add_argument("--partitions", type=int, default=6, help="input/output partitions (default 6)")
    parser.add_argument("--commit-ms", type=int, default=100, help="runtime commit interval (default 100)")
    parser.add_argument("--join-at", type=float, default=10, help="s into the feed when B starts (default 10)")
    parser.add_argument("--leave-at", type=float, default=15, help="s after B starts when B stops (default 15)")
    parser.add_argument("--after-leave", type=float, default=10, help="s of feed after B stops (default 10)")
    parser.add_argument("--drain-timeout", type=float, default=30, help="s to wait for the last outputs")
    parser.add_argument(
        "--heartbeat-ms",
        type=int,
        default=None,
        help="consumer heartbeat.interval.ms override (default: the runtime's, librdkafka's 3000)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the rebal.<tag>.* topics")
    parser.add_argument("--state", action="store_true", help="a stateful job: per-visitor state with a changelog")
    parser.add_argument(
        "--no-keep", action="store_true", help="eager rebalances restore every partition (no state kept in memory)"
    )
    args = parser.parse_args(argv)
    conn = Connection.plain(args.bootstrap, args.registry)  # the local stack: no security properties
    tag = uuid.uuid4().hex[:6]
    strategies = list(STRATEGIES) if args.strategy == "both" else [args.strategy]
    results: dict[str, dict[str, Any]] = {}
    try:
        for strategy in strategies:
            print(f"{strategy}: running (tag {tag}) ...", file=sys.stderr, flush=True)
            run = run_strategy(strategy, args, conn, tag)
            results[strategy] = analyse(run)
            print(f"{strategy}: worker logs in {run.log_dir}", file=sys.stderr, flush=True)
            for line in run.problems[:10]:
                print(f"  ! {line}", file=sys.stderr, flush=True)
    finally:
        if not args.keep:
            cleanup(conn, f"rebal.{tag}.")
    print(report(results, args), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
