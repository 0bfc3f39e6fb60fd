"""The remarketing sequencer on faust-streaming: wiring only, the rules are in ``sequence.py``.

    python -m streams.remarketing.app --bootstrap B --registry R [--carts T] [--hits T] [--privacy T] [--crm T]
        [--messages T] [--app-id ID] [--followup-seconds S] [--cap-seconds S] [--tick-seconds S]

Why faust here (and not the confluent-kafka runtime): the sequence lives for
hours and days, volume is low (abandoned carts, orders), and faust's tables
(changelog-backed, restored on start and on rebalance) and timers fit that.

Shape. The inputs are keyed differently (carts and hits by visitor id,
profiles and privacy requests by customer id) and come from topics with
different partition counts, so every input agent only decodes, filters and
forwards a small JSON *command* keyed by customer id to one internal topic,
``<app id>-commands``. A single agent consumes it and is the only writer of
the two tables, ``sequences`` (the sequencer's state per customer) and
``profiles`` (the CRM profile cache: email, consent, updated_at, nothing
more). Both tables are co-partitioned with the command topic, so each
customer's commands are applied in order, by the instance that owns the
customer's state, whatever the number of instances.

The timer scans the local ``sequences`` table and, for every state due
(step 2, or expiry), sends a ``tick`` command instead of mutating the table
itself: faust only allows table writes from a stream, and going through the
command topic serialises the tick with the customer's other commands (an order
and a tick racing each other cannot both win).

Delivery. At least once: faust commits an input offset only after the
producer has flushed. The command agent awaits the broker's acknowledgement of
every message before it writes the state that records it; so a crash can only
lose the state write (the command is then redelivered and the message sent
again, with the same deterministic ``message_id``), never the message. The
emailing bridge sends that id as the ``Idempotency-Key``, so the partner
delivers each message once however often it is sent.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from schemas.clients import DEAD_LETTER_TOPIC, Connection, Connects
from schemas.serde import read_long
from streams.remarketing.sequence import (
    Outcome,
    Profile,
    Promotion,
    Sequencer,
    SequencerConfig,
    State,
    next_due,
    profile_from_crm,
    to_ms,
)

log = logging.getLogger("passerelle.remarketing")

DEFAULT_DEAD_LETTER_TOPIC = DEAD_LETTER_TOPIC
STRING_KEY = '"string"'


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class RemarketingTopics:
    """Topic names, overridable so tests and several deployments can share a cluster."""

    carts_abandoned: str = "carts.abandoned"
    hits_enriched: str = "hits.enriched"
    privacy_requests: str = "privacy.requests"
    crm_profiles: str = "crm.profiles"
    remarketing_messages: str = "remarketing.messages"
    dead_letters: str = DEFAULT_DEAD_LETTER_TOPIC


@dataclass(frozen=True)
class RemarketingConfig(Connects):
    """How one instance runs; instances sharing ``app_id`` share the work and the state."""

    bootstrap_servers: str
    schema_registry_url: str
    app_id: str = "passerelle-remarketing"
    topics: RemarketingTopics = field(default_factory=RemarketingTopics)
    sequencer: SequencerConfig = field(default_factory=SequencerConfig)
    tick_seconds: float = 60.0  # how often due sequences are looked for (step 2 is late by at most this)
    partitions: int = 3  # of the command topic and the tables' changelogs
    replication_factor: int = 1  # of the internal topics faust creates
    session_timeout_seconds: float = 10.0  # how long a crashed instance keeps its partitions (faust's default: 60)
    auto_register_schemas: bool = True
    data_dir: str = os.path.join(".passerelle", "remarketing")
    metrics_port: int | None = None
    clock: Callable[[], int] = wall_clock_ms
    connection: Connection | None = field(default=None, repr=False)  # credentials/TLS; None: plaintext

    @property
    def command_topic(self) -> str:
        return f"{self.app_id}-commands"


class RemarketingMetrics:
    """Counters named per the project's conventions; labels are outcomes and steps, never people."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry or CollectorRegistry()
        self.inputs = Counter(
            "passerelle_remarketing_inputs_total", "Commands applied to the sequences, by kind and outcome",
            ["kind", "outcome"], registry=r,
        )  # fmt: skip
        self.messages = Counter(
            "passerelle_remarketing_messages_total", "Remarketing messages emitted", ["step"], registry=r
        )
        self.recovered = Counter(
            "passerelle_remarketing_recovered_orders_total", "Orders placed after a remarketing step", registry=r
        )
        self.dead_letters = Counter(
            "passerelle_remarketing_dead_letters_total", "Input records sent to the dead-letter topic", ["stage"],
            registry=r,
        )  # fmt: skip
        self.sequences = Gauge(
            "passerelle_remarketing_states", "Customer states held by this instance's tables", registry=r
        )


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), default=_json_default).encode()


