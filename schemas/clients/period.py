"""Reading one period of a topic, every partition from its first record at or after the start to its end then.

The batch jobs over a period (the Markov model) need the records whose
timestamp falls in ``[since, until)``: each partition starts at
``offsets_for_times(since)`` and stops at the offset of ``until`` (or the end
the partition had when the read began), so a busy topic does not keep the job
running forever. ``read_committed``: aborted transactions are never counted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from confluent_kafka import KafkaError, TopicPartition

from passerelle.errors import PasserelleError
from passerelle.schemas import clients
from passerelle.schemas.serde import AvroDecoder, SchemaCache, registry_fetcher


def read_period(
    conn: clients.Connection,
    topic: str,
    since_ms: int,
    until_ms: int,
    progress: Callable[[int], None] | None = None,
    every: int = 100_000,
) -> Iterator[dict[str, Any]]:
    """The decoded values of ``topic`` timestamped in ``[since_ms, until_ms)``; ``progress(n)`` every ``every``."""
    consumer = clients.consumer(
        conn,
        "passerelle-attribution",  # assign only: never joined nor committed
        {"isolation.level": "read_committed", "enable.auto.commit": False, "enable.partition.eof": True},
    )
    try:
        meta = consumer.list_topics(topic, timeout=10)
        tmeta = meta.topics.get(topic)
        if tmeta is None or tmeta.error is not None or not tmeta.partitions:
            raise PasserelleError(f"topic '{topic}' does not exist or cannot be read (run `passerelle topics create`)")
        parts = sorted(tmeta.partitions)
        starts = consumer.offsets_for_times([TopicPartition(topic, p, since_ms) for p in parts], timeout=10)
        stops = consumer.offsets_for_times([TopicPartition(topic, p, until_ms) for p in parts], timeout=10)
        todo: dict[int, int] = {}  # partition -> first offset not to read
        begin = []
        for start, stop in zip(starts, stops, strict=True):
            _low, high = consumer.get_watermark_offsets(TopicPartition(topic, start.partition), timeout=10)
            end = high if stop.offset < 0 else stop.offset  # no record at or after until: the end now
            first = high if start.offset < 0 else start.offset
            if first < end:
                todo[start.partition] = end
                begin.append(TopicPartition(topic, start.partition, first))
        if not todo:
            return
        consumer.assign(begin)
        decoder = AvroDecoder(SchemaCache(registry_fetcher(clients.registry_client(conn))))
        count = 0
        while todo:
            for msg in consumer.consume(1000, timeout=1.0):
                part, offset = msg.partition(), msg.offset()
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        if part is not None:
                            todo.pop(part, None)  # the end is at or past the stop offset
                        continue
                    raise PasserelleError(f"reading '{topic}': {err.str()}")
                if part is None or offset is None or part not in todo or offset >= todo[part]:
                    continue
                if msg.value() is None:
                    continue
                count += 1
                if progress is not None and count % every == 0:
                    progress(count)
                yield decoder.decode(msg.value())
            # Past the stop offset (transaction markers included, which are never delivered): done.
            for pos in consumer.position([TopicPartition(topic, p) for p in todo]):
                if pos.offset >= 0 and pos.offset >= todo[pos.partition]:
                    del todo[pos.partition]
    finally:
        consumer.close()
