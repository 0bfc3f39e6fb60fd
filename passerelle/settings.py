"""Typed settings read from ``PASSERELLE_*`` environment variables.

Every process builds one settings object. A ``PASSERELLE_`` variable that no
settings class knows is rejected: a typo in a deployment manifest must fail at
start-up, not silently fall back to a default.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from passerelle.errors import PasserelleError
from passerelle.schemas.clients import Connection, read_properties_file

ENV_PREFIX = "PASSERELLE_"


class PasserelleSettings(BaseSettings):
    """Settings every passerelle process shares: where Kafka and the registry are."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", case_sensitive=False)

    bootstrap_servers: str = Field(
        default="", description="Kafka bootstrap servers (host:port,...); default: the local stack"
    )
    schema_registry_url: str = Field(
        default="", description="Confluent-compatible schema registry URL; default: the local registry"
    )
    state_dir: Path = Field(
        default=Path(".passerelle"),
        description="Folder holding the local stack's data, logs and pid files",
    )
    cache_dir: Path = Field(
        default=Path.home() / ".cache" / "passerelle",
        description="Folder caching the Kafka jars fetched with Maven (kept by `down --purge`)",
    )
    kafka_port: int = Field(default=9092, description="Local broker's client port")
    controller_port: int = Field(default=9093, description="Local broker's KRaft controller port")
    registry_port: int = Field(default=8081, description="Embedded schema registry's HTTP port")
    registry_host: str = Field(default="127.0.0.1", description="Address the embedded registry binds")
    postgres_port: int = Field(
        default=5433, description="Local PostgreSQL's port (the sample CRM database; 5432 may be a system one's)"
    )
    connect_port: int = Field(default=8083, description="Local Kafka Connect worker's REST port")
    connect_url: str = Field(
        default="", description="Kafka Connect REST API that `passerelle connect` drives; default: the local worker"
    )
    stack_with: str = Field(
        default="",
        description="Optional components `passerelle up` also starts, comma-separated: postgres, connect "
        "(connect implies postgres); `up --with` adds to it",
    )
    prometheus_port: int = Field(default=9090, description="Local Prometheus's port (`up --with monitoring`)")
    alertmanager_port: int = Field(default=9094, description="Local Alertmanager's port (`up --with monitoring`)")
    broker_jmx_port: int = Field(
        default=9404, description="Port of the local broker's JMX exporter agent (`up --with monitoring`)"
    )
    lag_port: int = Field(default=9308, description="Port of the lag exporter's /metrics (`passerelle lag --serve`)")
    lag_interval_s: float = Field(default=10.0, gt=0, description="Seconds between two refreshes of the lag exporter")
    lag_groups: str = Field(
        default="", description="Regular expression of the consumer groups `passerelle lag` reports (empty: all)"
    )
    monitoring_scrape_interval_s: float = Field(
        default=15.0, gt=0, description="Prometheus's scrape and rule evaluation interval (`up --with monitoring`)"
    )
    monitoring_alert_for: str = Field(
        default="",
        description="Replaces every alert's `for` duration (e.g. 5s, for tests and demos); empty: the rules' own",
    )
    alert_webhook_url: str = Field(
        default="", description="Where Alertmanager posts notifications (webhook); empty: alerts are only listed"
    )
    schemas_topic: str = Field(default="_schemas", description="Compacted topic storing the registry")
    catalog: Path | None = Field(
        default=None, description="Topic catalog file (default: schemas/catalog.toml shipped with the code)"
    )
    kafka_config_file: Path | None = Field(
        default=None,
        description="librdkafka properties file (kcat -F format: security.protocol=..., sasl.username=...); "
        "PASSERELLE_KAFKA_<PROPERTY> variables override it",
    )
    schema_registry_basic_auth_user_info: SecretStr | None = Field(
        default=None, description="Registry HTTP basic auth as user:password"
    )
    schema_registry_bearer_auth_token: SecretStr | None = Field(
        default=None, description="Registry bearer token (static), sent as Authorization: Bearer"
    )
    schema_registry_ssl_ca_location: Path | None = Field(
        default=None, description="CA file to verify an HTTPS registry"
    )
    schema_registry_ssl_certificate_location: Path | None = Field(
        default=None, description="Client certificate for a registry that asks for one (mutual TLS)"
    )
    schema_registry_ssl_key_location: Path | None = Field(
        default=None, description="Private key of that client certificate"
    )

    @model_validator(mode="after")
    def _default_endpoints(self) -> PasserelleSettings:
        # Clients follow the local stack's ports unless pointed elsewhere (or the client file names a cluster).
        if not self.bootstrap_servers:
            from_file = self.kafka_properties().get("bootstrap.servers")
            self.bootstrap_servers = from_file or f"127.0.0.1:{self.kafka_port}"
        if not self.schema_registry_url:
            self.schema_registry_url = f"http://127.0.0.1:{self.registry_port}"
        if not self.connect_url:
            self.connect_url = f"http://127.0.0.1:{self.connect_port}"
        return self

    def kafka_properties(self, environ: dict[str, str] | None = None) -> dict[str, str]:
        """librdkafka properties: the config file, then ``PASSERELLE_KAFKA_<PROPERTY>`` variables.

        ``PASSERELLE_KAFKA_SASL_PASSWORD`` becomes ``sasl.password``: underscores
        become dots (no librdkafka property has an underscore). Variables that
        name a settings field (``PASSERELLE_KAFKA_PORT``) are not properties.
        """
        props: dict[str, str] = {}
        if self.kafka_config_file is not None:
            props.update(read_properties_file(self.kafka_config_file.expanduser()))
        props.pop("metadata.broker.list", None)
        props.update(kafka_env_properties(environ))
        return props

    def connection(self) -> Connection:
        """The cluster, the registry and their credentials, as the client layer takes them."""
        kafka = self.kafka_properties()
        kafka.pop("bootstrap.servers", None)
        registry: dict[str, str] = {}
        if self.schema_registry_basic_auth_user_info is not None:
            registry["basic.auth.user.info"] = self.schema_registry_basic_auth_user_info.get_secret_value()
        if self.schema_registry_bearer_auth_token is not None:
            registry["bearer.auth.token"] = self.schema_registry_bearer_auth_token.get_secret_value()
        for name, path in (
            ("ssl.ca.location", self.schema_registry_ssl_ca_location),
            ("ssl.certificate.location", self.schema_registry_ssl_certificate_location),
            ("ssl.key.location", self.schema_registry_ssl_key_location),
        ):
            if path is not None:
                registry[name] = str(path.expanduser())
        return Connection(self.bootstrap_servers, self.schema_registry_url, kafka, registry)


