"""The runtime at the Kafka Connect edge, on the real broker: a processor reads and writes Connect JSON topics.

A small processor reads rows written as a Connect source would (UTF-8 key,
JsonConverter envelope) and writes a summary per row as a Connect sink
expects it (UTF-8 key, envelope whose schema comes from an Avro contract),
exactly-once. Bytes that are not Connect JSON go to the dead-letter topic with
their original bytes (stage ``deserialize``), a tombstone stays a tombstone,
and an output its contract refuses is dead-lettered (stage ``serialize``).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable

import pytest

from passerelle.schemas.clients import Connection, producer
from passerelle.schemas.connect_json import connect_schema
from passerelle.streams.runtime import Context, InRecord, OutRecord, Processor, Runner, RunnerConfig, header_dict
from tests.integration.kafka_helpers import TopicReader, create_topics

pytestmark = pytest.mark.integration

SUMMARY = json.dumps({
    "type": "record", "name": "Summary", "namespace": "passerelle.test", "fields": [
        {"name": "id", "type": "string"},
        {"name": "double", "type": "long"},
        {"name": "seen_at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "note", "type": ["null", "string"], "default": None},
    ],
})  # fmt: skip
ROW_SCHEMA = {"type": "struct", "optional": False, "name": "source.Row",
              "fields": [{"type": "string", "optional": False, "field": "id"},
                         {"type": "int64", "optional": True, "field": "n"}]}  # fmt: skip


class Doubler(Processor):
    """Each row -> its summary; a row's tombstone -> the summary's tombstone."""

    name = "doubler"

    def __init__(self, source: str, sink: str) -> None:
        self.inputs = (source,)
        self.outputs = (sink,)
        self.tombstone_inputs = (source,)
        self.sink = sink

    def process_one(self, record: InRecord, ctx: Context) -> Iterable[OutRecord]:
        row = record.value
        if row is None:
            return [OutRecord(self.sink, record.key, None)]
        n = row["n"]  # a string here makes an output the contract refuses
        return [OutRecord(self.sink, record.key, {"id": row["id"], "double": n * 2, "seen_at": record.timestamp})]


def test_a_processor_reads_and_writes_connect_json(
    kafka_bootstrap: str, schema_registry_url: str, unique: Callable[[str], str]
) -> None:
    source, sink, dlq = unique("connect.rows"), unique("connect.summaries"), unique("dlq")
    create_topics(kafka_bootstrap, {source: 2, sink: 2, dlq: 1})
    config = RunnerConfig(
        app_id=unique("doubler"), bootstrap_servers=kafka_bootstrap, schema_registry_url=schema_registry_url,
        output_schemas={sink: SUMMARY}, wire_formats={source: "connect-json", sink: "connect-json"},
        dead_letter_topic=dlq,
    )  # fmt: skip
    runner = Runner(Doubler(source, sink), config)
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    try:
        malformed = b'{"schema": {"type": "struct"}, "payload": {"id": "r3"'  # cut short
        records: list[tuple[bytes, bytes | None]] = [
            (b"r1", json.dumps({"schema": ROW_SCHEMA, "payload": {"id": "r1", "n": 21}}).encode()),
            (b"r2", json.dumps({"id": "r2", "n": 5}).encode()),  # schemas.enable=false: no envelope
            (b"r3", malformed),
            (b"r4", json.dumps({"schema": ROW_SCHEMA, "payload": {"id": "r4", "n": "7"}}).encode()),
            (b"r1", None),  # the row deleted: a tombstone
            ("r\u00e9".encode(), json.dumps({"schema": ROW_SCHEMA, "payload": {"id": "ré", "n": 1}}).encode()),
        ]
        target = producer(Connection.plain(kafka_bootstrap), {"linger.ms": 5})
        for key, value in records:
            target.produce(source, value, key)
        assert target.flush(30) == 0
        deadline = time.monotonic() + 60
        while runner.records_in < len(records) and time.monotonic() < deadline:
            assert thread.is_alive(), "the processor stopped"
            time.sleep(0.1)

        reader = TopicReader(kafka_bootstrap, schema_registry_url, sink, decode=False)
        written = [(m.key(), m.value()) for m, _ in reader.read(until=4, timeout=60, idle=3)]
        reader.close()
        by_key: dict[bytes, list[bytes | None]] = {}
        for key, value in written:
            by_key.setdefault(key, []).append(value)
        assert sorted(by_key) == sorted([b"r1", b"r2", "r\u00e9".encode()])
        assert by_key[b"r1"][-1] is None and len(by_key[b"r1"]) == 2  # the tombstone stayed one
        first = json.loads(by_key[b"r1"][0] or b"")
        assert first["schema"] == connect_schema(SUMMARY)
        assert first["payload"]["id"] == "r1" and first["payload"]["double"] == 42 and first["payload"]["note"] is None
        assert isinstance(first["payload"]["seen_at"], int)
        assert json.loads(by_key[b"r2"][0] or b"")["payload"]["double"] == 10
        assert json.loads(by_key["r\u00e9".encode()][0] or b"")["payload"]["id"] == "ré"

        dead_reader = TopicReader(kafka_bootstrap, schema_registry_url, dlq, decode=False)
        dead = [(m, header_dict(m.headers())) for m, _ in dead_reader.read(until=2, timeout=60, idle=3)]
        dead_reader.close()
        stages = {h["stage"]: (m, h) for m, h in dead}
        assert sorted(stages) == ["deserialize", "serialize"] and len(dead) == 2
        msg, headers = stages["deserialize"]
        assert (msg.key(), msg.value()) == (b"r3", malformed)  # the original bytes
        assert headers["topic"] == source and "not Kafka Connect JSON" in headers["exception.message"]
        msg, headers = stages["serialize"]
        assert msg.key() == b"r4" and "does not match passerelle.test.Summary" in headers["exception.message"]
        assert thread.is_alive()
    finally:
        runner.stop()
        thread.join(30)
