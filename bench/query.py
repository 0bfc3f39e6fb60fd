"""Data Query benchmark: the dashboard's queries through the partner API vs the same SQL on DuckDB, and the
warehouse sink vs a raw consumer loop writing the same rows.

1. **Store.** A DuckDB file made with the warehouse's own DDL is filled with
   ``--hits`` hits generated in DuckDB SQL (no Python per row): ``--hits`` / 5
   visits over the last ``--days`` days (hours peaking mid-day), 3 sites in 3
   time zones (70/20/10 %), half as many visitors as visits (one in five
   identified, with CRM attributes), 7 mediums with their sources and 170
   campaign tags (two in three declared), 1 to 9 hits per visit, 2.5 % of
   visits ending in an order, 8 % in an abandoned cart (the identified ones
   get 1 to 3 remarketing messages, 95 % delivered), 4 % of direct visits
   credited post-view to a display campaign. ``visits`` and ``daily`` are
   then derived in SQL with the sink's own merge statements and its rules
   (a visit's first hit gives its day, landing page and traffic source; the
   visit counts in the daily row of that hit); a test checks them against
   what the sink writes from the same hits.
2. **Queries.** The five panels of the live dashboard
   (``connectors.data_query.dashboard``) for ``--period``, each run
   ``--runs`` times (after one warm-up run) through the partner API over HTTP
   (uvicorn on 127.0.0.1 in this process, a real ``query:read`` key, keep-alive
   client, the JSON answer read whole) and as the SQL the engine builds run
   directly on the same DuckDB database (``fetchall``), interleaved. The API
   path adds authentication, parsing, period resolution in the site's zone,
   the site's time-zone look-up and the JSON rendering.
3. **Sink.** ``--sink-hits`` generated hits are produced once to a
   ``hits.enriched``-shaped topic of 6 partitions; each round runs, each into
   a fresh DuckDB file with a fresh consumer group: (a) a raw confluent-kafka
   loop (batches of ``--batch-size``, plain fastavro decode, the rows staged
   as one Arrow table and inserted into ``hits``, the offsets written in the
   same DuckDB transaction): the ceiling; (a') the same loop merging the rows
   into hits, identities, visits and daily by vectorised SQL (what the sink
   writes); (b) the warehouse ``Sink`` as ``passerelle warehouse`` runs it.
   Rates from the partitions' assignment to the last row committed, medians
   of ``--sink-rounds`` interleaved rounds.

The last line reads ``ratios: sink=<b/a> api_overhead_p95=<Σ API p95 / Σ direct p95 over the five panels>``.
Everything runs on loopback, is bounded by ``--timeout`` and cleans up after
itself (temporary directory, topics, consumer groups, registry subjects).

    python -m bench.query [--hits 10000000] [--sink-hits 200000] [--runs 20]
"""

from __future__ import annotations

import argparse
import io
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Final

from confluent_kafka import TopicPartition

from passerelle.connectors.data_query import dashboard, engine, periods
from passerelle.connectors.data_query.sql import build
from passerelle.connectors.warehouse import ddl
from passerelle.connectors.warehouse.rows import COLUMNS, HITS, SiteZones, hit_row
from passerelle.connectors.warehouse.store import Store, open_store
from passerelle.connectors.warehouse.writer import MERGE
from passerelle.schemas.clients import Connection

SITES: Final = {"shop.example": "Europe/Paris", "blog.example": "America/New_York", "store.example": "UTC"}
"""The generated sites and their time zones (the ``sites`` table, the sink's ``site_timezones``)."""
CHUNK_VISITS: Final = 200_000
"""Visits generated per statement (about a million hits): the progress line's step."""
PREFIX: Final = "bench-query-"
IMPLS: Final = ("raw", "raw-all", "sink")
"""The sink part's implementations: raw loop writing hits only, raw loop writing the sink's tables, the sink."""
HIT_COLUMNS: Final = tuple(name for name, _ in COLUMNS["hits"])


class Deadline:
    """The bench's time bound: ``check`` raises ``TimeoutError`` naming the phase once it is passed."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def check(self, phase: str) -> None:
        if time.monotonic() > self.end:
            raise TimeoutError(f"bench query: --timeout {self.seconds:.0f} s reached during {phase}")


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# --- 1. the store -------------------------------------------------------------------------------------------------

_MACRO = "CREATE OR REPLACE TEMP MACRO rnd(v, j, m) AS CAST(hash(v * 64 + j) % m AS BIGINT)"
_GEN_VISITS = """
CREATE OR REPLACE TEMP TABLE gen_visits AS
WITH r AS (
    SELECT v, rnd(v, 1, 100) AS r_site, rnd(v, 2, {visitors}) AS visitor, rnd(v, 3, {days}) AS back,
           (rnd(v, 4, 86400) + rnd(v, 5, 86400)) // 2 AS sec, rnd(v, 6, 100) AS r_src, rnd(v, 7, 1000) AS r_tag,
           rnd(v, 16, 1000) AS r_src2, 1 + rnd(v, 8, 9) AS n_all, rnd(v, 9, 1000) AS r_conv,
           rnd(v, 10, 500) * rnd(v, 11, 500) // 500 AS landing, 10 + rnd(v, 12, 50) AS step_s,
           rnd(v, 15, 100) AS r_pv
    FROM range({v0}, {v1}) t(v)),
