"""Reads enriched hits in its own process and reports hit-to-enriched latency percentiles as JSON.

A separate process, so decoding the output does not fight the feeder for the GIL
and inflate the latency it measures. Prints ``ready`` once the first (warm-up)
record arrived, then one JSON line when ``--count`` more arrived or time ran out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

from passerelle.schemas.clients import Connection, consumer
from passerelle.schemas.serde import read_long


def event_time(raw: bytes) -> int:
    """``event_time`` of an ``EnrichedHit`` without decoding the rest: it is the fifth field, after
    ``event_id``, ``site``, ``visitor_id`` (strings) and ``customer_id`` (["null", "string"])."""
    pos = 5  # Confluent header
    for _ in range(3):
        length, pos = read_long(raw, pos)
        pos += length
    branch, pos = read_long(raw, pos)
    if branch == 1:
        length, pos = read_long(raw, pos)
        pos += length
    value, _ = read_long(raw, pos)
    return value


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--registry", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--timeout", type=float, default=120)
    parser.add_argument("--skip-seconds", type=float, default=0, help="ignore hits sent this long after ready")
    args = parser.parse_args()
    conn = Connection.plain(args.bootstrap, args.registry)
    reader = consumer(conn, f"lat-{args.topic}", {"auto.offset.reset": "earliest", "isolation.level": "read_committed"})
    reader.subscribe([args.topic])
    ready = False
    visible: list[float] = []
    emit: list[float] = []
    measure_from = 0.0
    skipped = 0
    deadline = time.monotonic() + args.timeout
    while len(visible) + skipped < args.count and time.monotonic() < deadline:
        msgs: list[Any] = reader.consume(2000, timeout=0)  # what is queued, else wait for the next one
        if not msgs:
            first = reader.poll(0.05)
            msgs = [] if first is None else [first, *reader.consume(1999, timeout=0)]
        received = time.time_ns() / 1e6
        for msg in msgs:
            if msg.error():
                continue
            if not ready:
                ready = True
                measure_from = time.time_ns() / 1e6 + args.skip_seconds * 1000
                print("ready", flush=True)
                continue
            sent = event_time(msg.value())
            if sent < measure_from:
                skipped += 1
                continue
            visible.append(received - sent)
            emit.append(msg.timestamp()[1] - sent)
    reader.close()
    qv = statistics.quantiles(visible, n=100) if len(visible) > 1 else [float("nan")] * 99
    qe = statistics.quantiles(emit, n=100) if len(emit) > 1 else [float("nan")] * 99
    print(json.dumps({"received": len(visible), "p50": qv[49], "p99": qv[98], "emit_p50": qe[49],
                      "emit_p99": qe[98]}), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
