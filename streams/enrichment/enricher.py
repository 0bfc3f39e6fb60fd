"""Hit enrichment as pure logic: visits, traffic source, declared campaigns, identity, CRM attributes.

Everything a hit needs from the past lives in one ``VisitorState`` per
visitor, so the processor keeps a single keyed store and one changelog record
per visitor per commit. Lookups (declared campaigns, CRM profiles) are plain
mappings; the runtime keeps them current from their compacted topics.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from passerelle.schemas.models import age_band
from passerelle.schemas.timeconv import to_millis
from passerelle.streams.enrichment.attribution import DEFAULT, Attribution, AttributionConfig, attribute_params

VISIT_TIMEOUT_MS = 30 * 60 * 1000
CAMPAIGN_LIFETIME_MS = 30 * 24 * 3600 * 1000
IDENTIFY = "identify"


@dataclass(frozen=True)
class EnrichmentConfig:
    """Rules of enrichment; ``site_hosts`` tells internal referrers from external ones, per site."""

    visit_timeout_ms: int = VISIT_TIMEOUT_MS
    campaign_lifetime_ms: int = CAMPAIGN_LIFETIME_MS
    attribution: AttributionConfig = DEFAULT
    site_hosts: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def hosts(self, site: str) -> frozenset[str]:
        return self.site_hosts.get(site) or frozenset({site})


@dataclass
class Enriched:
    """What one hit produces: the enriched hit, and facts worth publishing."""

    hit: dict[str, Any]
    identity_link: dict[str, Any] | None = None
    undeclared: dict[str, Any] | None = None


def crm_attributes(profile: Mapping[str, Any] | None, now_ms: int) -> dict[str, Any] | None:
    """The segmentation attributes of a CRM profile; age band derived from birth year when missing."""
    if profile is None:
        return None
    band = profile.get("age_band")
    if band is None and profile.get("birth_year"):
        band = age_band(int(profile["birth_year"]), dt.datetime.fromtimestamp(now_ms / 1000, dt.UTC).year)
    return {
        "gender": profile.get("gender"),
        "age_band": band,
        "csp": profile.get("csp"),
        "loyalty_tier": profile.get("loyalty_tier"),
        "marketing_consent": profile.get("marketing_consent"),
    }


def declared(campaign: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if campaign is None:
        return None
    return {
        "key": campaign["key"],
        "name": campaign["name"],
        "partner": campaign["partner"],
        "channel": campaign["channel"],
    }


class Enricher:
    """Enrich one hit given the visitor's state; returns the new state to store.

    State (a JSON-able dict): ``last_seen``, ``visit_number``, ``visit_id``,
    the visit's ``source``/``declared``/``undeclared``, the remembered
    ``campaign`` (with ``at``) for persistence across visits, and the
    ``customer_id`` stitched to this visitor.
    """

    def __init__(self, config: EnrichmentConfig | None = None) -> None:
        self.config = config or EnrichmentConfig()

    def enrich(
        self,
        hit: dict[str, Any],
        state: dict[str, Any] | None,
        campaigns: Mapping[str, Any],
        crm: Mapping[str, Any],
        now_ms: int,
    ) -> tuple[Enriched, dict[str, Any]]:
        cfg = self.config
        t = to_millis(hit["event_time"])
        params = hit.get("campaign_params") or {}
        state = dict(state) if state else {"visit_number": 0}
        result = Enriched(hit=hit)

        new_visit = (
            "last_seen" not in state
            or t - state["last_seen"] > cfg.visit_timeout_ms
            or (bool(params) and params != state.get("visit_params"))
        )
        if new_visit:
            attr = attribute_params(params, hit.get("referrer"), cfg.attribution, cfg.hosts(hit["site"]))
            source = attr.traffic_source()
            decl, undeclared = None, False
            if attr.family is not None:  # the visit came from a campaign tag
                key = attr.campaign
                decl = declared(campaigns.get(key)) if key else None
                undeclared = decl is None
                state["campaign"] = {"source": source, "declared": decl, "undeclared": undeclared, "at": t}
                if undeclared:
                    result.undeclared = self._undeclared(key or attr.raw_tag or "?", attr, hit, now_ms)
            elif attr.medium == "direct":
                remembered = state.get("campaign")
                if remembered and t - remembered["at"] <= cfg.campaign_lifetime_ms:
                    # Prior-attribution credit: a direct return visit keeps the campaign that brought the visitor.
                    source, decl, undeclared = remembered["source"], remembered["declared"], remembered["undeclared"]
            state["visit_number"] = int(state.get("visit_number", 0)) + 1
            state["visit_id"] = f"{hit['visitor_id']}:{state['visit_number']}"
            state["visit_source"], state["visit_declared"], state["visit_undeclared"] = source, decl, undeclared
            state["visit_params"] = params
        state["last_seen"] = max(t, int(state.get("last_seen", t)))

        customer = hit.get("customer_id")
        if customer and customer != state.get("customer_id"):
            state["customer_id"] = customer
            result.identity_link = {
                "visitor_id": hit["visitor_id"],
                "customer_id": customer,
                "site": hit["site"],
                "linked_at": t,
                "source": IDENTIFY if hit.get("type") == IDENTIFY else str(hit.get("type") or "hit"),
            }
        customer = state.get("customer_id")

        # The hit itself becomes the enriched hit: every field it carries passes through (an ``EnrichedHit``
        # is a ``Hit`` plus what follows), none copied by name, and no copy made on the hot path.
        hit["visit_id"] = state["visit_id"]
        hit["visit_number"] = state["visit_number"]
        hit["traffic_source"] = state["visit_source"]
        hit["declared_campaign"] = state["visit_declared"]
        hit["campaign_undeclared"] = bool(state["visit_undeclared"])
        hit["customer_id"] = customer
        hit["crm"] = crm_attributes(crm.get(customer), now_ms) if customer else None
        hit["enriched_at"] = now_ms
        return result, state

    @staticmethod
    def _undeclared(key: str, attr: Attribution, hit: Mapping[str, Any], now_ms: int) -> dict[str, Any]:
        """A draft declaration for the automatic-declaration inbox: what we know from the tag."""
        return {
            "key": key,
            "name": attr.campaign or key,
            "partner": attr.source or "unknown",
            "channel": attr.medium,
            "medium": attr.medium,
            "tagged_url_template": hit.get("url") or "",
            "valid_from": None,
            "valid_to": None,
            "cost_model": None,
            "cost_amount": None,
            "currency": None,
            "declared_at": now_ms,
        }