c AS (SELECT *, CAST({offset} + SUM(n_all) OVER (ORDER BY v) AS BIGINT) AS upto FROM r),
s AS (
    SELECT *, CAST(LEAST(n_all, {limit} - (upto - n_all)) AS BIGINT) AS n_hits,
           CASE WHEN r_site < 70 THEN 'shop.example' WHEN r_site < 90 THEN 'blog.example' ELSE 'store.example' END
               AS site,
           CASE WHEN r_src < 35 THEN 'direct' WHEN r_src < 55 THEN 'organic' WHEN r_src < 70 THEN 'cpc'
                WHEN r_src < 82 THEN 'email' WHEN r_src < 90 THEN 'social' WHEN r_src < 96 THEN 'display'
                ELSE 'referral' END AS medium,
           to_timestamp({midnight} - back * 86400 + CASE WHEN back = 0 THEN sec % {today} ELSE sec END) AS started,
           (r_tag * r_tag) // 1000 AS skew, visitor % 5 = 0 AS identified
    FROM c WHERE upto - n_all < {limit})
SELECT *,
       r_conv < 25 AS converts, r_conv BETWEEN 25 AND 104 AND n_hits >= 2 AS carts,
       CASE site WHEN 'shop.example' THEN 'Europe/Paris' WHEN 'blog.example' THEN 'America/New_York' ELSE 'UTC' END
           AS tz,
       CASE medium WHEN 'organic' THEN CASE WHEN r_src2 < 850 THEN 'google' ELSE 'bing' END
                   WHEN 'cpc' THEN CASE WHEN r_src2 < 750 THEN 'google' ELSE 'bing' END
                   WHEN 'email' THEN 'newsletter'
                   WHEN 'social' THEN CASE WHEN r_src2 < 600 THEN 'facebook' ELSE 'instagram' END
                   WHEN 'display' THEN CASE WHEN r_src2 < 500 THEN 'criteo' ELSE 'adform' END
                   WHEN 'referral' THEN CASE WHEN r_src2 < 500 THEN 'news.example' ELSE 'forum.example' END
       END AS source,
       CASE medium WHEN 'cpc' THEN skew * 40 // 1000 WHEN 'email' THEN skew * 60 // 1000
                   WHEN 'social' THEN skew * 30 // 1000 WHEN 'display' THEN skew * 40 // 1000 END AS tag_n,
       CASE medium WHEN 'cpc' THEN 'cpc-' WHEN 'email' THEN 'nl-' WHEN 'social' THEN 'soc-' WHEN 'display' THEN 'disp-'
       END || tag_n AS campaign,
       CASE WHEN tag_n % 3 <> 0 THEN 'K-' || campaign END AS campaign_key,
       CASE WHEN tag_n % 3 <> 0 THEN 'Campaign ' || campaign END AS campaign_name,
       CASE WHEN tag_n % 3 <> 0 THEN CASE medium WHEN 'cpc' THEN 'searchads' WHEN 'email' THEN 'mailer'
                                                 WHEN 'social' THEN 'socialco' ELSE source END END AS campaign_partner,
       CASE WHEN identified THEN 'C' || visitor END AS customer_id,
       'v' || visitor AS visitor_id, 'v' || visitor || ':' || v AS visit_id,
       CAST(15 + rnd(v, 14, 20000) / 100.0 AS DOUBLE) AS order_revenue
