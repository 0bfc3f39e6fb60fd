"""The CRM normalizer: ``crm.cdc.customers`` + ``crm.cdc.consents`` -> ``crm.profiles`` on the runtime.

Wiring only; the rules are in ``rules.py``. Both inputs are Kafka Connect
JSON (the catalog's ``connect-json``: UTF-8 keys, JsonConverter envelopes,
decoded by the runtime) written by the Debezium PostgreSQL source, keyed by
customer id and co-partitioned, so one partition holds everything about a
customer: their row and their consents, in store ``customers``. The output is
the platform's Avro ``CrmProfile`` table; a tombstone there is the erasure
every processor honours.

Exactly-once (the runtime's default): a profile is written in the transaction
that commits its change event's offset and the customer's state, so a crash
neither loses a change nor publishes one twice, and the "emit only what
differs" rule holds across restarts.

Erasure: the store declares ``person="customer_id"``. A customer deleted in
the CRM is erased by the change event itself. A privacy request
(``privacy.requests``, ``streams/privacy.py``) makes the runtime delete the
customer's state; ``on_erased`` then writes the tombstone, so their profile
leaves the compacted ``crm.profiles`` too, and later change events of the
customer are ignored while the request is held (a delete still erases).

CDC tombstones (the null value Debezium writes after a delete, for log
compaction) carry nothing and are skipped. Metrics:
``passerelle_crm_normalizer_profiles_upserted_total``,
``_profiles_erased_total{cause}`` (``delete`` or ``privacy``),
``_events_skipped_total{reason}`` (``tombstone``, ``unchanged``, ``pending``,
``gone``, ``erased``); events dead-lettered are the runtime's
``passerelle_dead_letters_total{processor="crm-normalizer"}``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter

from passerelle.streams.crm_normalizer.rules import (
    CONSENTS,
    CUSTOMERS,
    CrmNormalizer,
    CustomerState,
    NormalizerConfig,
    parse_change,
)
from passerelle.streams.privacy import privacy_table
from passerelle.streams.runtime import Context, InRecord, OutRecord, Processor, StoreSpec
from passerelle.streams.runtime.processor import is_erased

STATE: StoreSpec[CustomerState] = StoreSpec("customers", person="customer_id", ttl_ms=None)
"""Per customer: their row, their consents; indexed by the runtime under the customer id, for erasures.

Never expires: it mirrors the CRM table, which keeps a customer until it deletes (erases) them."""


@dataclass(frozen=True)
class CrmNormalizerTopics:
    """Topic names, overridable so tests and several deployments can share a cluster."""

    customers: str = "crm.cdc.customers"
    consents: str = "crm.cdc.consents"
    profiles: str = "crm.profiles"
    privacy_requests: str | None = "privacy.requests"
    """None: privacy requests are not read (tests of other behaviour on topics of their own)."""


class CrmNormalizerProcessor(Processor):
    """Turns the CRM's change events into ``CrmProfile`` upserts and erasure tombstones."""

    name = "crm-normalizer"
    stores = (STATE,)

    def __init__(self, topics: CrmNormalizerTopics | None = None, config: NormalizerConfig | None = None) -> None:
        self.topics = t = topics or CrmNormalizerTopics()
        self.inputs = (t.customers, t.consents)
        self.outputs = (t.profiles,)
        self.tombstone_inputs = (t.customers, t.consents)  # Debezium's tombstones: skipped, not poison
        self.tables = (privacy_table(t.privacy_requests),) if t.privacy_requests else ()
        self._tables_of = {t.customers: CUSTOMERS, t.consents: CONSENTS}
        self.rules = CrmNormalizer(config)
        self.upserted = Counter(
            "passerelle_crm_normalizer_profiles_upserted_total", "CRM profiles written (created or changed)",
            registry=None,
        )  # fmt: skip
        self.erased = Counter(
            "passerelle_crm_normalizer_profiles_erased_total",
            "Tombstones written on crm.profiles, by cause (delete: the CRM row; privacy: an erasure request)",
            ["cause"], registry=None,
        )  # fmt: skip
        self.skipped = Counter(
            "passerelle_crm_normalizer_events_skipped_total",
            "Change events that emitted nothing, by reason (tombstone, unchanged, pending, gone, erased)",
            ["reason"], registry=None,
        )  # fmt: skip
        self.metrics = (self.upserted, self.erased, self.skipped)

    def process_one(self, record: InRecord, ctx: Context) -> Iterable[OutRecord] | None:
        if record.value is None:
            self.skipped.labels("tombstone").inc()  # compaction's marker after a delete: the delete said it all
            return None
        change = parse_change(self._tables_of[record.topic], record.value, record.key)
        customer = change.customer_id
        erasing = change.table == CUSTOMERS and change.op == "d"
        if not erasing and is_erased(self, ctx, customer):
            self.skipped.labels("erased").inc()  # a privacy request is held: do not bring the person back
            return None
        store = ctx.store(STATE)
        old: CustomerState | None = store.get(customer)
        outcome = self.rules.apply(old, change)
        if outcome.state is None:
            if old is not None:
                store.delete(customer)
        elif outcome.state != old:
            store.put(customer, outcome.state)
        if outcome.erase:
            self.erased.labels("delete").inc()
            return [OutRecord(self.topics.profiles, customer, None)]
        if outcome.profile is None:
            self.skipped.labels(outcome.skipped or "unchanged").inc()
            return None
        self.upserted.inc()
        return [OutRecord(self.topics.profiles, customer, dict(outcome.profile))]

    def on_erased(self, store: StoreSpec[Any], key: str, value: Any, ctx: Context) -> Iterable[OutRecord] | None:
        """A privacy request erased the customer's state: their profile leaves ``crm.profiles`` too."""
        self.erased.labels("privacy").inc()
        return [OutRecord(self.topics.profiles, key, None)]
