"""Records as the topics carry them, for tests that feed processors: one factory per schema, shared."""

from __future__ import annotations

from typing import Any


def enriched_hit(
    visitor: str,
    at: int,
    *,
    event_id: str,
    visit: int = 1,
    customer: str | None = None,
    campaign: str | None = None,
    medium: str | None = None,
    order: tuple[str, float] | None = None,
    site: str = "shop.example",
    campaign_name: str | None = None,
    channel: str = "email",
) -> dict[str, Any]:
    """An ``EnrichedHit`` as the enrichment writes it (and fastavro decodes it).

    ``order`` = (order id, revenue in EUR); ``medium`` defaults to ``email``
    for a campaign's visit and ``direct`` otherwise; a campaign is declared by
    the partner ``mailer`` with ``campaign_name`` (default "Campaign <key>").
    """
    return {
        "event_id": event_id, "site": site, "visitor_id": visitor, "customer_id": customer,
        "event_time": at, "type": "order" if order else "page_view", "url": f"https://{site}/",
        "referrer": None, "page": None, "campaign_params": {}, "product": None,
        "order": {"order_id": order[0], "revenue": order[1], "currency": "EUR", "lines": []} if order else None,
        "consent": {"analytics": True, "marketing": True}, "user_agent": None, "ip_truncated": None,
        "visit_id": f"{visitor}:{visit}", "visit_number": visit,
        "traffic_source": {"medium": medium or ("email" if campaign else "direct"), "source": None,
                           "campaign": campaign, "term": None, "content": None, "click_id": None, "network": None},
        "declared_campaign": {"key": campaign, "name": campaign_name or f"Campaign {campaign}", "partner": "mailer",
                              "channel": channel} if campaign else None,
        "campaign_undeclared": False, "crm": None, "enriched_at": at,
    }  # fmt: skip