KAFKA_PROPERTY_PREFIX = ENV_PREFIX + "KAFKA_"


def kafka_env_properties(environ: dict[str, str] | None = None) -> dict[str, str]:
    """``PASSERELLE_KAFKA_<PROPERTY>`` variables as librdkafka properties (fields such as ``_PORT`` excluded)."""
    env = os.environ if environ is None else environ
    fields = {name.upper() for name in PasserelleSettings.model_fields}
    props = {}
    for key, value in env.items():
        upper = key.upper()
        if upper.startswith(KAFKA_PROPERTY_PREFIX) and upper[len(ENV_PREFIX) :] not in fields:
            props[upper[len(KAFKA_PROPERTY_PREFIX) :].lower().replace("_", ".")] = value
    return props


def _known_fields(cls: type[BaseSettings]) -> set[str]:
    names = {name.upper() for name in cls.model_fields}
    for sub in cls.__subclasses__():
        names |= _known_fields(sub)
    return names


def check_environment(environ: dict[str, str] | None = None) -> None:
    """Fail on ``PASSERELLE_*`` variables that no settings class declares."""
    env = os.environ if environ is None else environ
    known = _known_fields(PasserelleSettings)
    unknown = sorted(
        key
        for key in env
        if key.upper().startswith(ENV_PREFIX)
        and key.upper()[len(ENV_PREFIX) :] not in known
        and not key.upper().startswith(KAFKA_PROPERTY_PREFIX)  # librdkafka properties, checked by librdkafka
    )
    if unknown:
        raise PasserelleError(
            f"unknown setting(s) {', '.join(unknown)}; known: " + ", ".join(sorted(ENV_PREFIX + k for k in known))
        )


def load(cls: type[PasserelleSettings] = PasserelleSettings, **overrides: Any) -> PasserelleSettings:
    """Build a settings object, turning validation errors into one readable line."""
    check_environment()
    try:
        return cls(**overrides)
    except Exception as exc:  # pydantic.ValidationError, but keep the message short
        raise PasserelleError(f"invalid settings: {exc}".replace("\n", " ")) from exc


# --- collector (appended on its own so that each process's settings stay one block) -------------

from typing import TYPE_CHECKING  # noqa: E402

