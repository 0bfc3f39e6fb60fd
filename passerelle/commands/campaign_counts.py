"""``passerelle campaign-counts``: run the live campaign counter (hits.enriched -> campaigns.live)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from passerelle.commands.processor import add_processor_parser
from passerelle.settings import CampaignCountsSettings

if TYPE_CHECKING:  # the runtime (confluent-kafka) loads only when a processor runs, not for --help
    from passerelle.streams.runtime import Processor


def build(settings: CampaignCountsSettings) -> Processor:
    """The campaign counter with the window and publishing interval of ``settings``."""
    from passerelle.streams.campaign_counts.processor import CampaignCountsProcessor, CampaignCountsTopics

    return CampaignCountsProcessor(CampaignCountsTopics(), settings.to_config())


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``campaign-counts``."""
    add_processor_parser(
        sub,
        "campaign-counts",
        help="run the live campaign counter: hits.enriched -> campaigns.live (visits, orders, revenue)",
        description="Count, per declared campaign and UTC day (PASSERELLE_CAMPAIGN_COUNTS_WINDOW_MINUTES), the "
        "visits it brought (once per visit), their orders and revenue, from hits.enriched, and publish the running "
        "totals on the compacted topic campaigns.live, keyed by campaign@window, at most once per "
        "PASSERELLE_CAMPAIGN_COUNTS_EMIT_SECONDS per counter; a window's last record, once it closes, is final. "
        "Hits are re-keyed by campaign through campaigns.live.deltas, its second input. Exactly-once by default; "
        "stops cleanly on SIGTERM/SIGINT.",
        settings_cls=CampaignCountsSettings,
        default_app_id="passerelle-campaign-counts",
        build=build,
        what="campaign counter",
    )
