"""``passerelle enrich``: run the enrichment processor (hits.raw -> hits.enriched)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from passerelle.commands.processor import add_processor_parser
from passerelle.settings import EnrichmentSettings

if TYPE_CHECKING:  # the runtime (confluent-kafka) loads only when a processor runs, not for --help
    from passerelle.streams.runtime import Processor


def build(settings: EnrichmentSettings) -> Processor:
    """The enrichment processor with the rules of ``settings``."""
    from passerelle.streams.enrichment.processor import EnrichmentProcessor

    return EnrichmentProcessor(config=settings.to_config())


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``enrich``."""
    add_processor_parser(
        sub,
        "enrich",
        help="run the enrichment processor: hits.raw -> hits.enriched (attribution, visits, identity, CRM)",
        description="Consume hits.raw, attribute each hit to its traffic source and declared campaign, assign "
        "visits, stitch identities, join CRM attributes, and produce hits.enriched (plus identity.links and "
        "campaigns.undeclared). Exactly-once by default. Stops cleanly on SIGTERM/SIGINT.",
        settings_cls=EnrichmentSettings,
        default_app_id="passerelle-enrichment",
        build=build,
        what="enrichment",
    )
