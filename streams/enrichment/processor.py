"""The enrichment processor: ``hits.raw`` -> ``hits.enriched`` on the runtime.

Wiring only; the rules are in ``enricher.py``. State: ``visitors`` (one
record per visitor, indexed by the runtime under its customer id so that a
CRM erasure finds every visitor of the person) and ``undeclared`` (tags
already sent to the declaration inbox). Tables: declared campaigns, CRM
profiles (a tombstone erases the person), the inbox itself (so another
instance's report counts) and privacy requests (an erasure by customer or by
visitor id purges the person's visitors: ``passerelle.streams.privacy``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from prometheus_client import Counter

from passerelle.streams.enrichment.enricher import (
    CAMPAIGN_LIFETIME_MS,
    VISIT_TIMEOUT_MS,
    Enricher,
    EnrichmentConfig,
)
from passerelle.streams.privacy import privacy_table
from passerelle.streams.runtime import Context, InRecord, OutRecord, Processor, StoreSpec, TableSpec


@dataclass(frozen=True)
class EnrichmentTopics:
    """Topic names, overridable so tests and several deployments can share a cluster."""

    hits_raw: str = "hits.raw"
    hits_enriched: str = "hits.enriched"
    identity_links: str = "identity.links"
    campaigns: str = "campaigns"
    undeclared: str = "campaigns.undeclared"
    crm_profiles: str = "crm.profiles"
    privacy_requests: str | None = "privacy.requests"
    """None: privacy requests are not read (tests of other behaviour on topics of their own)."""


VISITORS: StoreSpec[dict[str, Any]] = StoreSpec(
    "visitors", person="customer_id", ttl_ms=CAMPAIGN_LIFETIME_MS + VISIT_TIMEOUT_MS
)
"""One record per visitor (visit, campaign, identity, CRM attributes); erased with its customer.

Forgotten once idle for the campaign lifetime plus the visit timeout: nothing it holds counts any more
(each instance sets ``ttl_ms`` from its ``EnrichmentConfig``)."""
UNDECLARED: StoreSpec[int] = StoreSpec("undeclared", ttl_ms=None)
"""Campaign tags already sent to the declaration inbox (value: when); bounded by the tags in use, never expires."""
CRM = "crm"


class EnrichmentProcessor(Processor):
    """Attributes and enriches every hit in near real time."""

    name = "enrichment"
    stores = (VISITORS, UNDECLARED)

    def __init__(self, topics: EnrichmentTopics | None = None, config: EnrichmentConfig | None = None) -> None:
        self.topics = t = topics or EnrichmentTopics()
        self.inputs = (t.hits_raw,)
        self.outputs = (t.hits_enriched, t.identity_links, t.undeclared)
        self.tables = (
            TableSpec("campaigns", t.campaigns),
            TableSpec(CRM, t.crm_profiles, erases=True),
            TableSpec("undeclared", t.undeclared),
            *((privacy_table(t.privacy_requests),) if t.privacy_requests else ()),
        )
        self.enricher = Enricher(config)
        cfg = self.enricher.config
        self.stores = (replace(VISITORS, ttl_ms=cfg.campaign_lifetime_ms + cfg.visit_timeout_ms), UNDECLARED)
        self.undeclared_hits = Counter(
            "passerelle_enrichment_undeclared_campaign_hits_total",
            "Hits whose campaign tag matches no declared campaign",
            registry=None,
        )
        self.erasures = Counter(
            "passerelle_enrichment_erasures_total",
            "Visitors purged because their person was erased (CRM tombstone or privacy request)",
            registry=None,
        )  # fmt: skip
        self.metrics = (self.undeclared_hits, self.erasures)

    def process_one(self, record: InRecord, ctx: Context) -> Iterable[OutRecord] | None:
        hit = record.value
        if hit is None:
            return None
        visitor = hit["visitor_id"]
        visitors = ctx.store(VISITORS)
        result, state = self.enricher.enrich(hit, visitors.get(visitor), ctx.table("campaigns"), ctx.table(CRM),
                                             ctx.now())  # fmt: skip
        visitors.put(visitor, state)  # the runtime indexes it under its customer id, for erasures
        out = [OutRecord(self.topics.hits_enriched, visitor, result.hit)]
        if result.identity_link is not None:
            out.append(OutRecord(self.topics.identity_links, visitor, result.identity_link))
        if result.hit["campaign_undeclared"]:
            self.undeclared_hits.inc()
        if result.undeclared is not None:
            key = result.undeclared["key"]
            seen = ctx.store(UNDECLARED)
            if key not in seen and key not in ctx.table("undeclared"):
                seen.put(key, ctx.now())
                out.append(OutRecord(self.topics.undeclared, key, result.undeclared))
        return out

    def on_erased(self, store: StoreSpec[Any], key: str, value: Any, ctx: Context) -> Iterable[OutRecord]:
        """Erasure (CRM tombstone or privacy request): the visitor is forgotten; retract its identity link."""
        self.erasures.inc()
        return [OutRecord(self.topics.identity_links, key, None)]
