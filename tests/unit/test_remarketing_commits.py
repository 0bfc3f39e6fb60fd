"""A committed command's state survives a SIGKILL: faust's tables and producer buffer, a slow broker played here.

The flake (``test_remarketing_survives_sigkills_and_partner_failures``: step 2 to customers whose order the
collector had accepted ~52 s earlier): the order's command cancelled the sequence in the ``sequences`` table and
its offset was committed, but faust writes a table change to the changelog through its producer buffer, and the
flush it does before a commit (``Consumer._commit_offsets``) gives up after 0.1 s and counts a message as flushed
once taken from the buffer, not once acknowledged. On a loaded machine the commit went through with the
cancellation still on its way; the SIGKILL lost it, the restart restored the active sequence without it, the
order was not read again (committed) and the timer sent step 2. ``durability.durable_commits`` makes the flush
wait for the broker's acknowledgement of every earlier table write.

The driver below runs the real ``CommandHandler`` over real faust tables and the real producer buffer and flush;
only the broker is played: it takes each message ``BROKER_DELAY_S`` (over faust's 0.1 s), then acknowledges it.
After every command it does what faust does to commit (flush the producer, then commit the offset); the SIGKILL
keeps what the broker acknowledged and the committed offset, nothing else.
"""

from __future__ import annotations

import asyncio
import json
import weakref
import zlib
from typing import Any

import faust
import pytest
from faust.streams import _current_event

from passerelle.streams.remarketing.commands import (
    abandoned_command,
    dumps,
    loads,
    order_command,
    profile_command,
    tick_command,
)
from passerelle.streams.remarketing.durability import ChangelogWrites, durable_commits
from passerelle.streams.remarketing.handler import CommandHandler
from passerelle.streams.remarketing.metrics import RemarketingMetrics
from passerelle.streams.remarketing.sequence import HOUR_MS, Sequencer, SequencerConfig
from tests.unit.test_remarketing_handler import crm
from tests.unit.test_remarketing_sequence import T0, cart

pytestmark = pytest.mark.unit

STORES = ("sequences", "profiles", "parked")
COMMANDS_TOPIC = "rm-commands"
PARTITIONS = 3
BROKER_DELAY_S = 0.3  # a loaded machine: longer than the 0.1 s faust's buffer flush waits for progress
IDLE_S = 2.5 * BROKER_DELAY_S  # between two commands: the broker has the earlier writes by the next one
FOLLOWUP_MS = HOUR_MS


class Message:
    def __init__(self, partition: int, offset: int) -> None:
        self.topic, self.partition, self.offset = COMMANDS_TOPIC, partition, offset


class Event:
    """What faust's tables read of the event at hand (``current_event()``): the source partition."""

    def __init__(self, partition: int, offset: int) -> None:
        self.message = Message(partition, offset)


class SlowBroker:
    """Plays the broker behind faust's producer buffer: a message is acknowledged ``delay_s`` after it is taken."""

    def __init__(self, delay_s: float = BROKER_DELAY_S) -> None:
        self.delay_s = delay_s
        self.acknowledged: list[tuple[str, bytes, bytes | None]] = []  # (topic, key, value) as the broker has them

    async def take(self, fut: Any) -> None:  # ProducerBuffer._send_pending
        await asyncio.sleep(self.delay_s)
        message = fut.message
        self.acknowledged.append((message.channel.get_topic_name(), message.key, message.value))
        fut.set_result(None)

    def restored(self, table: Any) -> dict[str, bytes]:
        """The table as a restart restores it from its changelog: what the broker acknowledged."""
        state: dict[str, bytes] = {}
        for topic, key, value in self.acknowledged:
            if topic == table.changelog_topic_name:
                name = json.loads(key)  # a table's keys go to its changelog as JSON
                if value is None:
                    state.pop(name, None)
                else:
                    state[name] = value
        return state


def sequencer() -> Sequencer:
    return Sequencer(SequencerConfig(followup_ms=FOLLOWUP_MS))


