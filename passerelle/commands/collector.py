"""``passerelle collector``: the HTTP hit collector in the foreground.

The port is bound and the producer started (schemas registered, Kafka client
created) before uvicorn runs, so a taken port or an unreachable registry is
one ``error:`` line at once, not a log of a half-started server. With
``--workers N`` the port is bound here and N worker processes serve it
(``connectors/collector/workers.py``).
"""

from __future__ import annotations

import argparse
import gc
import os

from passerelle.errors import PasserelleError
from passerelle.settings import CollectorSettings, load


def _run(args: argparse.Namespace) -> int:
    from passerelle.connectors.collector.app import create_app
    from passerelle.connectors.collector.producer import HitProducer
    from passerelle.connectors.collector.server import uvicorn_config
    from passerelle.connectors.serving import Server, bind, url_of

    settings = load(CollectorSettings)
    assert isinstance(settings, CollectorSettings)
    if not settings.collector_sites:
        raise PasserelleError(
            'no site configured: set PASSERELLE_COLLECTOR_SITES, e.g. \'{"shop.example": "an-api-key"}\''
        )
    config = settings.collector_config(topic=args.topic)
    host = args.host or settings.collector_host
    port = args.port or settings.collector_port
    workers = args.workers or settings.collector_workers
    if args.worker_fd is not None:
        from passerelle.connectors.collector.workers import adopt_socket

        sock = adopt_socket(args.worker_fd, args.worker_parent)
    else:
        sock = bind(host, port, service="collector", port_setting="PASSERELLE_COLLECTOR_PORT")
    if workers > 1:
        from passerelle.connectors.collector.workers import Supervisor

        try:
            return Supervisor(sock, workers, _worker_argv(args, host, port)).run()
        finally:
            sock.close()
    producer = HitProducer(config)
    try:
        producer.start()  # schemas and Kafka client before serving: start-up errors are one line
        app = create_app(config, producer=producer, settle=True)  # this process is the collector alone
        ready = f"collector listening on {url_of(host, port)} (topic {config.topic})"
        if args.worker_fd is not None:
            ready += f", worker pid {os.getpid()}"
        uvicorn = uvicorn_config(app, config, log_level="warning", access_log=False, lifespan="on")
        server = Server(uvicorn, ready)
        # What start-up made (FastAPI, pydantic's validators, the schemas) lives as long as the process: out of the
        # garbage collector's sight, its full collections no longer walk it between two requests.
        gc.collect()
        gc.freeze()
        server.run(sockets=[sock])
        if not server.started:
            raise PasserelleError("the collector did not start (see the log above)")
    finally:
        producer.close()
        sock.close()
    return 0


def _worker_argv(args: argparse.Namespace, host: str, port: int) -> list[str]:
    """The options a worker is started with: what this process was given, resolved."""
    return ["--host", host, "--port", str(port), "--topic", args.topic]


def _workers(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 64:
        raise argparse.ArgumentTypeError(f"--workers must be within 1..64, got {value}")
    return value


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``collector``."""
    p = sub.add_parser(
        "collector",
        help="run the HTTP hit collector in the foreground",
        description="Serve GET /hit (pixel, answers a 1x1 GIF) and POST /v1/events (JSON batches with an API "
        "key); every valid event becomes an Avro Hit on hits.raw, keyed by visitor id, and is answered only once "
        "the broker acknowledged it (503 with Retry-After otherwise). Client IPs are truncated (IPv4 /24, IPv6 "
        "/48) before they reach Kafka. GET /imp is the ad server's impression pixel (site, vid, as, and c, cr, pl, "
        "iid, ts): an AdImpression on ads.impressions, keyed by visitor id, for post-view. Also GET /healthz and "
        "GET /metrics. Stops on Ctrl-C or SIGTERM. --workers N runs N processes on the one port (each its own "
        "Kafka producer, /metrics per process); SIGTERM to the parent stops them all.",
        epilog="Settings: PASSERELLE_COLLECTOR_SITES (JSON site -> API key, required), PASSERELLE_COLLECTOR_HOST, "
        "PASSERELLE_COLLECTOR_PORT, PASSERELLE_COLLECTOR_MAX_EVENTS, PASSERELLE_COLLECTOR_MAX_BODY_BYTES, "
        "PASSERELLE_COLLECTOR_MAX_RECORD_BYTES, PASSERELLE_COLLECTOR_TRUST_FORWARDED, "
        "PASSERELLE_COLLECTOR_TRUSTED_PROXIES, PASSERELLE_COLLECTOR_HEADERS_TIMEOUT_SECONDS, "
        "PASSERELLE_COLLECTOR_BODY_TIMEOUT_SECONDS, PASSERELLE_COLLECTOR_MAX_CONCURRENCY, "
        "PASSERELLE_COLLECTOR_OPENAPI, PASSERELLE_COLLECTOR_WORKERS, PASSERELLE_COLLECTOR_IMPRESSIONS_TOPIC, "
        "PASSERELLE_BOOTSTRAP_SERVERS, "
        "PASSERELLE_SCHEMA_REGISTRY_URL.",
    )
    p.add_argument("--host", help="address to bind (default: PASSERELLE_COLLECTOR_HOST, 127.0.0.1)")
    p.add_argument("--port", type=int, help="HTTP port (default: PASSERELLE_COLLECTOR_PORT, 8088)")
    p.add_argument("--topic", default="hits.raw", help="topic to write hits to (default: hits.raw)")
    p.add_argument(
        "--workers",
        type=_workers,
        help="processes serving the port, one core each (default: PASSERELLE_COLLECTOR_WORKERS, 1: one container "
        "per core)",
    )
    p.add_argument("--worker-fd", type=int, help=argparse.SUPPRESS)  # a worker started by --workers N
    p.add_argument("--worker-parent", type=int, default=0, help=argparse.SUPPRESS)
    p.set_defaults(func=_run)