FROM s
"""
_GEN_HITS = """
CREATE OR REPLACE TEMP TABLE gen_hits AS
SELECT 'e' || v || '-' || k AS event_id, site, visitor_id, customer_id, event_time,
       CAST(timezone(tz, event_time) AS DATE) AS day, type,
       'https://' || site || CASE WHEN k = 0 THEN '/p/' || landing WHEN type = 'order' THEN '/checkout/done'
                                  ELSE '/p/' || rnd(v, 20 + k, 500) END AS url,
       CAST(NULL AS TEXT) AS page, visit_id, CAST(1 + rnd(v, 13, 5) AS INTEGER) AS visit_number, medium, source,
       campaign, campaign_key, campaign_name, campaign_partner,
       campaign IS NOT NULL AND campaign_key IS NULL AS campaign_undeclared,
       CASE WHEN type IN ('product_view', 'cart_add') THEN 'P' || rnd(v, 40 + k, 2000) END AS product_id,
       CASE WHEN type = 'order' THEN 'O' || v END AS order_id,
       CASE WHEN type = 'order' THEN order_revenue END AS revenue,
       CASE WHEN type = 'order' THEN 'EUR' END AS currency,
       CASE WHEN identified THEN ['F', 'M', 'X'][visitor % 3 + 1] END AS crm_gender,
       CASE WHEN identified THEN ['18-24', '25-34', '35-44', '45-54', '55-64', '65+'][visitor // 3 % 6 + 1] END
           AS crm_age_band,
       CASE WHEN identified THEN ['cadre', 'employe', 'ouvrier', 'retraite', 'etudiant', 'independant'][visitor // 7 % 6 + 1]
       END AS crm_csp
FROM (SELECT *, started + to_seconds(k * step_s) AS event_time,
             CASE WHEN converts AND k = n_hits - 1 THEN 'order' WHEN carts AND k = 1 THEN 'cart_add'
                  WHEN k % 3 = 2 THEN 'product_view' ELSE 'page_view' END AS type
      FROM (SELECT *, unnest(range(n_hits)) AS k FROM gen_visits))
"""  # noqa: E501
_GEN_FACTS = (
    """
CREATE OR REPLACE TEMP TABLE gen_carts AS
SELECT 'cart-' || v AS event_id, 'ep-' || v AS episode_id, site, visitor_id, customer_id,
       CAST(20 + rnd(v, 17, 30000) / 100.0 AS DOUBLE) AS value, 'EUR' AS currency, v, tz,
       started + to_seconds((n_hits - 1) * step_s + 2700) AS detected_at,
       CAST(timezone(tz, detected_at) AS DATE) AS day
FROM gen_visits WHERE carts AND NOT converts""",
    "INSERT INTO carts_abandoned BY NAME SELECT * EXCLUDE (v, tz) FROM gen_carts",
    """
CREATE OR REPLACE TEMP TABLE gen_messages AS
SELECT 'm-' || v || '-' || step AS message_id, episode_id AS sequence_id, CAST(step AS INTEGER) AS step, customer_id,
       site, step = 3 AS has_promotion, detected_at + to_seconds((step - 1) * 86400 + 600) AS created_at,
       CAST(timezone(tz, created_at) AS DATE) AS day
FROM (SELECT *, unnest(range(1, 2 + rnd(v, 18, 3))) AS step FROM gen_carts WHERE customer_id IS NOT NULL)""",
    "INSERT INTO remarketing_messages BY NAME SELECT * FROM gen_messages",
    """
INSERT INTO remarketing_deliveries BY NAME
SELECT message_id, sequence_id, step, customer_id, 'mailer' AS partner,
       CASE WHEN hash(message_id) % 100 < 95 THEN 'delivered' ELSE 'dead_lettered' END AS outcome,
       CAST(200 + hash(message_id) % 3000 AS BIGINT) AS latency_ms, created_at + INTERVAL 3 SECOND AS decided_at
FROM gen_messages""",
    """
INSERT INTO postview BY NAME
SELECT 'pv-' || v || '-' || kind AS postview_id, kind, visitor_id, customer_id, site,
       'K-disp-' || (1 + 3 * rnd(v, 19, 13)) AS campaign_key, event_time,
       CAST(timezone(tz, event_time) AS DATE) AS day, visit_id,
       CASE WHEN kind = 'order' THEN 'O' || v END AS order_id,
       CASE WHEN kind = 'order' THEN order_revenue END AS revenue,
       CASE WHEN kind = 'order' THEN 'EUR' END AS currency
FROM (SELECT *, 'visit' AS kind, started AS event_time FROM gen_visits WHERE medium = 'direct' AND r_pv < 4
      UNION ALL
      SELECT *, 'order' AS kind, started + to_seconds((n_hits - 1) * step_s) AS event_time FROM gen_visits
      WHERE medium = 'direct' AND r_pv < 4 AND converts)""",
)
_ORDER: Final = "order_id IS NOT NULL AND revenue IS NOT NULL"
_VISITS_OF = """
CREATE OR REPLACE TEMP TABLE bq_visits AS
SELECT visit_id, arg_min_null(site, event_time) AS site, arg_min_null(visitor_id, event_time) AS visitor_id,
       arg_min(customer_id, event_time) AS customer_id, MIN(event_time) AS started_at, MAX(event_time) AS last_hit_at,
       arg_min_null(day, event_time) AS day, arg_min_null(COALESCE(page, url), event_time) AS landing_page,
       arg_min_null(medium, event_time) AS medium, arg_min_null(source, event_time) AS source,
       arg_min_null(campaign, event_time) AS campaign, arg_min_null(campaign_key, event_time) AS campaign_key,
       arg_min_null(campaign_name, event_time) AS campaign_name,
       arg_min_null(campaign_partner, event_time) AS campaign_partner, COUNT(*) AS hits,
       COUNT(*) FILTER (WHERE {order}) AS orders, COALESCE(SUM(revenue) FILTER (WHERE {order}), 0.0) AS revenue,
       arg_min_null(crm_gender, event_time) AS crm_gender, arg_min_null(crm_age_band, event_time) AS crm_age_band,
       arg_min_null(crm_csp, event_time) AS crm_csp
FROM {src} GROUP BY visit_id"""
_DAILY_OF = """
SELECT site, day, medium, source, campaign_key, SUM(hits), SUM(visits), SUM(orders), SUM(revenue) FROM (
    SELECT site, day, medium, COALESCE(source, '') AS source, COALESCE(campaign_key, '') AS campaign_key,
           COUNT(*) AS hits, 0 AS visits, COUNT(*) FILTER (WHERE {order}) AS orders,
           COALESCE(SUM(revenue) FILTER (WHERE {order}), 0.0) AS revenue
    FROM {src} GROUP BY ALL
    UNION ALL
    SELECT site, day, medium, COALESCE(source, ''), COALESCE(campaign_key, ''), 0, 1, 0, 0.0
    FROM bq_visits WHERE visit_id NOT IN (SELECT visit_id FROM bq_known)
) GROUP BY site, day, medium, source, campaign_key"""


def _cols(table: str) -> str:
    return ", ".join(name for name, _ in COLUMNS[table])


def maintain(conn: Any, src: str, *, fresh: bool = False) -> None:
    """Merge the hits of relation ``src`` into hits, identities, visits and daily, as the sink does, in vectorised SQL.

    The sink's rules: a visit's first hit (by time) gives its site, day,
    landing page, traffic source and CRM attributes, its first known customer
    id sticks, counters add up (the sink's own ``MERGE`` statements); each hit
    counts in the daily row of its own day and source, each *new* visit in the
    daily row of its first hit; an order is an order hit with a revenue.
    ``src``'s hits are new (no replay), as the sink's exactly-once offsets make them. ``fresh``: its hits and
    visits are all new (the generator's), inserted without the ``ON CONFLICT`` clauses (the bulk load has no
    primary keys yet).
    """
    conn.execute(_VISITS_OF.format(src=src, order=_ORDER))
    conn.execute("CREATE OR REPLACE TEMP TABLE bq_known AS SELECT visit_id FROM visits "
                 "WHERE visit_id IN (SELECT visit_id FROM bq_visits)")  # fmt: skip
    conn.execute(f"INSERT INTO daily ({_cols('daily')}) {_DAILY_OF.format(src=src, order=_ORDER)} {MERGE['daily']}")
    conn.execute(
        f"INSERT INTO visits ({_cols('visits')}) SELECT {_cols('visits')} FROM bq_visits "
        f"{'' if fresh else MERGE['visits']}"
    )
    conn.execute(
        f"INSERT INTO hits ({_cols('hits')}) SELECT {_cols('hits')} FROM {src} {'' if fresh else MERGE['hits']}"
    )
    conn.execute("INSERT INTO identities (visitor_id, customer_id) SELECT DISTINCT visitor_id, customer_id "
                 f"FROM {src} WHERE customer_id IS NOT NULL {MERGE['identities']}")  # fmt: skip


_BULK_KEYS: Final = {"hits": "event_id", "visits": "visit_id"}
"""Primary keys added after the bulk load (DuckDB builds an index in bulk far faster than row by row)."""


def create_store(path: str) -> Store:
    """A store for :func:`fill`: the warehouse's tables, hits' and visits' primary keys and the secondary indexes
    left for :func:`fill` to build once the rows are in."""
    store = open_store(f"duckdb:///{path}", create=False)
    with store.connect() as conn:
        for name, sql in ddl.TABLES.items():
            if name in _BULK_KEYS:
                key = f"{_BULK_KEYS[name]} TEXT PRIMARY KEY"
                if key not in sql:
                    raise RuntimeError(f"bench query: the DDL of {name} no longer declares {key!r}: update _BULK_KEYS")
                sql = sql.replace(key, f"{_BULK_KEYS[name]} TEXT")
            conn.execute(" ".join(sql.split()))
    return store


def fill(store: Store, hits: int, days: int, now: datetime, deadline: Deadline | None = None,
         progress: Callable[[str], None] | None = None, memory_limit: str | None = None) -> dict[str, int]:  # fmt: skip
    """Generate ``hits`` hits (and their visits, daily rows, carts, messages, deliveries, post-view records,
    campaigns and sites) over the ``days`` days up to ``now``; the row count of each table."""
    midnight = datetime(now.year, now.month, now.day, tzinfo=UTC)
    today = max(1, int((now - midnight).total_seconds()))
    visitors = max(1, hits // 10)
    started = time.perf_counter()
    with store.connect() as conn:
        if memory_limit:
            conn.execute(f"SET memory_limit = '{memory_limit}'")
        conn.execute(_MACRO)
        conn.executemany("INSERT INTO sites (site, timezone) VALUES (?, ?) ON CONFLICT DO NOTHING",
                         sorted(SITES.items()))  # fmt: skip
        done, v0 = 0, 0
        while done < hits:
            if deadline is not None:
                deadline.check("the store's fill")
            conn.execute("BEGIN TRANSACTION")
            conn.execute(_GEN_VISITS.format(visitors=visitors, days=days, v0=v0, v1=v0 + CHUNK_VISITS, offset=done,
                                            limit=hits, midnight=int(midnight.timestamp()), today=today))  # fmt: skip
            conn.execute(_GEN_HITS)
            (made,) = conn.execute("SELECT COUNT(*) FROM gen_hits").fetchone()
            maintain(conn, "gen_hits", fresh=True)
            for sql in _GEN_FACTS:
                conn.execute(sql)
            conn.execute("COMMIT")
            done, v0 = done + int(made), v0 + CHUNK_VISITS
            if progress is not None:
                progress(f"fill: {done:>12,} / {hits:,} hits ({time.perf_counter() - started:.0f} s)")
        conn.execute(
            "INSERT INTO campaigns BY NAME SELECT campaign_key AS key, ANY_VALUE(campaign_name) AS name, "
            "ANY_VALUE(campaign_partner) AS partner, ANY_VALUE(medium) AS channel, ANY_VALUE(medium) AS medium, "
            f"to_timestamp({int(midnight.timestamp()) - days * 86400}) AS declared_at FROM visits "
            "WHERE campaign_key IS NOT NULL GROUP BY campaign_key ON CONFLICT DO NOTHING"
        )
        for table, key in _BULK_KEYS.items():
            conn.execute(f"ALTER TABLE {table} ADD PRIMARY KEY ({key})")
        for sql in ddl.INDEXES:
            conn.execute(sql)
        for name in ("gen_visits", "gen_hits", "gen_carts", "gen_messages", "bq_visits", "bq_known"):
            conn.execute(f"DROP TABLE IF EXISTS {name}")
        conn.execute("CHECKPOINT")
        tables = ("hits", "visits", "daily", "carts_abandoned", "remarketing_messages", "remarketing_deliveries",
                  "postview", "campaigns")  # fmt: skip
        return {t: int(conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]) for t in tables}


def hit_records(store: Store) -> Iterator[tuple[str, dict[str, Any]]]:
    """The store's hits as ``EnrichedHit`` records (key: the visitor id), visit by visit in time order."""
    with store.connect() as conn:
        cursor = conn.execute(f"SELECT {', '.join(HIT_COLUMNS)} FROM hits ORDER BY visit_id, event_time")
        while rows := cursor.fetchmany(10_000):
            for row in rows:
                yield row[2], enriched_hit(dict(zip(HIT_COLUMNS, row, strict=True)))


def enriched_hit(h: Mapping[str, Any]) -> dict[str, Any]:
    """One ``EnrichedHit`` record for a ``hits`` row (what the enrichment would have produced)."""
    ms = int(h["event_time"].timestamp() * 1000)
    declared = {"key": h["campaign_key"], "name": h["campaign_name"], "partner": h["campaign_partner"],
                "channel": h["medium"]} if h["campaign_key"] else None  # fmt: skip
    product = ({"id": h["product_id"], "name": None, "price": None, "currency": None, "quantity": 1,
                "category": None, "url": None, "image_url": None} if h["product_id"] else None)  # fmt: skip
    order = ({"order_id": h["order_id"], "revenue": h["revenue"], "currency": h["currency"], "lines": []}
             if h["order_id"] else None)  # fmt: skip
    crm = ({"gender": h["crm_gender"], "age_band": h["crm_age_band"], "csp": h["crm_csp"], "loyalty_tier": None,
            "marketing_consent": None} if h["customer_id"] else None)  # fmt: skip
    return {
        "event_id": h["event_id"], "site": h["site"], "visitor_id": h["visitor_id"], "customer_id": h["customer_id"],
        "event_time": ms, "type": h["type"], "url": h["url"], "referrer": None, "page": h["page"],
        "campaign_params": {"utm_campaign": h["campaign"]} if h["campaign"] else {}, "product": product,
        "order": order, "consent": {"analytics": True, "marketing": True}, "user_agent": None, "ip_truncated": None,
        "visit_id": h["visit_id"], "visit_number": h["visit_number"],
        "traffic_source": {"medium": h["medium"], "source": h["source"], "campaign": h["campaign"], "term": None,
                           "content": None, "click_id": None, "network": None},
        "declared_campaign": declared, "campaign_undeclared": h["campaign_undeclared"], "crm": crm,
        "enriched_at": ms,
    }  # fmt: skip


# --- 2. the queries: API vs direct ------------------------------------------------------------------------------


class Api:
    """The partner API in a thread of this process (uvicorn on 127.0.0.1, an ephemeral port), a ``query:read`` key."""

    def __init__(self, conn: Connection, store_url: str, run: str, timeout_s: float) -> None:
        import uvicorn

        from bench.enrich import create
        from passerelle.commands.partners import write_key
        from passerelle.connectors.partner_api.app import create_app
        from passerelle.connectors.partner_api.config import ApiConfig, ApiTopics
        from passerelle.connectors.partner_api.keys import new_key

        names = {f: f"{PREFIX}{run}.{f}" for f in ("campaigns", "undeclared", "keys", "templates")}
        # impressions and metrics: never written here, but named ours so that their subjects go with the cleanup
        topics = ApiTopics(**names, impressions=f"{PREFIX}{run}.impressions", metrics=f"{PREFIX}{run}.metrics")
        create(conn, dict.fromkeys(names.values(), 1), compact=True)
        made = new_key("bench", ["query:read"], int(time.time() * 1000), label="bench query")
        write_key(conn, topics.keys, None, made.record)
        self.key = made.api_key
        app = create_app(ApiConfig(bootstrap_servers=conn.bootstrap_servers, schema_registry_url=conn.registry_url,
                                   topics=topics, warehouse_url=store_url, warehouse_sink=False,
                                   start_timeout_s=timeout_s))  # fmt: skip
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(app, ws="none", proxy_headers=False, lifespan="on", log_level="warning",
                                access_log=False)  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        until = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > until:
                raise RuntimeError("the partner API did not start (see the log above)")
            time.sleep(0.05)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0-1) by linear interpolation between the closest ranks."""
    ordered = sorted(values)
    at = (len(ordered) - 1) * q
    low = int(at)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (at - low)


def time_queries(api: Api, store: Store, queries: Mapping[str, dict[str, Any]], runs: int, deadline: Deadline
                 ) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, int]]:  # fmt: skip
    """Each query ``runs`` times through the API and directly, interleaved (one warm-up run first): the seconds
    of each run per panel and path, and each panel's row count (the same on both paths, else ``RuntimeError``)."""
    import httpx

    direct_sql = {}
    for name, body in queries.items():
        query = engine.parse_query(body)
        zone = engine.site_timezone(store, query.site)
        period = periods.resolve(str(query.period), datetime.now(UTC), zone)
        direct_sql[name] = build(query, period, None, store.param)
    api_s: dict[str, list[float]] = {n: [] for n in queries}
    direct_s: dict[str, list[float]] = {n: [] for n in queries}
    rows: dict[str, int] = {}
    headers = {"Authorization": f"Bearer {api.key}"}
    with httpx.Client(base_url=api.url, headers=headers, timeout=120) as client, store.connect() as conn:

        def via_api(name: str) -> float:
            started = time.perf_counter()
            answer = client.post("/v1/query", json=queries[name])
            elapsed = time.perf_counter() - started
            if answer.status_code != 200:
                raise RuntimeError(f"{name}: the API answered {answer.status_code}: {answer.text[:500]}")
            got = len(answer.json()["rows"])
            if rows.setdefault(name, got) != got:
                raise RuntimeError(f"{name}: {got} rows through the API, {rows[name]} directly")
            return elapsed

        def direct(name: str) -> float:
            sql, params = direct_sql[name]
            started = time.perf_counter()
            got = len(conn.execute(sql, params).fetchall())
            elapsed = time.perf_counter() - started
            if rows.setdefault(name, got) != got:
                raise RuntimeError(f"{name}: {got} rows directly, {rows[name]} through the API")
            return elapsed

        for run in range(runs + 1):
            deadline.check("the query runs")
            for name in queries:
                pair = ((via_api, api_s), (direct, direct_s))
                for measure, into in pair if run % 2 == 0 else tuple(reversed(pair)):
                    elapsed = measure(name)
                    if run:  # run 0 warms the caches up
                        into[name].append(elapsed)
            if run and run % max(1, runs // 4) == 0:
                log(f"queries: run {run}/{runs}")
    return api_s, direct_s, rows


# --- 3. the sink vs a raw loop -----------------------------------------------------------------------------------


def _timed_sink(store: Store, config: Any) -> Any:
    """The warehouse sink, noting when its partitions were first assigned (where the raw loop's clock starts).

    Defined here, not at import: ``passerelle --help`` imports this module for its description and must not load
    the stream runtime the sink is built on."""
    from passerelle.connectors.warehouse.sink import Sink

    class TimedSink(Sink):
        assigned_at = 0.0

        def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
            super()._on_assign(consumer, partitions)
            if not self.assigned_at:
                self.assigned_at = time.perf_counter()

    return TimedSink(store, config)


def run_sink(conn: Connection, topic: str, path: Path, records: int, group: str, batch_size: int,
             deadline: Deadline) -> float:  # fmt: skip
    """(b) The warehouse sink into a fresh DuckDB file: records/s from assignment to the last row committed."""
    from passerelle.connectors.warehouse.sink import SinkConfig

    store = open_store(f"duckdb:///{path}")
    config = SinkConfig(connection=conn, topics={HITS: topic}, site_timezones=SITES, name="bench", group_id=group,
                        batch_size=batch_size, progress_every_s=3600)  # fmt: skip
    sink = _timed_sink(store, config)
    stop = threading.Event()
    failure: list[BaseException] = []

    def loop() -> None:
        try:
            sink.run(stop)
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=loop, name="bench-sink", daemon=True)
    thread.start()
    registry = sink.metrics.registry
    try:
        while (registry.get_sample_value("passerelle_warehouse_records_total", {"topic": topic}) or 0) < records:
            if failure:
                raise RuntimeError(f"the sink stopped: {failure[0]}") from failure[0]
            deadline.check("the sink's run")
            time.sleep(0.01)
        ended = time.perf_counter()
    finally:
        stop.set()
        thread.join(60)
    with store.connect() as db:
        (stored,) = db.execute("SELECT COUNT(*) FROM hits").fetchone()
    store.close()
    if stored != records:
        raise RuntimeError(f"the sink stored {stored} hits of {records}")
    return records / (ended - sink.assigned_at)


def run_raw(conn: Connection, topic: str, path: Path, records: int, group: str, batch_size: int,
            deadline: Deadline, *, hits_only: bool = False) -> float:  # fmt: skip
    """(a) The raw loop: consume a batch, decode (fastavro, writer schema), rows as one Arrow table, merged by
    :func:`maintain` with the offsets in the same transaction; records/s from assignment to the last commit.

    ``hits_only``: the rows go to ``hits`` alone (``ON CONFLICT DO NOTHING``, as the sink's), no identities,
    visits nor daily rows: the ceiling of a loop that writes the hits exactly-once.
    """
    import fastavro
    import pyarrow as pa

    from passerelle.schemas import clients
    from passerelle.schemas.serde import SchemaCache, registry_fetcher

    kinds = {"text": pa.string(), "int": pa.int64(), "float": pa.float64(), "bool": pa.bool_(),
             "ts": pa.timestamp("us", tz="UTC"), "day": pa.date32()}  # fmt: skip
    schema = pa.schema([(n, kinds[k]) for n, k in COLUMNS["hits"]])
    zones = SiteZones(SITES)
    cache = SchemaCache(registry_fetcher(clients.registry_client(conn)))
    reader = fastavro.schemaless_reader
    store = open_store(f"duckdb:///{path}")
    consumer = clients.consumer(conn, group, {"auto.offset.reset": "earliest", "isolation.level": "read_committed"})
    assigned = [0.0]

    def on_assign(c: Any, partitions: list[TopicPartition]) -> None:
        c.assign(partitions)
        assigned[0] = assigned[0] or time.perf_counter()

    consumer.subscribe([topic], on_assign=on_assign)
    done = 0
    try:
        with store.connect() as db:
            while done < records:
                deadline.check("the raw loop's run")
                msgs = [m for m in consumer.consume(batch_size, timeout=0.5) if m.error() is None]
                if not msgs:
                    continue
                rows: list[tuple[Any, ...]] = []
                offsets: dict[int, int] = {}
                for msg in msgs:
                    raw: Any = msg.value()
                    value: Any = reader(io.BytesIO(raw[5:]), cache.get(int.from_bytes(raw[1:5], "big")), None)
                    rows.append(hit_row(value, zones))
                    offsets[msg.partition() or 0] = (msg.offset() or 0) + 1
                columns = list(zip(*rows, strict=True))
                table = pa.Table.from_arrays([pa.array(c, type=f.type) for c, f in zip(columns, schema, strict=True)],
                                             schema=schema)  # fmt: skip
                db.execute("BEGIN TRANSACTION")
                db.register("bq_src", table)
                if hits_only:
                    db.execute(f"INSERT INTO hits ({_cols('hits')}) SELECT {_cols('hits')} FROM bq_src {MERGE['hits']}")
                else:
                    maintain(db, "bq_src")
                db.executemany(
                    "INSERT INTO sink_offsets (sink, topic, kafka_partition, next_offset) VALUES ('raw', ?, ?, ?) "
                    "ON CONFLICT (sink, topic, kafka_partition) DO UPDATE SET next_offset = excluded.next_offset",
                    [(topic, p, o) for p, o in sorted(offsets.items())],
                )
                db.execute("COMMIT")
                db.unregister("bq_src")
                consumer.commit(offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()], asynchronous=True)
                done += len(msgs)
            ended = time.perf_counter()
    finally:
        consumer.close()
        store.close()
    return done / (ended - assigned[0])


def sink_rates(conn: Connection, topic: str, work: Path, records: int, rounds: int, batch_size: int, run: str,
               deadline: Deadline) -> dict[str, list[float]]:  # fmt: skip
    """Each implementation of :data:`IMPLS` once per round, every other round in reverse order: hits/s per round."""
    rates: dict[str, list[float]] = {impl: [] for impl in IMPLS}
    runners: dict[str, Callable[..., float]] = {"raw": partial(run_raw, hits_only=True), "raw-all": run_raw,
                                                "sink": run_sink}  # fmt: skip
    for round_ in range(rounds):
        for impl in IMPLS if round_ % 2 == 0 else tuple(reversed(IMPLS)):
            path = work / f"{impl}-{round_}.duckdb"
            rate = runners[impl](conn, topic, path, records, f"{PREFIX}{run}.{impl}.{round_}", batch_size, deadline)
            rates[impl].append(rate)
            path.unlink(missing_ok=True)
            Path(f"{path}.wal").unlink(missing_ok=True)
            log(f"sink round {round_ + 1} {impl:<7} {rate:>9,.0f} hits/s")
    return rates


def produce_hits(conn: Connection, topic: str, work: Path, records: int, days: int, now: datetime) -> None:
    """``records`` generated hits (the same generator as the store's) on ``topic``, keyed by visitor."""
    from bench.enrich import Producer_

    source = create_store(str(work / "sink-input.duckdb"))
    fill(source, records, days, now)
    feeder = Producer_(conn, topic, "EnrichedHit")
    for key, value in hit_records(source):
        feeder._produce(key, value)
    feeder.producer.flush(120)
    source.close()


# --- the command ------------------------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--hits",
        type=int,
        default=10_000_000,
        help="hits generated into the store the queries read (default 10,000,000; about 5 per visit)",
    )
    p.add_argument("--days", type=int, default=90, help="days the generated traffic spreads over, up to today")
    p.add_argument(
        "--period",
        default="last30",
        help="the dashboard's period for the queries (default last30; today, yesterday, last7...)",
    )
    p.add_argument(
        "--site",
        default=None,
        help="the dashboard's site (default: all; generated: shop.example, blog.example, store.example)",
    )
    p.add_argument("--runs", type=int, default=20, help="timed runs of each panel on each path (after one warm-up)")
    p.add_argument(
        "--sink-hits",
        type=int,
        default=200_000,
        help="hits produced to Kafka for the sink vs raw-loop throughput (default 200,000)",
    )
    p.add_argument("--sink-rounds", type=int, default=3, help="interleaved rounds of sink and raw loop (medians)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=10_000,
        help="records per transaction of both the sink and the raw loop (the sink's default)",
    )
    p.add_argument("--memory-limit", default="6GB", help="DuckDB's memory limit while filling the store")
    p.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="where the temporary DuckDB files go (a fresh directory inside it, removed at the end)",
    )
    p.add_argument("--skip", nargs="*", choices=("queries", "sink"), default=[], help="parts not to run")
    p.add_argument("--timeout", type=float, default=3600, help="the whole bench's time bound, in seconds")  # fmt: skip


