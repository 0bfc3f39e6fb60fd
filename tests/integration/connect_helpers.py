"""Connector files for tests: the shipped ones, renamed so each test has its own topics, slot and group."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka.admin import AdminClient, NewTopic

from passerelle.connectors.connect import configs
from passerelle.connectors.connect.rest import ConnectClient
from passerelle.deploy.local import postgres


def crm_connectors(unique: Callable[[str], str]) -> dict[str, configs.ConnectorFile]:
    """``crm-source`` and ``crm-sink`` as shipped, with per-test names, topics and replication slot.

    Returns them keyed by their role ("source", "sink"); ``.config`` holds the
    topic names under ``transforms.route.replacement`` and ``topics``.
    """
    shipped = {item.name: item for item in configs.load()}
    tag = unique("t").replace(".", "_").replace("-", "_").lower()
    source = dict(shipped["crm-source"].config)
    source["slot.name"] = f"slot_{tag}"[:63]
    source["topic.prefix"] = f"crm.cdc.{tag}"
    source["transforms.route.regex"] = f"crm\\.cdc\\.{tag}\\.public\\.(.*)"
    source["transforms.route.replacement"] = f"crm.cdc.{tag}.$1"
    sink = dict(shipped["crm-sink"].config)
    sink["topics"] = f"crm.web_activity.{tag}"
    sink["errors.deadletterqueue.topic.name"] = f"errors.connect.{tag}"
    return {
        "source": configs.ConnectorFile(f"crm-source-{tag}", source),
        "sink": configs.ConnectorFile(f"crm-sink-{tag}", sink),
    }


def cdc_topics(source: configs.ConnectorFile) -> tuple[str, str]:
    """(customers topic, consents topic) a renamed source writes to."""
    base = source.config["transforms.route.replacement"].removesuffix("$1")
    return base + "customers", base + "consents"


def create_topics(bootstrap: str, names: list[str], partitions: int = 3) -> None:
    """Create the topics a test's connectors use (the broker does not auto-create)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(n, partitions, 1) for n in names])
    for future in futures.values():
        future.result(30)


def write_files(folder: Path, *items: configs.ConnectorFile) -> Path:
    """Write connector files as ``passerelle connect apply --dir`` reads them."""
    folder.mkdir(parents=True, exist_ok=True)
    for item in items:
        (folder / f"{item.name}.json").write_text(json.dumps({"name": item.name, "config": item.config}, indent=2))
    return folder


def cleanup(client: ConnectClient, pg: postgres.Postgres, *items: configs.ConnectorFile) -> None:
    """Delete a test's connectors and drop its replication slot (a slot left behind pins the WAL)."""
    for item in items:
        if client.config(item.name) is not None:
            client.delete(item.name)
        slot = item.config.get("slot.name")
        if slot:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                rows = psql_rows(pg, "SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,))
                if not rows:
                    break
                if not rows[0][0]:
                    postgres.psql(pg, f"SELECT pg_drop_replication_slot('{slot}')")
                    break
                time.sleep(0.5)


def psql_rows(pg: postgres.Postgres, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows of a query, as the superuser over TCP."""
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        return list(conn.execute(sql, params).fetchall())


def execute(pg: postgres.Postgres, sql: str, params: tuple[Any, ...] = ()) -> None:
    """One statement in its own transaction, as the CRM's application would write."""
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute(sql, params)
