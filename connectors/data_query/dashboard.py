"""The live dashboard's five panels as Data Query queries: one definition for the page, its tests and the bench.

The dashboard page (``connectors/partner_api/pages``) sends each panel as one
``POST /v1/query``; ``passerelle bench query`` times the very same bodies
through the API and as SQL run directly on the store, so what is measured is
what the page asks. Keeping them here (not in the page's script, not in the
API package) lets all three import them without depending on each other.

- ``traffic_by_source``: visits per hour (or day) and medium/source;
- ``traffic_by_campaign``: visits per hour (or day) and campaign tag;
- ``top_campaigns``: the campaign tags with most hits, with the declared
  campaign they were attributed to (none: the tag is *undeclared*);
- ``remarketing_funnel``: abandoned carts → messages sent → delivered →
  recovered orders and revenue;
- ``postview``: visits and conversions after an ad impression, per campaign.
"""

from __future__ import annotations

from typing import Any, Final, Literal

Step = Literal["hour", "day"]
STEPS: Final = ("hour", "day")
TOP_CAMPAIGNS: Final = 10
"""Rows of the top-campaigns and post-view tables."""
DEFAULT_PERIOD: Final = "today"
PANELS: Final = ("traffic_by_source", "traffic_by_campaign", "top_campaigns", "remarketing_funnel", "postview")
_TAGGED: Final = {"dimension": "campaign", "op": "ne", "value": None}


def default_step(period: str) -> Step:
    """Hours for a one-day period (``today``, ``yesterday``, ``{R:{D:-1}}``), days otherwise."""
    text = period.replace(" ", "")
    return "hour" if text in ("today", "yesterday") or text.startswith("{R:{D:") else "day"


def dashboard_queries(period: str = DEFAULT_PERIOD, site: str | None = None, step: str | None = None
                      ) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Each panel's query (the body of ``POST /v1/query``) for ``period`` on ``site`` (None: every site), by panel.

    ``ValueError`` for a step other than ``hour`` or ``day``; the period is
    checked by the API when the page runs the queries (400 naming it).
    """
    chosen = step or default_step(period)
    if chosen not in STEPS:
        raise ValueError(f"unknown step {chosen!r}: one of {', '.join(STEPS)}")
    base: dict[str, Any] = {"period": period, **({"site": site} if site else {})}
    return {
        "traffic_by_source": {**base, "metrics": ["visits"], "dimensions": [chosen, "medium", "source"]},
        "traffic_by_campaign": {**base, "metrics": ["visits"], "dimensions": [chosen, "campaign"],
                                "filters": [_TAGGED]},
        "top_campaigns": {**base, "metrics": ["hits", "visits", "orders", "revenue"],
                          "dimensions": ["campaign", "campaign_key", "campaign_name", "campaign_partner"],
                          "filters": [_TAGGED], "sort": [{"by": "hits", "desc": True}, {"by": "campaign"}],
                          "limit": TOP_CAMPAIGNS},
        "remarketing_funnel": {**base, "metrics": ["abandoned_carts", "remarketing_sent", "remarketing_delivered",
                                                   "recovered_orders", "recovered_revenue"]},
        "postview": {**base, "metrics": ["postview_visits", "postview_conversions", "postview_revenue"],
                     "dimensions": ["campaign_key", "campaign_name"],
                     "sort": [{"by": "postview_visits", "desc": True}, {"by": "campaign_key"}],
                     "limit": TOP_CAMPAIGNS},
    }  # fmt: skip