if TYPE_CHECKING:
    from passerelle.connectors.collector.config import CollectorConfig


class CollectorSettings(PasserelleSettings):
    """Settings of ``passerelle collector``: where it listens, which sites it accepts, its limits."""

    collector_host: str = Field(default="127.0.0.1", description="Address the hit collector binds")
    collector_port: int = Field(default=8088, ge=1, le=65535, description="Hit collector's HTTP port")
    collector_sites: dict[str, SecretStr] = Field(
        default_factory=dict,
        description='Known sites and their API keys, as JSON: {"shop.example": "key"}; a key may cover several sites',
    )
    collector_max_events: int = Field(default=500, ge=1, description="Most events in one POST /v1/events")
    collector_max_body_bytes: int = Field(default=1_048_576, ge=1024, description="Largest POST body, in bytes")
    collector_max_record_bytes: int = Field(
        default=65_536,
        ge=1024,
        le=1_000_000,
        description="Largest event once encoded as an Avro Hit; a larger one is rejected (400, or per event in a 207)",
    )
    collector_trust_forwarded: bool = Field(
        default=False, description="Take the client IP from X-Forwarded-For (only behind a proxy that sets it)"
    )
    collector_trusted_proxies: str = Field(
        default="127.0.0.1,::1",
        description="Comma-separated addresses or networks (10.0.0.0/8) of the proxies whose X-Forwarded-For is "
        "believed, when PASSERELLE_COLLECTOR_TRUST_FORWARDED is on",
    )
    collector_headers_timeout_seconds: float = Field(
        default=10.0, gt=0, description="Time a client has to send a request's headers; the connection closes after"
    )
    collector_body_timeout_seconds: float = Field(
        default=20.0, gt=0, description="Time a client has to send a batch's body; answered 408 after"
    )
    collector_max_concurrency: int = Field(
        default=1000, ge=1, description="Open connections and requests served at once; beyond, 503"
    )
    collector_openapi: bool = Field(default=False, description="Serve the API description at /openapi.json")
    collector_workers: int = Field(
        default=1, ge=1, le=64, description="Collector processes sharing the port (--workers); 1 per container and core"
    )
    collector_impressions_topic: str = Field(
        default="ads.impressions", min_length=1, description="Topic GET /imp writes ad impressions to"
    )

    def collector_config(self, topic: str = "hits.raw") -> CollectorConfig:
        """The plain configuration the collector core takes (it cannot import ``passerelle``)."""
        from passerelle.connectors.collector.config import CollectorConfig

        return CollectorConfig(
            bootstrap_servers=self.bootstrap_servers,
            schema_registry_url=self.schema_registry_url,
            sites={site: key.get_secret_value() for site, key in self.collector_sites.items()},
            topic=topic,
            impressions_topic=self.collector_impressions_topic,
            catalog_path=self.catalog,
            max_batch_events=self.collector_max_events,
            max_body_bytes=self.collector_max_body_bytes,
            max_record_bytes=self.collector_max_record_bytes,
            trust_forwarded=self.collector_trust_forwarded,
            trusted_proxies=tuple(p.strip() for p in self.collector_trusted_proxies.split(",") if p.strip()),
            headers_timeout_s=self.collector_headers_timeout_seconds,
            body_timeout_s=self.collector_body_timeout_seconds,
            max_concurrency=self.collector_max_concurrency,
            serve_openapi=self.collector_openapi,
            connection=self.connection(),
        )


# --- stream processors ------------------------------------------------------------------------------------
# The runtime (confluent-kafka) and the processors' own modules load only when a processor is built, never for
# ``--help``: the imports below are for type checkers, the ones inside the methods for running.

if TYPE_CHECKING:
    from passerelle.schemas.catalog import Catalog
    from passerelle.streams.carts.tracker import CartConfig
    from passerelle.streams.enrichment.enricher import EnrichmentConfig
    from passerelle.streams.remarketing.sequence import SequencerConfig
    from passerelle.streams.runtime import Processor, RunnerConfig
    from passerelle.streams.runtime.stores import StateConfig


