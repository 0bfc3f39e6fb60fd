"""Decoded Avro records -> rows of the analytics store's tables (pure: no Kafka, no database).

The sink hands every record of a consumed batch to :meth:`Batch.add` in offset
order; the batch keeps, per table, the rows to insert (deduplicated by primary
key), the visits and daily aggregates to add up, the latest value of each key
of the compacted tables (a tombstone: ``None``, a delete), and the erasures to
apply. The writer (``connectors.warehouse.writer``) turns one batch into one
database transaction.

Days are the site's *local* day (:class:`SiteZones`), computed here once per
row, so the query model filters a period on a plain indexed ``day`` column.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, tzinfo
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

# What the sink reads, by role; the topic names themselves come from the settings (catalog names by default).
HITS, CARTS, MESSAGES, DELIVERIES = "hits", "carts", "messages", "deliveries"
CAMPAIGNS, POSTVIEW, METRICS, PATHS = "campaigns", "postview", "metrics", "paths"
PRIVACY, PROFILES, LINKS, MARKOV = "privacy", "profiles", "links", "markov"
ROLES: Final = (HITS, CARTS, MESSAGES, DELIVERIES, CAMPAIGNS, POSTVIEW, METRICS, PATHS, PRIVACY, PROFILES, LINKS,
                MARKOV)  # fmt: skip

# Column kinds, for staging rows column-wise (Arrow types for DuckDB): text, int, float, bool, ts (UTC instant), day.
COLUMNS: Final[dict[str, tuple[tuple[str, str], ...]]] = {
    "sites": (("site", "text"), ("timezone", "text")),
    "hits": (
        ("event_id", "text"), ("site", "text"), ("visitor_id", "text"), ("customer_id", "text"),
        ("event_time", "ts"), ("day", "day"), ("type", "text"), ("url", "text"), ("page", "text"),
        ("visit_id", "text"), ("visit_number", "int"), ("medium", "text"), ("source", "text"),
        ("campaign", "text"), ("campaign_key", "text"), ("campaign_name", "text"), ("campaign_partner", "text"),
        ("campaign_undeclared", "bool"), ("product_id", "text"), ("order_id", "text"), ("revenue", "float"),
        ("currency", "text"), ("crm_gender", "text"), ("crm_age_band", "text"), ("crm_csp", "text"),
    ),
    "visits": (
        ("visit_id", "text"), ("site", "text"), ("visitor_id", "text"), ("customer_id", "text"),
        ("started_at", "ts"), ("last_hit_at", "ts"), ("day", "day"), ("landing_page", "text"),
        ("medium", "text"), ("source", "text"), ("campaign", "text"), ("campaign_key", "text"),
        ("campaign_name", "text"), ("campaign_partner", "text"), ("hits", "int"), ("orders", "int"),
        ("revenue", "float"), ("crm_gender", "text"), ("crm_age_band", "text"), ("crm_csp", "text"),
    ),
    "daily": (
        ("site", "text"), ("day", "day"), ("medium", "text"), ("source", "text"), ("campaign_key", "text"),
        ("hits", "int"), ("visits", "int"), ("orders", "int"), ("revenue", "float"),
    ),
    "identities": (("visitor_id", "text"), ("customer_id", "text")),
    "carts_abandoned": (
        ("event_id", "text"), ("episode_id", "text"), ("site", "text"), ("visitor_id", "text"),
        ("customer_id", "text"), ("value", "float"), ("currency", "text"), ("detected_at", "ts"), ("day", "day"),
    ),
    "remarketing_messages": (
        ("message_id", "text"), ("sequence_id", "text"), ("step", "int"), ("customer_id", "text"),
        ("site", "text"), ("has_promotion", "bool"), ("created_at", "ts"), ("day", "day"),
    ),
    "remarketing_deliveries": (
        ("message_id", "text"), ("sequence_id", "text"), ("step", "int"), ("customer_id", "text"),
        ("partner", "text"), ("outcome", "text"), ("latency_ms", "int"), ("decided_at", "ts"),
    ),
    "campaigns": (
        ("key", "text"), ("name", "text"), ("partner", "text"), ("channel", "text"), ("medium", "text"),
        ("cost_model", "text"), ("cost_amount", "float"), ("currency", "text"), ("declared_at", "ts"),
    ),
    "postview": (
        ("postview_id", "text"), ("kind", "text"), ("visitor_id", "text"), ("customer_id", "text"),
        ("site", "text"), ("campaign_key", "text"), ("event_time", "ts"), ("day", "day"), ("visit_id", "text"),
        ("order_id", "text"), ("revenue", "float"), ("currency", "text"),
    ),
    "partner_metrics": (
        ("metric_id", "text"), ("partner", "text"), ("campaign_key", "text"), ("day", "day"),
        ("metric", "text"), ("value", "float"), ("currency", "text"),
    ),
    "conversion_paths": (
        ("conversion_id", "text"), ("visitor_id", "text"), ("customer_id", "text"), ("order_id", "text"),
        ("revenue", "float"), ("currency", "text"), ("converted_at", "ts"), ("path_length", "int"),
        ("time_to_conversion_ms", "int"), ("first_channel", "text"), ("last_channel", "text"), ("revision", "int"),
    ),
    "markov_credits": (
        ("period", "text"), ("channel", "text"), ("period_start", "ts"), ("period_end", "ts"),
        ("computed_at", "ts"), ("journeys", "int"), ("period_conversions", "int"), ("removal_effect", "float"),
        ("credit", "float"), ("conversions", "float"),
    ),
}  # fmt: skip
"""Every table the sink writes, its columns in DDL order with their kind."""

INSERT_ONLY: Final = ("hits", "identities", "carts_abandoned", "remarketing_messages", "remarketing_deliveries",
                      "postview")  # fmt: skip
"""Immutable facts: inserted once, a replayed row (same primary key) is left as it is."""

Row = tuple[Any, ...]


class SiteZones:
    """Each site's time zone (UTC for a site not listed): the ``day`` of a row is its local day there."""

    def __init__(self, zones: Mapping[str, str] | None = None) -> None:
        self.names: dict[str, str] = dict(zones or {})
        self._zones: dict[str, tzinfo] = {}
        for site, name in self.names.items():
            try:
                self._zones[site] = ZoneInfo(name)
            except (ZoneInfoNotFoundError, ValueError) as exc:
                raise ValueError(
                    f"site {site!r}: unknown time zone {name!r} (an IANA name such as Europe/Paris)"
                ) from exc

    def day(self, site: str, at: datetime) -> date:
        zone = self._zones.get(site)
        return (at if zone is None else at.astimezone(zone)).date() if at.tzinfo else at.date()

    def rows(self) -> list[Row]:
        """The ``sites`` table: the sites with a declared zone."""
        return sorted(self.names.items())


