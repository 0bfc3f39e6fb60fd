"""Conversion paths and customer channels into the CRM database through the shipped JDBC sinks (issue 14, item 4).

The records are produced here, encoded exactly as the runtime writes a
``connect-json`` output (``codecs.connect_json_encoders`` over the catalog's
contract, values from the pydantic models); the shipped ``crm-paths-sink`` and
``crm-channels-sink`` files run on the session's Connect worker, renamed with
topics of their own so nothing else on the broker reaches them. The tables are
the migrated ones (002_paths.sql): every test uses ids of its own.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer

from passerelle.connectors.connect import configs
from passerelle.connectors.connect.rest import ConnectClient
from passerelle.deploy.local import connect, postgres
from passerelle.schemas.catalog import load_catalog
from passerelle.schemas.models import CrmConversionPath, CustomerChannels
from passerelle.streams.runtime import codecs
from tests.integration.connect_helpers import cleanup, create_topics, psql_rows

pytestmark = pytest.mark.integration
CATALOG = load_catalog()
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
PATH_COLUMNS = tuple(f["name"] for f in json.loads(CATALOG.schema_text("CrmConversionPath"))["fields"])
CHANNEL_COLUMNS = tuple(f["name"] for f in json.loads(CATALOG.schema_text("CustomerChannels"))["fields"])


class Sink:
    """One shipped sink, renamed onto a topic of its own, and a way to write that topic as the processor does."""

    def __init__(self, shipped: configs.ConnectorFile, tag: str) -> None:
        self.catalog_topic = shipped.config["topics"]
        self.table = shipped.config["collection.name.format"]
        self.key_field = shipped.config["primary.key.fields"]
        self.topic = f"{self.catalog_topic}.{tag}"
        self.dlq = f"errors.connect.{tag}"
        config = {**shipped.config, "topics": self.topic, "errors.deadletterqueue.topic.name": self.dlq}
        self.connector = configs.ConnectorFile(f"{shipped.name}-{tag}", config)
        spec = CATALOG.topic(self.catalog_topic)
        assert spec.wire_format == "connect-json"
        self.key_encoder, self.value_encoder = codecs.connect_json_encoders(
            self.catalog_topic, CATALOG.schema_text(spec.value_schema)
        )


class Sinks:
    def __init__(self, bootstrap: str, worker: connect.Worker, pg: postgres.Postgres) -> None:
        self.bootstrap, self.pg = bootstrap, pg
        self.client = ConnectClient(worker.url)
        self.tag = f"p{random.randrange(16**8):08x}"
        shipped = {item.name: item for item in configs.load()}
        self.paths = Sink(shipped["crm-paths-sink"], self.tag)
        self.channels = Sink(shipped["crm-channels-sink"], self.tag)
        self.producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})

    def produce(self, sink: Sink, records: list[tuple[str, dict[str, Any] | None]]) -> None:
        """Values as the runtime writes them (None: a tombstone), each keyed by its id."""
        for key, value in records:
            data = None if value is None else sink.value_encoder.encode(value)
            self.producer.produce(sink.topic, data, sink.key_encoder.encode(key))
            self.producer.poll(0)
        assert self.producer.flush(30) == 0

    def dead_letters(self, sink: Sink) -> list[str]:
        """What the sink sent to its dead-letter topic (its error headers), to explain a table that differs."""
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": f"dlq-{self.tag}",
                             "auto.offset.reset": "earliest", "enable.auto.commit": False})  # fmt: skip
        consumer.subscribe([sink.dlq])
        out: list[str] = []
        deadline = time.monotonic() + 3
        try:
            while time.monotonic() < deadline:
                msg = consumer.poll(0.5)
                if msg is not None and msg.error() is None:
                    pairs: list[tuple[str, bytes | None]] = list(msg.headers() or [])  # type: ignore[arg-type]
                    headers = {k: (v or b"").decode(errors="replace")[:300] for k, v in pairs}
                    out.append(json.dumps({k: v for k, v in headers.items() if "exception" in k}))
        finally:
            consumer.close()
        return out


@pytest.fixture(scope="module")
def sinks(kafka_bootstrap: str, connect_worker: connect.Worker, crm_postgres: postgres.Postgres) -> Iterator[Sinks]:
    s = Sinks(kafka_bootstrap, connect_worker, crm_postgres)
    create_topics(kafka_bootstrap, [s.paths.topic, s.channels.topic, s.paths.dlq])
    configs.apply(s.client, [s.paths.connector, s.channels.connector], wait=90)
    try:
        yield s
    finally:
        cleanup(s.client, crm_postgres, s.paths.connector, s.channels.connector)
        del s.producer  # gone before the session's broker stops, not complaining after


def _millis(value: dt.datetime | None) -> int | None:
    assert value is None or value.tzinfo is not None, "a timestamptz column reads as an aware datetime"
    return None if value is None else (value - EPOCH) // dt.timedelta(milliseconds=1)


def table(sinks: Sinks, sink: Sink, columns: tuple[str, ...], ids: list[str]) -> dict[str, dict[str, Any]]:
    """The rows of ``ids``, each column turned back into its topic form (and its SQL type checked on the way)."""
    rows = psql_rows(
        sinks.pg, f"SELECT {', '.join(columns)} FROM {sink.table} WHERE {sink.key_field} = ANY(%s)", (ids,)
    )
    out = {}
    for row in rows:
        value = dict(zip(columns, row, strict=True))
        for name in ("converted_at", "updated_at", "last_conversion_at"):
            if name in value:
                value[name] = _millis(value[name])
        if "revenue" in value:
            assert isinstance(value["revenue"], Decimal), "revenue is numeric(12, 2)"
        if "credits" in value:
            assert isinstance(value["credits"], dict), "credits is jsonb"
        out[value[sink.key_field]] = value
    return out


def expected(value: dict[str, Any]) -> dict[str, Any]:
    """A topic value as the table must hold it: money to the cent, credits as JSON."""
    out = dict(value)
    if "revenue" in out:
        out["revenue"] = Decimal(str(out["revenue"])).quantize(Decimal("0.01"))
    if "credits" in out:
        out["credits"] = json.loads(out["credits"])
    return out


def wait_for(
    sinks: Sinks, sink: Sink, columns: tuple[str, ...], want: dict[str, dict[str, Any] | None], timeout: float = 30
) -> None:
    """Until the rows of ``want``'s ids are ``want`` (None: no row)."""
    ids = sorted(want)
    goal = {k: expected(v) for k, v in want.items() if v is not None}
    deadline = time.monotonic() + timeout
    got = table(sinks, sink, columns, ids)
    while got != goal and time.monotonic() < deadline:
        time.sleep(0.2)
        got = table(sinks, sink, columns, ids)
    if got != goal:
        wrong = {k: (got.get(k), goal.get(k)) for k in ids if got.get(k) != goal.get(k)}
        raise AssertionError(
            f"{sink.table} differs from {sink.topic}: {wrong}; status {sinks.client.status(sink.connector.name)}; "
            f"dead letters {sinks.dead_letters(sink)}"
        )


