"""The CRM normalizer on the real broker and registry, fed change events as the Debezium source writes them.

Events go to per-test copies of ``crm.cdc.customers`` and ``crm.cdc.consents``
(3 partitions each, co-partitioned) as the connector writes them: the key is
the customer id as UTF-8 bytes (``StringConverter``), the value a change
event in ``JsonConverter``'s envelope. The processor runs in this process,
exactly-once; ``crm.profiles`` is read back as Avro (``read_committed``).
The same flow with the real PostgreSQL and Kafka Connect is another test's.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from passerelle.schemas.catalog import load_catalog
from passerelle.schemas.clients import Connection, producer
from passerelle.streams.crm_normalizer.processor import CrmNormalizerProcessor, CrmNormalizerTopics
from passerelle.streams.runtime import Runner, RunnerConfig, header_dict
from tests.integration.kafka_helpers import TopicReader, create_topics
from tests.unit.test_crm_normalizer import T2, T2_MS, consent, created, customer, event, profile, wire

pytestmark = pytest.mark.integration
CATALOG = load_catalog()


@dataclass
class Flow:
    topics: CrmNormalizerTopics
    dlq: str
    bootstrap: str
    registry: str
    runner: Runner
    thread: threading.Thread
    sent: int = 0

    def send(self, topic: str, *records: tuple[bytes | None, bytes | None]) -> None:
        """Produce as the connector does: plain bytes, murmur2 partitioning of the key (as Java clients)."""
        target = producer(Connection.plain(self.bootstrap), {"linger.ms": 5})
        for key, value in records:
            target.produce(topic, value, key)
        assert target.flush(30) == 0
        self.sent += len(records)

    def customers(self, *events: tuple[str, dict[str, Any] | None]) -> None:
        self.send(self.topics.customers, *((k.encode(), wire("customers", e)) for k, e in events))

    def consents(self, *events: tuple[str, dict[str, Any] | None]) -> None:
        self.send(self.topics.consents, *((k.encode(), wire("consents", e)) for k, e in events))

    def processed(self, timeout: float = 60) -> None:
        """Wait until every record sent was read (its effects commit within the next interval)."""
        deadline = time.monotonic() + timeout
        while self.runner.records_in < self.sent and time.monotonic() < deadline:
            assert self.thread.is_alive(), "the processor stopped"
            time.sleep(0.1)
        assert self.runner.records_in >= self.sent, f"{self.runner.records_in} of {self.sent} records read"

    def profiles(self, at_least: int) -> list[tuple[str, dict[str, Any] | None]]:
        """Every record of crm.profiles so far (at least ``at_least``, then until 3 s pass without news), in order
        per key: (customer id, profile or None)."""
        reader = TopicReader(self.bootstrap, self.registry, self.topics.profiles)
        try:
            reader.read(until=at_least, timeout=60)
            reader.read(until=10_000, timeout=60, idle=3)
            return [(reader.decoder.decode(m.key()), v) for m, v in reader.records]
        finally:
            reader.close()

    def dead_letters(self, until: int) -> list[tuple[Any, dict[str, str]]]:
        reader = TopicReader(self.bootstrap, self.registry, self.dlq, decode=False)
        try:
            return [(m, header_dict(m.headers())) for m, _ in reader.read(until=until, timeout=60, idle=3)]
        finally:
            reader.close()


@pytest.fixture
def flow(kafka_bootstrap: str, schema_registry_url: str, unique: Callable[[str], str]) -> Iterator[Flow]:
    t = CrmNormalizerTopics(
        customers=unique("crm.cdc.customers"), consents=unique("crm.cdc.consents"), profiles=unique("crm.profiles"),
        privacy_requests=None,
    )  # fmt: skip
    dlq = unique("dlq")
    create_topics(kafka_bootstrap, {t.customers: 3, t.consents: 3, dlq: 1})
    create_topics(kafka_bootstrap, {t.profiles: 3}, {"cleanup.policy": "compact"})
    config = RunnerConfig(
        app_id=unique("crm-normalizer"), bootstrap_servers=kafka_bootstrap, schema_registry_url=schema_registry_url,
        output_schemas={t.profiles: CATALOG.schema_text("CrmProfile")},
        wire_formats={t.customers: "connect-json", t.consents: "connect-json"},  # as the catalog says
        dead_letter_topic=dlq,
    )  # fmt: skip
    runner = Runner(CrmNormalizerProcessor(t), config)
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    yield Flow(t, dlq, kafka_bootstrap, schema_registry_url, runner, thread)
    runner.stop()
    thread.join(30)


def latest(records: list[tuple[str, dict[str, Any] | None]]) -> dict[str, dict[str, Any] | None]:
    view: dict[str, dict[str, Any] | None] = {}
    for key, value in records:
        view[key] = value
    return view


def as_written(value: dict[str, Any] | None) -> dict[str, Any] | None:
    """A profile as read back: the Avro decoder gives ``updated_at`` as a datetime."""
    if value is None:
        return None
    return {**value, "updated_at": int(value["updated_at"].timestamp() * 1000)}


def test_change_events_keep_crm_profiles_in_step(flow: Flow) -> None:
    c1, c2, c3 = customer("C1"), customer("C2"), customer("C3", loyalty_tier="none")
    # 1. a snapshot, then live changes; C3's consent is written before C3 exists on its topic
    flow.customers(("C1", event("customers", "r", None, c1, snapshot="first")),
                   ("C2", event("customers", "r", None, c2, snapshot="last")))  # fmt: skip
    flow.consents(("C1", event("consents", "c", None, consent("C1", updated=T2))),
                  ("C3", event("consents", "c", None, consent("C3"))))  # fmt: skip
    flow.customers(("C3", created(c3)))
    malformed = b'{"schema": {"type": "struct", "optional": false}, "payload": {"op": "c", "after": '
    truncate = {**event("customers", "t", None, None)}
    flow.send(flow.topics.customers, (b"C9", malformed), (None, wire("customers", truncate)))
    flow.processed()
    first = flow.profiles(at_least=3)
    assert {k: as_written(v) for k, v in latest(first).items()} == {
        "C1": profile("C1", consent=True, updated_at=T2_MS),
        "C2": profile("C2"),
        "C3": profile("C3", consent=True, loyalty_tier="none"),
    }

    # 2. an update, a consent withdrawn, a delete with its cascade, and the snapshot read again after a restart
    flow.customers(("C2", event("customers", "u", c2, {**c2, "csp": "retired", "updated_at": T2})))
    flow.consents(("C3", event("consents", "u", consent("C3"), consent("C3", granted=False, updated=T2))))
    flow.customers(("C1", event("customers", "d", c1, None)), ("C1", None))
    flow.consents(("C1", event("consents", "d", consent("C1", updated=T2), None)), ("C1", None))
    flow.customers(("C2", event("customers", "r", None, {**c2, "csp": "retired", "updated_at": T2}, snapshot="true")))
    flow.processed()
    records = flow.profiles(at_least=len(first) + 3)
    assert {k: as_written(v) for k, v in latest(records).items()} == {
        "C1": None,  # the erasure signal
        "C2": profile("C2", csp="retired", updated_at=T2_MS),
        "C3": profile("C3", consent=False, loyalty_tier="none", updated_at=T2_MS),
    }
    per_key: dict[str, list[Any]] = {}
    for key, value in records:
        per_key.setdefault(key, []).append(as_written(value))
    for key, values in per_key.items():  # written only when it changed: never the same profile twice in a row
        assert all(a != b for a, b in itertools.pairwise(values)), (key, values)
    assert per_key["C1"][-1] is None and per_key["C1"].count(None) == 1  # the cascade brought nothing back
    assert len(per_key["C2"]) == 2  # the snapshot read again wrote nothing

    # 3. what could not be applied, with its original bytes
    dead = flow.dead_letters(until=2)
    assert len(dead) == 2
    by_stage = {h["stage"]: (m, h) for m, h in dead}
    msg, headers = by_stage["deserialize"]
    assert (msg.key(), msg.value()) == (b"C9", malformed) and headers["topic"] == flow.topics.customers
    assert "not Kafka Connect JSON" in headers["exception.message"]
    msg, headers = by_stage["process"]
    assert msg.value() == wire("customers", truncate)
    assert "truncate of customers is not applied" in headers["exception.message"]
    assert headers["processor"] == "crm-normalizer"
    assert flow.thread.is_alive()
