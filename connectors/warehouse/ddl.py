"""The analytics store's tables: one schema for DuckDB and PostgreSQL.

The sink (``connectors.warehouse``) writes them; the query model
(``connectors.data_query``) reads them. Times are ``TIMESTAMPTZ`` (UTC
instants); ``day`` columns are the *site's local* day (the site's time zone
from the ``sites`` table, UTC when the site has none), computed when the row is
written, so a period of local days is a plain range on an indexed column and
stays right across daylight-saving changes. Text that a dimension groups on and
may be missing is stored as NULL, never as an empty string.

The statements use only what both databases accept (``TEXT``, ``BIGINT``,
``DOUBLE PRECISION``, ``TIMESTAMPTZ``, ``DATE``, ``BOOLEAN``, primary keys,
``CREATE ... IF NOT EXISTS``), so one list serves both backends.
"""

from __future__ import annotations

from typing import Final

TABLES: Final[dict[str, str]] = {
    # One row per site: the time zone its days and hours are computed in.
    "sites": """
        CREATE TABLE IF NOT EXISTS sites (
            site TEXT PRIMARY KEY,
            timezone TEXT NOT NULL
        )""",
    # hits.enriched, one row per hit (event_id is the collector's id, unique).
    "hits": """
        CREATE TABLE IF NOT EXISTS hits (
            event_id TEXT PRIMARY KEY,
            site TEXT NOT NULL,
            visitor_id TEXT NOT NULL,
            customer_id TEXT,
            event_time TIMESTAMPTZ NOT NULL,
            day DATE NOT NULL,
            type TEXT NOT NULL,
            url TEXT NOT NULL,
            page TEXT,
            visit_id TEXT NOT NULL,
            visit_number INTEGER NOT NULL,
            medium TEXT NOT NULL,
            source TEXT,
            campaign TEXT,
            campaign_key TEXT,
            campaign_name TEXT,
            campaign_partner TEXT,
            campaign_undeclared BOOLEAN NOT NULL,
            product_id TEXT,
            order_id TEXT,
            revenue DOUBLE PRECISION,
            currency TEXT,
            crm_gender TEXT,
            crm_age_band TEXT,
            crm_csp TEXT
        )""",
    # One row per visit, maintained by the sink from its hits (upsert): the first hit
    # gives the landing page, traffic source and day; counters add up.
    "visits": """
        CREATE TABLE IF NOT EXISTS visits (
            visit_id TEXT PRIMARY KEY,
            site TEXT NOT NULL,
            visitor_id TEXT NOT NULL,
            customer_id TEXT,
            started_at TIMESTAMPTZ NOT NULL,
            last_hit_at TIMESTAMPTZ NOT NULL,
            day DATE NOT NULL,
            landing_page TEXT,
            medium TEXT NOT NULL,
            source TEXT,
            campaign TEXT,
            campaign_key TEXT,
            campaign_name TEXT,
            campaign_partner TEXT,
            hits BIGINT NOT NULL,
            orders BIGINT NOT NULL,
            revenue DOUBLE PRECISION NOT NULL,
            crm_gender TEXT,
            crm_age_band TEXT,
            crm_csp TEXT
        )""",
    # Daily aggregates per site, local day and traffic source, maintained by the sink
    # (upsert, counters add up). Text keys use '' for "none" here only, because they
    # are part of the primary key; the query model maps '' back to NULL.
    "daily": """
        CREATE TABLE IF NOT EXISTS daily (
            site TEXT NOT NULL,
            day DATE NOT NULL,
            medium TEXT NOT NULL,
            source TEXT NOT NULL,
            campaign_key TEXT NOT NULL,
            hits BIGINT NOT NULL,
            visits BIGINT NOT NULL,
            orders BIGINT NOT NULL,
            revenue DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (site, day, medium, source, campaign_key)
        )""",
    # Which visitor ids a customer used (from hits carrying both, and identity.links):
    # an erasure of the customer reaches their anonymous hits too.
    "identities": """
        CREATE TABLE IF NOT EXISTS identities (
            visitor_id TEXT NOT NULL,
            customer_id TEXT NOT NULL,
            PRIMARY KEY (visitor_id, customer_id)
        )""",
    "carts_abandoned": """
        CREATE TABLE IF NOT EXISTS carts_abandoned (
            event_id TEXT PRIMARY KEY,
            episode_id TEXT NOT NULL,
            site TEXT NOT NULL,
            visitor_id TEXT NOT NULL,
            customer_id TEXT,
            value DOUBLE PRECISION NOT NULL,
            currency TEXT NOT NULL,
            detected_at TIMESTAMPTZ NOT NULL,
            day DATE NOT NULL
        )""",
    "remarketing_messages": """
        CREATE TABLE IF NOT EXISTS remarketing_messages (
            message_id TEXT PRIMARY KEY,
            sequence_id TEXT NOT NULL,
            step INTEGER NOT NULL,
            customer_id TEXT NOT NULL,
            site TEXT NOT NULL,
            has_promotion BOOLEAN NOT NULL,
            created_at TIMESTAMPTZ NOT NULL,
            day DATE NOT NULL
        )""",
    "remarketing_deliveries": """
        CREATE TABLE IF NOT EXISTS remarketing_deliveries (
            message_id TEXT PRIMARY KEY,
            sequence_id TEXT NOT NULL,
            step INTEGER NOT NULL,
            customer_id TEXT NOT NULL,
            partner TEXT NOT NULL,
            outcome TEXT NOT NULL,
            latency_ms BIGINT NOT NULL,
            decided_at TIMESTAMPTZ NOT NULL
        )""",
    # campaigns (compacted, keyed by campaign key): the latest declaration; a tombstone deletes.
    "campaigns": """
        CREATE TABLE IF NOT EXISTS campaigns (
            key TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            partner TEXT NOT NULL,
            channel TEXT NOT NULL,
            medium TEXT NOT NULL,
            cost_model TEXT,
            cost_amount DOUBLE PRECISION,
            currency TEXT,
            declared_at TIMESTAMPTZ NOT NULL
        )""",
    "postview": """
        CREATE TABLE IF NOT EXISTS postview (
            postview_id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            visitor_id TEXT NOT NULL,
            customer_id TEXT,
            site TEXT NOT NULL,
            campaign_key TEXT NOT NULL,
            event_time TIMESTAMPTZ NOT NULL,
            day DATE NOT NULL,
            visit_id TEXT NOT NULL,
            order_id TEXT,
            revenue DOUBLE PRECISION,
            currency TEXT
        )""",
    # partners.metrics (compacted, keyed by metric_id): the latest value per partner, campaign, day, metric.
    "partner_metrics": """
        CREATE TABLE IF NOT EXISTS partner_metrics (
            metric_id TEXT PRIMARY KEY,
            partner TEXT NOT NULL,
            campaign_key TEXT,
            day DATE NOT NULL,
            metric TEXT NOT NULL,
            value DOUBLE PRECISION NOT NULL,
            currency TEXT
        )""",
    # conversions.paths: the latest revision per conversion.
    "conversion_paths": """
        CREATE TABLE IF NOT EXISTS conversion_paths (
            conversion_id TEXT PRIMARY KEY,
            visitor_id TEXT NOT NULL,
            customer_id TEXT,
            order_id TEXT,
            revenue DOUBLE PRECISION NOT NULL,
            currency TEXT,
            converted_at TIMESTAMPTZ NOT NULL,
            path_length INTEGER NOT NULL,
            time_to_conversion_ms BIGINT NOT NULL,
            first_channel TEXT,
            last_channel TEXT,
            revision INTEGER NOT NULL
        )""",
    # attribution.markov (compacted, keyed by the period's label): the latest run's credits, one row per channel.
    # Aggregates of many journeys, no person in them: erasure leaves them (the next run no longer counts the person).
    "markov_credits": """
        CREATE TABLE IF NOT EXISTS markov_credits (
            period TEXT NOT NULL,
            channel TEXT NOT NULL,
            period_start TIMESTAMPTZ NOT NULL,
            period_end TIMESTAMPTZ NOT NULL,
            computed_at TIMESTAMPTZ NOT NULL,
            journeys BIGINT NOT NULL,
            period_conversions BIGINT NOT NULL,
            removal_effect DOUBLE PRECISION NOT NULL,
            credit DOUBLE PRECISION NOT NULL,
            conversions DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (period, channel)
        )""",
    # Who was erased, and when (privacy.requests erasures, CRM tombstones; kind: customer | visitor): the sink
    # never writes a row of theirs dated up to then, even when it reads that row after the erasure (added by
    # the sink; the query model does not read it).
    "erasures": """
        CREATE TABLE IF NOT EXISTS erasures (
            kind TEXT NOT NULL,
            person TEXT NOT NULL,
            requested_at TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (kind, person)
        )""",
    # The next offset to read per sink, topic and partition, written in the same
    # transaction as the rows: a restart resumes exactly where the last commit ended.
    "sink_offsets": """
        CREATE TABLE IF NOT EXISTS sink_offsets (
            sink TEXT NOT NULL,
            topic TEXT NOT NULL,
            kafka_partition INTEGER NOT NULL,
            next_offset BIGINT NOT NULL,
            PRIMARY KEY (sink, topic, kafka_partition)
        )""",
}
"""Every table, by name, with its ``CREATE TABLE IF NOT EXISTS`` statement."""

INDEXES: Final[tuple[str, ...]] = (
    "CREATE INDEX IF NOT EXISTS hits_day ON hits (site, day)",
    "CREATE INDEX IF NOT EXISTS visits_day ON visits (site, day)",
    "CREATE INDEX IF NOT EXISTS hits_customer ON hits (customer_id)",
    "CREATE INDEX IF NOT EXISTS hits_visitor ON hits (visitor_id)",
)


def statements() -> list[str]:
    """Every statement that creates the store, tables first; safe to run again."""
    return [" ".join(sql.split()) for sql in TABLES.values()] + list(INDEXES)
