"""``passerelle crm-activity`` and ``crm-activity-messages``: per-customer web activity for the CRM.

Two commands because ``remarketing.messages`` (3 partitions) cannot be an input
of the summary processor, whose inputs have 6 (the runtime's co-partitioning
rule): ``crm-activity-messages`` re-keys the messages into the summary's
internal topic. Both run, each as its own consumer group.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from passerelle.commands.processor import add_processor_parser
from passerelle.settings import CrmActivitySettings, ProcessorSettings

if TYPE_CHECKING:  # the runtime (confluent-kafka) loads only when a processor runs, not for --help
    from passerelle.streams.runtime import Processor


def build(settings: CrmActivitySettings) -> Processor:
    """The summary processor with the publishing interval and recovery window of ``settings``."""
    from passerelle.streams.crm_activity.processor import CrmActivityProcessor, CrmActivityTopics

    return CrmActivityProcessor(CrmActivityTopics(), settings.to_config())


def build_messages(settings: ProcessorSettings) -> Processor:
    """The stateless re-keying of remarketing messages (no rules of its own)."""
    from passerelle.streams.crm_activity.processor import CrmActivityTopics, CrmMessagesProcessor

    return CrmMessagesProcessor(CrmActivityTopics())


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``crm-activity`` and ``crm-activity-messages``."""
    add_processor_parser(
        sub,
        "crm-activity",
        help="run the CRM web activity summary: hits.enriched, carts.abandoned -> crm.web_activity",
        description="Keep, per identified customer, their last visit and last declared campaign, their visits, "
        "orders, revenue and abandoned carts of the last 30 days, the remarketing messages they received and the "
        "orders placed within PASSERELLE_CRM_ACTIVITY_RECOVERY_DAYS of one, and publish that summary on "
        "crm.web_activity (Kafka Connect JSON, keyed by customer id, for the JDBC sink's web_activity table) at "
        "most once per PASSERELLE_CRM_ACTIVITY_EMIT_SECONDS per customer, and again when a day falls out of the "
        "window. Events are re-keyed by customer through crm.activity.deltas, its third input; remarketing "
        "messages reach it through `passerelle crm-activity-messages`. A CRM tombstone or an erasure request "
        "forgets the customer and publishes a tombstone (the CRM row is deleted). Exactly-once by default; stops "
        "cleanly on SIGTERM/SIGINT.",
        settings_cls=CrmActivitySettings,
        default_app_id="passerelle-crm-activity",
        build=build,
        what="CRM web activity",
    )
    add_processor_parser(
        sub,
        "crm-activity-messages",
        help="feed remarketing messages to crm-activity: remarketing.messages -> crm.activity.deltas",
        description="Re-key each remarketing message to an identified customer into crm.activity.deltas, where "
        "`passerelle crm-activity` counts it (messages received, recovered orders). A processor of its own because "
        "remarketing.messages has 3 partitions and the summary's inputs 6: a processor's inputs must be "
        "co-partitioned. Stateless, exactly-once by default; stops cleanly on SIGTERM/SIGINT.",
        settings_cls=ProcessorSettings,
        default_app_id="passerelle-crm-activity-messages",
        build=build_messages,
        what="CRM activity messages",
    )
