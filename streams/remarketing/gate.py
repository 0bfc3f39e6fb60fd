"""Whether the CRM profiles that were on ``crm.profiles`` when this worker started have all been read.

An abandoned cart is judged with the customer's CRM profile, and the two
come from different topics read side by side: at start, a cart can reach the
command topic before a profile written long before it. The runtime's lookup
tables are read to their end before a processor sees its first record; the
sequencer's profiles go through the command topic instead, so this gate
tells the command handler when they have: until then a cart of a customer
without a profile is parked, not judged (``handler.py``).

"Read" is measured on the consumer group's committed offsets of
``crm.profiles``, whichever instance owns its partitions: faust commits an
offset only after the producer flushed what processing the record sent, so a
committed offset means the profile commands before it are on the command
topic, ahead of any cart forwarded later. A partition whose committed offset
stops short of the end with nothing left to read (a tombstone removed by
compaction, a transaction marker) counts as read. After ``max_wait_ms`` the
gate opens anyway, with a warning naming the partitions still behind.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from confluent_kafka import OFFSET_BEGINNING, ConsumerGroupTopicPartitions, KafkaError, TopicPartition
from confluent_kafka.admin import OffsetSpec

from passerelle.schemas import clients

log = logging.getLogger("passerelle.remarketing")

Ends = dict[int, tuple[int, int]]  # partition -> (low watermark, high watermark)
REQUEST_TIMEOUT_MS = 10_000  # of one admin request, and of looking for a record past a committed offset
FETCH_WAIT_MS = 500
TIMEOUT_S = REQUEST_TIMEOUT_MS / 1000  # the client's unit


def monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000


class Offsets(Protocol):
    """Where the gate reads offsets (blocking calls; the gate runs them in a thread)."""

    def ends(self) -> Ends: ...

    def committed(self) -> dict[int, int]: ...  # partition -> committed offset (absent: none)

    def has_records(self, partition: int, start: int, end: int) -> bool: ...

    def close(self) -> None: ...


class KafkaOffsets:
    """``Offsets`` of one topic and one consumer group, through the client layer."""

    def __init__(self, conn: clients.Connection, group: str, topic: str) -> None:
        self.conn, self.group, self.topic = conn, group, topic
        self._admin = clients.admin_client(conn)
        self._reader: Any = None

    def _partitions(self) -> list[int]:
        meta = self._admin.list_topics(self.topic, timeout=TIMEOUT_S)
        tmeta = meta.topics.get(self.topic)
        if tmeta is None or tmeta.error is not None:
            raise RuntimeError(f"topic '{self.topic}' not described: {tmeta.error if tmeta else 'absent'}")
        return sorted(tmeta.partitions)

    def ends(self) -> Ends:
        parts = self._partitions()
        lows = self._admin.list_offsets({TopicPartition(self.topic, p): OffsetSpec.earliest() for p in parts})
        highs = self._admin.list_offsets({TopicPartition(self.topic, p): OffsetSpec.latest() for p in parts})
        low = {tp.partition: fut.result(TIMEOUT_S).offset for tp, fut in lows.items()}
        return {tp.partition: (low[tp.partition], fut.result(TIMEOUT_S).offset) for tp, fut in highs.items()}

    def committed(self) -> dict[int, int]:
        request = ConsumerGroupTopicPartitions(self.group, [TopicPartition(self.topic, p) for p in self._partitions()])
        result = self._admin.list_consumer_group_offsets([request])[self.group].result(TIMEOUT_S)
        return {tp.partition: tp.offset for tp in result.topic_partitions if tp.offset >= 0}

    def has_records(self, partition: int, start: int, end: int) -> bool:
        """Whether a record stands at an offset in ``[start, end)`` (markers and compacted gaps do not)."""
        if self._reader is None:  # the group's id, assign only: never joins, never commits
            self._reader = clients.consumer(self.conn, self.group, {"enable.partition.eof": True})
        reader = self._reader
        reader.assign([TopicPartition(self.topic, partition, start if start >= 0 else OFFSET_BEGINNING)])
        try:
            deadline = monotonic_ms() + REQUEST_TIMEOUT_MS
            while monotonic_ms() < deadline:
                msg = reader.poll(FETCH_WAIT_MS / 1000)
                if msg is None:
                    continue
                err = msg.error()
                if err is None:
                    return bool(msg.offset() < end)
                if err.code() == KafkaError._PARTITION_EOF:
                    return False
            return True  # no answer: assume there is something left
        finally:
            reader.unassign()

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()


class ProfilesGate:
    """Opens once the group has committed ``crm.profiles`` up to where it ended when ``run`` started."""

    def __init__(
        self,
        offsets: Offsets,
        *,
        poll_ms: int = 200,
        recheck_ms: int = 1_000,
        max_wait_ms: int = 600_000,
        progress_ms: int = 10_000,
        clock: Callable[[], int] = monotonic_ms,
    ) -> None:
        self.offsets = offsets
        self.poll_ms = poll_ms
        self.recheck_ms = recheck_ms  # a partition whose committed offset does not move is looked at this often
        self.max_wait_ms = max_wait_ms
        self.progress_ms = progress_ms
        self.clock = clock
        self.ready = False
        self.waited_ms: int | None = None

    def is_ready(self) -> bool:
        return self.ready

    async def run(self) -> None:
        """Poll until the profiles present at start are read (or ``max_wait_ms``); then ``ready`` stays True."""
        started = self.clock()
        try:
            await self._wait(started)
        except Exception as exc:  # the cluster did not answer within max_wait_ms: no worse than without the gate
            log.warning("remarketing: crm.profiles not read to its end (%s): judging abandoned carts anyway", exc)
        finally:
            self.ready = True
            self.waited_ms = self.clock() - started
            await asyncio.to_thread(self.offsets.close)

    async def _wait(self, started: int) -> None:
        ends = await self._retrying(self.offsets.ends, started)
        targets = {p: high for p, (low, high) in ends.items() if high > low}
        total = sum(high - low for low, high in ends.values())
        settled: set[int] = set()  # partitions behind their target with nothing left to read
        seen: dict[int, tuple[int, int]] = {}  # partition -> (committed offset, when it was last checked)
        last_progress = started
        while True:
            committed = await self._retrying(self.offsets.committed, started)
            behind = {p: t for p, t in targets.items() if committed.get(p, -1) < t and p not in settled}
            now = self.clock()
            for p, target in behind.items():
                offset = committed.get(p, -1)
                previous = seen.get(p)
                if previous is not None and previous[0] == offset and now - previous[1] < self.recheck_ms:
                    continue
                seen[p] = (offset, now)
                if previous is not None and previous[0] == offset:  # stalled: anything left to read at all?
                    start = max(offset, ends[p][0])  # below the low watermark: from the first record kept
                    if not await asyncio.to_thread(self.offsets.has_records, p, start, target):
                        settled.add(p)
            behind = {p: t for p, t in behind.items() if p not in settled}
            if not behind:
                log.info("remarketing: crm.profiles read to where it ended at start (%d offsets) in %d ms: "
                         "abandoned carts are judged from now on", total, now - started)  # fmt: skip
                return
            if now - started >= self.max_wait_ms:
                log.warning("remarketing: crm.profiles partitions %s still behind their end at start after %d ms: "
                            "judging abandoned carts anyway", sorted(behind), now - started)  # fmt: skip
                return
            if now - last_progress >= self.progress_ms:
                last_progress = now
                left = sum(t - max(committed.get(p, 0), ends[p][0]) for p, t in behind.items())
                log.info("remarketing: reading crm.profiles before judging abandoned carts: %d of %d offsets left",
                         left, total)  # fmt: skip
            await asyncio.sleep(self.poll_ms / 1000)

    async def _retrying(self, call: Callable[[], Any], started: int) -> Any:
        """A blocking offsets call in a thread, retried while the cluster does not answer (up to max_wait_ms)."""
        while True:
            try:
                return await asyncio.to_thread(call)
            except Exception as exc:  # KafkaException, a timeout of a future
                if self.clock() - started >= self.max_wait_ms:
                    raise
                log.warning("remarketing: offsets of crm.profiles not known yet (%s); retrying", exc)
                await asyncio.sleep(max(self.poll_ms, 1_000) / 1000)