def parse_site_timezones(text: str) -> dict[str, str]:
    """``shop=Europe/Paris,blog=America/New_York`` -> {site: zone}; ``ValueError`` naming a malformed entry."""
    out: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        site, sep, zone = part.partition("=")
        if not sep or not site.strip() or not zone.strip():
            raise ValueError(f"site time zone {part!r}: expected site=Area/City")
        out[site.strip()] = zone.strip()
    SiteZones(out)  # validates the names
    return out


def _utc(value: Any) -> datetime:
    """fastavro gives ``timestamp-millis`` as aware datetimes; tests may hand epoch milliseconds."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromtimestamp(int(value) / 1000, UTC)


@dataclass
class Erasures:
    """Who was erased and when: rows of the person dated up to then are never written (a replay, a late topic).

    Each ``privacy.requests`` topic and ``hits.enriched`` are read at their own
    pace, so an erasure can be read before older rows of the person: they are
    dropped here instead of being written after the delete.
    """

    customers: dict[str, datetime] = field(default_factory=dict)
    visitors: dict[str, datetime] = field(default_factory=dict)

    def covers(self, customer: str | None, visitor: str | None, at: datetime) -> bool:
        if customer is not None:
            when = self.customers.get(customer)
            if when is not None and at <= when:
                return True
        if visitor is not None:
            when = self.visitors.get(visitor)
            if when is not None and at <= when:
                return True
        return False

    def add(self, kind: str, person: str, at: datetime) -> None:
        target = self.customers if kind == "customer" else self.visitors
        if person not in target or target[person] < at:
            target[person] = at


@dataclass(frozen=True)
class Erasure:
    """Delete every row of a customer (and the visitor ids linked to them) or of a visitor."""

    customer_id: str | None
    visitor_id: str | None
    at: datetime


@dataclass
class _Visit:
    row: list[Any]  # COLUMNS["visits"] order
    first_key: tuple[str, date, str, str, str]  # the daily row the visit counts in (its first hit's)


_V_CUSTOMER, _V_LAST, _V_HITS, _V_ORDERS, _V_REVENUE = 3, 5, 14, 15, 16


@dataclass
class Batch:
    """The rows of one consumed batch, ready for one transaction (see the module docstring)."""

    zones: SiteZones
    erased: Erasures = field(default_factory=Erasures)
    inserts: dict[str, dict[Any, Row]] = field(default_factory=lambda: {t: {} for t in INSERT_ONLY})
    visits: dict[str, _Visit] = field(default_factory=dict)
    daily: dict[tuple[str, date, str, str, str], list[Any]] = field(default_factory=dict)  # hits, orders, revenue
    campaigns: dict[str, Row | None] = field(default_factory=dict)
    metrics: dict[str, Row | None] = field(default_factory=dict)
    paths: dict[str, Row] = field(default_factory=dict)
    markov: dict[str, list[Row]] = field(default_factory=dict)  # period label -> its channels' rows (latest run)
    unlinks: set[str] = field(default_factory=set)  # identity.links tombstones: visitor ids
    erasures: list[Erasure] = field(default_factory=list)
    skipped: int = 0  # records that write nothing (consent changes, CRM profile updates, erased persons)

    def add(self, role: str, key: Any, value: Mapping[str, Any] | None, timestamp_ms: int = 0) -> None:
        """One decoded record of the topic playing ``role`` (``value`` None: a tombstone)."""
        if role == HITS:
            self._hit(value) if value is not None else self._skip()
        elif role == CAMPAIGNS:
            self.campaigns[str(key)] = None if value is None else campaign_row(value)
        elif role == METRICS:
            self.metrics[str(key)] = None if value is None else metric_row(value)
        elif role == MARKOV:
            self.markov[str(key)] = [] if value is None else markov_rows(value)
        elif role == PROFILES:
            if value is None:  # a CRM tombstone erases the customer
                self._erase(str(key), None, datetime.fromtimestamp(timestamp_ms / 1000, UTC))
            else:
                self._skip()
        elif role == PRIVACY:
            if value is not None and value.get("kind") == "erasure":
                self._erase(value.get("customer_id"), value.get("visitor_id"), _utc(value["requested_at"]))
            else:
                self._skip()
        elif role == LINKS:
            if value is None:
                self.unlinks.add(str(key))
            elif self.erased.covers(value["customer_id"], value["visitor_id"], _utc(value["linked_at"])):
                self._skip()
            else:
                self.unlinks.discard(value["visitor_id"])
                self.inserts["identities"][(value["visitor_id"], value["customer_id"])] = (
                    value["visitor_id"], value["customer_id"],
                )  # fmt: skip
        elif value is None:
            self._skip()
        elif role == PATHS:
            row = path_row(value)
            if self.erased.covers(row[2], row[1], row[6]):
                self._skip()
                return
            known = self.paths.get(row[0])
            if known is None or known[-1] <= row[-1]:
                self.paths[row[0]] = row
        else:
            table, make = _FACTS[role]
            row, customer, visitor, at = make(value, self.zones)
            if self.erased.covers(customer, visitor, at):
                self._skip()
            else:
                self.inserts[table][row[0]] = row
        return

    def _skip(self) -> None:
        self.skipped += 1

    def _erase(self, customer: str | None, visitor: str | None, at: datetime) -> None:
        if not customer and not visitor:
            self._skip()
            return
        self.erasures.append(Erasure(customer or None, visitor or None, at))
        if customer:
            self.erased.add("customer", customer, at)
        if visitor:
            self.erased.add("visitor", visitor, at)

    def _hit(self, rec: Mapping[str, Any]) -> None:
        at = _utc(rec["event_time"])
        customer, visitor = rec.get("customer_id"), rec["visitor_id"]
        if self.erased.covers(customer, visitor, at):
            self._skip()
            return
        row = hit_row(rec, self.zones, at)
        event_id = row[0]
        if event_id in self.inserts["hits"]:
            return  # the same hit twice in a batch (a producer retry upstream): counted once
        self.inserts["hits"][event_id] = row
        if customer:
            self.inserts["identities"][(visitor, customer)] = (visitor, customer)
        site, day, medium, source, key = row[1], row[5], row[11], row[12], row[14]
        revenue = row[20] if row[19] is not None else None
        order = 1 if revenue is not None else 0
        dkey = (site, day, medium, source or "", key or "")
        counters = self.daily.get(dkey)
        if counters is None:
            self.daily[dkey] = [1, order, revenue or 0.0]
        else:
            counters[0] += 1
            counters[1] += order
            counters[2] += revenue or 0.0
        visit = self.visits.get(row[9])
        if visit is None:
            crm = rec.get("crm") or {}
            self.visits[row[9]] = _Visit(
                [row[9], site, visitor, customer, at, at, day, row[8] or row[7], medium, source, row[13], key,
                 row[15], row[16], 1, order, revenue or 0.0, crm.get("gender"), crm.get("age_band"), crm.get("csp")],
                dkey,
            )  # fmt: skip
        else:
            v = visit.row
            v[_V_HITS] += 1
            v[_V_ORDERS] += order
            v[_V_REVENUE] += revenue or 0.0
            if at > v[_V_LAST]:
                v[_V_LAST] = at
            if v[_V_CUSTOMER] is None and customer:
                v[_V_CUSTOMER] = customer

    # --- what the writer takes -------------------------------------------------------------------------------

    def visit_rows(self) -> list[Row]:
        return [tuple(v.row) for v in self.visits.values()]

    def daily_rows(self, existing_visits: set[str]) -> list[Row]:
        """The daily counters to add: hits, orders and revenue of the batch; a visit counts where it started.

        ``existing_visits``: the batch's visit ids already in the store (their
        first hit was counted by an earlier batch).
        """
        rows = {k: [c[0], 0, c[1], c[2]] for k, c in self.daily.items()}  # hits, visits, orders, revenue
        for visit_id, visit in self.visits.items():
            if visit_id not in existing_visits:
                rows.setdefault(visit.first_key, [0, 0, 0, 0.0])[1] += 1
        return [(*k, *c) for k, c in rows.items()]

    def __len__(self) -> int:
        return (
            sum(map(len, self.inserts.values()))
            + len(self.visits)
            + len(self.campaigns)
            + len(self.metrics)
            + len(self.paths)
            + len(self.markov)
            + len(self.erasures)
            + len(self.unlinks)
        )


def hit_row(rec: Mapping[str, Any], zones: SiteZones, at: datetime | None = None) -> Row:
    """One ``hits`` row (COLUMNS["hits"] order)."""
    at = at or _utc(rec["event_time"])
    site = rec["site"]
    ts = rec["traffic_source"]
    declared = rec.get("declared_campaign")
    product, order, crm = rec.get("product"), rec.get("order"), rec.get("crm")
    hit_type = rec["type"]
    return (
        rec["event_id"], site, rec["visitor_id"], rec.get("customer_id"), at, zones.day(site, at), hit_type,
        rec["url"], rec.get("page"), rec["visit_id"], rec["visit_number"], ts["medium"], ts.get("source"),
        ts.get("campaign"), declared["key"] if declared else None, declared["name"] if declared else None,
        declared["partner"] if declared else None, bool(rec.get("campaign_undeclared")),
        product["id"] if product else None, order["order_id"] if order else None,
        order["revenue"] if order else None, order["currency"] if order else None,
        crm.get("gender") if crm else None, crm.get("age_band") if crm else None, crm.get("csp") if crm else None,
    )  # fmt: skip


Fact = tuple[Row, str | None, str | None, datetime]  # the row, and whose it is, and when (for erasures)


def cart_row(rec: Mapping[str, Any], zones: SiteZones) -> Fact:
    at = _utc(rec["detected_at"])
    row = (rec["event_id"], rec["episode_id"], rec["site"], rec["visitor_id"], rec.get("customer_id"),
           float(rec["value"]), rec["currency"], at, zones.day(rec["site"], at))  # fmt: skip
    return row, rec.get("customer_id"), rec["visitor_id"], at


def message_row(rec: Mapping[str, Any], zones: SiteZones) -> Fact:
    at = _utc(rec["created_at"])
    row = (rec["message_id"], rec["sequence_id"], rec["step"], rec["customer_id"], rec["site"],
           rec.get("promotion") is not None, at, zones.day(rec["site"], at))  # fmt: skip
    return row, rec["customer_id"], None, at


def delivery_row(rec: Mapping[str, Any], zones: SiteZones) -> Fact:
    at = _utc(rec["decided_at"])
    row = (rec["message_id"], rec["sequence_id"], rec["step"], rec["customer_id"], rec["partner"],
           rec["outcome"], rec["latency_ms"], at)  # fmt: skip
    return row, rec["customer_id"], None, at


def postview_row(rec: Mapping[str, Any], zones: SiteZones) -> Fact:
    at = _utc(rec["event_time"])
    row = (rec["postview_id"], rec["kind"], rec["visitor_id"], rec.get("customer_id"), rec["site"],
           rec["campaign_key"], at, zones.day(rec["site"], at), rec["visit_id"], rec.get("order_id"),
           rec.get("revenue"), rec.get("currency"))  # fmt: skip
    return row, rec.get("customer_id"), rec["visitor_id"], at


_FACTS: Final = {
    CARTS: ("carts_abandoned", cart_row),
    MESSAGES: ("remarketing_messages", message_row),
    DELIVERIES: ("remarketing_deliveries", delivery_row),
    POSTVIEW: ("postview", postview_row),
}


def campaign_row(rec: Mapping[str, Any]) -> Row:
    return (rec["key"], rec["name"], rec["partner"], rec["channel"], rec["medium"], rec.get("cost_model"),
            rec.get("cost_amount"), rec.get("currency"), _utc(rec["declared_at"]))  # fmt: skip


def metric_row(rec: Mapping[str, Any]) -> Row:
    return (rec["metric_id"], rec["partner"], rec.get("campaign_key"), date.fromisoformat(rec["date"]),
            rec["metric"], float(rec["value"]), rec.get("currency"))  # fmt: skip


def path_row(rec: Mapping[str, Any]) -> Row:
    touchpoints = rec.get("touchpoints") or []
    return (rec["conversion_id"], rec["visitor_id"], rec.get("customer_id"), rec.get("order_id"),
            float(rec["revenue"]), rec.get("currency"), _utc(rec["converted_at"]), rec["path_length"],
            rec["time_to_conversion_ms"], touchpoints[0]["channel"] if touchpoints else None,
            touchpoints[-1]["channel"] if touchpoints else None, rec["revision"])  # fmt: skip


def markov_rows(rec: Mapping[str, Any]) -> list[Row]:
    """One ``markov_credits`` row per channel of a ``MarkovAttribution`` run (the period's label is the key)."""
    head = (rec["period"],)
    period = (_utc(rec["period_start"]), _utc(rec["period_end"]), _utc(rec["computed_at"]), rec["journeys"],
              rec["conversions"])  # fmt: skip
    return [(*head, c["channel"], *period, float(c["removal_effect"]), float(c["credit"]), float(c["conversions"]))
            for c in rec["channels"]]  # fmt: skip