class ProcessorSettings(PasserelleSettings):
    """Runtime settings every stream processor process shares; each processor's own rules live in a subclass."""

    instance_id: str = Field(
        default="0",
        description="Stable id of this instance (names its transactional producer: keep it across restarts)",
    )
    processing_guarantee: str = Field(
        default="exactly_once", pattern="^(exactly_once|at_least_once)$", description="exactly_once | at_least_once"
    )
    commit_interval_ms: int = Field(default=100, ge=1, description="How often state, outputs and offsets commit")
    min_commit_interval_ms: int = Field(
        default=30, ge=0, description="Commit this early when caught up with the input, so outputs show sooner (0: off)"
    )
    batch_size: int = Field(default=2000, ge=1, description="Most records consumed per loop turn")
    metrics_port: int | None = Field(default=None, description="Serve /metrics on this port (none: off)")
    dead_letter_topic: str = Field(default="errors.deadletters", description="Where poison records go")
    max_error_ratio: float = Field(
        default=0.5, gt=0, le=1, description="Stop when more than this share of recent records fail (1: never)"
    )
    state_store: str = Field(
        default="memory",
        pattern=r"^\s*(\w[\w.-]*\s*=\s*)?(memory|rocksdb)\s*(,\s*\w[\w.-]*\s*=\s*(memory|rocksdb)\s*)*$",
        description="Where stores live: memory | rocksdb, or per store: memory,visitors=rocksdb",
    )
    state_store_dir: str = Field(
        default="", description="Directory of the rocksdb stores, kept across restarts; default: <state_dir>/stores"
    )

    def state_config(self) -> StateConfig:
        """Where the processor's stores live (``streams/runtime/stores.py``)."""
        from passerelle.streams.runtime.stores import StateConfig

        return StateConfig(
            self.state_store, Path(self.state_store_dir) if self.state_store_dir else self.state_dir / "stores"
        )

    def runner_config(self, app_id: str, processor: Processor, catalog: Catalog) -> RunnerConfig:
        """The runtime's configuration for ``processor``, its schemas taken from ``catalog`` (the contracts).

        Output topics get their value schema to write with; input topics get
        theirs as the reader schema, so a record of another shape is poison,
        not misread.
        """
        from passerelle.streams.runtime import ErrorBudget, RunnerConfig

        def schemas(topics: Iterable[str]) -> dict[str, str]:  # a connect-json topic may have no contract
            specs = [catalog.topic(t) for t in topics]
            return {s.name: catalog.schema_text(s.value_schema) for s in specs if s.value_schema}

        return RunnerConfig(
            app_id=app_id,
            bootstrap_servers=self.bootstrap_servers,
            schema_registry_url=self.schema_registry_url,
            output_schemas=schemas(processor.outputs),
            input_schemas=schemas(processor.inputs),
            wire_formats={t: catalog.topic(t).wire_format for t in (*processor.inputs, *processor.outputs)},
            instance_id=self.instance_id,
            exactly_once=self.processing_guarantee == "exactly_once",
            commit_interval_ms=self.commit_interval_ms,
            min_commit_interval_ms=self.min_commit_interval_ms,
            batch_size=self.batch_size,
            metrics_port=self.metrics_port,
            dead_letter_topic=self.dead_letter_topic,
            error_budget=ErrorBudget(max_ratio=self.max_error_ratio),
            auto_register_schemas=False,
            connection=self.connection(),
        )


class EnrichmentSettings(ProcessorSettings):
    """Settings of ``passerelle enrich``: the runtime's, plus the rules of visits and attribution."""

    visit_timeout_minutes: int = Field(default=30, ge=1, description="Inactivity that ends a visit")
    campaign_lifetime_days: int = Field(default=30, ge=0, description="How long a campaign is credited to returns")
    attribution_precedence: str = Field(
        default="xtor,at,utm,mtm,pk,click_id", description="Tag families in order of precedence, comma-separated"
    )

    def to_config(self) -> EnrichmentConfig:
        """The enricher's rules, in the milliseconds it counts in."""
        from passerelle.streams.enrichment.attribution import AttributionConfig
        from passerelle.streams.enrichment.enricher import EnrichmentConfig

        return EnrichmentConfig(
            visit_timeout_ms=self.visit_timeout_minutes * 60_000,
            campaign_lifetime_ms=self.campaign_lifetime_days * 86_400_000,
            attribution=AttributionConfig(tuple(f.strip() for f in self.attribution_precedence.split(",") if f)),
        )


class CartSettings(ProcessorSettings):
    """Settings of ``passerelle carts``: the runtime's, plus when a cart counts as abandoned."""

    cart_abandon_minutes: float = Field(default=30, gt=0, description="Cart inactivity before it counts as abandoned")

    def to_config(self) -> CartConfig:
        """The tracker's rules, in the milliseconds it counts in."""
        from passerelle.streams.carts.tracker import CartConfig

        return CartConfig(abandon_after_ms=int(self.cart_abandon_minutes * 60_000))


