"""``passerelle enrich``: run the enrichment processor (hits.raw -> hits.enriched)."""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

from passerelle.settings import ProcessorSettings, load
from schemas.catalog import Catalog, load_catalog

if TYPE_CHECKING:  # the runtime (confluent-kafka) loads only when a processor runs, not for --help
    from streams.runtime import RunnerConfig

log = logging.getLogger(__name__)


def output_schemas(catalog: Catalog, topics: list[str]) -> dict[str, str]:
    """Value schema text per topic, from the catalog (the single source of contracts)."""
    return {t: catalog.schema_text(catalog.topic(t).value_schema) for t in topics}


def runner_config(
    settings: ProcessorSettings, app_id: str, outputs: dict[str, str], inputs: dict[str, str] | None = None
) -> RunnerConfig:
    """``inputs``: the reader schema of each input topic (a record of another shape is poison, not misread)."""
    from streams.runtime import ErrorBudget, RunnerConfig

    return RunnerConfig(
        app_id=app_id,
        bootstrap_servers=settings.bootstrap_servers,
        schema_registry_url=settings.schema_registry_url,
        output_schemas=outputs,
        input_schemas=inputs or {},
        instance_id=settings.instance_id,
        exactly_once=settings.processing_guarantee == "exactly_once",
        commit_interval_ms=settings.commit_interval_ms,
        min_commit_interval_ms=settings.min_commit_interval_ms,
        batch_size=settings.batch_size,
        metrics_port=settings.metrics_port,
        dead_letter_topic=settings.dead_letter_topic,
        error_budget=ErrorBudget(max_ratio=settings.max_error_ratio),
        auto_register_schemas=False,
        connection=settings.connection(),
    )


def _enrich(args: argparse.Namespace) -> int:
    from streams.enrichment.attribution import AttributionConfig
    from streams.enrichment.enricher import EnrichmentConfig
    from streams.enrichment.processor import EnrichmentProcessor
    from streams.runtime import Runner

    settings = load(ProcessorSettings)
    assert isinstance(settings, ProcessorSettings)
    catalog = load_catalog(settings.catalog)
    config = EnrichmentConfig(
        visit_timeout_ms=settings.visit_timeout_minutes * 60_000,
        campaign_lifetime_ms=settings.campaign_lifetime_days * 86_400_000,
        attribution=AttributionConfig(tuple(f.strip() for f in settings.attribution_precedence.split(",") if f)),
    )
    processor = EnrichmentProcessor(config=config)
    runner = Runner(processor, runner_config(settings, args.app_id, output_schemas(catalog, list(processor.outputs)),
                                             output_schemas(catalog, list(processor.inputs))))  # fmt: skip
    runner.install_signal_handlers()
    log.info("enrichment running as %s/%s (%s)", args.app_id, settings.instance_id, settings.processing_guarantee)
    runner.run()
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``enrich``."""
    p = sub.add_parser(
        "enrich",
        help="run the enrichment processor: hits.raw -> hits.enriched (attribution, visits, identity, CRM)",
        description="Consume hits.raw, attribute each hit to its traffic source and declared campaign, assign "
        "visits, stitch identities, join CRM attributes, and produce hits.enriched (plus identity.links and "
        "campaigns.undeclared). Exactly-once by default. Stops cleanly on SIGTERM/SIGINT.",
        epilog="Settings: PASSERELLE_INSTANCE_ID (keep it stable per instance), PASSERELLE_PROCESSING_GUARANTEE, "
        "PASSERELLE_COMMIT_INTERVAL_MS, PASSERELLE_METRICS_PORT, PASSERELLE_VISIT_TIMEOUT_MINUTES, "
        "PASSERELLE_CAMPAIGN_LIFETIME_DAYS, PASSERELLE_ATTRIBUTION_PRECEDENCE. Topics and schemas must exist "
        "(`passerelle topics create`, `passerelle schemas register`).",
    )
    p.add_argument("--app-id", default="passerelle-enrichment", help="consumer group and changelog prefix")
    p.set_defaults(func=_enrich)
