"""How one sequencer instance runs: its topics, and every duration in milliseconds.

The settings layer (``passerelle remarketing``) builds this from the
``PASSERELLE_*`` variables; faust takes seconds, converted where the app is
built (``app.py``) and nowhere else.

Processing guarantee: at least once, always. faust commits an input's offset
only after the producer has flushed what processing it sent, and every
message carries a deterministic ``message_id`` that the emailing bridge sends
as the partner's ``Idempotency-Key``: a replay resends the same id, which the
partner delivers once. faust-streaming's own ``exactly_once`` (one
transactional producer per partition) is not used, so the settings layer
refuses ``PASSERELLE_PROCESSING_GUARANTEE=exactly_once`` for this process
rather than accept it and deliver less.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from passerelle.schemas.clients import DEAD_LETTER_TOPIC, Connection, Connects
from passerelle.streams.remarketing.sequence import SequencerConfig
from passerelle.streams.runtime.config import wall_clock_ms
from passerelle.streams.runtime.deadletter import MAX_RECORD_BYTES, ErrorBudget

PROCESSOR = "remarketing"  # the ``processor`` label of the runtime's metrics and dead-letter headers


@dataclass(frozen=True)
class RemarketingTopics:
    """Topic names, overridable so tests and several deployments can share a cluster."""

    carts_abandoned: str = "carts.abandoned"
    hits_enriched: str = "hits.enriched"
    privacy_requests: str = "privacy.requests"
    crm_profiles: str = "crm.profiles"
    identity_links: str = "identity.links"
    remarketing_messages: str = "remarketing.messages"
    dead_letters: str = DEAD_LETTER_TOPIC


CATALOG_TOPICS = RemarketingTopics()  # the catalog's names: where each input's reader schema is declared


@dataclass(frozen=True)
class RemarketingConfig(Connects):
    """How one instance runs; instances sharing ``app_id`` share the work and the state."""

    bootstrap_servers: str
    schema_registry_url: str
    app_id: str = "passerelle-remarketing"
    instance_id: str = "0"  # names this instance's Kafka clients and its data folder
    topics: RemarketingTopics = field(default_factory=RemarketingTopics)
    sequencer: SequencerConfig = field(default_factory=SequencerConfig)
    tick_ms: int = 60_000  # how often due sequences are looked for (step 2 is late by at most this)
    commit_interval_ms: int = 100  # how often acknowledged input offsets are committed
    batch_size: int = 2000  # most records one fetch hands over, and the batch of hits read at once
    partitions: int = 3  # of the command topic and the tables' changelogs
    replication_factor: int = 1  # of the internal topics faust creates
    session_timeout_ms: int = 10_000  # how long a crashed instance keeps its partitions (faust's default: 60 s)
    registry_retry_max_ms: int = 5_000  # longest back-off while the schema registry does not answer
    profiles_wait_max_ms: int = 600_000  # longest wait for crm.profiles to be read before carts are judged anyway
    max_record_bytes: int = MAX_RECORD_BYTES  # of a dead letter, before it is truncated
    error_budget: ErrorBudget = field(default_factory=ErrorBudget)
    auto_register_schemas: bool = True
    data_dir: str = os.path.join(".passerelle", "remarketing")
    metrics_port: int | None = None
    clock: Callable[[], int] = wall_clock_ms
    connection: Connection | None = field(default=None, repr=False)  # credentials/TLS; None: plaintext

    def __post_init__(self) -> None:
        for name in ("tick_ms", "commit_interval_ms", "session_timeout_ms", "batch_size", "partitions"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")

    @property
    def command_topic(self) -> str:
        return f"{self.app_id}-commands"

    @property
    def visitor_topic(self) -> str:
        """What is keyed by visitor (identity links, requests naming only a visitor), routed to a customer."""
        return f"{self.app_id}-visitors"

    @property
    def client_id(self) -> str:
        """What the broker's logs and quotas see for this instance's clients."""
        return f"{self.app_id}-{self.instance_id}"