async def run_then_sigkill(
    commands: list[tuple[str, dict[str, Any]]], durable: bool, now: int
) -> tuple[dict[str, dict[str, bytes]], int, list[dict[str, Any]]]:
    """Apply ``commands`` ``IDLE_S`` apart, committing after each as faust does; SIGKILL right after the last commit.

    Returns the tables as a restart restores them, the committed offset and the messages sent.
    """
    app = faust.App("rm", broker="kafka://127.0.0.1:9", store="memory://", key_serializer="raw",
                    value_serializer="raw", web_enabled=False)  # fmt: skip
    tables = {name: app.Table(name, partitions=PARTITIONS, key_type=str, value_type=bytes) for name in STORES}
    for table in tables.values():
        table._verified_source_topics_for_partitions.add(COMMANDS_TOPIC)  # type: ignore[attr-defined]  # no broker
    if durable:
        durable_commits(app, tables.values())
    broker = SlowBroker()
    buffer = app.producer.buffer
    buffer._send_pending = broker.take  # type: ignore[attr-defined]
    sent: list[dict[str, Any]] = []

    async def send(customer: str, message: dict[str, Any]) -> None:
        sent.append(message)

    handler = CommandHandler(sequencer(), tables["sequences"], tables["profiles"], tables["parked"], send,
                             RemarketingMetrics(), lambda: now)  # fmt: skip
    await buffer.start()
    committed = 0
    try:
        for offset, (customer, command) in enumerate(commands):
            event = Event(zlib.crc32(customer.encode()) % PARTITIONS, offset)
            token = _current_event.set(weakref.ref(event))  # type: ignore[arg-type]
            try:
                await handler.handle(customer, loads(dumps(command)))
            finally:
                _current_event.reset(token)
            # faust's commit (Consumer._commit_offsets, at least once): flush the producer, then commit
            await app.producer.flush()
            committed = offset + 1
            if offset < len(commands) - 1:
                await asyncio.sleep(IDLE_S)  # until the next command comes
        restored = {name: broker.restored(table) for name, table in tables.items()}  # SIGKILL: this is what is left
    finally:
        buffer._stopped.set()  # type: ignore[attr-defined]  # no graceful flush: the process is gone
        await buffer.stop()
    return restored, committed, sent


def order(at: int) -> dict[str, Any]:
    return {"type": "order", "customer_id": "C1", "visitor_id": "v1", "event_id": "h-order", "event_time": at,
            "order": {"order_id": "O-1"}}  # fmt: skip


async def step2_after_restart(durable: bool) -> list[dict[str, Any]]:
    """Profile, abandoned cart (step 1), order (cancels step 2), SIGKILL right after the order's commit; after
    the restart the timer ticks once step 2 is due."""
    now = T0 + 60_000
    commands = [profile_command("C1", crm()), abandoned_command(cart()), order_command(order(T0 + 30_000))]
    assert all(c is not None for c in commands)
    restored, committed, sent = await run_then_sigkill([c for c in commands if c is not None], durable, now)
    assert [m["step"] for m in sent] == [1]
    assert committed == len(commands)  # the order's offset is committed: it will not be read again
    after: list[dict[str, Any]] = []

    async def send(customer: str, message: dict[str, Any]) -> None:
        after.append(message)

    restarted = CommandHandler(sequencer(), restored["sequences"], restored["profiles"], restored["parked"], send,
                               RemarketingMetrics(), lambda: now + FOLLOWUP_MS)  # fmt: skip
    await restarted.handle("C1", tick_command())  # step 2 due: the timer's tick
    return after


def test_faust_alone_commits_an_order_whose_cancellation_a_sigkill_then_loses() -> None:
    """The cause, with faust's own flush before the commit: the restart sends step 2 to a customer who ordered."""
    assert [m["step"] for m in asyncio.run(step2_after_restart(durable=False))] == [2]


def test_an_order_committed_keeps_its_cancellation_across_a_sigkill() -> None:
    assert asyncio.run(step2_after_restart(durable=True)) == []


def test_a_step_1_committed_keeps_its_sequence_across_a_sigkill() -> None:
    """The same loss the other way: a step 1 sent and committed whose state is lost would never get its step 2."""
    now = T0 + 60_000
    commands = [profile_command("C1", crm()), abandoned_command(cart())]
    restored, _, sent = asyncio.run(run_then_sigkill([c for c in commands if c is not None], True, now))
    assert [m["step"] for m in sent] == [1]
    assert loads(restored["sequences"]["C1"])["status"] == "active"


# --- the barrier itself ------------------------------------------------------------------------------------


def test_the_barrier_waits_only_for_the_writes_made_before_it() -> None:
    async def scenario() -> None:
        writes = ChangelogWrites()
        loop = asyncio.get_running_loop()
        first, later = loop.create_future(), loop.create_future()
        writes.track(first)
        before = writes.snapshot()
        writes.track(later)
        waiting = asyncio.ensure_future(writes.wait(before))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        first.set_result(None)
        await asyncio.wait_for(waiting, 1)  # ``later`` still pending: not this commit's business
        assert len(writes) == 1 and writes.waits == 1

    asyncio.run(scenario())


def test_a_failed_or_unacknowledged_write_stops_every_commit_after_it() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        writes = ChangelogWrites()
        failed = loop.create_future()
        writes.track(failed)
        failed.set_exception(OSError("broker refused"))
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match=r"changelog write failed.*broker refused"):
            await writes.wait(writes.snapshot())
        with pytest.raises(RuntimeError, match="not committing past it"):  # and every commit after it
            await writes.wait([])
        slow = ChangelogWrites(wait_max_ms=50)
        slow.track(loop.create_future())
        with pytest.raises(TimeoutError, match="not acknowledged within 50 ms"):
            await slow.wait(slow.snapshot())

    asyncio.run(scenario())