class RemarketingSettings(ProcessorSettings):
    """Settings of ``passerelle remarketing``: the sequence's delays, cap and promotion."""

    processing_guarantee: str = Field(
        default="at_least_once",
        pattern="^(exactly_once|at_least_once)$",
        description="at_least_once only (exactly_once is refused: message ids are deterministic and the emailing "
        "bridge sends them as idempotency keys)",
    )
    remarketing_followup_hours: float = Field(default=24, ge=0, description="Delay between step 1 and step 2")
    remarketing_cap_days: float = Field(default=7, ge=0, description="At most one sequence per customer per window")
    remarketing_promo_code: str = Field(default="COMEBACK10", description="Promotion code of step 2")
    remarketing_promo_description: str = Field(
        default="10% off your cart, today only", description="Promotion text of step 2"
    )
    remarketing_promo_discount: float | None = Field(default=10.0, description="Promotion discount, percent")
    remarketing_tick_seconds: float = Field(
        default=60, gt=0, description="How often due step 2 messages are looked for, in seconds"
    )

    def to_config(self) -> SequencerConfig:
        """The sequencer's rules, in the milliseconds it counts in."""
        from passerelle.streams.remarketing.sequence import Promotion, SequencerConfig

        hour = 3_600_000
        return SequencerConfig(
            followup_ms=int(self.remarketing_followup_hours * hour),
            cap_ms=int(self.remarketing_cap_days * 24 * hour),
            promotion=Promotion(
                self.remarketing_promo_code, self.remarketing_promo_description, self.remarketing_promo_discount
            ),
        )


# --- emailing partner bridge ------------------------------------------------------------------------------


class EmailingSettings(PasserelleSettings):
    """Settings of ``passerelle emailing bridge|export``: the partner's API and the retry budget."""

    emailing_partner_url: str = Field(default="", description="Partner endpoint receiving one message per request")
    emailing_partner_name: str = Field(default="emailing", description="Partner name in metrics and outcomes")
    emailing_auth_kind: str = Field(
        default="none", pattern="^(none|bearer|basic|api_key)$", description="none | bearer | basic | api_key"
    )
    emailing_auth_secret: SecretStr | None = Field(default=None, description="Token, password or API key")
    emailing_auth_username: str | None = Field(default=None, description="User name for basic auth")
    emailing_auth_header: str = Field(default="X-Api-Key", description="Header carrying an api_key secret")
    emailing_max_attempts: int = Field(default=6, ge=1, description="Attempts per message before the dead letter")
    emailing_retry_budget_s: float = Field(default=120.0, gt=0, description="Most seconds spent retrying a message")
    emailing_request_timeout_s: float = Field(default=10.0, gt=0, description="Timeout of one partner request")
    emailing_concurrency: int = Field(default=3, ge=1, description="Partitions delivered in parallel")
    emailing_export_dir: Path = Field(default=Path("exports"), description="Folder of the batch-mode files")
    metrics_port: int | None = Field(default=None, description="Serve /metrics on this port (none: off)")
    instance_id: str | None = Field(
        default=None, description="Stable id of this bridge instance (static group membership: fast restarts)"
    )


# --- embedded schema registry -----------------------------------------------------------------------------


class RegistrySettings(PasserelleSettings):
    """Settings of ``passerelle registry``: who may read and write, and TLS."""

    registry_auth_file: Path | None = Field(
        default=None,
        description="JSON file of registry users and roles (read | write); none: anyone may read and write",
    )
    registry_ssl_certfile: Path | None = Field(default=None, description="Serve HTTPS with this certificate (PEM)")
    registry_ssl_keyfile: Path | None = Field(default=None, description="Private key of that certificate (PEM)")


# --- live campaign counts ---------------------------------------------------------------------------------

if TYPE_CHECKING:
    from passerelle.streams.campaign_counts.rules import CampaignCountsConfig