def report_lines(args: argparse.Namespace, counts: Mapping[str, int], api_s: Mapping[str, list[float]],
                 direct_s: Mapping[str, list[float]], rows: Mapping[str, int], rates: Mapping[str, list[float]],
                 fill_s: float) -> list[str]:  # fmt: skip
    lines: list[str] = []
    ratios: list[str] = []
    if api_s:
        lines.append(
            f"store: {counts['hits']:,} hits, {counts['visits']:,} visits, {counts['daily']:,} daily rows, "
            f"{counts['carts_abandoned']:,} carts, {counts['remarketing_messages']:,} messages, "
            f"{counts['postview']:,} post-view records over {args.days} days, filled in {fill_s:.0f} s"
        )
        lines.append(f"queries: period {args.period}, site {args.site or 'all'}, {args.runs} runs each (ms)")
        lines.append(f"{'panel':<20}{'rows':>6}{'api p50':>10}{'api p95':>10}{'direct p50':>12}{'direct p95':>12}"
                     f"{'p50 x':>8}{'p95 x':>8}")  # fmt: skip
        for name in api_s:
            a50, a95 = percentile(api_s[name], 0.5) * 1000, percentile(api_s[name], 0.95) * 1000
            d50, d95 = percentile(direct_s[name], 0.5) * 1000, percentile(direct_s[name], 0.95) * 1000
            lines.append(f"{name:<20}{rows[name]:>6}{a50:>10.1f}{a95:>10.1f}{d50:>12.1f}{d95:>12.1f}"
                         f"{a50 / d50:>8.2f}{a95 / d95:>8.2f}")  # fmt: skip
        api95 = sum(percentile(v, 0.95) for v in api_s.values())
        direct95 = sum(percentile(v, 0.95) for v in direct_s.values())
        lines.append(f"{'all five (sum)':<20}{'':>6}{'':>10}{api95 * 1000:>10.1f}{'':>12}{direct95 * 1000:>12.1f}"
                     f"{'':>8}{api95 / direct95:>8.2f}")  # fmt: skip
        ratios.append(f"api_overhead_p95={api95 / direct95:.2f}")
    if rates["raw"]:
        med = {impl: statistics.median(r) for impl, r in rates.items()}
        lines.append(f"sink: {args.sink_hits:,} hits, batches of {args.batch_size:,}, "
                     f"median of {args.sink_rounds} rounds (hits/s)")  # fmt: skip
        lines.append(f"{'implementation':<66}{'hits/s':>10}{'x raw':>8}")
        labels = {"raw": "(a) raw loop: hits only (Arrow insert), offsets in the txn",
                  "raw-all": "(a') raw loop: hits, identities, visits, daily (vectorised SQL)",
                  "sink": "(b) warehouse Sink (passerelle warehouse), same tables"}  # fmt: skip
        for impl, label in labels.items():
            lines.append(f"{label:<66}{med[impl]:>10,.0f}{med[impl] / med['raw']:>8.2f}")
        ratios.insert(0, f"sink={med['sink'] / med['raw']:.2f}")
    lines.append(f"ratios: {' '.join(ratios)}")
    return lines


