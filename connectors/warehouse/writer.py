"""One batch of rows and its consumed offsets -> one database transaction, on DuckDB or PostgreSQL.

Rows are *staged* first, then merged with the same SQL on both backends
(``INSERT ... SELECT FROM stage_<table> ON CONFLICT ...``): on DuckDB the stage
is an Arrow table registered on the connection (a columnar scan, far faster
than ``executemany``, which DuckDB runs row by row); on PostgreSQL it is a
temporary table filled with ``COPY`` (one round trip instead of one per row).

The offsets are written in the same transaction, guarded by the value last
read (``UPDATE ... WHERE next_offset = <expected>``): a sink instance that lost
its partitions in a rebalance but still writes finds its guard broken and
rolls back (:class:`OffsetConflict`) instead of writing the rows a second time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from passerelle.connectors.warehouse.rows import COLUMNS, INSERT_ONLY, Batch, Erasure, Row
from passerelle.connectors.warehouse.store import Store


class OffsetConflict(Exception):
    """The stored offset of a partition is not the one this sink read: another instance wrote it (rolled back)."""


@dataclass(frozen=True)
class OffsetMove:
    """A partition's progress in this batch: the stored next offset before (None: none stored) and after."""

    expected: int | None
    next_offset: int


# Tables holding a person's rows: (table, customer column or None, visitor column or None).
PERSONAL: tuple[tuple[str, str | None, str | None], ...] = (
    ("hits", "customer_id", "visitor_id"),
    ("visits", "customer_id", "visitor_id"),
    ("carts_abandoned", "customer_id", "visitor_id"),
    ("remarketing_messages", "customer_id", None),
    ("remarketing_deliveries", "customer_id", None),
    ("postview", "customer_id", "visitor_id"),
    ("conversion_paths", "customer_id", "visitor_id"),
    ("identities", "customer_id", "visitor_id"),  # last: it says which visitor ids a customer had
)

_KEYS = {"campaigns": "key", "partner_metrics": "metric_id", "conversion_paths": "conversion_id", "visits": "visit_id"}


def _cols(table: str) -> list[str]:
    return [name for name, _ in COLUMNS[table]]


def _replace_all(table: str) -> str:
    key = _KEYS[table]
    return ", ".join(f"{c} = excluded.{c}" for c in _cols(table) if c != key)


MERGE: dict[str, str] = {
    **{t: "ON CONFLICT DO NOTHING" for t in INSERT_ONLY},
    "visits": "ON CONFLICT (visit_id) DO UPDATE SET hits = visits.hits + excluded.hits, "
    "orders = visits.orders + excluded.orders, revenue = visits.revenue + excluded.revenue, "
    "last_hit_at = GREATEST(visits.last_hit_at, excluded.last_hit_at), "
    "customer_id = COALESCE(visits.customer_id, excluded.customer_id)",
    "daily": "ON CONFLICT (site, day, medium, source, campaign_key) DO UPDATE SET hits = daily.hits + excluded.hits, "
    "visits = daily.visits + excluded.visits, orders = daily.orders + excluded.orders, "
    "revenue = daily.revenue + excluded.revenue",
    "campaigns": f"ON CONFLICT (key) DO UPDATE SET {_replace_all('campaigns')}",
    "partner_metrics": f"ON CONFLICT (metric_id) DO UPDATE SET {_replace_all('partner_metrics')}",
    "markov_credits": "ON CONFLICT DO NOTHING",  # the label's rows were deleted first, in the same transaction
    "conversion_paths": f"ON CONFLICT (conversion_id) DO UPDATE SET {_replace_all('conversion_paths')} "
    "WHERE excluded.revision >= conversion_paths.revision",
}
"""How the staged rows of each table merge into it."""