def _json_default(value: Any) -> Any:
    try:
        return to_ms(value)
    except (TypeError, ValueError):
        raise TypeError(f"not JSON serialisable: {type(value).__name__}") from None


def _loads(raw: bytes | None) -> Any:
    return None if raw is None else json.loads(raw)


class OrderFilter:
    """Tells order hits from the others by reading the first six fields only, not the whole hit.

    ``hits.enriched`` carries every hit and only orders matter here, so this
    is the hot path. ``EnrichedHit`` starts with ``event_id``, ``site``,
    ``visitor_id`` (strings), ``customer_id`` (null|string), ``event_time``
    (long) and ``type`` (enum): skipping three strings, a union and a long
    gives the enum index. The layout is checked once per writer schema id; a
    schema laid out differently is decoded in full instead.
    """

    def __init__(self, schema_text_of: Callable[[int], str]) -> None:
        self._schema_text_of = schema_text_of
        self._order_index: dict[int, int | None] = {}

    def is_order(self, data: bytes) -> bool | None:
        """True/False from the prefix, or None when this writer schema needs a full decode."""
        if len(data) < 5 or data[0] != 0:
            return None
        schema_id = int.from_bytes(data[1:5], "big")
        if schema_id not in self._order_index:
            self._order_index[schema_id] = self._layout(schema_id)
        wanted = self._order_index[schema_id]
        if wanted is None:
            return None
        try:
            pos = 5
            for _ in range(3):
                length, pos = read_long(data, pos)
                pos += length
            branch, pos = read_long(data, pos)
            if branch == 1:
                length, pos = read_long(data, pos)
                pos += length
            _, pos = read_long(data, pos)
            index, _ = read_long(data, pos)
        except IndexError:
            return None  # truncated: let the full decode report it
        return index == wanted

    def _layout(self, schema_id: int) -> int | None:
        try:
            fields = json.loads(self._schema_text_of(schema_id))["fields"]
            names = [f["name"] for f in fields[:6]]
            types = [f["type"] for f in fields[:6]]
        except Exception:
            return None
        if names != ["event_id", "site", "visitor_id", "customer_id", "event_time", "type"]:
            return None
        if types[:3] != ["string"] * 3 or types[3] != ["null", "string"]:
            return None
        if types[4] != "long" and not (isinstance(types[4], dict) and types[4].get("type") == "long"):
            return None
        enum = types[5]
        if not isinstance(enum, dict) or enum.get("type") != "enum" or "order" not in enum.get("symbols", []):
            return None
        return int(enum["symbols"].index("order"))


