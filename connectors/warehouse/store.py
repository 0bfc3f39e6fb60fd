"""Where the analytics store lives: an embedded DuckDB file (default) or a PostgreSQL database.

A store is named by a URL: ``duckdb:///path/to/file.duckdb`` (or
``duckdb:///:memory:`` for tests), ``postgresql://user:password@host:port/db``.
DuckDB lets one process at a time open a file for writing, and readers in
other processes are refused while it does: the sink and the queries of one
installation share *one* :class:`Store` in one process (the partner API runs
the sink in a thread when its store is DuckDB). PostgreSQL is for
installations that need several API instances: the sink runs on its own and
every API instance reads.

Both backends take the same statements (``ddl``) and the same query SQL; the
only difference the callers see is the placeholder style (:attr:`Store.param`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from passerelle.connectors.warehouse.ddl import statements

Dialect = Literal["duckdb", "postgres"]


class StoreError(Exception):
    """A store URL or database the user can fix (a message naming it)."""

    user_error = True
    exit_code = 2


def parse_url(url: str) -> tuple[Dialect, str]:
    """The dialect and its target (DuckDB path or PostgreSQL conninfo); ``StoreError`` for anything else."""
    parts = urlsplit(url)
    if parts.scheme == "duckdb":
        path = url[len("duckdb://") :]
        if path.startswith("/") and path[1:] == ":memory:":
            path = ":memory:"
        if not path:
            raise StoreError(f"store URL {url!r} names no file: use duckdb:///path/to/file.duckdb")
        return "duckdb", path
    if parts.scheme in ("postgresql", "postgres"):
        return "postgres", url
    raise StoreError(f"store URL {url!r}: the scheme must be duckdb:// or postgresql://")


@dataclass
class Store:
    """One analytics database; :meth:`connect` hands out connections safe to use from one thread each."""

    url: str
    dialect: Dialect
    target: str
    _duck: Any = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def param(self) -> str:
        """The positional placeholder of this backend's driver: ``?`` (DuckDB) or ``%s`` (psycopg)."""
        return "?" if self.dialect == "duckdb" else "%s"

    @contextmanager
    def connect(self) -> Iterator[Any]:
        """A DB-API connection for one thread's work; DuckDB's are cursors of the one open database."""
        if self.dialect == "duckdb":
            cursor = self._duck.cursor()
            try:
                yield cursor
            finally:
                cursor.close()
        else:
            import psycopg

            with psycopg.connect(self.target) as conn:
                yield conn

    def close(self) -> None:
        with self._lock:
            if self._duck is not None:
                self._duck.close()
                self._duck = None


def open_store(url: str, *, create: bool = True) -> Store:
    """Open the store at ``url`` and create its tables when ``create`` (idempotent)."""
    dialect, target = parse_url(url)
    store = Store(url, dialect, target)
    if dialect == "duckdb":
        import duckdb

        if target != ":memory:":
            Path(target).parent.mkdir(parents=True, exist_ok=True)
        try:
            store._duck = duckdb.connect(target)
        except duckdb.IOException as exc:  # another process holds the file
            raise StoreError(f"cannot open the DuckDB store {target}: {exc}") from exc
    if create:
        with store.connect() as conn:
            for sql in statements():
                conn.execute(sql)
            if dialect == "postgres":
                conn.commit()
    return store
