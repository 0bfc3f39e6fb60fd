"""``passerelle lag``: consumer lag per group, topic and partition, once as a table or served to Prometheus.

The command's wiring and output only: the offsets and oldest-record reads are
``passerelle.connectors.monitoring.lag``, the served metrics and probes
``passerelle.connectors.monitoring.exporter``.
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from types import FrameType


def _table() -> int:
    from passerelle.connectors.monitoring.lag import LagReader, by_group
    from passerelle.settings import load

    settings = load()
    reader = LagReader(settings.connection(), settings.lag_groups)
    try:
        rows = reader.read()
    finally:
        reader.close()
    if not rows:
        print("no consumer group has committed offsets" + (f" matching {settings.lag_groups!r}" if settings.lag_groups
                                                           else ""))  # fmt: skip
        return 0
    header = f"{'GROUP':<36} {'TOPIC':<28} {'PART':>4} {'COMMITTED':>10} {'END':>10} {'LAG':>8} {'LAG S':>8}"
    print(header)
    for group, group_rows in by_group(rows).items():
        for r in sorted(group_rows, key=lambda r: (r.topic, r.partition)):
            print(f"{group:<36} {r.topic:<28} {r.partition:>4} {r.committed:>10} {r.end:>10} {r.lag_records:>8} "
                  f"{r.lag_seconds:>8.1f}")  # fmt: skip
    return 0


def _serve(args: argparse.Namespace) -> int:
    from prometheus_client import start_http_server

    from passerelle.connectors.monitoring.exporter import Exporter, ExporterConfig
    from passerelle.connectors.monitoring.flows import FlowTopics
    from passerelle.settings import load

    settings = load()
    conn = settings.connection()
    ca = conn.registry.get("ssl.ca.location")
    config = ExporterConfig(
        bootstrap=settings.bootstrap_servers,
        port=settings.lag_port,
        interval_s=settings.lag_interval_s,
        groups=settings.lag_groups,
        registry_url=settings.schema_registry_url,
        registry_ca=str(ca) if ca else None,
        connect_url="" if args.no_connect else settings.connect_url,
        targets_dir=args.targets_dir,
        flow_topics=FlowTopics(args.enriched_topic, args.abandoned_topic, args.messages_topic, args.deliveries_topic),
    )
    exporter = Exporter(conn, config)
    start_http_server(config.port, addr=config.host, registry=exporter.registry)
    print(f"lag exporter: /metrics on http://{config.host}:{config.port}, refreshed every {config.interval_s:g} s",
          flush=True)  # fmt: skip
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        exporter.run(stop)
    finally:
        exporter.close()
    return 0


def _run(args: argparse.Namespace) -> int:
    return _serve(args) if args.serve else _table()


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``lag``."""
    p = sub.add_parser(
        "lag",
        help="consumer lag per group/topic/partition (records and seconds); --serve exports it to Prometheus",
        description="Print, for every consumer group (PASSERELLE_LAG_GROUPS: a regular expression to keep some), "
        "each partition's committed offset, end offset, lag in records and lag in seconds (age of the oldest "
        "record the group has not consumed; 0 when only a transaction marker is left). With --serve, run the "
        "exporter instead: the same figures as passerelle_consumer_group_* metrics, the end-to-end latency "
        "histograms passerelle_flow_latency_seconds{flow=hit_to_enriched|hit_to_abandoned_cart|"
        "abandonment_to_partner}, and probes of the schema registry (passerelle_registry_up) and Kafka Connect "
        "(passerelle_connect_up, passerelle_connect_task_state), on PASSERELLE_LAG_PORT, refreshed every "
        "PASSERELLE_LAG_INTERVAL_S. `passerelle up --with monitoring` starts it.",
    )
    p.add_argument("--serve", action="store_true", help="run the Prometheus exporter until SIGTERM")
    p.add_argument("--targets-dir", type=Path, default=None,
                   help="with --serve: write Prometheus file-discovery files of the passerelle processes serving "
                   "/metrics found on this machine (the stack's monitoring passes its folder)")  # fmt: skip
    p.add_argument("--no-connect", action="store_true", help="with --serve: do not probe Kafka Connect")
    p.add_argument("--enriched-topic", default="hits.enriched", help="topic of hit_to_enriched")
    p.add_argument("--abandoned-topic", default="carts.abandoned", help="topic of hit_to_abandoned_cart")
    p.add_argument("--messages-topic", default="remarketing.messages", help="messages of abandonment_to_partner")
    p.add_argument("--deliveries-topic", default="remarketing.deliveries", help="deliveries of abandonment_to_partner")
    p.set_defaults(func=_run)
