"""The partner API's configuration: a plain dataclass (``connectors`` never imports ``passerelle.settings``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from passerelle.schemas.clients import Connection, Connects


class ApiStartupError(Exception):
    """The API cannot start for a reason the operator can fix (topic missing, registry or schema unusable)."""

    user_error = True


@dataclass(frozen=True)
class ApiTopics:
    """Topic names, overridable so tests and several deployments can share a cluster."""

    campaigns: str = "campaigns"
    undeclared: str = "campaigns.undeclared"
    keys: str = "partners.keys"
    impressions: str = "ads.impressions"
    metrics: str = "partners.metrics"
    templates: str = "query.templates"


@dataclass(frozen=True)
class ApiConfig(Connects):
    """Everything ``passerelle api`` needs; the settings layer (``ApiSettings``) builds it from the environment."""

    bootstrap_servers: str
    schema_registry_url: str
    topics: ApiTopics = field(default_factory=ApiTopics)
    catalog_path: Path | None = None
    max_batch_urls: int = 1000
    max_body_bytes: int = 1024 * 1024
    max_batch_impressions: int = 10_000
    max_batch_metrics: int = 10_000
    max_import_body_bytes: int = 16 * 1024 * 1024
    """Body limit of POST /v1/impressions and /v1/metrics (10,000 impressions are about 2 MB of JSON)."""
    start_timeout_s: float = 30.0
    produce_timeout_s: float = 10.0
    auto_register_schemas: bool = True
    warehouse_url: str | None = None
    """The analytics store the query endpoints read (duckdb:///… or postgresql://…); None: no query endpoints."""
    warehouse_sink: bool = True
    """With a DuckDB store, run the sink filling it in a thread of the API (DuckDB admits one process per file)."""
    warehouse_site_timezones: str = ""
    """The in-process sink's site time zones (``shop=Europe/Paris,...``), as ``PASSERELLE_WAREHOUSE_SITE_TIMEZONES``."""
    warehouse_topics: str = ""
    """The in-process sink's topic of a role when not the catalog's (``hits=...``): PASSERELLE_WAREHOUSE_TOPICS."""
    warehouse_group_id: str = "passerelle-warehouse"
    prometheus_url: str | None = None
    """The Prometheus the operations page reads (``/pages/operations``, through ``ops_routes``); None: its queries
    answer 503 naming the setting (``passerelle api`` always sets one: the local Prometheus by default)."""
    prometheus_timeout_s: float = 10.0
    connection: Connection | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        problems = []
        if self.max_batch_urls < 1:
            problems.append(f"max_batch_urls must be >= 1, got {self.max_batch_urls}")
        if self.max_body_bytes < 1024:
            problems.append(f"max_body_bytes must be >= 1024, got {self.max_body_bytes}")
        for name in ("max_batch_impressions", "max_batch_metrics"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_import_body_bytes < 1024:
            problems.append(f"max_import_body_bytes must be >= 1024, got {self.max_import_body_bytes}")
        if problems:
            raise ApiStartupError("invalid partner API configuration: " + "; ".join(problems))
