"""Collector vs a minimal endpoint doing the same essential work, side by side, loaded by ``wrk``.

Two servers run at once against the same broker and registry: the collector
as deployed (``passerelle collector``: validation, Avro, limits, metrics,
acknowledgement before answering) and ``bench.collector_baseline`` (a bare
ASGI app on the same uvicorn stack: parse, produce with ``acks=all`` and
idempotence, wait for the acknowledgement, answer). ``wrk`` (C, a fraction of
the CPU a Python client would take) loads each in turn with pixel hits
(``GET /hit``) and JSON batches of 20 and 100 events (``POST /v1/events``) at
32 and 256 connections; each round alternates which server goes first, and
the table shows the medians of ``--rounds``. Per phase: requests/s,
events/s (2xx answers only), p50 and p99 latency per request, non-2xx and
socket errors, and the server's CPU seconds (process and children, from
``/proc``) per 1,000 events. wrk, broker and both servers share the machine:
the ratios, measured in the same run, are the figures to quote.

Everything runs on 127.0.0.1 and stops by itself: the load lasts
``--rounds`` x phases x ``--seconds`` (about 3 minutes with the defaults), every
wrk run is bounded, both servers are stopped and the topics deleted at the end.

The last line reads ``ratios: pixel=<collector/baseline> batch100=<collector/baseline>``,
requests/s of pixels at 256 connections and events/s of batches of 100 at 32.

``--reference DIR`` adds a third server: the collector of another checkout
(``git archive <commit> | tar -x -C DIR``), run from ``DIR`` with the same
interpreter, in the same rounds: a change is measured against the code before
it in one run, on a machine whose load moves between runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.collector import API_KEY, SITE, batch_bodies, create_topic, delete_topic, free_port, records_on
from passerelle.schemas.clients import Connection

ROOT = Path(__file__).resolve().parent.parent
WRK_DIR = Path(__file__).resolve().parent / "wrk"
TARGETS = ("collector", "baseline")
REFERENCE = "reference"
CLOCK_TICK = os.sysconf("SC_CLK_TCK")


class WrkMissing(RuntimeError):
    """``wrk`` is not on PATH."""


def wrk_path() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise WrkMissing("wrk not found: `./dev setup` installs it (Debian package wrk: apt-get install wrk)")
    return found


# --- servers -----------------------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    topic: str

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its descendants (``--workers`` children), from ``/proc``."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / CLOCK_TICK
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [p for p, pp in parents.items() if pp == parent and p not in tree]
        tree.update(children)
        frontier.extend(children)
    return sum(times.get(p, 0.0) for p in tree)


def start_collector(args: argparse.Namespace, topic: str, port: int, log: Path, root: Path = ROOT
                    ) -> subprocess.Popen[bytes]:  # fmt: skip
    """``passerelle collector`` as deployed; from ``root`` (``--reference``: ``python -m`` imports from the cwd)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PASSERELLE_")}
    env.update(PASSERELLE_BOOTSTRAP_SERVERS=args.bootstrap, PASSERELLE_SCHEMA_REGISTRY_URL=args.registry,
               PASSERELLE_COLLECTOR_SITES=json.dumps({SITE: API_KEY}))  # fmt: skip
    command = [sys.executable, "-m", "passerelle", "collector", "--topic", topic, "--host", "127.0.0.1",
               "--port", str(port)]  # fmt: skip
    if args.workers != 1:
        command += ["--workers", str(args.workers)]
    with open(log, "ab") as out:
        return subprocess.Popen(command, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)


