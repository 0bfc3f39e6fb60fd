"""``passerelle registry``: the embedded schema registry, in the foreground."""

from __future__ import annotations

import argparse

from passerelle.settings import RegistrySettings, load

EPILOG = """\
Settings: PASSERELLE_BOOTSTRAP_SERVERS, PASSERELLE_REGISTRY_HOST, PASSERELLE_REGISTRY_PORT,
PASSERELLE_SCHEMAS_TOPIC (--host, --port and --topic override them). The registry's own
Kafka connection takes the security properties every process takes: PASSERELLE_KAFKA_CONFIG_FILE
(librdkafka properties, kcat -F format) and PASSERELLE_KAFKA_<PROPERTY> variables.

Authentication: set PASSERELLE_REGISTRY_AUTH_FILE to a JSON file of users and roles:

  {"users": {"<name>": {"salt": "<hex>", "sha256": "<hex>", "role": "read" | "write"}}}

where sha256 is the hex of sha256(bytes.fromhex(salt) + password as UTF-8), e.g.
  python -c 'from schemas.registry.auth import write_users_file as w; w("users.json", {"app": ("pw", "write")})'
Then every request but GET / (the health probe) needs HTTP basic credentials (401 otherwise);
role "read" may GET, look schemas up (POST /subjects/NAME) and test compatibility
(POST /compatibility/...); registering, deleting and changing the configuration need
role "write" (403 otherwise). Clients: PASSERELLE_SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO=name:password.

HTTPS: set both PASSERELLE_REGISTRY_SSL_CERTFILE and PASSERELLE_REGISTRY_SSL_KEYFILE (PEM);
clients verify it with PASSERELLE_SCHEMA_REGISTRY_SSL_CA_LOCATION.

Limits: a schema may take at most 900 KiB (921,600 bytes) as stored in its _schemas record:
its compact JSON text (no whitespace), UTF-8, escaped as a JSON string (each " and \\ counts
twice, so a typical schema fits up to 720-820 KiB of compact text). That keeps its record under
the 1,000,000 bytes a Kafka producer sends by default. A larger schema is refused with 413
(error_code 41302) and nothing is written. A request body may take at most 4 MiB: over that,
413 (error_code 41301) before the body is read (Content-Length), or as soon as a chunked body
passes it. JSON nested too deeply to parse is a 400.
"""


def _run(args: argparse.Namespace) -> int:
    from passerelle.schemas.registry.server import run  # uvicorn and FastAPI load only for this command

    settings = load(RegistrySettings)
    assert isinstance(settings, RegistrySettings)
    run(
        settings.connection(),
        host=args.host or settings.registry_host,
        port=args.port or settings.registry_port,
        topic=args.topic or settings.schemas_topic,
        auth_file=settings.registry_auth_file,
        ssl_certfile=settings.registry_ssl_certfile,
        ssl_keyfile=settings.registry_ssl_keyfile,
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
        epilog=EPILOG,
        formatter_class=_EpilogAsWritten,
    )
    p.add_argument("--host", help="address to bind (default: PASSERELLE_REGISTRY_HOST, 127.0.0.1)")
    p.add_argument("--port", type=int, help="HTTP port (default: PASSERELLE_REGISTRY_PORT, 8081)")
    p.add_argument("--topic", help="compacted topic storing the registry (default: PASSERELLE_SCHEMAS_TOPIC, _schemas)")
    p.set_defaults(func=_run)


class _EpilogAsWritten(argparse.HelpFormatter):
    """Wraps the description as usual but prints the epilog as written (it holds a JSON example)."""

    def add_text(self, text: str | None) -> None:
        if text is EPILOG:
            self._add_item(lambda t: t + "\n", [text])
        else:
            super().add_text(text)
