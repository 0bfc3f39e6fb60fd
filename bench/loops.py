"""The raw confluent-kafka batch loop's plumbing, shared by the raw workers (``bench.workers``,
``bench.enrich_workers``, ``bench.postview``, ``bench.paths``), and the result line every worker prints.

Only per-run and per-batch helpers live here: the per-record work (decode, the job,
encode, ``producer.produce`` with its ``BufferError`` fallback) stays inline in each
raw loop, since it is what the benchmarks measure and a function call per record
would be added to it.
"""

from __future__ import annotations

import json
import resource
import time
from collections.abc import Mapping, Sequence
from typing import Any

from confluent_kafka import Consumer, Message

from passerelle.schemas import clients
from passerelle.schemas.clients import Connection
from passerelle.schemas.serde import AvroEncoder, SchemaCache, registry_fetcher


def report(started: float, records: float, extra: Mapping[str, Any] | None = None) -> None:
    """The worker's result, its last JSON line: seconds since ``started``, the record count, peak RSS (and the
    ``extra`` keys, if any)."""
    elapsed = time.perf_counter() - started
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = {"elapsed": elapsed, "records": records, "peak_rss_mb": rss_kb / 1024, **(extra or {})}
    print(json.dumps(result), flush=True)


def drain(consumer: Consumer) -> list[Message]:
    """One batch: what is queued (up to 5,000), else wait up to 50 ms for one record and take what follows it
    (as the runtime does); empty when nothing came."""
    msgs: list[Message] = consumer.consume(5000, timeout=0)
    if msgs:
        return msgs
    first = consumer.poll(0.05)
    if first is None:
        return []
    return [first, *consumer.consume(4999, timeout=0)]


class RawLoop:
    """The raw loop's clients and clock: ``batch()`` a turn, ``end_batch()`` after it, ``finish(done)`` at the end.

    The consumer is subscribed to ``topics``; the factories' defaults: no auto-commit (the loop commits);
    idempotent, acks=all, murmur2_random. The clock starts at the first record consumed and stops once every
    output is acknowledged.
    """

    def __init__(self, conn: Connection, group: str, topics: Sequence[str]) -> None:
        self.consumer = clients.consumer(conn, group, {"auto.offset.reset": "earliest"})
        self.producer = clients.producer(conn, {"linger.ms": 5, "queue.buffering.max.messages": 500_000})
        self.consumer.subscribe(list(topics))
        self.started = 0.0

    def batch(self) -> list[Message]:
        """What is queued, else what comes within 50 ms (``drain``); empty when nothing came."""
        msgs = drain(self.consumer)
        if msgs and not self.started:
            self.started = time.perf_counter()
        return msgs

    def end_batch(self) -> None:
        """After each batch: serve delivery reports, commit the consumed offsets asynchronously."""
        self.producer.poll(0)
        self.consumer.commit(asynchronous=True)

    def finish(self, done: int, extra: Mapping[str, Any] | None = None) -> None:
        """Wait for every output to be acknowledged, print the result line (``done`` records, ``extra``), leave
        the group."""
        self.producer.flush(60)
        report(self.started, done, extra)
        self.consumer.close()


def output_codec(conn: Connection, output: str, schema_text: str) -> tuple[Any, bytes, AvroEncoder, SchemaCache]:
    """For a raw loop writing ``output``: the value's parsed writer schema and Confluent header, the key's encoder
    (both subjects registered), and the inputs' writer schemas by id."""
    client = clients.registry_client(conn)
    enc = AvroEncoder.for_subject(client, f"{output}-value", schema_text)
    key_enc = AvroEncoder.for_subject(client, f"{output}-key", '"string"')
    return enc.schema, enc.header, key_enc, SchemaCache(registry_fetcher(client))
