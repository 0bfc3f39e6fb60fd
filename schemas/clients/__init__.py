"""The one Kafka and schema-registry client layer every passerelle process connects through.

It lives beside the contracts (``schemas`` imports nothing else of ours), so
connectors, the registry and the CLI use it without importing stream logic.
Settings build a :class:`Connection`; the factories here turn it into
confluent-kafka clients with the security properties applied the same way
everywhere.
"""

from passerelle.schemas.clients.connection import Connection, Connects, parse_properties, read_properties_file
from passerelle.schemas.clients.errors import (
    KafkaAccessError,
    KafkaAuthenticationError,
    KafkaConfigError,
    KafkaTlsError,
    KafkaUnreachableError,
)
from passerelle.schemas.clients.kafka import (
    DEAD_LETTER_TOPIC,
    ErrorWatch,
    admin_client,
    consumer,
    ensure_reachable,
    produce,
    producer,
)
from passerelle.schemas.clients.redact import redact, register_secret
from passerelle.schemas.clients.registry import registry_client

__all__ = [
    "DEAD_LETTER_TOPIC",
    "Connection",
    "Connects",
    "ErrorWatch",
    "KafkaAccessError",
    "KafkaAuthenticationError",
    "KafkaConfigError",
    "KafkaTlsError",
    "KafkaUnreachableError",
    "admin_client",
    "consumer",
    "ensure_reachable",
    "parse_properties",
    "produce",
    "producer",
    "read_properties_file",
    "redact",
    "register_secret",
    "registry_client",
]