def run(args: argparse.Namespace, bootstrap: str, registry: str) -> int:
    """The whole bench (see the module docstring); prints the table, the ratios line last."""
    from bench.runtime import cleanup

    for name in ("hits", "runs", "sink_hits", "sink_rounds", "batch_size", "days"):
        if getattr(args, name) < 1:
            raise SystemExit(f"bench query: --{name.replace('_', '-')} must be at least 1")
    dashboard.default_step(args.period)
    queries = dashboard.dashboard_queries(args.period, args.site)
    conn = Connection.plain(bootstrap, registry)
    deadline = Deadline(args.timeout)
    run_id = uuid.uuid4().hex[:8]
    work = Path(tempfile.mkdtemp(prefix="passerelle-bench-query-", dir=args.dir))
    now = datetime.now(UTC)
    counts: dict[str, int] = {}
    api_s: dict[str, list[float]] = {}
    direct_s: dict[str, list[float]] = {}
    rows: dict[str, int] = {}
    rates: dict[str, list[float]] = {impl: [] for impl in IMPLS}
    fill_s = 0.0
    try:
        if "queries" not in args.skip:
            path = work / "store.duckdb"
            store = create_store(str(path))
            started = time.perf_counter()
            counts = fill(store, args.hits, args.days, now, deadline, log, args.memory_limit)
            fill_s = time.perf_counter() - started
            log(f"fill: done in {fill_s:.0f} s: {counts}")
            api = Api(conn, f"duckdb:///{path}", run_id, timeout_s=60)
            try:
                api_s, direct_s, rows = time_queries(api, store, queries, args.runs, deadline)
            finally:
                api.close()
                store.close()
        if "sink" not in args.skip:
            from bench.runtime import create

            topic = f"{PREFIX}{run_id}.hits"
            create(conn, topic, partitions=6)
            produce_hits(conn, topic, work, args.sink_hits, args.days, now)
            log(f"sink: {args.sink_hits:,} hits on {topic}")
            rates = sink_rates(conn, topic, work, args.sink_hits, args.sink_rounds, args.batch_size, run_id, deadline)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        cleanup(conn, PREFIX, run_id)
    for line in report_lines(args, counts, api_s, direct_s, rows, rates, fill_s):
        print(line, flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.query", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--registry", default="http://127.0.0.1:8081")
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run(args, args.bootstrap, args.registry)


if __name__ == "__main__":
    sys.exit(main())
