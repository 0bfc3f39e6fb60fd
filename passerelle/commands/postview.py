"""``passerelle postview``: run the post-view processor (ads.impressions + hits.enriched -> ads.postview)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from passerelle.commands.processor import add_processor_parser
from passerelle.settings import PostViewSettings

if TYPE_CHECKING:  # the runtime (confluent-kafka) loads only when a processor runs, not for --help
    from passerelle.streams.runtime import Processor


def build(settings: PostViewSettings) -> Processor:
    """The post-view processor with the window and attribution of ``settings``."""
    from passerelle.streams.postview.processor import PostViewProcessor, PostViewTopics

    return PostViewProcessor(PostViewTopics(), settings.to_config())


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``postview``."""
    add_processor_parser(
        sub,
        "postview",
        help="run the post-view processor: ads.impressions + hits.enriched -> ads.postview",
        description="Join display impressions (ads.impressions) and enriched hits (hits.enriched) per visitor: "
        "each visit start and each order preceded, within PASSERELLE_POSTVIEW_WINDOW_HOURS, by an impression of a "
        "campaign for the same site is published as a PostView on ads.postview, whatever the visit's own source; "
        "the most recent impression wins (PASSERELLE_POSTVIEW_ATTRIBUTION=last) or one record per campaign (all). "
        "An impression received after the visit was processed is not credited to it. A CRM tombstone or an "
        "erasure request forgets the visitor's impressions. Exactly-once by default; stops cleanly on "
        "SIGTERM/SIGINT.",
        settings_cls=PostViewSettings,
        default_app_id="passerelle-postview",
        build=build,
        what="post-view",
    )
