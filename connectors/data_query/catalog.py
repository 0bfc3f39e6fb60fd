"""The registry of metrics and dimensions: what a query may name, where each comes from.

A *fact* is one table (or a fixed join) aggregated on its own; a metric is
either a *base* metric (an aggregate of one fact) or a *ratio* of base
metrics. A dimension is an SQL expression per fact; a fact that has no
expression for a dimension cannot be grouped or filtered by it, so a query
mixing them is an "incompatible combination". Every identifier that reaches
SQL comes from here, never from the query (values are bound as parameters).

Time: ``day`` columns of the store are the site's local day; ``week`` and
``month`` are the Monday and the first of the month of that day; ``hour`` is
the hour of the day (0-23) of the event's instant in the period's time zone
(the site's, UTC for all sites), bound as a parameter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from passerelle.connectors.data_query.result import ColumnType

RECOVERY_DAYS: Final = 7
"""An order at most this many days after a remarketing message to its customer is recovered
(as ``PASSERELLE_CRM_ACTIVITY_RECOVERY_DAYS``' default, so the CRM and the reports agree)."""

TZ: Final = "{tz}"
"""Placeholder in a time expression for the bound time-zone parameter."""


@dataclass(frozen=True)
class Fact:
    """One source of base metrics: ``source`` is the FROM clause (with alias), ``where`` its fixed conditions."""

    name: str
    table: str
    source: str
    day: str
    """The local day expression the period filters on (may contain ``{tz}``)."""
    timestamp: str | None
    """The instant ``hour`` is computed from; None when the fact has only days."""
    site: str | None
    """The site column; None when the fact has no site (partner figures cover every site)."""
    visitor: str | None
    """The visitor id column, for segments; None when the fact has no visitor."""
    dimensions: dict[str, str]
    """Non-time dimensions this fact has: name → SQL expression."""
    where: tuple[str, ...] = ()
    joins: dict[str, str] = field(default_factory=dict)
    """Extra LEFT JOINs a dimension needs (added only when the dimension is used)."""


TRAFFIC_DIMS: Final = ("medium", "source", "campaign", "campaign_key", "campaign_name", "campaign_partner",
                       "crm_gender", "crm_age_band", "crm_csp")  # fmt: skip


def _traffic(alias: str) -> dict[str, str]:
    return {d: f"{alias}.{d}" for d in TRAFFIC_DIMS}


_ORDER_HITS = (
    "(SELECT * FROM (SELECT oh.*, ROW_NUMBER() OVER (PARTITION BY oh.site, oh.order_id"
    " ORDER BY oh.event_time, oh.event_id) AS nth FROM hits oh"
    " WHERE oh.type = 'order' AND oh.order_id IS NOT NULL) numbered WHERE nth = 1) o"
)
"""Order hits, one per (site, order id): a reloaded confirmation page counts once, at its first hit."""

_RECOVERED = (
    "EXISTS (SELECT 1 FROM remarketing_messages rm WHERE rm.customer_id = r.customer_id"
    f" AND rm.created_at <= r.event_time AND r.event_time <= rm.created_at + INTERVAL '{RECOVERY_DAYS} days')"
)
"""A message to the order's customer at most :data:`RECOVERY_DAYS` before it (EXISTS: several messages count once)."""
_LANDING = "LEFT JOIN visits lv ON lv.visit_id = {a}.visit_id"
_CAMPAIGN = "LEFT JOIN campaigns c ON c.key = {a}.campaign_key"

FACTS: Final[dict[str, Fact]] = {
    f.name: f
    for f in (
        Fact("visits", "visits", "visits v", "v.day", "v.started_at", "v.site", "v.visitor_id",
             {**_traffic("v"), "landing_page": "v.landing_page"}),
        Fact("hits", "hits", "hits h", "h.day", "h.event_time", "h.site", "h.visitor_id",
             {**_traffic("h"), "landing_page": "lv.landing_page"}, joins={"landing_page": _LANDING.format(a="h")}),
        Fact("orders", "hits (type order)", _ORDER_HITS, "o.day", "o.event_time", "o.site", "o.visitor_id",
             {**_traffic("o"), "landing_page": "lv.landing_page"}, joins={"landing_page": _LANDING.format(a="o")}),
        Fact("recovered", "hits (type order) and remarketing_messages", _ORDER_HITS.replace(") o", ") r"),
             "r.day", "r.event_time", "r.site", "r.visitor_id",
             {**_traffic("r"), "landing_page": "lv.landing_page"},
             where=(_RECOVERED,),
             joins={"landing_page": _LANDING.format(a="r")}),
        Fact("carts", "carts_abandoned", "carts_abandoned ca", "ca.day", "ca.detected_at", "ca.site", "ca.visitor_id",
             {}),
        Fact("messages", "remarketing_messages", "remarketing_messages m", "m.day", "m.created_at", "m.site", None, {}),
        Fact("deliveries", "remarketing_deliveries (+ remarketing_messages for the site)",
             "remarketing_deliveries d LEFT JOIN remarketing_messages dm ON dm.message_id = d.message_id",
             "CAST(d.decided_at AT TIME ZONE {tz} AS DATE)", "d.decided_at", "dm.site", None, {},
             where=("d.outcome = 'delivered'",)),
        Fact("postview", "postview", "postview p", "p.day", "p.event_time", "p.site", "p.visitor_id",
             {"campaign_key": "p.campaign_key", "campaign_name": "c.name", "campaign_partner": "c.partner"},
             joins={"campaign_name": _CAMPAIGN.format(a="p"), "campaign_partner": _CAMPAIGN.format(a="p")}),
        Fact("partner", "partner_metrics", "partner_metrics pm", "pm.day", None, None, None,
             {"campaign_key": "pm.campaign_key", "campaign_name": "c.name", "campaign_partner": "pm.partner"},
             joins={"campaign_name": _CAMPAIGN.format(a="pm")}),
    )
}  # fmt: skip


@dataclass(frozen=True)
class Dimension:
    name: str
    label: str
    type: ColumnType
    time: bool = False


DIMENSIONS: Final[dict[str, Dimension]] = {
    d.name: d
    for d in (
        Dimension("hour", "Hour", "int", True),
        Dimension("day", "Day", "date", True),
        Dimension("week", "Week", "date", True),
        Dimension("month", "Month", "date", True),
        Dimension("site", "Site", "text"),
        Dimension("medium", "Medium", "text"),
        Dimension("source", "Source", "text"),
        Dimension("campaign", "Campaign (tag)", "text"),
        Dimension("campaign_key", "Declared campaign key", "text"),
        Dimension("campaign_name", "Declared campaign name", "text"),
        Dimension("campaign_partner", "Declared campaign partner", "text"),
        Dimension("landing_page", "Landing page", "text"),
        Dimension("crm_gender", "CRM gender", "text"),
        Dimension("crm_age_band", "CRM age band", "text"),
        Dimension("crm_csp", "CRM socio-professional category", "text"),
    )
}


def dimension_sql(fact: Fact, name: str) -> str | None:
    """The SQL expression of dimension ``name`` in ``fact`` (``{tz}`` for the zone), None if the fact lacks it."""
    day = fact.day
    if name == "day":
        return day
    if name == "week":
        return f"CAST(date_trunc('week', CAST({day} AS TIMESTAMP)) AS DATE)"
    if name == "month":
        return f"CAST(date_trunc('month', CAST({day} AS TIMESTAMP)) AS DATE)"
    if name == "hour":
        return (
            None
            if fact.timestamp is None
            else f"CAST(EXTRACT(HOUR FROM ({fact.timestamp} AT TIME ZONE {TZ})) AS INTEGER)"
        )
    if name == "site":
        return fact.site
    return fact.dimensions.get(name)


@dataclass(frozen=True)
class Metric:
    """A base metric (``fact`` and ``aggregate``) or a ratio (``ratio``: numerator, denominator base metrics)."""

    name: str
    label: str
    type: ColumnType
    definition: str
    fact: str | None = None
    aggregate: str | None = None
    sql_type: str = "BIGINT"
    ratio: tuple[str, tuple[str, ...]] | None = None
    """(numerator, denominator terms summed): e.g. ``("abandoned_carts", ("abandoned_carts", "orders"))``."""

    @property
    def bases(self) -> tuple[str, ...]:
        """The base metrics this one needs (itself when base)."""
        if self.ratio is None:
            return (self.name,)
        return tuple(dict.fromkeys((self.ratio[0], *self.ratio[1])))


def _sum_if(column: str, condition: str) -> str:
    return f"SUM(CASE WHEN {condition} THEN {column} ELSE 0 END)"


METRICS: Final[dict[str, Metric]] = {
    m.name: m
    for m in (
        Metric("hits", "Hits", "int", "hits whose local day is in the period", "hits", "COUNT(*)"),
        Metric("visits", "Visits", "int", "visits started in the period", "visits", "COUNT(*)"),
        Metric("visitors", "Visitors", "int", "distinct visitor ids among the visits started in the period (per row)",
               "visits", "COUNT(DISTINCT v.visitor_id)"),
        Metric("orders", "Orders", "int", "distinct (site, order id) of order hits, counted at their first hit",
               "orders", "COUNT(*)"),
        Metric("revenue", "Revenue", "money", "sum of those orders' revenue (currencies are not converted)",
               "orders", "SUM(o.revenue)", "DOUBLE PRECISION"),
        Metric("conversion_rate", "Conversion rate", "percent", "orders / visits", ratio=("orders", ("visits",))),
        Metric("average_order_value", "Average order value", "money", "revenue / orders",
               ratio=("revenue", ("orders",))),
        Metric("abandoned_carts", "Abandoned carts", "int", "carts detected abandoned in the period",
               "carts", "COUNT(*)"),
        Metric("cart_abandonment_rate", "Cart abandonment rate", "percent",
               "abandoned carts / (abandoned carts + orders)",
               ratio=("abandoned_carts", ("abandoned_carts", "orders"))),
        Metric("remarketing_sent", "Remarketing messages sent", "int", "remarketing messages created in the period",
               "messages", "COUNT(*)"),
        Metric("remarketing_delivered", "Remarketing messages delivered", "int",
               "deliveries with outcome 'delivered', by the local day of their decision", "deliveries", "COUNT(*)"),
        Metric("recovered_orders", "Recovered orders", "int",
               f"orders of a customer placed at most {RECOVERY_DAYS} days after a remarketing message to them",
               "recovered", "COUNT(*)"),
        Metric("recovered_revenue", "Recovered revenue", "money", "revenue of the recovered orders",
               "recovered", "SUM(r.revenue)", "DOUBLE PRECISION"),
        Metric("postview_visits", "Post-view visits", "int", "post-view records of kind 'visit'",
               "postview", _sum_if("1", "p.kind = 'visit'")),
        Metric("postview_conversions", "Post-view conversions", "int", "post-view records of kind 'order'",
               "postview", _sum_if("1", "p.kind = 'order'")),
        Metric("postview_revenue", "Post-view revenue", "money", "revenue of the post-view records of kind 'order'",
               "postview", _sum_if("COALESCE(p.revenue, 0)", "p.kind = 'order'"), "DOUBLE PRECISION"),
        Metric("impressions", "Partner impressions", "int", "sum of the partner figures 'impressions'",
               "partner", _sum_if("pm.value", "pm.metric = 'impressions'"), "DOUBLE PRECISION"),
        Metric("clicks", "Partner clicks", "int", "sum of the partner figures 'clicks'",
               "partner", _sum_if("pm.value", "pm.metric = 'clicks'"), "DOUBLE PRECISION"),
        Metric("cost", "Partner cost", "money", "sum of the partner figures 'cost' (currencies are not converted)",
               "partner", _sum_if("pm.value", "pm.metric = 'cost'"), "DOUBLE PRECISION"),
        Metric("cpc", "Cost per click", "money", "cost / clicks", ratio=("cost", ("clicks",))),
        Metric("cpa", "Cost per acquisition", "money", "cost / orders (orders of the same campaign key)",
               ratio=("cost", ("orders",))),
        Metric("roas", "Return on ad spend", "float", "revenue / cost", ratio=("revenue", ("cost",))),
    )
}  # fmt: skip
