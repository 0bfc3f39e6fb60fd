"""CRM change latency, side by side: a committed row -> Debezium's change event -> the platform's profile.

    passerelle up --with connect && passerelle topics create && passerelle schemas register
    python -m bench.crm_cdc [--changes 60] [--gap-ms 200]

One customer row is updated ``--changes`` times, one commit at a time; for
each commit the bench times when the change appears on ``crm.cdc.customers``
(what the Debezium source alone costs: WAL decoding, Connect, the exactly-once
source transaction) and on ``crm.profiles`` (the same plus the normalizer's
exactly-once transaction). Both are read with ``read_committed``, as every
consumer of the platform reads them. It applies the shipped connectors and
starts its own ``crm-normalizer`` process. Last line:
``ratios: profiles/cdc p50=<x> p99=<y>``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

CUSTOMER = "BENCH-CDC-1"


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _consumer(conn: Any, topic: str) -> Any:
    """A read_committed consumer positioned at the topic's end (only changes made from now on)."""
    from confluent_kafka import TopicPartition

    from passerelle.schemas import clients

    consumer = clients.consumer(conn, f"bench-crm-{uuid.uuid4().hex[:8]}", {"isolation.level": "read_committed"})
    meta = consumer.list_topics(topic, timeout=10)
    parts = []
    for p in meta.topics[topic].partitions:
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        parts.append(TopicPartition(topic, p, high))
    consumer.assign(parts)
    return consumer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.crm_cdc", description=__doc__.split("\n\n")[0])
    parser.add_argument("--changes", type=int, default=60, help="row updates to time (default 60)")
    parser.add_argument("--gap-ms", type=int, default=200, help="pause between two updates (default 200 ms)")
    args = parser.parse_args(argv)

    import psycopg

    from passerelle.commands.stack import stack_config
    from passerelle.connectors.connect import configs
    from passerelle.connectors.connect.rest import ConnectClient
    from passerelle.schemas import clients
    from passerelle.schemas.serde import AvroDecoder, SchemaCache, registry_fetcher
    from passerelle.settings import load

    settings = load()
    pg = stack_config(settings).postgres
    conn = settings.connection()
    configs.apply(ConnectClient(settings.connect_url), configs.load(), wait=90)
    decoder = AvroDecoder(SchemaCache(registry_fetcher(clients.registry_client(conn))))
    cdc, profiles = _consumer(conn, "crm.cdc.customers"), _consumer(conn, "crm.profiles")
    log = Path(settings.state_dir).resolve() / "bench-crm-normalizer.log"
    env = {**os.environ, "PASSERELLE_INSTANCE_ID": "bench"}
    with open(log, "ab") as out:
        normalizer = subprocess.Popen([sys.executable, "-m", "passerelle", "crm-normalizer"], env=env, stdout=out,
                                      stderr=subprocess.STDOUT)  # fmt: skip
    db = psycopg.connect(pg.dsn(), autocommit=True)
    try:
        db.execute(
            "INSERT INTO customers (customer_id, email, gender, csp) VALUES (%s, 'bench@mail.example', 'X', 'warm-up') "
            "ON CONFLICT (customer_id) DO UPDATE SET csp = 'warm-up'",
            (CUSTOMER,),
        )
        to_cdc: list[float] = []
        to_profile: list[float] = []
        for i in range(-3, args.changes):  # three warm-up changes, not counted (the normalizer starts up)
            mark = f"bench-{uuid.uuid4().hex[:10]}"
            db.execute("UPDATE customers SET csp = %s WHERE customer_id = %s", (mark, CUSTOMER))
            committed = time.perf_counter()
            seen_cdc = seen_profile = None
            deadline = committed + 60
            while (seen_cdc is None or seen_profile is None) and time.perf_counter() < deadline:
                for msg in cdc.consume(100, timeout=0.001):
                    if not msg.error() and msg.value() and mark in msg.value().decode(errors="replace"):
                        payload = json.loads(msg.value())["payload"]
                        if (payload.get("after") or {}).get("csp") == mark:
                            seen_cdc = time.perf_counter()
                for msg in profiles.consume(100, timeout=0.001):
                    if not msg.error() and msg.value() and decoder.decode(msg.value()).get("csp") == mark:
                        seen_profile = time.perf_counter()
            if seen_cdc is None or seen_profile is None:
                print(f"change {i} not seen within 60 s (normalizer log: {log})", file=sys.stderr)
                return 1
            if i >= 0:
                to_cdc.append((seen_cdc - committed) * 1000)
                to_profile.append((seen_profile - committed) * 1000)
            time.sleep(args.gap_ms / 1000)
    finally:
        normalizer.terminate()
        normalizer.wait(30)
        cdc.close()
        profiles.close()
        db.close()
    added = [p - c for p, c in zip(to_profile, to_cdc, strict=True)]
    print(f"{args.changes} row updates, one commit at a time, {args.gap_ms} ms apart (read_committed)")
    for what, values in (("row commit -> crm.cdc.customers (Debezium)", to_cdc),
                         ("row commit -> crm.profiles (platform)", to_profile),
                         ("normalizer's share", added)):  # fmt: skip
        print(f"{what:<45} p50 {statistics.median(values):7.1f} ms   p99 {_quantile(values, 0.99):7.1f} ms")
    p50 = statistics.median(to_profile) / statistics.median(to_cdc)
    p99 = _quantile(to_profile, 0.99) / _quantile(to_cdc, 0.99)
    print(f"ratios: profiles/cdc p50={p50:.2f} p99={p99:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
