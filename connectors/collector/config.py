"""The collector's configuration: a plain dataclass, so ``connectors`` never depends on ``passerelle``.

The settings layer (``passerelle.settings.CollectorSettings``) builds one of
these from environment variables; tests and benchmarks build it directly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from schemas.clients import Connection, Connects

DEFAULT_TOPIC = "hits.raw"
CATALOG_TOPIC = "hits.raw"
"""The catalog entry whose key/value schemas the collector writes, whatever topic name it writes to."""

MAX_IPV4_PREFIX = 24
MAX_IPV6_PREFIX = 48


class CollectorStartupError(Exception):
    """The collector cannot start for a reason the operator can fix (bad config, registry unreachable)."""

    user_error = True


@dataclass(frozen=True)
class CollectorConfig(Connects):
    """Everything the collector needs; frozen so that request handlers cannot change it under each other.

    ``sites`` maps each known site to its API key: pixels only need the site to
    be known, JSON batches must carry a key, and a key covers every site it is
    configured for. IP prefixes can only be made shorter than /24 and /48, so
    no configuration can let a full address reach Kafka.
    """

    bootstrap_servers: str
    schema_registry_url: str
    sites: Mapping[str, str] = field(repr=False)  # API keys: never in a log line
    topic: str = DEFAULT_TOPIC
    catalog_path: Path | None = None
    max_batch_events: int = 500
    max_body_bytes: int = 1024 * 1024
    trust_forwarded: bool = False
    keep_ip: bool = True
    ipv4_prefix: int = MAX_IPV4_PREFIX
    ipv6_prefix: int = MAX_IPV6_PREFIX
    max_event_age_s: float = 24 * 3600.0
    max_clock_skew_s: float = 300.0
    produce_timeout_s: float = 10.0
    retry_after_s: int = 5
    health_timeout_s: float = 2.0
    auto_register_schemas: bool = True
    producer_overrides: Mapping[str, str | int | float | bool] = field(default_factory=dict)
    connection: Connection | None = field(default=None, repr=False)  # credentials/TLS; None: plaintext

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not self.bootstrap_servers:
            problems.append("bootstrap_servers is empty")
        if not self.schema_registry_url:
            problems.append("schema_registry_url is empty")
        if not self.topic:
            problems.append("topic is empty")
        for site, key in self.sites.items():
            if not site or not site.strip():
                problems.append("a site name is empty")
            if not key:
                problems.append(f"site {site!r} has an empty API key")
        if self.max_batch_events < 1:
            problems.append(f"max_batch_events must be >= 1, got {self.max_batch_events}")
        if self.max_body_bytes < 1024:
            problems.append(f"max_body_bytes must be >= 1024, got {self.max_body_bytes}")
        if not 0 <= self.ipv4_prefix <= MAX_IPV4_PREFIX:
            problems.append(f"ipv4_prefix must be within 0..{MAX_IPV4_PREFIX}, got {self.ipv4_prefix}")
        if not 0 <= self.ipv6_prefix <= MAX_IPV6_PREFIX:
            problems.append(f"ipv6_prefix must be within 0..{MAX_IPV6_PREFIX}, got {self.ipv6_prefix}")
        if self.produce_timeout_s <= 0:
            problems.append(f"produce_timeout_s must be > 0, got {self.produce_timeout_s}")
        if problems:
            raise CollectorStartupError("invalid collector configuration: " + "; ".join(problems))