def credits(channels: list[str], revenue_cents: int) -> str:
    """A credits document as the processor writes it: per model, each touchpoint's credit and revenue share (cents)."""
    n = len(channels)
    shares = [revenue_cents // n] * n
    shares[-1] += revenue_cents - sum(shares)
    first = [1.0] + [0.0] * (n - 1)
    last = [0.0] * (n - 1) + [1.0]
    models = {
        "first_touch": (first, [revenue_cents] + [0] * (n - 1)),
        "last_touch": (last, [0] * (n - 1) + [revenue_cents]),
        "linear": ([1 / n] * n, shares),  # 0.3333333333333333: 17 digits that jsonb must keep
    }
    doc = {m: {"credits": c, "revenue_cents": r} for m, (c, r) in models.items()}
    return json.dumps(doc, separators=(",", ":"))


def path(conversion_id: str, customer: str, channels: list[str], at: int, **extra: Any) -> dict[str, Any]:
    revenue = extra.pop("revenue", 179.8)
    value: dict[str, Any] = {
        "conversion_id": conversion_id, "customer_id": customer, "order_id": conversion_id.rpartition(":")[2],
        "goal": None, "converted_at": at, "revenue": revenue, "currency": "EUR", "path_length": len(channels),
        "time_to_conversion_ms": 86_400_000 * len(channels) + 1, "first_channel": channels[0] if channels else None,
        "last_channel": channels[-1] if channels else None, "channels": " > ".join(channels),
        "credits": credits(channels, round(revenue * 100)) if channels else "{}", "revision": 0,
        "updated_at": at + 2_345,
    }  # fmt: skip
    value.update(extra)
    return CrmConversionPath.model_validate(value).to_avro()  # what the processor's model gives the encoder


def test_conversion_paths_rows_equal_the_topic_follow_revisions_and_are_erased(sinks: Sinks) -> None:
    t0 = int(time.time() * 1000) - 86_400_000 + 123  # milliseconds that are not a round second
    a, b = f"{sinks.tag}-A", f"{sinks.tag}-B"
    o1, o2, g1 = f"order:shop.example:{a}-O1", f"order:shop.example:{a}-O2", f"goal:newsletter:{b}-e9"
    want: dict[str, dict[str, Any] | None] = {
        o1: path(o1, a, ["display (post-view)", "search / paid", "direct"], t0),
        o2: path(o2, a, ["email · newsletter"], t0 + 7, revenue=0.1 + 0.2),  # 0.30000000000000004 -> 0.30
        g1: path(g1, b, [], t0 + 60_000, order_id=None, goal="newsletter", revenue=0.0, currency=None),
    }
    started = time.monotonic()
    sinks.produce(sinks.paths, list(want.items()))
    wait_for(sinks, sinks.paths, PATH_COLUMNS, want)
    first = time.monotonic() - started

    # A late touchpoint: the path is re-emitted with a revision, the row is replaced (not duplicated).
    want[o1] = path(o1, a, ["social", "display (post-view)", "search / paid", "direct"], t0, revision=1,
                    revenue=179.8, updated_at=t0 + 9_999)  # fmt: skip
    sinks.produce(sinks.paths, [(o1, want[o1])])
    wait_for(sinks, sinks.paths, PATH_COLUMNS, want)
    assert psql_rows(sinks.pg, "SELECT count(*) FROM conversion_paths WHERE customer_id = %s", (a,))[0][0] == 2

    # Erasure of customer A: a tombstone per conversion deletes their rows, B's stays.
    want[o1] = want[o2] = None
    sinks.produce(sinks.paths, [(o1, None), (o2, None), (f"order:shop.example:{a}-never-written", None)])
    wait_for(sinks, sinks.paths, PATH_COLUMNS, want)
    assert psql_rows(sinks.pg, "SELECT count(*) FROM conversion_paths WHERE customer_id = %s", (a,))[0][0] == 0
    print(f"conversion paths in PostgreSQL {first:.1f}s after produce")


def channels(customer: str, seen: list[str], at: int, **extra: Any) -> dict[str, Any]:
    value: dict[str, Any] = {
        "customer_id": customer, "first_channel": seen[-1] if seen else None, "last_channel": seen[0] if seen else None,
        "touchpoints": 2 * len(seen), "channels": ", ".join(seen), "last_conversion_id": None,
        "last_conversion_at": None, "updated_at": at,
    }  # fmt: skip
    value.update(extra)
    return CustomerChannels.model_validate(value).to_avro()


def test_customer_channels_rows_equal_the_topic_follow_updates_and_are_erased(sinks: Sinks) -> None:
    t0 = int(time.time() * 1000) + 1
    a, b, c = (f"{sinks.tag}-{x}" for x in "ABC")
    want: dict[str, dict[str, Any] | None] = {
        a: channels(a, ["direct", "search / paid"], t0),
        b: channels(
            b,
            ["display (post-view)"],
            t0 + 5,
            last_conversion_id=f"order:shop.example:{b}-O1",
            last_conversion_at=t0 - 3_600_001,
        ),
        c: channels(c, [], t0 + 9),  # touchpoints gone out of the lookback: an empty summary, not a missing row
    }
    sinks.produce(sinks.channels, list(want.items()))
    wait_for(sinks, sinks.channels, CHANNEL_COLUMNS, want)

    # A new visit and a conversion: the same key replaces the row, a field going back to null included.
    want[a] = channels(a, ["email", "direct", "search / paid"], t0 + 60_000,
                       last_conversion_id=f"order:shop.example:{a}-O1", last_conversion_at=t0 + 59_000)  # fmt: skip
    want[b] = channels(b, ["display (post-view)"], t0 + 61_000, first_channel=None)
    sinks.produce(sinks.channels, [(a, want[a]), (b, want[b])])
    wait_for(sinks, sinks.channels, CHANNEL_COLUMNS, want)

    # Erasure: the tombstone deletes the row.
    want[a] = None
    sinks.produce(sinks.channels, [(a, None)])
    wait_for(sinks, sinks.channels, CHANNEL_COLUMNS, want)


def test_the_migration_gives_the_sink_role_its_tables_with_their_types(sinks: Sinks) -> None:
    rows = psql_rows(
        sinks.pg,
        "SELECT table_name, string_agg(privilege_type, ',' ORDER BY privilege_type) FROM "
        "information_schema.role_table_grants WHERE grantee = 'crm_sink' GROUP BY table_name",
    )
    grants: dict[str, str] = dict(rows)
    for name in ("conversion_paths", "customer_channels"):
        assert grants.get(name) == "DELETE,INSERT,SELECT,UPDATE", grants
    types = dict(psql_rows(sinks.pg, "SELECT column_name, data_type FROM information_schema.columns "
                                     "WHERE table_name = 'conversion_paths'"))  # fmt: skip
    assert (types["converted_at"], types["revenue"], types["credits"]) == (
        "timestamp with time zone", "numeric", "jsonb",
    )  # fmt: skip