class CampaignCountsSettings(ProcessorSettings):
    """Settings of ``passerelle campaign-counts``: the runtime's, plus the window and how often counts are published."""

    campaign_counts_window_minutes: int = Field(
        default=1440, ge=1, description="Length of a counting window from UTC midnight: divides a day or is whole days"
    )
    campaign_counts_grace_minutes: float = Field(
        default=60, ge=0, description="How long after its end a window still counts late hits, before it is final"
    )
    campaign_counts_emit_seconds: float = Field(
        default=1, gt=0, description="How often changed counts are published (one record per counter per interval)"
    )
    campaign_counts_visitor_ttl_hours: float = Field(
        default=6, gt=0, description="How long a visitor's counted visit is remembered (longer than a visit lasts)"
    )

    @model_validator(mode="after")
    def _window_fits_the_day(self) -> CampaignCountsSettings:
        minutes, day = self.campaign_counts_window_minutes, 1440
        if day % minutes and minutes % day:
            raise ValueError(f"PASSERELLE_CAMPAIGN_COUNTS_WINDOW_MINUTES={minutes}: must divide 1440 or be days")
        return self

    def to_config(self) -> CampaignCountsConfig:
        """The counter's rules, in the milliseconds it counts in."""
        from passerelle.streams.campaign_counts.rules import CampaignCountsConfig

        return CampaignCountsConfig(
            window_ms=self.campaign_counts_window_minutes * 60_000,
            grace_ms=int(self.campaign_counts_grace_minutes * 60_000),
            emit_interval_ms=max(1, int(self.campaign_counts_emit_seconds * 1000)),
            visitor_ttl_ms=max(1, int(self.campaign_counts_visitor_ttl_hours * 3_600_000)),
        )


# --- CRM web activity -------------------------------------------------------------------------------------

if TYPE_CHECKING:
    from passerelle.streams.crm_activity.rules import CrmActivityConfig


class CrmActivitySettings(ProcessorSettings):
    """Settings of ``passerelle crm-activity``: the runtime's, plus how often summaries go out, the recovery window."""

    crm_activity_emit_seconds: float = Field(
        default=5, gt=0, description="How often changed summaries are published (one record per customer per interval)"
    )
    crm_activity_recovery_days: float = Field(
        default=7, gt=0, description="An order placed this long after a remarketing message is a recovered order"
    )
    crm_activity_visitor_ttl_hours: float = Field(
        default=6, gt=0, description="How long a visitor's counted visit is remembered (longer than a visit lasts)"
    )

    def to_config(self) -> CrmActivityConfig:
        """The summary's rules, in the milliseconds they count in."""
        from passerelle.streams.crm_activity.rules import CrmActivityConfig

        return CrmActivityConfig(
            emit_interval_ms=max(1, int(self.crm_activity_emit_seconds * 1000)),
            recovery_window_ms=max(1, int(self.crm_activity_recovery_days * 86_400_000)),
            visitor_ttl_ms=max(1, int(self.crm_activity_visitor_ttl_hours * 3_600_000)),
        )


# --- CRM normalizer ---------------------------------------------------------------------------------------

if TYPE_CHECKING:
    from passerelle.streams.crm_normalizer.rules import NormalizerConfig


class CrmNormalizerSettings(ProcessorSettings):
    """Settings of ``passerelle crm-normalizer``: the runtime's, plus which consent makes marketing consent."""

    crm_normalizer_consent_channel: str = Field(
        default="email",
        pattern="^(email|sms|postal|phone)$",
        description="Consent channel (consents.channel) whose granted row sets a profile's marketing_consent",
    )

    def to_config(self) -> NormalizerConfig:
        """The normalizer's rules."""
        from passerelle.streams.crm_normalizer.rules import NormalizerConfig

        return NormalizerConfig(consent_channel=self.crm_normalizer_consent_channel)


# --- post-view --------------------------------------------------------------------------------------------

if TYPE_CHECKING:
    from passerelle.streams.postview.rules import PostViewConfig


class PostViewSettings(ProcessorSettings):
    """Settings of ``passerelle postview``: the runtime's, plus the post-view window and attribution."""

    postview_window_hours: float = Field(
        default=24, gt=0, description="How long after an impression a visit or an order is credited to it"
    )
    postview_attribution: str = Field(
        default="last",
        pattern="^(last|all)$",
        description="last: the most recent impression wins (one PostView per visit or order); all: one per campaign",
    )
    postview_grace_minutes: float = Field(
        default=60, ge=0, description="How long after the window an impression is kept, for hits that arrive late"
    )
    postview_visitor_ttl_hours: float = Field(
        default=6, gt=0, description="How long a visitor's current visit and orders are remembered (beyond a visit)"
    )

    def to_config(self) -> PostViewConfig:
        """The post-view rules, in the milliseconds they count in."""
        from passerelle.streams.postview.rules import ALL, LAST, PostViewConfig

        return PostViewConfig(
            window_ms=max(1, int(self.postview_window_hours * 3_600_000)),
            attribution=ALL if self.postview_attribution == ALL else LAST,
            grace_ms=int(self.postview_grace_minutes * 60_000),
            visitor_ttl_ms=max(1, int(self.postview_visitor_ttl_hours * 3_600_000)),
        )


