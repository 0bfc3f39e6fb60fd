"""Commits that wait for the tables' changelog writes, which faust's own flush before a commit does not.

faust writes a table change to the table's changelog through the producer's
buffer (``Topic.send_soon``) and, at least once, flushes the producer before
it commits input offsets (``Consumer._commit_offsets``). That flush
(``ProducerBuffer.flush``) is not a barrier: it counts a message as flushed
once the buffer's task has taken it, not once the broker has it, and it gives
up after 0.1 s without progress. On a loaded machine a commit can therefore
go through while the change a command made is still on its way; a SIGKILL
then loses the change but not the command's offset, so the command is never
applied again: an order's cancellation is forgotten and step 2 goes out from
the state restored without it, or a step 1's state is forgotten and its step
2 never goes out.

``durable_commits`` tracks every changelog write of the given tables and
makes the producer's flush, which faust awaits before each commit, wait until
the broker has acknowledged all the writes made before it. A write the broker
refused, or one still unacknowledged after ``wait_max_ms``, makes the flush
raise: the commit does not happen and the commands since the last one are
read again (at least once).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any

log = logging.getLogger("passerelle.remarketing")

WAIT_MAX_MS = 120_000  # longest wait for the writes before a commit; then the commit fails
REPORT_EVERY_MS = 10_000  # the log line about commits that had to wait, at most this often


class ChangelogWrites:
    """The table changelog writes the broker has not acknowledged yet."""

    def __init__(self, wait_max_ms: int = WAIT_MAX_MS) -> None:
        self.wait_max_ms = wait_max_ms
        self._pending: set[asyncio.Future[Any]] = set()
        self.failed: list[BaseException] = []  # a write lost is lost for good: no commit after it
        self.waits = 0  # commits that found writes faust's flush had left unacknowledged
        self.waited_writes = 0
        self.buffered = 0  # of those, commits faust's flush left with messages still in its buffer
        self.longest_ms = 0.0  # the longest such wait
        self._reported = 0.0

    def __len__(self) -> int:
        return len(self._pending)

    def track(self, fut: asyncio.Future[Any]) -> None:
        self._pending.add(fut)
        fut.add_done_callback(self._settled)

    def _settled(self, fut: asyncio.Future[Any]) -> None:
        self._pending.discard(fut)
        if fut.cancelled():
            self.failed.append(asyncio.CancelledError("a table changelog write was cancelled"))
        elif fut.exception() is not None:
            self.failed.append(fut.exception())  # type: ignore[arg-type]

    def snapshot(self) -> list[asyncio.Future[Any]]:
        return list(self._pending)

    async def wait(self, writes: list[asyncio.Future[Any]], buffered: int = 0) -> None:
        """Until each of ``writes`` is acknowledged; raises if any write failed or ``wait_max_ms`` passed.

        ``buffered``: how many messages faust's flush left in its producer buffer (reported only).
        """
        left = [fut for fut in writes if not fut.done()]
        if left:
            self.waits += 1
            self.waited_writes += len(left)
            self.buffered += buffered > 0
            started = time.monotonic()
            _, not_done = await asyncio.wait(left, timeout=self.wait_max_ms / 1000)
            if not_done:
                raise TimeoutError(f"{len(not_done)} table changelog write(s) not acknowledged within "
                                   f"{self.wait_max_ms} ms: not committing past them")  # fmt: skip
            now = time.monotonic()
            self.longest_ms = max(self.longest_ms, (now - started) * 1000)
            if now - self._reported >= REPORT_EVERY_MS / 1000:
                self._reported = now
                log.info("remarketing: a commit waited %.0f ms for %d table write(s) the producer's flush had left "
                         "unacknowledged (%d message(s) still in its buffer); so far %d commit(s) waited for %d "
                         "write(s), %d with messages still buffered, %.0f ms at most", (now - started) * 1000,
                         len(left), buffered, self.waits, self.waited_writes, self.buffered,
                         self.longest_ms)  # fmt: skip
        if self.failed:
            raise RuntimeError(f"a table changelog write failed ({self.failed[0]!r}): not committing past it")


def durable_commits(app: Any, tables: Iterable[Any], wait_max_ms: int = WAIT_MAX_MS) -> ChangelogWrites:
    """Make ``app``'s commits wait for the broker's acknowledgement of every earlier write to ``tables``.

    Every changelog write of the tables (``Collection.send_changelog``, which
    a table's ``__setitem__``/``__delitem__`` goes through) is tracked; the
    producer's ``flush``, which faust awaits before it commits offsets, first
    does faust's own flush, then waits for the writes tracked when it was
    called. Call before the app starts (faust is untyped: ``Any``).
    """
    writes = ChangelogWrites(wait_max_ms)
    for table in tables:
        send_changelog = table.send_changelog

        def tracked(*args: Any, _send: Any = send_changelog, **kwargs: Any) -> Any:
            fut = _send(*args, **kwargs)
            writes.track(fut)
            return fut

        table.send_changelog = tracked
    producer = app.producer
    flush = producer.flush

    async def flush_then_wait_for_writes() -> None:
        before = writes.snapshot()  # what the offsets about to be committed may depend on
        await flush()
        await writes.wait(before, producer.buffer.size)

    producer.flush = flush_then_wait_for_writes
    return writes
