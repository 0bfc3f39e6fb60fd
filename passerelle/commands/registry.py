"""``passerelle registry``: the embedded schema registry, in the foreground."""

from __future__ import annotations

import argparse

from passerelle.settings import load


def _run(args: argparse.Namespace) -> int:
    from schemas.registry.server import run  # uvicorn and FastAPI load only for this command

    settings = load()
    run(
        bootstrap_servers=settings.bootstrap_servers,
        host=args.host or settings.registry_host,
        port=args.port or settings.registry_port,
        topic=args.topic or settings.schemas_topic,
    )
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``registry``."""
    p = sub.add_parser(
        "registry",
        help="run the embedded schema registry (Confluent REST API) in the foreground",
        description="Serve the Confluent Schema Registry REST API subset that confluent-kafka clients and Kafka "
        "Connect's AvroConverter use, storing every schema, version and config in a compacted Kafka topic "
        "(the layout Confluent Schema Registry and Karapace use), so a restart loses nothing. Stops on Ctrl-C.",
        epilog="Settings: PASSERELLE_BOOTSTRAP_SERVERS, PASSERELLE_REGISTRY_HOST, PASSERELLE_REGISTRY_PORT, "
        "PASSERELLE_SCHEMAS_TOPIC; --host, --port and --topic override them.",
    )
    p.add_argument("--host", help="address to bind (default: PASSERELLE_REGISTRY_HOST, 127.0.0.1)")
    p.add_argument("--port", type=int, help="HTTP port (default: PASSERELLE_REGISTRY_PORT, 8081)")
    p.add_argument("--topic", help="compacted topic storing the registry (default: PASSERELLE_SCHEMAS_TOPIC, _schemas)")
    p.set_defaults(func=_run)
