"""``passerelle campaign-declarations``: run the declarations processor (campaigns.declarations +
campaigns.undeclared -> campaigns)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from passerelle.commands.processor import add_processor_parser
from passerelle.settings import CampaignDeclarationsSettings

if TYPE_CHECKING:  # the runtime (confluent-kafka) loads only when a processor runs, not for --help
    from passerelle.streams.runtime import Processor


def build(settings: CampaignDeclarationsSettings) -> Processor:
    """The processor on the catalog's topics, with the auto-declaration rules of ``settings`` (read now)."""
    from passerelle.streams.campaign_declarations.processor import CampaignDeclarationsProcessor, DeclarationsTopics

    return CampaignDeclarationsProcessor(DeclarationsTopics(), settings.to_config())


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``campaign-declarations``."""
    add_processor_parser(
        sub,
        "campaign-declarations",
        help="run the campaign declarations processor: campaigns.declarations + campaigns.undeclared -> campaigns",
        description="Judge the campaign declarations partners publish on campaigns.declarations with the partner "
        "API's rules: a valid one is published on campaigns, an invalid one (or another partner's key, or a "
        "partner without a campaigns:write key in partners.keys) goes to the dead-letter topic with every "
        "'field: reason'. A tombstone deletes the campaign if its 'partner' header names the campaign's partner. "
        "With PASSERELLE_CAMPAIGN_DECLARATIONS_AUTO_RULES, the undeclared tags of campaigns.undeclared that a "
        "rule matches (by key prefix, numeric id range, tag family, source) are declared for the rule's partner. "
        "Only principals trusted for the partner ids they write may write campaigns.declarations (ACLs). "
        "Exactly-once by default; stops cleanly on SIGTERM/SIGINT.",
        settings_cls=CampaignDeclarationsSettings,
        default_app_id="passerelle-campaign-declarations",
        build=build,
        what="campaign declarations",
    )
