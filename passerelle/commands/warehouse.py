"""``passerelle warehouse``: run the analytics store's sink (topics -> DuckDB or PostgreSQL, exactly-once)."""

from __future__ import annotations

import argparse
import signal
import threading
from typing import Any

from passerelle.errors import PasserelleError
from passerelle.settings import WarehouseSettings, load


def default_store_url(settings: WarehouseSettings) -> str:
    """The store named by the settings, else the DuckDB file in the state folder."""
    return settings.warehouse_store or f"duckdb:///{(settings.state_dir / 'warehouse.duckdb').resolve()}"


def _run(args: argparse.Namespace) -> int:
    from passerelle.connectors.warehouse.rows import parse_site_timezones
    from passerelle.connectors.warehouse.sink import Sink, SinkConfig, parse_topics
    from passerelle.connectors.warehouse.store import open_store

    settings = load(WarehouseSettings)
    assert isinstance(settings, WarehouseSettings)
    try:
        zones = parse_site_timezones(settings.warehouse_site_timezones)
        topics = parse_topics(settings.warehouse_topics)
    except ValueError as exc:
        raise PasserelleError(str(exc)) from None
    config = SinkConfig(
        connection=settings.connection(),
        topics=topics,
        site_timezones=zones,
        name=args.name,
        group_id=args.group_id,
        instance_id=settings.instance_id,
        batch_size=settings.warehouse_batch_size,
        max_wait_s=settings.warehouse_max_wait_ms / 1000,
        dead_letter_topic=settings.dead_letter_topic,
        catalog_path=settings.catalog,
    )
    store = open_store(args.store or default_store_url(settings))
    sink = Sink(store, config)
    if settings.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(settings.metrics_port, registry=sink.metrics.registry)
    stop = threading.Event()

    def stop_on_signal(signum: int, frame: Any) -> None:
        stop.set()  # the loop finishes its batch (or drops it uncommitted) and closes

    signal.signal(signal.SIGTERM, stop_on_signal)
    signal.signal(signal.SIGINT, stop_on_signal)
    try:
        sink.run(stop)
    finally:
        store.close()
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``warehouse``."""
    p = sub.add_parser(
        "warehouse",
        help="run the analytics store's sink: topics -> DuckDB (default) or PostgreSQL, exactly-once",
        description="Read hits.enriched, carts.abandoned, remarketing.messages, remarketing.deliveries, campaigns, "
        "ads.postview, partners.metrics and conversions.paths into the analytics store, with visits and daily "
        "aggregates kept current. Exactly-once: each batch's consumed offsets are stored in the same database "
        "transaction as its rows, and a restart resumes from them. Erasure requests (privacy.requests) and CRM "
        "tombstones (crm.profiles) delete the person's rows in every table (their visitor ids from identity.links "
        "and identified hits included). Undecodable records go to the dead-letter topic. Stops cleanly on "
        "SIGTERM/SIGINT. DuckDB lets one process open the file: run the sink inside `passerelle api` instead "
        "when both need the store; use PostgreSQL for several API instances.",
        epilog="Settings: PASSERELLE_WAREHOUSE_STORE, PASSERELLE_WAREHOUSE_SITE_TIMEZONES, "
        "PASSERELLE_WAREHOUSE_TOPICS, PASSERELLE_WAREHOUSE_BATCH_SIZE, PASSERELLE_WAREHOUSE_MAX_WAIT_MS, "
        "PASSERELLE_INSTANCE_ID, PASSERELLE_METRICS_PORT, PASSERELLE_DEAD_LETTER_TOPIC.",
    )
    p.add_argument(
        "--store",
        help="store URL: duckdb:///path/to/file.duckdb or postgresql://user:password@host:port/db "
        "(default: PASSERELLE_WAREHOUSE_STORE, else duckdb:///<state dir>/warehouse.duckdb)",
    )
    p.add_argument("--group-id", default="passerelle-warehouse", help="consumer group (default passerelle-warehouse)")
    p.add_argument("--name", default="warehouse", help="the sink's name in the store's sink_offsets table")
    p.set_defaults(func=_run)
