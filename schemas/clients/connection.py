"""Where a process connects and with which credentials, as plain data (the settings layer fills it)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from passerelle.schemas.clients.errors import KafkaConfigError
from passerelle.schemas.clients.redact import is_secret_property, redacted_properties, register_secret


def parse_properties(text: str, origin: str = "properties") -> dict[str, str]:
    """``key=value`` lines, ``#`` comments, as kcat's ``-F`` file (and Java clients' .properties) take them."""
    props: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", "!")):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise KafkaConfigError(f"{origin}:{number}: expected `property=value`, got {line[:40]!r}")
        props[key.strip()] = value.strip()
    return props


def read_properties_file(path: Path) -> dict[str, str]:
    """Read a client properties file; a missing or unreadable file is a configuration error."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise KafkaConfigError(f"cannot read the Kafka client config file {path}: {exc.strerror}") from exc
    return parse_properties(text, str(path))


@dataclass(frozen=True)
class Connection:
    """A cluster and a registry, with the client properties (security first of all) every client gets.

    ``kafka`` holds librdkafka properties (``security.protocol``, ``sasl.*``,
    ``ssl.*``...) applied to every producer, consumer and admin client;
    ``registry`` holds ``SchemaRegistryClient`` properties (``basic.auth.user.info``,
    ``bearer.auth.token``, ``ssl.ca.location``...). Secret values are registered
    for redaction as soon as a connection exists.
    """

    bootstrap_servers: str
    registry_url: str = ""
    kafka: Mapping[str, str] = field(default_factory=dict)
    registry: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for props in (self.kafka, self.registry):
            for name, value in props.items():
                if is_secret_property(name):
                    register_secret(value)

    def kafka_config(self, **overrides: Any) -> dict[str, Any]:
        """librdkafka configuration: bootstrap servers and security, then the caller's own properties."""
        conf: dict[str, Any] = {"bootstrap.servers": self.bootstrap_servers, **self.kafka}
        conf.update(overrides)
        return conf

    @property
    def security_protocol(self) -> str:
        return self.kafka.get("security.protocol", "plaintext").upper()

    @property
    def principal(self) -> str | None:
        """The SASL user name, for error messages (never the password)."""
        return self.kafka.get("sasl.username")

    def describe(self) -> str:
        """One line naming the cluster, protocol and user: what an error message should say."""
        who = f" as '{self.principal}'" if self.principal else ""
        return f"{self.bootstrap_servers} ({self.security_protocol}{who})"

    def redacted(self) -> dict[str, Any]:
        """Printable view of the whole connection."""
        return {
            "bootstrap.servers": self.bootstrap_servers,
            "schema.registry.url": self.registry_url,
            "kafka": redacted_properties(dict(self.kafka)),
            "registry": redacted_properties(dict(self.registry)),
        }

    def __repr__(self) -> str:
        return f"Connection({self.redacted()!r})"

    def with_bootstrap(self, bootstrap_servers: str) -> Connection:
        return Connection(bootstrap_servers, self.registry_url, self.kafka, self.registry)

    @classmethod
    def plain(cls, bootstrap_servers: str, registry_url: str = "") -> Connection:
        """No security: the local stack and tests on it."""
        return cls(bootstrap_servers, registry_url)


class Connects:
    """Mixin for the plain configuration dataclasses of processes (runner, collector, bridge, export).

    They keep ``bootstrap_servers``/``schema_registry_url`` for plaintext use in
    tests and benches; the settings layer also sets ``connection`` with the
    credentials, and every client is built from :attr:`conn`.
    """

    bootstrap_servers: str
    schema_registry_url: str
    connection: Connection | None

    @property
    def conn(self) -> Connection:
        if self.connection is not None:
            return self.connection
        return Connection.plain(self.bootstrap_servers, self.schema_registry_url)
