"""The schema-registry client every process uses, with the connection's credentials and CA."""

from __future__ import annotations

from typing import Any

from confluent_kafka.schema_registry import SchemaRegistryClient

from passerelle.schemas.clients.connection import Connection
from passerelle.schemas.clients.errors import KafkaConfigError
from passerelle.schemas.clients.redact import redact

REQUEST_TIMEOUT_S = 10.0
"""Per HTTP request: a registry that hangs is an outage to report and retry, not a loop stuck forever."""


def registry_config(conn: Connection) -> dict[str, Any]:
    """``SchemaRegistryClient`` configuration: URL, then basic auth / bearer token / TLS properties.

    A bare ``bearer.auth.token`` means a static token (Karapace, Apicurio, a
    gateway): the credentials source and the logical cluster header the client
    requires are filled in.
    """
    conf: dict[str, Any] = {"url": conn.registry_url, "timeout": REQUEST_TIMEOUT_S, **conn.registry}
    if "bearer.auth.token" in conf:
        conf.setdefault("bearer.auth.credentials.source", "STATIC_TOKEN")
        conf.setdefault("bearer.auth.logical.cluster", "")
    return conf


def registry_client(conn: Connection) -> SchemaRegistryClient:
    """A ``SchemaRegistryClient`` for ``conn``; a bad property is a one-line configuration error."""
    try:
        return SchemaRegistryClient(registry_config(conn))
    except (ValueError, TypeError) as exc:
        detail = redact(str(exc))
        raise KafkaConfigError(f"invalid schema registry configuration for {conn.registry_url}: {detail}") from None