def start_reference(args: argparse.Namespace, topic: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    return start_collector(args, topic, port, log, root=args.reference)


def start_baseline(args: argparse.Namespace, topic: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "bench.collector_baseline", "--bootstrap", args.bootstrap, "--topic", topic,
               "--port", str(port), "--http", args.baseline_http]  # fmt: skip
    with open(log, "ab") as out:
        return subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


def wait_healthy(target: Target, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if target.proc.poll() is not None:
            raise RuntimeError(f"{target.name} exited with status {target.proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{target.base}/healthz", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{target.name} not healthy after {timeout:.0f}s: {log.read_text()[-2000:]}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


# --- load ----------------------------------------------------------------------------------------------------


@dataclass
class Run:
    """One wrk run against one server."""

    requests_per_s: float
    events_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    events: int
    cpu_per_1k: float


def run_wrk(args: argparse.Namespace, target: Target, size: int, connections: int, seconds: float,
            bodies: dict[int, Path]) -> Run:  # fmt: skip
    env = dict(os.environ, BENCH_WRK_DIR=str(WRK_DIR), BENCH_SITE=SITE, BENCH_KEY=API_KEY)
    if size:
        env["BENCH_BODY"] = str(bodies[size])
        script, url = WRK_DIR / "batch.lua", f"{target.base}/v1/events"
    else:
        script, url = WRK_DIR / "pixel.lua", f"{target.base}/hit"
    command = [wrk_path(), "-t", str(args.threads), "-c", str(connections), "-d", f"{seconds:g}s",
               "--timeout", "10s", "-s", str(script), url]  # fmt: skip
    cpu_before = cpu_seconds(target.proc.pid)
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=seconds + 60, check=False)
    cpu = cpu_seconds(target.proc.pid) - cpu_before
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stdout[-1000:]} {proc.stderr[-1000:]}")
    res = json.loads(lines[-1])
    elapsed = res["duration_us"] / 1e6
    socket_errors = res["connect"] + res["read"] + res["write"] + res["timeout"]
    ok = res["requests"] - res["status"]
    events = ok * (size or 1)
    return Run(
        requests_per_s=ok / elapsed,
        events_per_s=events / elapsed,
        p50_ms=res["p50_us"] / 1000,
        p99_ms=res["p99_us"] / 1000,
        errors=res["status"] + socket_errors,
        events=events,
        cpu_per_1k=cpu / events * 1000 if events else float("nan"),
    )


def phase_name(size: int) -> str:
    return f"batch{size}" if size else "pixel"


def measure(
    args: argparse.Namespace, targets: dict[str, Target], bodies: dict[int, Path]
) -> dict[tuple[str, str, int], list[Run]]:
    runs: dict[tuple[str, str, int], list[Run]] = {}
    names = tuple(targets)
    for name in names:  # warm-up: connections, JIT-free but caches, librdkafka's first batches
        run_wrk(args, targets[name], 0, 32, args.warmup_seconds, bodies)
    for round_ in range(args.rounds):
        for size in [0, *args.batch_sizes]:
            for connections in args.connections:
                order = names if round_ % 2 == 0 else tuple(reversed(names))
                for name in order:
                    run = run_wrk(args, targets[name], size, connections, args.seconds, bodies)
                    runs.setdefault((name, phase_name(size), connections), []).append(run)
                    print(f"round {round_ + 1} {name:<9} {phase_name(size):<9} c={connections:<4} "
                          f"{run.requests_per_s:>9,.0f} req/s {run.events_per_s:>9,.0f} events/s "
                          f"p99 {run.p99_ms:.1f} ms errors {run.errors}", file=sys.stderr, flush=True)  # fmt: skip
    return runs


# --- report --------------------------------------------------------------------------------------------------


def median(runs: Sequence[Run], attr: str) -> float:
    return statistics.median(getattr(r, attr) for r in runs)


def report(args: argparse.Namespace, runs: dict[tuple[str, str, int], list[Run]], checks: Sequence[str]) -> str:
    lines = [
        f"medians of {args.rounds} round(s) of {args.seconds:g} s; wrk -t{args.threads}; collector workers: "
        f"{args.workers}; baseline http: {args.baseline_http}",
        f"{'server':<10}{'phase':<10}{'conns':>6}{'req/s':>10}{'events/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'errors':>8}{'CPU s/1k ev':>13}{'x baseline':>12}",
    ]
    for size in [0, *args.batch_sizes]:
        for connections in args.connections:
            for name in _names(args):
                rs = runs[(name, phase_name(size), connections)]
                base = median(runs[("baseline", phase_name(size), connections)], "events_per_s")
                lines.append(
                    f"{name:<10}{phase_name(size):<10}{connections:>6}{median(rs, 'requests_per_s'):>10,.0f}"
                    f"{median(rs, 'events_per_s'):>10,.0f}{median(rs, 'p50_ms'):>9.1f}{median(rs, 'p99_ms'):>9.1f}"
                    f"{sum(r.errors for r in rs):>8}{median(rs, 'cpu_per_1k'):>13.3f}"
                    f"{median(rs, 'events_per_s') / base if base else float('nan'):>12.2f}"
                )
    lines.extend(checks)
    cpu = " ".join(
        f"{phase_name(size)}={median(runs[('collector', phase_name(size), c)], 'cpu_per_1k'):.3f}"
        for size in [0, *args.batch_sizes]
        for c in args.connections[-1:]
    )
    lines.append(f"collector CPU seconds per 1,000 events (c={args.connections[-1]}): {cpu}")

    def ratio(phase: str, connections: int, name: str = "collector") -> str:
        key = (name, phase, connections)
        if key not in runs:
            return "nan"
        base = median(runs[("baseline", phase, connections)], "events_per_s")
        return f"{median(runs[key], 'events_per_s') / base:.2f}"

    pixel_c = 256 if 256 in args.connections else max(args.connections)
    batch_c = 32 if 32 in args.connections else min(args.connections)
    if args.reference is not None:
        cpu = " ".join(
            f"{phase_name(size)}={median(runs[(REFERENCE, phase_name(size), c)], 'cpu_per_1k'):.3f}"
            for size in [0, *args.batch_sizes]
            for c in args.connections[-1:]
        )
        lines.append(f"reference CPU seconds per 1,000 events (c={args.connections[-1]}): {cpu}")
        lines.append(f"reference ratios: pixel={ratio('pixel', pixel_c, REFERENCE)} "
                     f"batch100={ratio('batch100', batch_c, REFERENCE)}")  # fmt: skip
    lines.append(f"(pixel at {pixel_c} connections, batch100 at {batch_c}; medians, collector/baseline)")
    lines.append(f"ratios: pixel={ratio('pixel', pixel_c)} batch100={ratio('batch100', batch_c)}")
    return "\n".join(lines)


def _names(args: argparse.Namespace) -> tuple[str, ...]:
    return (*TARGETS, REFERENCE) if args.reference is not None else TARGETS


def planned_seconds(args: argparse.Namespace) -> float:
    """How long the load lasts (start-up and topic checks come on top, a few seconds)."""
    names = _names(args)
    phases = (1 + len(args.batch_sizes)) * len(args.connections) * len(names)
    return len(names) * args.warmup_seconds + args.rounds * phases * args.seconds


def bench(args: argparse.Namespace) -> int:
    wrk_path()
    print(f"loading both servers for about {planned_seconds(args):.0f} s (loopback only)", file=sys.stderr, flush=True)
    conn = Connection.plain(args.bootstrap, args.registry)  # the local stack: no security properties
    suffix = uuid.uuid4().hex[:8]
    topics = {name: f"bench.collector.{name}.{suffix}" for name in _names(args)}
    targets: dict[str, Target] = {}
    with tempfile.TemporaryDirectory(prefix="bench-collector-") as tmp:
        bodies = {}
        for size in args.batch_sizes:
            bodies[size] = Path(tmp) / f"batch{size}.json"
            bodies[size].write_bytes(batch_bodies(size, 1)[0])
        for topic in topics.values():
            create_topic(conn, topic)
        logs = {name: Path(tmp) / f"{name}.log" for name in _names(args)}
        starts = {"collector": start_collector, "baseline": start_baseline, REFERENCE: start_reference}
        try:
            for name in _names(args):
                port = free_port()
                targets[name] = Target(name, starts[name](args, topics[name], port, logs[name]), port, topics[name])
            for name in _names(args):
                wait_healthy(targets[name], logs[name])
            runs = measure(args, targets, bodies)
        finally:
            for target in targets.values():
                stop(target.proc)
        accepted = sum(r.events for (name, _, _), rs in runs.items() if name == "collector" for r in rs)
        on_topic = records_on(conn, topics["collector"])
        # wrk stops with requests in flight: what the server produced for them is on the topic, uncounted.
        check = "ok" if on_topic >= accepted else "MISSING RECORDS"
        checks = [
            f"collector: {accepted:,} events answered 2xx (warm-up excluded), {on_topic:,} on the topic ({check})"
        ]
        print(report(args, runs, checks), flush=True)
        if not args.keep_topic:
            for topic in topics.values():
                delete_topic(conn, topic)
    return 0 if on_topic >= accepted else 1


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``python -m bench.collector_wrk`` and ``passerelle bench collector-wrk``."""
    parser.add_argument("--seconds", type=float, default=5, help="length of each wrk run (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the table shows medians (default 3)")
    parser.add_argument("--warmup-seconds", type=float, default=2, help="pixel warm-up per server (default 2)")
    parser.add_argument("--connections", type=_ints, default=[32, 256], help="wrk connections (default 32,256)")
    parser.add_argument("--batch-sizes", type=_ints, default=[20, 100], help="events per POST (default 20,100)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--workers", type=int, default=1, help="collector processes (passerelle collector --workers)")
    parser.add_argument("--baseline-http", default="auto", choices=("auto", "h11", "httptools"),
                        help="the baseline's uvicorn HTTP protocol (default auto: httptools when installed, "
                        "as the collector)")  # fmt: skip
    parser.add_argument("--keep-topic", action="store_true", help="do not delete the benchmark topics")
    parser.add_argument("--reference", type=Path, metavar="DIR",
                        help="also run the collector of another checkout in DIR (git archive <commit> | tar -x -C "
                        "DIR), side by side in the same rounds")  # fmt: skip


def run(args: argparse.Namespace, bootstrap: str, registry: str) -> int:
    """Run the bench with parsed ``args`` against ``bootstrap`` / ``registry`` (``passerelle bench collector-wrk``)."""
    args.bootstrap, args.registry = bootstrap, registry
    try:
        return bench(args)
    except WrkMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None, bootstrap: str | None = None, registry: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.collector_wrk", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--bootstrap", default=bootstrap or "127.0.0.1:9092")
    parser.add_argument("--registry", default=registry or "http://127.0.0.1:8081")
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run(args, args.bootstrap, args.registry)


if __name__ == "__main__":
    sys.exit(main())