class Writer:
    """Writes batches through one connection of a :class:`Store` (one thread)."""

    def __init__(self, store: Store, conn: Any, sink: str) -> None:
        self.store = store
        self.conn = conn
        self.sink = sink
        self.p = store.param
        self._staged: set[str] = set()
        if store.dialect == "duckdb":
            import pyarrow as pa

            kinds = {"text": pa.string(), "int": pa.int64(), "float": pa.float64(), "bool": pa.bool_(),
                     "ts": pa.timestamp("us", tz="UTC"), "day": pa.date32()}  # fmt: skip
            self._schemas = {t: pa.schema([(n, kinds[k]) for n, k in cols]) for t, cols in COLUMNS.items()}

    # --- reading the sink's own state --------------------------------------------------------------------------

    def offsets(self, topics: Sequence[str]) -> dict[tuple[str, int], int]:
        """The stored next offset of every partition of ``topics``."""
        if not topics:
            return {}
        marks = ", ".join([self.p] * len(topics))
        rows = self._execute(
            "SELECT topic, kafka_partition, next_offset FROM sink_offsets "
            f"WHERE sink = {self.p} AND topic IN ({marks})",
            [self.sink, *topics],
        ).fetchall()
        self._end()
        return {(str(t), int(p)): int(o) for t, p, o in rows}

    def erasures(self) -> list[tuple[str, str, Any]]:
        rows = self._execute("SELECT kind, person, requested_at FROM erasures").fetchall()
        self._end()
        return [(str(k), str(p), at) for k, p, at in rows]

    def write_sites(self, rows: Sequence[Row]) -> None:
        """The sites' time zones (replaced: the settings are the truth)."""
        self._begin()
        try:
            for site, zone in rows:
                self._execute(f"DELETE FROM sites WHERE site = {self.p}", [site])
                self._execute(f"INSERT INTO sites (site, timezone) VALUES ({self.p}, {self.p})", [site, zone])
            self._commit()
        except BaseException:
            self._rollback()
            raise

    # --- one batch -----------------------------------------------------------------------------------------------

    def write(self, batch: Batch, offsets: Mapping[tuple[str, int], OffsetMove]) -> dict[str, int]:
        """Rows, deletes, erasures and offsets in one transaction; the rows written per table."""
        written: dict[str, int] = {}
        self._begin()
        try:
            for table in INSERT_ONLY:
                rows = list(batch.inserts[table].values())
                if rows:
                    self._merge(table, rows)
                    written[table] = len(rows)
            if batch.visits:
                visits = batch.visit_rows()
                self._stage("visits", visits)
                existing = {str(v) for (v,) in self._execute(
                    "SELECT visit_id FROM visits WHERE visit_id IN (SELECT visit_id FROM stage_visits)"
                ).fetchall()}  # fmt: skip
                self._merge("visits", visits, staged=True)
                daily = batch.daily_rows(existing)
                self._merge("daily", daily)
                written["visits"], written["daily"] = len(visits), len(daily)
            for table, latest in (("campaigns", batch.campaigns), ("partner_metrics", batch.metrics)):
                key = _KEYS[table]
                for gone in [k for k, row in latest.items() if row is None]:
                    self._execute(f"DELETE FROM {table} WHERE {key} = {self.p}", [gone])
                rows = [row for row in latest.values() if row is not None]
                if rows:
                    self._merge(table, rows)
                if latest:
                    written[table] = len(latest)
            if batch.paths:
                self._merge("conversion_paths", list(batch.paths.values()))
                written["conversion_paths"] = len(batch.paths)
            if batch.markov:  # a new run replaces its label's channels whole; a tombstone deletes them
                for period in batch.markov:
                    self._execute(f"DELETE FROM markov_credits WHERE period = {self.p}", [period])
                credits = [row for rows in batch.markov.values() for row in rows]
                if credits:
                    self._merge("markov_credits", credits)
                written["markov_credits"] = len(batch.markov)
            for visitor in batch.unlinks:
                self._execute(f"DELETE FROM identities WHERE visitor_id = {self.p}", [visitor])
            for erasure in batch.erasures:
                self._erase(erasure)
            if batch.erasures:
                written["erasures"] = len(batch.erasures)
            self._move_offsets(offsets)
            self._commit()
        except BaseException:
            self._rollback()
            raise
        finally:
            self._unstage()
        return written

    def _merge(self, table: str, rows: Sequence[Row], staged: bool = False) -> None:
        if not staged:
            self._stage(table, rows)
        cols = ", ".join(_cols(table))
        self._execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM stage_{table} {MERGE[table]}")

    def _erase(self, erasure: Erasure) -> None:
        """Every row of the person: the customer's, and those of each visitor id linked to them."""
        p = self.p
        visitors = {erasure.visitor_id} if erasure.visitor_id else set()
        if erasure.customer_id:
            visitors |= {str(v) for (v,) in self._execute(
                f"SELECT visitor_id FROM identities WHERE customer_id = {p}", [erasure.customer_id]
            ).fetchall()}  # fmt: skip
        for table, customer_col, visitor_col in PERSONAL:
            if erasure.customer_id and customer_col:
                self._execute(f"DELETE FROM {table} WHERE {customer_col} = {p}", [erasure.customer_id])
            if visitor_col:
                for visitor in sorted(visitors):
                    self._execute(f"DELETE FROM {table} WHERE {visitor_col} = {p}", [visitor])
        people = [("visitor", v) for v in sorted(visitors)]
        if erasure.customer_id:
            people.append(("customer", erasure.customer_id))
        for kind, person in people:
            self._execute(
                f"INSERT INTO erasures (kind, person, requested_at) VALUES ({p}, {p}, {p}) ON CONFLICT (kind, person) "
                "DO UPDATE SET requested_at = GREATEST(erasures.requested_at, excluded.requested_at)",
                [kind, person, erasure.at],
            )

    def _move_offsets(self, offsets: Mapping[tuple[str, int], OffsetMove]) -> None:
        p = self.p
        for (topic, partition), move in sorted(offsets.items()):
            if move.expected is None:
                self._execute(
                    f"INSERT INTO sink_offsets (sink, topic, kafka_partition, next_offset) VALUES ({p}, {p}, {p}, {p})",
                    [self.sink, topic, partition, move.next_offset],
                )  # a concurrent first write of the same partition breaks the primary key: rolled back
                continue
            result = self._execute(
                f"UPDATE sink_offsets SET next_offset = {p} WHERE sink = {p} AND topic = {p} "
                f"AND kafka_partition = {p} AND next_offset = {p}",
                [move.next_offset, self.sink, topic, partition, move.expected],
            )
            changed = result.fetchone()[0] if self.store.dialect == "duckdb" else result.rowcount
            if changed != 1:
                raise OffsetConflict(
                    f"sink {self.sink}: {topic}[{partition}] is no longer at offset {move.expected} in the store "
                    "(another sink instance wrote it): batch rolled back"
                )

    # --- staging and transactions, per backend -------------------------------------------------------------------

    def _stage(self, table: str, rows: Sequence[Row]) -> None:
        name = f"stage_{table}"
        if self.store.dialect == "duckdb":
            import pyarrow as pa

            schema = self._schemas[table]
            columns = list(zip(*rows, strict=True)) if rows else [() for _ in schema]
            data = pa.Table.from_arrays(
                [pa.array(col, type=f.type) for col, f in zip(columns, schema, strict=True)], schema=schema
            )
            self.conn.register(name, data)
            self._staged.add(name)
            return
        if name not in self._staged:
            self.conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {name} (LIKE {table}) ON COMMIT DELETE ROWS")
            self._staged.add(name)
        cols = ", ".join(_cols(table))
        with self.conn.cursor().copy(f"COPY {name} ({cols}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)

    def _unstage(self) -> None:
        if self.store.dialect == "duckdb":
            for name in self._staged:
                self.conn.unregister(name)
            self._staged.clear()

    def _execute(self, sql: str, params: Sequence[Any] | None = None) -> Any:
        return self.conn.execute(sql, params) if params is not None else self.conn.execute(sql)

    def _begin(self) -> None:
        if self.store.dialect == "duckdb":
            self.conn.execute("BEGIN TRANSACTION")

    def _commit(self) -> None:
        self.conn.execute("COMMIT") if self.store.dialect == "duckdb" else self.conn.commit()

    def _rollback(self) -> None:
        with contextlib.suppress(Exception):  # nothing to roll back (the failure was the commit itself)
            self.conn.execute("ROLLBACK") if self.store.dialect == "duckdb" else self.conn.rollback()

    def _end(self) -> None:
        """End a read (PostgreSQL opens a transaction for any statement)."""
        if self.store.dialect == "postgres":
            self.conn.commit()
