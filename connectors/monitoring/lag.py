"""Consumer lag per group, topic and partition: in records, and in seconds behind the oldest unread record.

Records alone do not say whether a delay matters: 10,000 records behind is
nothing for the enrichment and hours for the emailing bridge. Lag in seconds
(now minus the timestamp of the first record the group has not consumed) is
what an operator compares with a promise ("an abandoned cart's email within
the hour"), so the exporter reads that record for every lagging partition.

Under transactions the last offset of a partition is often a commit marker
that no consumer ever receives: a group that read everything is one record
"behind" for ever. The lag in records is reported as Kafka's own tools do
(end offset minus committed); the lag in seconds is 0 when no readable record
is left, so alerts on seconds never fire on a marker.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from passerelle.schemas.clients import Connection

OWN_GROUP = "passerelle-lag-exporter"
"""The group id of the exporter's reader: assign only, never joined nor committed, so never listed."""


@dataclass(frozen=True)
class PartitionLag:
    """Where one group stands on one partition."""

    group: str
    topic: str
    partition: int
    committed: int
    end: int
    lag_records: int
    lag_seconds: float


def lag_records(committed: int, low: int, high: int) -> int:
    """End offset minus the next offset to read; a group that never committed (negative) starts at ``low``."""
    start = committed if committed >= 0 else low
    return max(0, high - max(start, low))


def lag_seconds(now_ms: int, oldest_unread_ms: int | None) -> float:
    """Age of the oldest unread record; 0 when none is readable (caught up, or only a commit marker left)."""
    if oldest_unread_ms is None:
        return 0.0
    return max(0, now_ms - oldest_unread_ms) / 1000


class LagReader:
    """Reads committed offsets, end offsets and oldest unread timestamps through one admin and one consumer."""

    def __init__(
        self,
        conn: Connection,
        groups: str = "",
        peek_timeout_s: float = 1.0,
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        from passerelle.schemas import clients

        self._admin = clients.admin_client(conn)
        self._consumer = clients.consumer(conn, OWN_GROUP, {"isolation.level": "read_committed",
                                                            "enable.partition.eof": True})  # fmt: skip
        self._groups = re.compile(groups) if groups else None
        self._peek_timeout_s = peek_timeout_s
        self._clock_ms = clock_ms

    def close(self) -> None:
        self._consumer.close()

    def group_ids(self, timeout_s: float = 10.0) -> list[str]:
        """Consumer groups of the cluster (those matching the filter), the exporter's own left out."""
        result = self._admin.list_consumer_groups(request_timeout=timeout_s).result(timeout=timeout_s)
        names = sorted(g.group_id for g in result.valid if g.group_id != OWN_GROUP)
        return [n for n in names if self._groups is None or self._groups.search(n)]

    def committed(self, group: str, timeout_s: float = 10.0) -> list[Any]:
        """The group's committed offsets (``TopicPartition`` list)."""
        from confluent_kafka import ConsumerGroupTopicPartitions

        futures = self._admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)],
                                                          request_timeout=timeout_s)  # fmt: skip
        return list(futures[group].result(timeout=timeout_s).topic_partitions or [])

    def read(self) -> list[PartitionLag]:
        """One snapshot of every group's lag."""
        rows: list[tuple[str, str, int, int, int, int]] = []  # group, topic, partition, committed, low, high
        for group in self.group_ids():
            for tp in self.committed(group):
                if tp.error is not None:
                    continue
                low, high = self._consumer.get_watermark_offsets(tp, timeout=5.0, cached=False)
                rows.append((group, tp.topic, tp.partition, tp.offset, low, high))
        starts = {(t, p, max(c, lo)) for _, t, p, c, lo, hi in rows if lag_records(c, lo, hi) > 0}
        oldest = self.oldest_unread(sorted(starts))
        now = self._clock_ms()
        return [
            PartitionLag(g, t, p, c, hi, lag_records(c, lo, hi), lag_seconds(now, oldest.get((t, p, max(c, lo)))))
            for g, t, p, c, lo, hi in rows
        ]

    def oldest_unread(self, starts: Sequence[tuple[str, int, int]]) -> dict[tuple[str, int, int], int]:
        """Timestamp (ms) of the first readable record at or after each (topic, partition, offset)."""
        from confluent_kafka import KafkaError, TopicPartition

        found: dict[tuple[str, int, int], int] = {}
        by_tp: dict[tuple[str, int], list[int]] = {}
        for topic, partition, offset in starts:
            by_tp.setdefault((topic, partition), []).append(offset)
        # Groups on one partition at different offsets: peek from each offset in turn.
        rounds = max((len(v) for v in by_tp.values()), default=0)
        for i in range(rounds):
            wanted = {(t, p): offs[i] for (t, p), offs in by_tp.items() if i < len(offs)}
            self._consumer.assign([TopicPartition(t, p, o) for (t, p), o in wanted.items()])
            pending = set(wanted)
            deadline = time.monotonic() + self._peek_timeout_s
            while pending and time.monotonic() < deadline:
                for msg in self._consumer.consume(len(pending) * 2, timeout=0.1):
                    key = (msg.topic(), msg.partition())
                    if key not in pending:
                        continue
                    error = msg.error()
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            pending.discard(key)
                        continue
                    found[(key[0], key[1], wanted[key])] = msg.timestamp()[1]
                    pending.discard(key)
            self._consumer.unassign()
        return found


def by_group(rows: Iterable[PartitionLag]) -> dict[str, list[PartitionLag]]:
    """Rows grouped by consumer group, for the command's table."""
    out: dict[str, list[PartitionLag]] = {}
    for row in rows:
        out.setdefault(row.group, []).append(row)
    return out