def order_command(hit: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """(customer id, command) of an order hit; None for any other hit or an order without a customer."""
    if hit.get("type") != "order" or not hit.get("customer_id"):
        return None
    order = hit.get("order") or {}
    return str(hit["customer_id"]), {
        "kind": "order",
        "order_id": order.get("order_id") or hit["event_id"],
        "order_time": to_ms(hit["event_time"]),
        "visitor_id": hit.get("visitor_id"),
    }


class CommandHandler:
    """Applies one command to one customer's state and profile; the only writer of both tables.

    Kept apart from faust (tables are plain mappings here, the sender an
    async callable) so the decisions it makes are visible in one place.
    """

    def __init__(
        self,
        sequencer: Sequencer,
        sequences: Any,
        profiles: Any,
        send: Callable[[str, dict[str, Any]], Any],
        metrics: RemarketingMetrics,
        clock: Callable[[], int],
    ) -> None:
        self.sequencer = sequencer
        self.sequences = sequences
        self.profiles = profiles
        self.send = send
        self.metrics = metrics
        self.clock = clock

    async def handle(self, customer: str, command: Mapping[str, Any]) -> str:
        """Apply ``command``; returns the outcome label counted (an ``Outcome`` value, or what a tick did)."""
        seq = self.sequencer
        now = self.clock()
        before: State | None = _loads(self.sequences.get(customer))
        state = before
        messages: list[dict[str, Any]] = []
        outcome: Outcome | str
        kind = command.get("kind")
        if kind == "abandoned":
            profile: Profile | None = _loads(self.profiles.get(customer))
            state, messages, outcome = seq.on_abandoned(state, command["event"], profile, now)
        elif kind == "order":
            state, outcome = seq.on_order(
                state, str(command["order_id"]), int(command["order_time"]), now,
                customer_id=customer, visitor_id=command.get("visitor_id"),
            )  # fmt: skip
        elif kind == "profile":
            state, outcome = self._profile(customer, state, command.get("profile"), now)
        elif kind == "privacy":
            state, outcome = self._privacy(customer, state, command["request"], now)
        elif kind == "tick":
            state, messages = seq.on_tick(state, now)
            outcome = "step2" if messages else "expired" if state is None and before is not None else "not_due"
        else:
            raise ValueError(f"unknown command kind {kind!r}")
        for message in messages:  # acknowledged by the broker before the state says it was sent
            await self.send(customer, message)
            self.metrics.messages.labels(str(message["step"])).inc()
            log.info("remarketing step %s for customer %s (message %s)", message["step"], customer,
                     message["message_id"])  # fmt: skip
        if state is None and before is not None:
            del self.sequences[customer]
        elif state is not None and state != before:
            self.sequences[customer] = _dumps(state)
        if outcome == Outcome.RECOVERED:
            self.metrics.recovered.inc()
        label = str(outcome)
        self.metrics.inputs.labels(str(kind), label).inc()
        return label

    def _profile(
        self, customer: str, state: State | None, record: Mapping[str, Any] | None, now: int
    ) -> tuple[State | None, Outcome]:
        """A CRM profile: a tombstone erases; an update refreshes the cache and may withdraw consent."""
        if record is None:
            self._forget_profile(customer)
            return self.sequencer.on_erasure(state)
        incoming = profile_from_crm(record)
        cached: Profile | None = _loads(self.profiles.get(customer))
        if cached is not None and cached["updated_at"] > incoming["updated_at"]:
            return state, Outcome.IGNORED  # an older version arriving late must not undo a newer one
        self.profiles[customer] = _dumps(incoming)
        return self.sequencer.on_consent(state, incoming["marketing_consent"], now)

    def _privacy(
        self, customer: str, state: State | None, request: Mapping[str, Any], now: int
    ) -> tuple[State | None, Outcome]:
        """A privacy request: erasure forgets the person; a consent change updates the cache and may cancel."""
        if request.get("kind") == "erasure":
            self._forget_profile(customer)
            return self.sequencer.on_erasure(state)
        consent = request.get("marketing_consent")
        if consent is None:
            return state, Outcome.IGNORED
        cached: Profile | None = _loads(self.profiles.get(customer))
        updated: Profile = (
            {**cached, "marketing_consent": consent}
            if cached is not None
            else {"email": None, "marketing_consent": consent, "updated_at": to_ms(request.get("requested_at") or 0)}
        )
        self.profiles[customer] = _dumps(updated)
        return self.sequencer.on_consent(state, consent, now)

    def _forget_profile(self, customer: str) -> None:
        if self.profiles.get(customer) is not None:
            del self.profiles[customer]


def build_app(config: RemarketingConfig, metrics: RemarketingMetrics | None = None) -> Any:
    """The faust app with its topics, tables, agents and timer (faust is untyped: ``Any`` at the boundary)."""
    import faust

    from schemas.catalog import load_catalog
    from schemas.clients import ensure_reachable, registry_client
    from schemas.serde import AvroDecoder, AvroEncoder, SchemaCache, registry_fetcher
    from streams.remarketing.credentials import faust_credentials
    from streams.runtime.deadletter import dead_letter_headers

    metrics = metrics or RemarketingMetrics()
    topics = config.topics
    catalog = load_catalog()
    conn = config.conn
    ensure_reachable(conn)  # wrong address or credentials: one clear error, not aiokafka retrying forever
    registry = registry_client(conn)
    cache = SchemaCache(registry_fetcher(registry))
    decoder = AvroDecoder(cache)
    key_decoder = AvroDecoder(cache)
    out_value = AvroEncoder.for_subject(
        registry, f"{topics.remarketing_messages}-value", catalog.schema_text("RemarketingMessage"),
        config.auto_register_schemas,
    )  # fmt: skip
    out_key = AvroEncoder.for_subject(
        registry, f"{topics.remarketing_messages}-key", STRING_KEY, config.auto_register_schemas
    )
    orders = OrderFilter(cache.text)
    sequencer = Sequencer(config.sequencer)

    app: Any = faust.App(
        config.app_id,
        broker=",".join(f"kafka://{server.strip()}" for server in conn.bootstrap_servers.split(",")),
        broker_credentials=faust_credentials(conn),
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
        broker_session_timeout=config.session_timeout_seconds,
        broker_heartbeat_interval=max(config.session_timeout_seconds / 3, 1.0),
    )

    def raw_topic(name: str, **kwargs: Any) -> Any:
        return app.topic(name, key_type=bytes, value_type=bytes, **kwargs)

    carts = raw_topic(topics.carts_abandoned)
    hits = raw_topic(topics.hits_enriched)
    privacy = raw_topic(topics.privacy_requests)
    crm = raw_topic(topics.crm_profiles)
    output = raw_topic(topics.remarketing_messages)
    dead_letters = raw_topic(topics.dead_letters)
    commands = raw_topic(config.command_topic, partitions=config.partitions, internal=True)
    sequences = app.Table("sequences", partitions=config.partitions, key_type=str, value_type=bytes)
    profiles = app.Table("profiles", partitions=config.partitions, key_type=str, value_type=bytes)

    async def send_message(customer: str, message: dict[str, Any]) -> None:
        pending = await output.send(key=out_key.encode(customer), value=out_value.encode(message), force=True)
        await pending  # the broker's acknowledgement, before the state records the step

    handler = CommandHandler(sequencer, sequences, profiles, send_message, metrics, config.clock)

    async def forward(customer: str, command: dict[str, Any]) -> None:
        await commands.send(key=customer.encode(), value=_dumps(command), force=True)

    async def dead_letter(event: Any, stage: str, error: BaseException) -> None:
        msg = event.message
        log.warning("dead letter from %s[%s]@%s (%s): %s", msg.topic, msg.partition, msg.offset, stage, error)
        metrics.dead_letters.labels(stage).inc()
        headers = dead_letter_headers(
            topic=msg.topic, partition=msg.partition, offset=msg.offset, stage=stage, error=error,
            processor="remarketing", original=list(msg.headers or []),
        )  # fmt: skip
        await dead_letters.send(key=msg.key, value=msg.value, headers=headers, force=True)

    def decode(event: Any) -> Any:
        return decoder.decode(event.message.value)

    def customer_of_key(event: Any) -> str | None:
        key = event.message.key
        if key is None:
            return None
        try:
            return str(key_decoder.decode(key))
        except Exception:
            return key.decode(errors="replace") if isinstance(key, bytes) else str(key)

    @app.agent(carts)
    async def abandoned_carts(stream: Any) -> None:
        async for event in stream.events():
            try:
                cart = decode(event)
            except Exception as exc:
                await dead_letter(event, "deserialize", exc)
                continue
            customer = cart.get("customer_id")
            if not customer:
                metrics.inputs.labels("abandoned", Outcome.ANONYMOUS.value).inc()
                continue
            await forward(customer, {"kind": "abandoned", "event": cart})

    @app.agent(hits)
    async def order_hits(stream: Any) -> None:
        async for batch in stream.take_events(1000, within=0.2):
            for event in batch:
                value = event.message.value
                if value is None or orders.is_order(value) is False:
                    continue  # most hits stop here, undecoded
                try:
                    command = order_command(decode(event))
                except Exception as exc:
                    await dead_letter(event, "deserialize", exc)
                    continue
                if command is not None:
                    await forward(*command)

    @app.agent(privacy)
    async def privacy_requests(stream: Any) -> None:
        async for event in stream.events():
            try:
                request = decode(event)
            except Exception as exc:
                await dead_letter(event, "deserialize", exc)
                continue
            customer = request.get("customer_id")
            if not customer:
                metrics.inputs.labels("privacy", "unroutable").inc()  # visitor-only: no customer state to touch
                continue
            kind = request["kind"]
            await forward(customer, {"kind": "privacy", "request": {
                "kind": kind, "marketing_consent": request.get("marketing_consent"),
                "requested_at": request.get("requested_at"),
            }})  # fmt: skip

    @app.agent(crm)
    async def crm_profiles(stream: Any) -> None:
        async for event in stream.events():
            customer = customer_of_key(event)
            try:
                record = None if event.message.value is None else decode(event)
            except Exception as exc:
                await dead_letter(event, "deserialize", exc)
                continue
            customer = (record or {}).get("customer_id") or customer
            if not customer:
                continue
            await forward(customer, {"kind": "profile", "profile": record})

    @app.agent(commands)
    async def sequence_commands(stream: Any) -> None:
        async for event in stream.events():
            key = event.message.key
            try:
                customer = key.decode() if isinstance(key, bytes) else str(key)
                await handler.handle(customer, json.loads(event.message.value))
            except Exception as exc:
                await dead_letter(event, "process", exc)

    pending_ticks: dict[str, int] = {}
    resend_ms = int(max(5 * config.tick_seconds, 30.0) * 1000)

    @app.timer(interval=config.tick_seconds)
    async def due_sequences() -> None:
        now = config.clock()
        snapshot = list(sequences.items())
        metrics.sequences.set(len(snapshot))
        for customer, raw in snapshot:
            due = next_due(_loads(raw), config.sequencer)
            if due is None or due > now:
                pending_ticks.pop(customer, None)
                continue
            sent = pending_ticks.get(customer)
            if sent is not None and now - sent < resend_ms:
                continue  # a tick is on its way; a lost one is sent again after resend_ms
            pending_ticks[customer] = now
            await forward(customer, {"kind": "tick"})

    app.remarketing = {"handler": handler, "metrics": metrics, "sequences": sequences, "profiles": profiles}
    return app


def parse_args(argv: Sequence[str] | None = None) -> RemarketingConfig:
    d = RemarketingTopics()
    seq_defaults = SequencerConfig()
    promo = seq_defaults.promotion
    p = argparse.ArgumentParser(prog="python -m streams.remarketing.app", description=__doc__.split("\n")[0])
    p.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers")
    p.add_argument("--registry", required=True, help="Confluent-compatible schema registry URL")
    p.add_argument("--app-id", default="passerelle-remarketing", help="faust app id (consumer group, topic prefix)")
    p.add_argument("--carts", default=d.carts_abandoned)
    p.add_argument("--hits", default=d.hits_enriched)
    p.add_argument("--privacy", default=d.privacy_requests)
    p.add_argument("--crm", default=d.crm_profiles)
    p.add_argument("--messages", default=d.remarketing_messages)
    p.add_argument("--dead-letters", default=d.dead_letters)
    p.add_argument("--followup-seconds", type=float, default=seq_defaults.followup_ms / 1000)
    p.add_argument("--cap-seconds", type=float, default=seq_defaults.cap_ms / 1000)
    p.add_argument("--recovery-seconds", type=float, default=seq_defaults.recovery_window_ms / 1000)
    p.add_argument("--max-lateness-seconds", type=float, default=(seq_defaults.max_lateness_ms or 0) / 1000,
                   help="abandonments detected longer ago start nothing (0: no limit)")  # fmt: skip
    p.add_argument("--tick-seconds", type=float, default=60.0, help="how often due step 2 messages are looked for")
    p.add_argument("--promo-code", default=promo.code)
    p.add_argument("--promo-description", default=promo.description)
    p.add_argument("--promo-discount", type=float, default=promo.discount_percent)
    p.add_argument("--partitions", type=int, default=3, help="partitions of the command topic and tables")
    p.add_argument("--replication-factor", type=int, default=1, help="of the internal topics")
    p.add_argument("--session-timeout-seconds", type=float, default=10.0,
                   help="after this long a crashed instance's partitions move to the others")  # fmt: skip
    p.add_argument("--data-dir", default=os.path.join(".passerelle", "remarketing"))
    p.add_argument("--metrics-port", type=int, default=None)
    p.add_argument("--no-register-schemas", action="store_true", help="look output schemas up, never register")
    a = p.parse_args(argv)
    sequencer = SequencerConfig(
        followup_ms=int(a.followup_seconds * 1000),
        cap_ms=int(a.cap_seconds * 1000),
        recovery_window_ms=int(a.recovery_seconds * 1000),
        max_lateness_ms=int(a.max_lateness_seconds * 1000) or None,
        promotion=Promotion(a.promo_code, a.promo_description, a.promo_discount),
    )
    topics = RemarketingTopics(
        carts_abandoned=a.carts, hits_enriched=a.hits, privacy_requests=a.privacy, crm_profiles=a.crm,
        remarketing_messages=a.messages, dead_letters=a.dead_letters,
    )  # fmt: skip
    return RemarketingConfig(
        bootstrap_servers=a.bootstrap, schema_registry_url=a.registry, app_id=a.app_id, topics=topics,
        sequencer=sequencer, tick_seconds=a.tick_seconds, partitions=a.partitions,
        replication_factor=a.replication_factor, session_timeout_seconds=a.session_timeout_seconds,
        auto_register_schemas=not a.no_register_schemas,
        data_dir=a.data_dir, metrics_port=a.metrics_port,
    )  # fmt: skip


def run(config: RemarketingConfig, loglevel: str = "INFO") -> None:
    """Run one worker until SIGINT/SIGTERM (faust leaves the group and commits on the way out)."""
    import faust

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per registry lookup is noise
    metrics = RemarketingMetrics()
    if config.metrics_port:
        start_http_server(config.metrics_port, registry=metrics.registry)
    app = build_app(config, metrics)
    worker = faust.Worker(app, loglevel=loglevel, redirect_stdouts=False)
    worker.execute_from_commandline()


def main(argv: Sequence[str] | None = None) -> None:
    run(parse_args(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
