"""Our fastavro serde and confluent-kafka's own Avro serde read each other's bytes.

Records travel through a real broker and schemas through the real embedded
registry, so this proves the wire format, not just two functions in memory.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from passerelle.schemas.serde import AvroDecoder, AvroEncoder, SchemaCache, registry_fetcher

pytestmark = pytest.mark.integration

SCHEMA = json.dumps(
    {
        "type": "record",
        "name": "Probe",
        "namespace": "passerelle.test",
        "fields": [
            {"name": "event_id", "type": "string"},
            {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            {"name": "price", "type": ["null", "double"], "default": None},
            {"name": "tags", "type": {"type": "map", "values": "string"}},
            {"name": "kind", "type": {"type": "enum", "name": "Kind", "symbols": ["A", "B"]}},
        ],
    }
)


def records(n: int) -> list[dict[str, object]]:
    return [
        {"event_id": f"e{i}", "at": 1_795_000_000_000 + i, "price": None if i % 2 else i * 1.5,
         "tags": {"k": str(i)}, "kind": "AB"[i % 2]}
        for i in range(n)
    ]  # fmt: skip


def through_broker(bootstrap: str, topic: str, values: list[bytes]) -> list[bytes]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for value in values:
        producer.produce(topic, value=value)
    assert producer.flush(30) == 0
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": topic, "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    out: list[bytes] = []
    try:
        while len(out) < len(values):
            for msg in consumer.consume(100, timeout=10):
                assert msg.error() is None, msg.error()
                out.append(msg.value())
    finally:
        consumer.close()
    return out


def test_confluent_serializer_to_our_decoder(
    kafka_bootstrap: str, schema_registry_url: str, unique: Callable[[str], str]
) -> None:
    topic = unique("serde.interop")
    client = SchemaRegistryClient({"url": schema_registry_url})
    ser = AvroSerializer(client, SCHEMA, conf={"auto.register.schemas": True})
    ctx = SerializationContext(topic, MessageField.VALUE)
    sent = records(20)
    got = through_broker(kafka_bootstrap, topic, [ser(r, ctx) for r in sent])
    decoder = AvroDecoder(SchemaCache(registry_fetcher(client)))
    decoded = [decoder.decode(v) for v in got]
    for d in decoded:
        d["at"] = int(d["at"].timestamp() * 1000)  # fastavro decodes timestamp-millis to datetime
    assert decoded == sent


def test_our_encoder_to_confluent_deserializer(
    kafka_bootstrap: str, schema_registry_url: str, unique: Callable[[str], str]
) -> None:
    topic = unique("serde.interop")
    client = SchemaRegistryClient({"url": schema_registry_url})
    encoder = AvroEncoder.for_subject(client, f"{topic}-value", SCHEMA)
    assert encoder.schema_id == client.get_latest_version(f"{topic}-value").schema_id
    sent = records(20)
    got = through_broker(kafka_bootstrap, topic, [encoder.encode(r) for r in sent])
    deser = AvroDeserializer(client)
    ctx = SerializationContext(topic, MessageField.VALUE)
    decoded = [deser(v, ctx) for v in got]
    for d in decoded:
        d["at"] = int(d["at"].timestamp() * 1000)
    assert decoded == sent