# --- conversion paths -------------------------------------------------------------------------------------

if TYPE_CHECKING:
    from passerelle.streams.conversion_paths.rules import PathsConfig


class ConversionPathsSettings(ProcessorSettings):
    """Settings of ``passerelle conversion-paths``: the runtime's, plus lookback, goals, models and lateness."""

    paths_lookback_days: float = Field(default=30, gt=0, description="How far back a touchpoint counts on a path")
    paths_goals: str = Field(
        default="",
        description='Conversions besides orders, a JSON list: [{"name": "signup", "page_pattern": "/welcome", '
        '"value": 5}] or {"name", "hit_type"} (none: orders only)',
    )
    paths_position_first: float = Field(
        default=0.4, ge=0, le=1, description="Position-based model: credit of the first touchpoint"
    )
    paths_position_last: float = Field(
        default=0.4, ge=0, le=1, description="Position-based model: credit of the last touchpoint"
    )
    paths_half_life_days: float = Field(default=7, gt=0, description="Time-decay model: half-life of a touchpoint")
    paths_reset_after_conversion: bool = Field(
        default=True, description="A path starts after the person's previous conversion (false: the whole lookback)"
    )
    paths_grace_minutes: float = Field(
        default=60,
        ge=0,
        description="How long after a conversion a late touchpoint is still attached to it (the path re-emitted "
        "with revision + 1); later ones are counted late",
    )
    paths_postview_channel: str = Field(
        default="display (post-view)", min_length=1, description="Channel of post-view exposures on the paths"
    )

    @model_validator(mode="after")
    def _check_paths(self) -> ConversionPathsSettings:
        if self.paths_position_first + self.paths_position_last > 1:
            raise ValueError("PASSERELLE_PATHS_POSITION_FIRST + PASSERELLE_PATHS_POSITION_LAST must be at most 1")
        from passerelle.streams.conversion_paths.rules import parse_goals

        try:
            parse_goals(self.paths_goals)
        except Exception as exc:  # JSON or goal errors: one line naming the setting
            raise ValueError(f"PASSERELLE_PATHS_GOALS: {exc}") from None
        return self

    def to_config(self) -> PathsConfig:
        """The rules, in the milliseconds they count in, the goals parsed."""
        from passerelle.streams.conversion_paths.models import ModelConfig
        from passerelle.streams.conversion_paths.rules import DAY_MS, PathsConfig, parse_goals

        return PathsConfig(
            lookback_ms=max(1, int(self.paths_lookback_days * DAY_MS)),
            goals=parse_goals(self.paths_goals),
            model=ModelConfig(
                position_first=self.paths_position_first,
                position_last=self.paths_position_last,
                half_life_ms=max(1, int(self.paths_half_life_days * DAY_MS)),
            ),
            reset_after_conversion=self.paths_reset_after_conversion,
            grace_ms=int(self.paths_grace_minutes * 60_000),
            postview_channel=self.paths_postview_channel,
        )


# --- campaign declarations --------------------------------------------------------------------------------

if TYPE_CHECKING:
    from passerelle.streams.campaign_declarations.rules import DeclarationsConfig


class CampaignDeclarationsSettings(ProcessorSettings):
    """Settings of ``passerelle campaign-declarations``: the runtime's, plus the auto-declaration rules file."""

    campaign_declarations_auto_rules: str | None = Field(
        default=None,
        description="TOML file of rules declaring undeclared campaign tags automatically (none: never)",
    )
    max_error_ratio: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description="Stop when more than this share of recent records fail (1: never; rejected declarations "
        "are partners' mistakes, not a fault of the processor)",
    )

    def to_config(self) -> DeclarationsConfig:
        """The processor's config, the rules file read and checked (one error naming the rule and the field)."""
        from passerelle.streams.campaign_declarations.rules import DeclarationsConfig, read_rules_file

        path = self.campaign_declarations_auto_rules
        return DeclarationsConfig(rules=read_rules_file(path) if path else ())


# --- partner API ------------------------------------------------------------------------------------------

if TYPE_CHECKING:
    from passerelle.connectors.partner_api.config import ApiConfig


