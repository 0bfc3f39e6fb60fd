"""``passerelle crm-normalizer``: run the CRM normalizer (crm.cdc.customers + crm.cdc.consents -> crm.profiles)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from passerelle.commands.processor import add_processor_parser
from passerelle.settings import CrmNormalizerSettings

if TYPE_CHECKING:  # the runtime (confluent-kafka) loads only when a processor runs, not for --help
    from passerelle.streams.runtime import Processor


def build(settings: CrmNormalizerSettings) -> Processor:
    """The normalizer on the catalog's topics, with the consent channel of ``settings``."""
    from passerelle.streams.crm_normalizer.processor import CrmNormalizerProcessor, CrmNormalizerTopics

    return CrmNormalizerProcessor(CrmNormalizerTopics(), settings.to_config())


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``crm-normalizer``."""
    add_processor_parser(
        sub,
        "crm-normalizer",
        help="run the CRM normalizer: Debezium change events (crm.cdc.customers, crm.cdc.consents) -> crm.profiles",
        description="Read the change events the Debezium PostgreSQL source writes for the CRM's customers and "
        "consents tables (Kafka Connect JSON, keyed by customer id) and keep crm.profiles, the platform's Avro "
        "CrmProfile table, in step: a customer created, updated or snapshotted upserts their profile, a consent "
        "change recomputes it (marketing_consent: the PASSERELLE_CRM_NORMALIZER_CONSENT_CHANNEL consent granted), "
        "a customer deleted writes a tombstone (the erasure signal), an erasure request on privacy.requests too. "
        "A profile is written only when it changed. Events it cannot apply (truncate, malformed) go to the "
        "dead-letter topic. Exactly-once by default; stops cleanly on SIGTERM/SIGINT.",
        settings_cls=CrmNormalizerSettings,
        default_app_id="passerelle-crm-normalizer",
        build=build,
        what="CRM normalizer",
    )
