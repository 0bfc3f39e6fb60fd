"""The remarketing sequencer on faust-streaming: topics, tables, agents and the timer; the rules are elsewhere.

Why faust here (and not the confluent-kafka runtime): the sequence lives for
hours and days, volume is low (abandoned carts, orders), and faust's tables
(changelog-backed, restored on start and on rebalance) and timers fit that.

Shape. The inputs are keyed differently (carts and hits by visitor id,
profiles and privacy requests by customer id) and come from topics with
different partition counts, so every input agent only decodes, filters and
forwards a small JSON *command* keyed by customer id (``commands.py``) to
one internal topic, ``<app id>-commands``. A single agent consumes it and is
the only writer of the three tables (``handler.py``): ``sequences`` (the
sequencer's state per customer), ``profiles`` (the CRM profile cache: email,
consent, updated_at, nothing more) and ``parked`` (carts waiting for the
profiles to be read, ``gate.py``). The tables are co-partitioned with the
command topic, so each customer's commands are applied in order, by the
instance that owns the customer's state, whatever the number of instances.

Privacy requests naming only a visitor. ``identity.links`` (keyed by
visitor) and such requests are forwarded, keyed by visitor id, to a second
internal topic, ``<app id>-visitors``; its agent keeps the ``links`` table
(visitor -> customer, a tombstone forgets the link) and sends each request
on to the command topic as its customer's (``handler.VisitorRouter``).

The timer scans the local ``sequences`` and ``parked`` tables and, for every
customer due (step 2, expiry, parked carts to judge), sends a ``tick``
command instead of mutating the tables itself: faust only allows table writes
from a stream, and going through the command topic serialises the tick with
the customer's other commands (an order and a tick racing each other cannot
both win).

Delivery: at least once (``config.py`` says why no more). The command agent
awaits the broker's acknowledgement of every message before it writes the
state that records it, and no input offset is committed before the state
writes of the commands before it are acknowledged on their changelogs
(``durability.py``: faust's own flush before a commit does not guarantee it).
So a crash can only lose state writes whose command is then redelivered (and
its message sent again, with the same deterministic ``message_id``), never
the message, and never a state write of a command already committed (an
order's cancellation, a step 1's state).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from passerelle.schemas.errors import RegistryUnavailableError
from passerelle.streams.remarketing.commands import (
    abandoned_command,
    dumps,
    link_command,
    loads,
    order_command,
    privacy_command,
    profile_command,
    tick_command,
    visitor_privacy_command,
)
from passerelle.streams.remarketing.config import CATALOG_TOPICS, PROCESSOR, RemarketingConfig
from passerelle.streams.remarketing.durability import durable_commits
from passerelle.streams.remarketing.handler import CommandHandler, VisitorRouter
from passerelle.streams.remarketing.metrics import RemarketingMetrics
from passerelle.streams.remarketing.sequence import Outcome, Sequencer, next_due
from passerelle.streams.runtime.deadletter import DeadLetterRefusedError, ErrorBudgetExceeded

log = logging.getLogger("passerelle.remarketing")

STRING_KEY = '"string"'
HITS_BATCH_WAIT_MS = 200  # longest wait to fill a batch of hits
TICK_RESEND_MIN_MS = 30_000  # a tick not answered within max(this, 5 ticks) is sent again
STORES = ("sequences", "profiles", "parked", "links")


def create_internal_topics(
    conn: Any, names: list[str], partitions: int, replication_factor: int, timeout_s: float = 30.0
) -> None:
    """Create the internal topics the agents read before faust subscribes, and wait until the metadata has them.

    faust creates them itself, one after the other, just before its consumer
    subscribes; a topic created a moment before that may not be in the
    consumer's metadata yet, and aiokafka then ignores it ("Ignoring missing
    topic") until its next metadata refresh, minutes later: that agent reads
    nothing meanwhile. Created here, they are there when faust starts.
    """
    import time

    from confluent_kafka.admin import NewTopic

    from passerelle.schemas.clients import admin_client

    admin = admin_client(conn)
    missing = [name for name in names if name not in admin.list_topics(timeout=10).topics]
    if missing:
        futures = admin.create_topics([NewTopic(name, partitions, replication_factor) for name in missing])
        for name, future in futures.items():
            try:
                future.result(timeout_s)
            except Exception as exc:  # created meanwhile by another instance: fine; else faust reports it
                log.debug("remarketing: internal topic %s not created here: %s", name, exc)
    deadline = time.monotonic() + timeout_s
    while True:
        topics = admin.list_topics(timeout=10).topics
        if all(name in topics and topics[name].partitions for name in names):
            return
        if time.monotonic() > deadline:
            log.warning("remarketing: internal topics %s not in the metadata after %.0f s", names, timeout_s)
            return
        time.sleep(0.1)


def build_app(
    config: RemarketingConfig,
    metrics: RemarketingMetrics | None = None,
    on_fatal: Callable[[BaseException], None] | None = None,
) -> Any:
    """The faust app with its topics, tables, agents, timer and gate (faust is untyped: ``Any`` at the boundary).

    ``on_fatal`` is called with an error that must stop the worker at once,
    before the record at hand is acknowledged (error budget spent, the
    dead-letter topic refusing writes); it does not return (``worker.py``
    exits the process). Without it, the error is raised.
    """
    import faust

    from passerelle.schemas.catalog import load_catalog
    from passerelle.schemas.clients import ensure_reachable, registry_client
    from passerelle.schemas.serde import AvroEncoder, LeadingField, SchemaCache, registry_fetcher
    from passerelle.streams.remarketing.credentials import faust_credentials
    from passerelle.streams.remarketing.gate import KafkaOffsets, ProfilesGate
    from passerelle.streams.remarketing.inputs import DeadLetters, InputDecoder, RegistryWait

    metrics = metrics or RemarketingMetrics()
    topics = config.topics
    catalog = load_catalog()
    conn = config.conn
    ensure_reachable(conn)  # wrong address or credentials: one clear error, not aiokafka retrying forever
    create_internal_topics(conn, [config.command_topic, config.visitor_topic], config.partitions,
                           config.replication_factor)  # fmt: skip
    registry = registry_client(conn)
    cache = SchemaCache(registry_fetcher(registry))

    def reader_schema(canonical: str) -> str:
        return catalog.schema_text(catalog.topic(canonical).value_schema)

    inputs = InputDecoder(
        cache,
        {
            topics.carts_abandoned: reader_schema(CATALOG_TOPICS.carts_abandoned),
            topics.hits_enriched: reader_schema(CATALOG_TOPICS.hits_enriched),
            topics.privacy_requests: reader_schema(CATALOG_TOPICS.privacy_requests),
            topics.crm_profiles: reader_schema(CATALOG_TOPICS.crm_profiles),
            topics.identity_links: reader_schema(CATALOG_TOPICS.identity_links),
        },
        # compacted: a tombstone is the CRM's erasure, or a link forgotten
        tombstone_topics=[topics.crm_profiles, topics.identity_links],
    )
    out_value = AvroEncoder.for_subject(
        registry, f"{topics.remarketing_messages}-value", reader_schema(CATALOG_TOPICS.remarketing_messages),
        config.auto_register_schemas,
    )  # fmt: skip
    out_key = AvroEncoder.for_subject(
        registry, f"{topics.remarketing_messages}-key", STRING_KEY, config.auto_register_schemas
    )
    hit_type = LeadingField(cache.text, "type")
    dead_letters = DeadLetters(conn, topics.dead_letters, metrics, config.max_record_bytes, config.client_id)
    registry_wait = RegistryWait(metrics, config.registry_retry_max_ms)
    budget = config.error_budget
    gate = ProfilesGate(KafkaOffsets(conn, config.app_id, topics.crm_profiles), max_wait_ms=config.profiles_wait_max_ms)
    os.makedirs(config.data_dir, exist_ok=True)

    app: Any = faust.App(
        config.app_id,
        env={},  # faust reads unprefixed variables (BROKER_URL, PROCESSING_GUARANTEE...): only PASSERELLE_* count
        broker=",".join(f"kafka://{server.strip()}" for server in conn.bootstrap_servers.split(",")),
        broker_credentials=faust_credentials(conn),
        broker_client_id=config.client_id,
        broker_commit_interval=config.commit_interval_ms / 1000,
        broker_max_poll_records=config.batch_size,
        broker_session_timeout=config.session_timeout_ms / 1000,
        broker_heartbeat_interval=max(config.session_timeout_ms / 3, 1_000) / 1000,
        processing_guarantee="at_least_once",
        store="memory://",
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=config.partitions,
        topic_replication_factor=config.replication_factor,
        topic_disable_leader=True,
        web_enabled=False,
        producer_acks=-1,
        datadir=config.data_dir,
        consumer_auto_offset_reset="earliest",
    )

    def raw_topic(name: str, **kwargs: Any) -> Any:
        return app.topic(name, key_type=bytes, value_type=bytes, **kwargs)

    carts = raw_topic(topics.carts_abandoned)
    hits = raw_topic(topics.hits_enriched)
    privacy = raw_topic(topics.privacy_requests)
    crm = raw_topic(topics.crm_profiles)
    identity = raw_topic(topics.identity_links)
    output = raw_topic(topics.remarketing_messages)
    commands = raw_topic(config.command_topic, partitions=config.partitions, internal=True)
    visitors = raw_topic(config.visitor_topic, partitions=config.partitions, internal=True)
    tables = {name: app.Table(name, partitions=config.partitions, key_type=str, value_type=bytes) for name in STORES}
    # No offset committed before the table writes of the commands before it are on their changelogs (durability.py).
    changelog_writes = durable_commits(app, tables.values())

    async def send_message(customer: str, message: dict[str, Any]) -> None:
        pending = await output.send(key=out_key.encode(customer), value=out_value.encode(message), force=True)
        await pending  # the broker's acknowledgement, before the state records the step
        metrics.records_out(topics.remarketing_messages)

    handler = CommandHandler(
        Sequencer(config.sequencer), tables["sequences"], tables["profiles"], tables["parked"], send_message,
        metrics, config.clock, profiles_ready=gate.is_ready,
    )  # fmt: skip

    async def to_customer(customer: str, command: dict[str, Any]) -> None:
        await commands.send(key=customer.encode(), value=dumps(command), force=True)

    router = VisitorRouter(tables["links"], to_customer, metrics)

    def fatal(error: BaseException) -> None:
        if on_fatal is None:
            raise error
        on_fatal(error)

    async def dead_letter(message: Any, stage: str, error: BaseException) -> None:
        try:
            await dead_letters.write(message, stage, error)
        except DeadLetterRefusedError as refused:
            fatal(refused)

    async def forward(routed: tuple[str, dict[str, Any]] | None, to: Any = commands) -> None:
        """Send a routed command on: to the command topic (keyed by customer), or to the visitor topic."""
        if routed is not None:
            key, command = routed
            await to.send(key=key.encode(), value=dumps(command), force=True)

    async def decoded(event: Any) -> tuple[bool, Any]:
        """(True, value), or (False, None) once the record is dead-lettered; waits out registry outages."""
        msg = event.message
        while True:
            try:
                value = inputs.value(msg.topic, msg.value)
                registry_wait.answered()
                return True, value
            except RegistryUnavailableError as exc:
                await registry_wait.pause(exc)
            except Exception as exc:
                await dead_letter(msg, "deserialize", exc)
                return False, None

    async def counted(records: int, failures: int) -> None:
        try:
            budget.record(records, failures)
        except ErrorBudgetExceeded as exc:
            fatal(exc)

    Routed = tuple[str, dict[str, Any]] | None

    def input_agent(topic: Any, route: Callable[[Any, Any], tuple[Any, Routed]], kind: str, unroutable: str) -> None:
        """One record at a time: decode, route (None: ``unroutable``), forward.

        ``route`` answers ``(destination topic, routed)``: the command topic and a customer's command, or the
        visitor topic and a command keyed by visitor.
        """

        async def agent(stream: Any) -> None:
            async for event in stream.events():
                metrics.records_in(event.message.topic)
                ok, value = await decoded(event)
                if ok:
                    try:
                        routed_to = route(event, value)
                    except Exception as exc:
                        await dead_letter(event.message, "process", exc)
                        ok = False
                    else:
                        to, routed = routed_to
                        if routed is None:
                            metrics.inputs.labels(kind, unroutable).inc()
                        await forward(routed, to)
                await counted(1, 0 if ok else 1)

        agent.__name__ = agent.__qualname__ = f"{kind}_input"
        app.agent(topic, name=f"{PROCESSOR}.{kind}")(agent)

    def cart_route(event: Any, cart: Any) -> tuple[Any, Routed]:
        return commands, abandoned_command(cart)

    def crm_route(event: Any, record: Any) -> tuple[Any, Routed]:
        return commands, profile_command(inputs.key(event.message.key), record)

    def privacy_route(event: Any, request: Any) -> tuple[Any, Routed]:
        """By customer when the request names one, else by visitor (the link to its customer is looked up)."""
        by_customer = privacy_command(request)
        if by_customer is not None:
            return commands, by_customer
        return visitors, visitor_privacy_command(request)  # None: neither id, unroutable

    def link_route(event: Any, record: Any) -> tuple[Any, Routed]:
        return visitors, link_command(inputs.key(event.message.key), record)

    input_agent(carts, cart_route, "abandoned", Outcome.ANONYMOUS.value)
    input_agent(privacy, privacy_route, "privacy", "unroutable")  # neither a customer nor a visitor id
    input_agent(crm, crm_route, "profile", "unroutable")
    input_agent(identity, link_route, "link", "unroutable")

    def command_agent(topic: Any, name: str, handle: Callable[[str, Any], Awaitable[Any]]) -> None:
        """One internal command at a time, keyed by visitor or customer; one that fails is a dead letter."""

        async def agent(stream: Any) -> None:
            async for event in stream.events():
                key = event.message.key
                failed = 0
                try:
                    await handle(key.decode() if isinstance(key, bytes) else str(key), loads(event.message.value))
                except Exception as exc:
                    await dead_letter(event.message, "process", exc)
                    failed = 1
                await counted(1, failed)

        agent.__name__ = agent.__qualname__ = f"{name}_commands"
        app.agent(topic, name=f"{PROCESSOR}.{name}")(agent)

    command_agent(visitors, "visitors", router.handle)

    @app.agent(hits, name=f"{PROCESSOR}.order")
    async def order_hits(stream: Any) -> None:
        async for batch in stream.take_events(config.batch_size, within=HITS_BATCH_WAIT_MS / 1000):
            failures = 0
            metrics.records_in(topics.hits_enriched, len(batch))
            for event in batch:
                known, kind = hit_type.read(event.message.value)
                if known and kind != "order":
                    continue  # most hits stop here, undecoded
                ok, hit = await decoded(event)
                if not ok:
                    failures += 1
                    continue
                try:
                    routed = order_command(hit)
                except Exception as exc:
                    await dead_letter(event.message, "process", exc)
                    failures += 1
                    continue
                await forward(routed)
            await counted(len(batch), failures)

    command_agent(commands, "commands", handler.handle)

    @app.task
    async def profiles_gate() -> None:
        await gate.run()

    pending_ticks: dict[str, int] = {}
    resend_ms = max(5 * config.tick_ms, TICK_RESEND_MIN_MS)
    first_tick = [True]

    @app.timer(interval=config.tick_ms / 1000)
    async def due_sequences() -> None:
        now = config.clock()
        snapshot = list(tables["sequences"].items())
        for name, table in tables.items():
            metrics.state_keys(name, len(snapshot) if name == "sequences" else len(table))
        due = [customer for customer, raw in snapshot if (at := next_due(loads(raw), config.sequencer)) and at <= now]
        if gate.ready:
            due += [customer for customer in tables["parked"] if customer not in due]
        if first_tick[0]:
            first_tick[0] = False
            log.info("remarketing: first tick, %d sequences held, %d due", len(snapshot), len(due))
        for customer in list(pending_ticks):
            if customer not in due:
                del pending_ticks[customer]
        for customer in due:
            sent = pending_ticks.get(customer)
            if sent is not None and now - sent < resend_ms:
                continue  # a tick is on its way; a lost one is sent again after resend_ms
            pending_ticks[customer] = now
            await forward((customer, tick_command()))

    app.remarketing = {
        "handler": handler, "router": router, "metrics": metrics, "gate": gate, "dead_letters": dead_letters,
        "changelog_writes": changelog_writes, **tables,
    }  # fmt: skip
    return app