class ApiSettings(PasserelleSettings):
    """Settings of ``passerelle api``: where the partner API listens and its limits."""

    api_host: str = Field(default="127.0.0.1", description="Address the partner API binds")
    api_port: int = Field(default=8090, ge=1, le=65535, description="Partner API's HTTP port")
    api_max_batch_urls: int = Field(default=1000, ge=1, description="Most URLs in one POST /v1/campaigns/urls")
    api_max_body_bytes: int = Field(default=1_048_576, ge=1024, description="Largest request body, in bytes")
    api_max_batch_impressions: int = Field(default=10_000, ge=1, description="Most items in one POST /v1/impressions")
    api_max_batch_metrics: int = Field(default=10_000, ge=1, description="Most items in one POST /v1/metrics")
    api_max_import_body_bytes: int = Field(
        default=16 * 1024 * 1024, ge=1024, description="Largest body of POST /v1/impressions and /v1/metrics, in bytes"
    )
    api_start_timeout_seconds: float = Field(
        default=30, gt=0, description="Time to read the keys, campaigns and undeclared tables at start"
    )
    warehouse_store: str = Field(
        default="",
        description="Analytics store the query endpoints read: duckdb:///path.duckdb or postgresql://...; default: "
        "<state dir>/warehouse.duckdb (the same setting as `passerelle warehouse`)",
    )
    api_warehouse_sink: bool = Field(
        default=True, description="With a DuckDB store, run the warehouse sink inside the API (one process per file)"
    )
    warehouse_site_timezones: str = Field(
        default="", description="The API's warehouse sink: each site's time zone, e.g. shop=Europe/Paris (others: UTC)"
    )
    warehouse_topics: str = Field(default="", description="The API's warehouse sink: topic of a role, e.g. hits=...")
    api_prometheus_url: str = Field(
        default="",
        description="Prometheus the operations page (/pages/operations) reads; default: the local one on "
        "PASSERELLE_PROMETHEUS_PORT",
    )

    def api_config(self) -> ApiConfig:
        """The plain configuration the API takes (it cannot import ``passerelle.settings``)."""
        from passerelle.connectors.partner_api.config import ApiConfig

        return ApiConfig(
            bootstrap_servers=self.bootstrap_servers,
            schema_registry_url=self.schema_registry_url,
            catalog_path=self.catalog,
            max_batch_urls=self.api_max_batch_urls,
            max_body_bytes=self.api_max_body_bytes,
            max_batch_impressions=self.api_max_batch_impressions,
            max_batch_metrics=self.api_max_batch_metrics,
            max_import_body_bytes=self.api_max_import_body_bytes,
            start_timeout_s=self.api_start_timeout_seconds,
            warehouse_url=self.warehouse_store or f"duckdb:///{(self.state_dir / 'warehouse.duckdb').resolve()}",
            warehouse_sink=self.api_warehouse_sink,
            warehouse_site_timezones=self.warehouse_site_timezones,
            warehouse_topics=self.warehouse_topics,
            prometheus_url=self.api_prometheus_url or f"http://127.0.0.1:{self.prometheus_port}",
            connection=self.connection(),
        )


# --- analytics store sink ---------------------------------------------------------------------------------


class WarehouseSettings(PasserelleSettings):
    """Settings of ``passerelle warehouse``: the store, the topics, the sites' time zones, the batches."""

    warehouse_store: str = Field(
        default="",
        description="Store URL: duckdb:///path.duckdb or postgresql://...; default: <state dir>/warehouse.duckdb",
    )
    warehouse_site_timezones: str = Field(
        default="",
        description="Each site's time zone for local days, e.g. shop=Europe/Paris,blog=America/New_York (others: UTC)",
    )
    warehouse_topics: str = Field(
        default="",
        description="Topic of a role when not the catalog's, e.g. hits=hits.enriched.eu (roles: hits, carts, "
        "messages, deliveries, campaigns, postview, metrics, paths, privacy, profiles, links, markov)",
    )
    warehouse_batch_size: int = Field(default=10_000, ge=1, description="Most records written per store transaction")
    warehouse_max_wait_ms: int = Field(default=500, ge=1, description="Longest a batch waits to fill up")
    instance_id: str = Field(default="0", description="Stable id of this sink instance (static group membership)")
    metrics_port: int | None = Field(default=None, description="Serve /metrics on this port (none: off)")
    dead_letter_topic: str = Field(default="errors.deadletters", description="Where undecodable records go")
