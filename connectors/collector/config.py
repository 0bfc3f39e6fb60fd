"""The collector's configuration: a plain dataclass, so ``connectors`` never depends on ``passerelle``.

The settings layer (``passerelle.settings.CollectorSettings``) builds one of
these from environment variables; tests and benchmarks build it directly.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from passerelle.schemas.clients import Connection, Connects

DEFAULT_TOPIC = "hits.raw"
CATALOG_TOPIC = "hits.raw"
"""The catalog entry whose key/value schemas the collector writes, whatever topic name it writes to."""
DEFAULT_IMPRESSIONS_TOPIC = "ads.impressions"
IMPRESSIONS_CATALOG_TOPIC = "ads.impressions"
"""The catalog entry of the impressions ``GET /imp`` writes (``AdImpression``), whatever topic name it writes to."""

MAX_IPV4_PREFIX = 24
MAX_IPV6_PREFIX = 48
DEFAULT_MAX_RECORD_BYTES = 64 * 1024
"""Largest encoded ``Hit``: every processor downstream writes it again, bigger (``EnrichedHit``, state,
changelogs, dead letters), so it must stay far below the 1 MB Kafka limits they all share."""
MAX_RECORD_BYTES = 1_000_000
"""librdkafka's default ``message.max.bytes``: no configuration may accept records past it."""


def trusted_networks(proxies: Iterable[str]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """The proxies whose ``X-Forwarded-For`` is believed, as networks (an address is a /32 or /128).

    Parsed once at start-up; a name that is not an address or a network is a
    configuration error (``ValueError``), not a proxy silently never matched.
    """
    networks = []
    for proxy in proxies:
        text = proxy.strip()
        if not text:
            continue
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise ValueError(f"trusted proxy {text!r} is not an IP address or network") from None
    return tuple(networks)


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

    The limits bound what one client can hold: ``max_record_bytes`` the
    encoded ``Hit`` (an event over it is rejected, never produced),
    ``headers_timeout_s`` and ``body_timeout_s`` the time a request may take
    to arrive, ``max_concurrency`` the connections and requests served at
    once (503 beyond). ``X-Forwarded-For`` is read only with
    ``trust_forwarded`` and only from ``trusted_proxies`` (addresses or
    networks). ``serve_openapi`` publishes ``/openapi.json``, off on a public
    port by default.
    """

    bootstrap_servers: str
    schema_registry_url: str
    sites: Mapping[str, str] = field(repr=False)  # API keys: never in a log line
    topic: str = DEFAULT_TOPIC
    impressions_topic: str = DEFAULT_IMPRESSIONS_TOPIC
    catalog_path: Path | None = None
    max_batch_events: int = 500
    max_body_bytes: int = 1024 * 1024
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    trust_forwarded: bool = False
    trusted_proxies: tuple[str, ...] = ("127.0.0.1", "::1")
    keep_ip: bool = True
    ipv4_prefix: int = MAX_IPV4_PREFIX
    ipv6_prefix: int = MAX_IPV6_PREFIX
    max_event_age_s: float = 24 * 3600.0
    max_clock_skew_s: float = 300.0
    produce_timeout_s: float = 10.0
    retry_after_s: int = 5
    health_timeout_s: float = 2.0
    headers_timeout_s: float = 10.0
    body_timeout_s: float = 20.0
    max_concurrency: int = 1000
    serve_openapi: bool = False
    auto_register_schemas: bool = True
    producer_overrides: Mapping[str, str | int | float | bool] = field(default_factory=dict)
    connection: Connection | None = field(default=None, repr=False)  # credentials/TLS; None: plaintext

    @property
    def forwarding_proxies(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """The peers whose ``X-Forwarded-For`` is believed: none unless ``trust_forwarded``."""
        return trusted_networks(self.trusted_proxies) if self.trust_forwarded else ()

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not self.bootstrap_servers:
            problems.append("bootstrap_servers is empty")
        if not self.schema_registry_url:
            problems.append("schema_registry_url is empty")
        if not self.topic:
            problems.append("topic is empty")
        if not self.impressions_topic:
            problems.append("impressions_topic is empty")
        for site, key in self.sites.items():
            if not site or not site.strip():
                problems.append("a site name is empty")
            if not key:
                problems.append(f"site {site!r} has an empty API key")
        if self.max_batch_events < 1:
            problems.append(f"max_batch_events must be >= 1, got {self.max_batch_events}")
        if self.max_body_bytes < 1024:
            problems.append(f"max_body_bytes must be >= 1024, got {self.max_body_bytes}")
        if not 1024 <= self.max_record_bytes <= MAX_RECORD_BYTES:
            problems.append(f"max_record_bytes must be within 1024..{MAX_RECORD_BYTES}, got {self.max_record_bytes}")
        try:
            trusted_networks(self.trusted_proxies)
        except ValueError as exc:
            problems.append(str(exc))
        for name in ("headers_timeout_s", "body_timeout_s"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be > 0, got {getattr(self, name)}")
        if self.max_concurrency < 1:
            problems.append(f"max_concurrency must be >= 1, got {self.max_concurrency}")
        if not 0 <= self.ipv4_prefix <= MAX_IPV4_PREFIX:
            problems.append(f"ipv4_prefix must be within 0..{MAX_IPV4_PREFIX}, got {self.ipv4_prefix}")
        if not 0 <= self.ipv6_prefix <= MAX_IPV6_PREFIX:
            problems.append(f"ipv6_prefix must be within 0..{MAX_IPV6_PREFIX}, got {self.ipv6_prefix}")
        if self.produce_timeout_s <= 0:
            problems.append(f"produce_timeout_s must be > 0, got {self.produce_timeout_s}")
        if problems:
            raise CollectorStartupError("invalid collector configuration: " + "; ".join(problems))
