"""``passerelle conversion-paths``: run the conversion-paths processor (hits.enriched + ads.postview ->
conversions.paths, crm.conversion_paths, crm.customer_channels)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from passerelle.commands.processor import add_processor_parser
from passerelle.settings import ConversionPathsSettings

if TYPE_CHECKING:  # the runtime (confluent-kafka) loads only when a processor runs, not for --help
    from passerelle.streams.runtime import Processor


def build(settings: ConversionPathsSettings) -> Processor:
    """The conversion-paths processor with the lookback, goals, models and grace of ``settings``."""
    from passerelle.streams.conversion_paths.processor import ConversionPathsProcessor, ConversionPathsTopics

    return ConversionPathsProcessor(ConversionPathsTopics(), settings.to_config())


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``conversion-paths``."""
    add_processor_parser(
        sub,
        "conversion-paths",
        help="run the conversion-paths processor: hits.enriched + ads.postview -> conversions.paths and CRM rows",
        description="Keep each person's touchpoints (one per visit, with its medium, source, campaign and declared "
        "campaign, direct included, and each post-view exposure from ads.postview) over "
        "PASSERELLE_PATHS_LOOKBACK_DAYS, across their devices and the anonymous visits before login (re-keyed by "
        "customer id through conversions.paths.events). Each conversion (an order, or a goal of "
        "PASSERELLE_PATHS_GOALS) publishes a ConversionPath on conversions.paths with the credit and revenue share "
        "of every touchpoint under first touch, last touch, last non-direct, linear, position-based and time-decay; "
        "for an identified customer also a CrmConversionPath row (crm.conversion_paths) and their CustomerChannels "
        "row (crm.customer_channels) for the JDBC sink. A touchpoint arriving late, within "
        "PASSERELLE_PATHS_GRACE_MINUTES of its conversion, re-emits the path with revision + 1. A CRM tombstone or "
        "an erasure request forgets the person and deletes their CRM rows (tombstones). Exactly-once by default; "
        "stops cleanly on SIGTERM/SIGINT.",
        settings_cls=ConversionPathsSettings,
        default_app_id="passerelle-conversion-paths",
        build=build,
        what="conversion paths",
    )
