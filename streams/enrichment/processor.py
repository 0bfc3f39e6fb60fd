"""The enrichment processor: ``hits.raw`` -> ``hits.enriched`` on the runtime.

Wiring only; the rules are in ``enricher.py``. State: ``visitors`` (one
record per visitor), ``customers`` (customer id -> visitor ids of this
partition, so an erasure finds every visitor of a person) and ``undeclared``
(tags already sent to the declaration inbox). Tables: declared campaigns,
CRM profiles, and the inbox itself (so another instance's report counts).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from streams.enrichment.enricher import Enricher, EnrichmentConfig
from streams.runtime import Context, InRecord, OutRecord, Processor, StoreSpec, TableSpec


@dataclass(frozen=True)
class EnrichmentTopics:
    """Topic names, overridable so tests and several deployments can share a cluster."""

    hits_raw: str = "hits.raw"
    hits_enriched: str = "hits.enriched"
    identity_links: str = "identity.links"
    campaigns: str = "campaigns"
    undeclared: str = "campaigns.undeclared"
    crm_profiles: str = "crm.profiles"


class EnrichmentProcessor(Processor):
    """Attributes and enriches every hit in near real time."""

    name = "enrichment"
    stores = (StoreSpec("visitors"), StoreSpec("customers"), StoreSpec("undeclared"))

    def __init__(self, topics: EnrichmentTopics | None = None, config: EnrichmentConfig | None = None) -> None:
        self.topics = t = topics or EnrichmentTopics()
        self.inputs = (t.hits_raw,)
        self.outputs = (t.hits_enriched, t.identity_links, t.undeclared)
        self.tables = (
            TableSpec("campaigns", t.campaigns),
            TableSpec("crm", t.crm_profiles),
            TableSpec("undeclared", t.undeclared),
        )
        self.enricher = Enricher(config)
        self._undeclared_hits: Counter | None = None
        self._erasures: Counter | None = None

    def register_metrics(self, registry: CollectorRegistry) -> None:
        self._undeclared_hits = Counter(
            "passerelle_enrichment_undeclared_campaign_hits_total",
            "Hits whose campaign tag matches no declared campaign",
            registry=registry,
        )
        self._erasures = Counter(
            "passerelle_enrichment_erasures_total", "Visitors purged because their CRM profile was erased",
            registry=registry,
        )  # fmt: skip

    def process_one(self, record: InRecord, ctx: Context) -> Iterable[OutRecord] | None:
        hit = record.value
        if hit is None:
            return None
        visitor = hit["visitor_id"]
        visitors = ctx.store("visitors")
        result, state = self.enricher.enrich(hit, visitors.get(visitor), ctx.table("campaigns"), ctx.table("crm"),
                                             ctx.now())  # fmt: skip
        previous_customer = (visitors.get(visitor) or {}).get("customer_id")
        visitors.put(visitor, state)
        out = [OutRecord(self.topics.hits_enriched, visitor, result.hit)]
        if result.identity_link is not None:
            self._index(ctx, visitor, previous_customer, result.identity_link["customer_id"])
            out.append(OutRecord(self.topics.identity_links, visitor, result.identity_link))
        if result.hit["campaign_undeclared"] and self._undeclared_hits is not None:
            self._undeclared_hits.inc()
        if result.undeclared is not None:
            key = result.undeclared["key"]
            seen = ctx.store("undeclared")
            if key not in seen and key not in ctx.table("undeclared"):
                seen.put(key, ctx.now())
                out.append(OutRecord(self.topics.undeclared, key, result.undeclared))
        return out

    @staticmethod
    def _index(ctx: Context, visitor: str, old: str | None, new: str) -> None:
        customers = ctx.store("customers")
        if old and old != new:
            remaining = [v for v in customers.get(old, []) if v != visitor]
            if remaining:
                customers.put(old, remaining)
            else:
                customers.delete(old)
        linked = customers.get(new, [])
        if visitor not in linked:
            customers.put(new, [*linked, visitor])

    def _purge(self, customer: str, ctx: Context) -> list[OutRecord]:
        """Erasure: forget every visitor of this person and retract their identity links."""
        customers, visitors = ctx.store("customers"), ctx.store("visitors")
        out = []
        for visitor in customers.get(customer, []):
            visitors.delete(visitor)
            out.append(OutRecord(self.topics.identity_links, visitor, None))
            if self._erasures is not None:
                self._erasures.inc()
        customers.delete(customer)
        return out

    def on_table_change(self, table: str, key: Any, old: Any, new: Any, ctx: Context) -> Iterable[OutRecord]:
        if table == "crm" and new is None and key in ctx.store("customers"):
            return self._purge(key, ctx)
        return ()

    def on_partition_restored(self, ctx: Context) -> Iterable[OutRecord] | None:
        # An erasure that arrived while this partition was elsewhere (or before a crash) still applies.
        erased = ctx.deleted.get("crm", set())
        out: list[OutRecord] = []
        for customer in list(ctx.store("customers")):
            if customer in erased:
                out.extend(self._purge(customer, ctx))
        return out
