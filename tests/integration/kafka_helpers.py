"""Producing and reading Avro test data on a real broker."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

from confluent_kafka.admin import NewTopic

from passerelle.schemas.clients import Connection, admin_client, consumer, produce, producer, registry_client
from passerelle.schemas.serde import AvroDecoder, AvroEncoder, SchemaCache, registry_fetcher

STRING_KEY = '"string"'


def create_topics(bootstrap: str, topics: dict[str, int], config: dict[str, str] | None = None) -> None:
    admin = admin_client(Connection.plain(bootstrap))
    futures = admin.create_topics([NewTopic(t, n, 1, config=config or {}) for t, n in topics.items()])
    for fut in futures.values():
        fut.result(30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # metadata propagates asynchronously
        meta = admin.list_topics(timeout=10)
        if all(t in meta.topics and len(meta.topics[t].partitions) == n for t, n in topics.items()):
            return
        time.sleep(0.1)


def produce_avro(
    bootstrap: str,
    registry_url: str,
    topic: str,
    schema: str,
    records: Iterable[tuple[str | None, dict[str, Any] | None]],
    raw: Iterable[tuple[bytes | None, bytes | None]] = (),
) -> int:
    conn = Connection.plain(bootstrap, registry_url)
    client = registry_client(conn)
    value_enc = AvroEncoder.for_subject(client, f"{topic}-value", schema)
    key_enc = AvroEncoder.for_subject(client, f"{topic}-key", STRING_KEY)
    target = producer(conn, {"linger.ms": 20})  # idempotent, acks=all, murmur2_random: the factory's defaults
    count = 0
    for key, value in records:
        k = None if key is None else key_enc.encode(key)
        v = None if value is None else value_enc.encode(value)
        produce(target, topic, v, k, poll_s=0.1)
        count += 1
    for k2, v2 in raw:
        target.produce(topic, v2, k2)
        count += 1
    assert target.flush(60) == 0
    return count


def json_schema(name: str, fields: list[tuple[str, Any]]) -> str:
    return json.dumps(
        {"type": "record", "name": name, "namespace": "passerelle.test", "fields": [
            {"name": n, "type": t, **({"default": None} if isinstance(t, list) and t[0] == "null" else {})}
            for n, t in fields
        ]}
    )  # fmt: skip


class TopicReader:
    """Reads a topic from the beginning (read_committed) and decodes it."""

    def __init__(self, bootstrap: str, registry_url: str, topic: str, decode: bool = True) -> None:
        conn = Connection.plain(bootstrap, registry_url)
        self.consumer = consumer(
            conn,
            f"reader-{topic}-{time.monotonic_ns()}",
            {"auto.offset.reset": "earliest", "isolation.level": "read_committed"},
        )
        self.consumer.subscribe([topic])
        self.decoder = AvroDecoder(SchemaCache(registry_fetcher(registry_client(conn))))
        self.decode = decode
        self.records: list[Any] = []

    def read(self, until: int, timeout: float = 60.0, idle: float | None = None) -> list[Any]:
        """Read until ``until`` records in all, or ``timeout``; with ``idle``, stop after that long without news."""
        deadline = time.monotonic() + timeout
        last_news = time.monotonic()
        while len(self.records) < until and time.monotonic() < deadline:
            msgs = self.consumer.consume(5000, timeout=0.5)
            for msg in msgs:
                if msg.error():
                    continue
                value = msg.value()
                self.records.append(
                    (msg, self.decoder.decode(value) if self.decode and value is not None else value)
                )
            if msgs:
                last_news = time.monotonic()
            elif idle is not None and time.monotonic() - last_news > idle:
                break
        return self.records

    def close(self) -> None:
        self.consumer.close()
