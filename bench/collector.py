"""Collector load benchmark: events/s the HTTP collector accepts, broker acknowledgements included.

The collector runs as its own process (uvicorn, the real producer, a real
broker and registry) on loopback; this process drives it with ``--clients``
concurrent aiohttp clients, each sending its next request as soon as the
previous one is answered, first single pixel hits (``GET /hit``), then JSON
batches of ``--batch-size`` events (``POST /v1/events``). Each phase lasts
``--seconds`` or stops at ``--max-requests``. Only 2xx answers count, and a
2xx means the broker acknowledged the events; at the end the topic's offsets
are checked against the accepted count. The last line reads
``collector: pixel=<events/s> batch100=<events/s>``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import TopicPartition
from confluent_kafka.admin import NewTopic

from passerelle.schemas.clients import Connection, admin_client, consumer

ROOT = Path(__file__).resolve().parent.parent
SITE = "bench.example"
API_KEY = "bench-key-0123456789"
PARTITIONS = 6


@dataclass
class Phase:
    """What one phase measured."""

    name: str
    clients: int
    requests: int = 0
    events: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- the collector process -------------------------------------------------------------------------


def serve(args: argparse.Namespace) -> int:
    """Run the collector for the benchmark (the child process)."""
    import uvicorn

    from passerelle.connectors.collector.app import create_app
    from passerelle.connectors.collector.config import CollectorConfig
    from passerelle.connectors.collector.server import uvicorn_config

    config = CollectorConfig(
        bootstrap_servers=args.bootstrap,
        schema_registry_url=args.registry,
        sites={SITE: API_KEY},
        topic=args.topic,
    )
    # The production server settings (no proxy headers, header/body deadlines, concurrency bound): measured as run.
    server = uvicorn.Server(uvicorn_config(create_app(config), config, host="127.0.0.1", port=args.port,
                                           log_level="warning", access_log=False))  # fmt: skip
    server.run()
    return 0


def start_collector(args: argparse.Namespace, topic: str, port: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "bench.collector", "--serve", "--port", str(port), "--topic", topic]
    command += ["--bootstrap", args.bootstrap, "--registry", args.registry]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PASSERELLE_")}
    return subprocess.Popen(command, cwd=ROOT, env=env)


async def wait_healthy(base: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    import aiohttp

    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"collector exited with status {proc.returncode}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{base}/healthz") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.2)
    raise RuntimeError(f"collector not healthy after {timeout:.0f}s")


# --- load ------------------------------------------------------------------------------------------


def pixel_urls(base: str, count: int = 1000) -> list[str]:
    """Pre-built so the client spends its CPU on requests, not on formatting them."""
    return [
        f"{base}/hit?site={SITE}&vid=visitor-{i:05d}&type=page_view&ca=1&cm=0"
        f"&url=https%3A%2F%2F{SITE}%2Fpage%2F{i % 50}%3Futm_source%3Dnewsletter%26utm_campaign%3Dbench"
        for i in range(count)
    ]


def batch_bodies(size: int, count: int = 50) -> list[bytes]:
    bodies = []
    for b in range(count):
        events = [
            {
                "site": SITE,
                "visitor_id": f"visitor-{(b * size + i) % 10_000:05d}",
                "type": "page_view",
                "url": f"https://{SITE}/page/{i % 50}?utm_source=newsletter&utm_campaign=bench",
                "consent": {"analytics": True, "marketing": False},
            }
            for i in range(size)
        ]
        bodies.append(json.dumps({"events": events}).encode())
    return bodies


async def run_phase(
    name: str, base: str, clients: int, seconds: float, max_requests: int, batch_size: int | None
) -> Phase:
    import aiohttp

    phase = Phase(name, clients)
    urls = pixel_urls(base)
    bodies = batch_bodies(batch_size) if batch_size else []
    headers = {"X-Api-Key": API_KEY, "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=clients, force_close=False)
    timeout = aiohttp.ClientTimeout(total=60)
    started = time.perf_counter()
    end = started + seconds

    async def worker(session: aiohttp.ClientSession, offset: int) -> None:
        n = offset
        while time.perf_counter() < end and phase.requests < max_requests:
            phase.requests += 1
            n += 1
            t0 = time.perf_counter()
            try:
                if batch_size:
                    async with session.post(f"{base}/v1/events", data=bodies[n % len(bodies)], headers=headers) as r:
                        body = await r.read()
                        ok = r.status == 200
                        accepted = json.loads(body)["accepted"] if ok else 0
                else:
                    async with session.get(urls[n % len(urls)]) as r:
                        await r.read()
                        ok = r.status == 200
                        accepted = 1 if ok else 0
            except (aiohttp.ClientError, TimeoutError):
                ok, accepted = False, 0
            phase.latencies_ms.append((time.perf_counter() - t0) * 1000)
            if ok:
                phase.events += accepted
            else:
                phase.errors += 1

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(worker(session, i * 7919) for i in range(clients)))
    phase.seconds = time.perf_counter() - started
    return phase


# --- topic -----------------------------------------------------------------------------------------


def create_topic(conn: Connection, topic: str) -> None:
    admin = admin_client(conn)
    for fut in admin.create_topics([NewTopic(topic, PARTITIONS, 1)]).values():
        fut.result(30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if topic in admin.list_topics(timeout=10).topics:
            return
        time.sleep(0.1)


def delete_topic(conn: Connection, topic: str) -> None:
    admin = admin_client(conn)
    for fut in admin.delete_topics([topic]).values():
        with contextlib.suppress(Exception):
            fut.result(30)


def records_on(conn: Connection, topic: str) -> int:
    counter = consumer(conn, f"bench-count-{uuid.uuid4().hex}")
    try:
        total = 0
        for p in range(PARTITIONS):
            low, high = counter.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            total += high - low
        return total
    finally:
        counter.close()


# --- report ----------------------------------------------------------------------------------------


def report(phases: Sequence[Phase], on_topic: int) -> str:
    lines = [
        f"{'phase':<10}{'clients':>8}{'requests':>10}{'events':>10}{'errors':>8}{'seconds':>9}"
        f"{'events/s':>11}{'p50 ms':>8}{'p99 ms':>8}"
    ]
    for p in phases:
        lines.append(
            f"{p.name:<10}{p.clients:>8}{p.requests:>10,}{p.events:>10,}{p.errors:>8}{p.seconds:>9.1f}"
            f"{p.rate:>11,.0f}{p.percentile(0.5):>8.1f}{p.percentile(0.99):>8.1f}"
        )
    accepted = sum(p.events for p in phases)
    check = "ok" if on_topic == accepted else "MISMATCH"
    lines.append(f"accepted events: {accepted:,}; records on the topic: {on_topic:,} ({check})")
    rates = {p.name: p.rate for p in phases}
    lines.append(
        f"collector: pixel={rates.get('pixel', float('nan')):.0f} batch100={rates.get('batch100', float('nan')):.0f}"
    )
    return "\n".join(lines)


async def measure(args: argparse.Namespace, base: str) -> list[Phase]:
    phases = []
    for name, size in (("pixel", None), ("batch100", args.batch_size)):
        phases.append(await run_phase(name, base, args.clients, args.seconds, args.max_requests, size))
        print(f"{name}: {phases[-1].rate:,.0f} events/s", file=sys.stderr, flush=True)
    return phases


def bench(args: argparse.Namespace) -> int:
    conn = Connection.plain(args.bootstrap, args.registry)  # the local stack: no security properties
    topic = f"bench.collector.{uuid.uuid4().hex[:8]}"
    port = args.port or free_port()
    base = f"http://127.0.0.1:{port}"
    create_topic(conn, topic)
    proc = start_collector(args, topic, port)
    try:
        asyncio.run(wait_healthy(base, proc))
        phases = asyncio.run(measure(args, base))
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    on_topic = records_on(conn, topic)
    print(report(phases, on_topic), flush=True)
    if not args.keep_topic:
        delete_topic(conn, topic)
    return 0 if on_topic == sum(p.events for p in phases) else 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``python -m bench.collector`` and a future ``passerelle bench collector``."""
    parser.add_argument("--seconds", type=float, default=10, help="length of each phase (default 10)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent HTTP clients (default 32)")
    parser.add_argument("--batch-size", type=int, default=100, help="events per POST in the batch phase (default 100)")
    parser.add_argument(
        "--max-requests", type=int, default=1_000_000, help="stop a phase after this many requests (default 1000000)"
    )
    parser.add_argument("--keep-topic", action="store_true", help="do not delete the benchmark topic")


def main(argv: Sequence[str] | None = None, bootstrap: str | None = None, registry: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.collector", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--bootstrap", default=bootstrap or "127.0.0.1:9092")
    parser.add_argument("--registry", default=registry or "http://127.0.0.1:8081")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help="collector port (default: a free one)")
    parser.add_argument("--topic", default="", help=argparse.SUPPRESS)
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.serve:
        return serve(args)
    return bench(args)


if __name__ == "__main__":
    sys.exit(main())
