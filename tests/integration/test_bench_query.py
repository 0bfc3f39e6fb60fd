"""``passerelle bench query``: its generated store is what the warehouse sink would write, and the bench runs end
to end on the real broker, registry and partner API with tiny counts (no timing asserted)."""

from __future__ import annotations

import contextlib
import io
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bench import query as bench_query
from passerelle.cli import main
from passerelle.connectors.warehouse.rows import HITS, Batch, SiteZones
from passerelle.connectors.warehouse.store import Store, open_store
from passerelle.connectors.warehouse.writer import Writer
from passerelle.schemas.clients import Connection, admin_client

pytestmark = pytest.mark.integration

TABLES = {"hits": "event_id", "visits": "visit_id", "daily": "site, day, medium, source, campaign_key",
          "identities": "visitor_id, customer_id"}  # fmt: skip


def rows(store: Store, table: str) -> list[tuple[Any, ...]]:
    with store.connect() as conn:
        return [tuple(round(v, 6) if isinstance(v, float) else v for v in row)
                for row in conn.execute(f"SELECT * FROM {table} ORDER BY {TABLES[table]}").fetchall()]  # fmt: skip


def test_the_generated_visits_and_daily_rows_are_the_ones_the_sink_writes_from_the_same_hits(tmp_path: Path) -> None:
    generated = bench_query.create_store(str(tmp_path / "generated.duckdb"))
    counts = bench_query.fill(generated, 3000, 10, datetime.now(UTC))
    assert counts["hits"] == 3000 and counts["visits"] > 300 and counts["carts_abandoned"] > 0
    sunk = open_store(f"duckdb:///{tmp_path / 'sunk.duckdb'}")
    records = [value for _, value in bench_query.hit_records(generated)]
    with sunk.connect() as conn:
        writer = Writer(sunk, conn, "test")
        for start in range(0, len(records), 997):  # visits cut across batches: merged as the sink merges them
            batch = Batch(SiteZones(bench_query.SITES))
            for record in records[start : start + 997]:
                batch.add(HITS, None, record)
            writer.write(batch, {})
    for table in TABLES:
        assert rows(generated, table) == rows(sunk, table), table
    with generated.connect() as conn:  # the spread a dashboard shows: every site, medium and a declared campaign
        sites, mediums, declared, orders = conn.execute(
            "SELECT COUNT(DISTINCT site), COUNT(DISTINCT medium), COUNT(campaign_key), SUM(orders) FROM visits"
        ).fetchone()
    assert (sites, mediums) == (3, 7) and declared > 0 and orders > 0


def test_bench_query_runs_end_to_end_and_prints_the_ratios_line_last(
    kafka_bootstrap: str, schema_registry_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith("PASSERELLE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PASSERELLE_BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("PASSERELLE_SCHEMA_REGISTRY_URL", schema_registry_url)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["bench", "query", "--hits", "20000", "--sink-hits", "2000", "--runs", "3", "--sink-rounds", "1",
                     "--dir", str(tmp_path)])  # fmt: skip
    assert code == 0
    lines = out.getvalue().splitlines()
    assert re.fullmatch(r"ratios: sink=\d+\.\d\d api_overhead_p95=\d+\.\d\d", lines[-1]), lines[-1]
    table = "\n".join(lines)
    for panel in ("traffic_by_source", "traffic_by_campaign", "top_campaigns", "remarketing_funnel", "postview"):
        assert re.search(rf"^{panel}\s+\d+\s", table, re.M), panel
    assert "store: 20,000 hits" in table
    assert list(tmp_path.iterdir()) == []  # its DuckDB files are gone
    topics = admin_client(Connection.plain(kafka_bootstrap, schema_registry_url)).list_topics(timeout=30).topics
    assert not [t for t in topics if t.startswith(bench_query.PREFIX)]
