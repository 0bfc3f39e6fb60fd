"""The runner's plain configuration (``streams`` imports only ``schemas``, not the settings layer)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from passerelle.schemas.clients import DEAD_LETTER_TOPIC, Connection, Connects
from passerelle.streams.runtime.deadletter import ErrorBudget
from passerelle.streams.runtime.timers import TimerRetry

DEFAULT_DEAD_LETTER_TOPIC = DEAD_LETTER_TOPIC


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class RunnerConfig(Connects):
    """How one processor instance runs.

    ``instance_id`` must be stable across restarts of the same instance: it
    names the transactional producer, so a restarted instance fences its
    previous incarnation and aborts its open transaction at once instead of
    leaving read_committed consumers blocked until the transaction times out.

    ``fetch_wait_max_ms``/``fetch_min_bytes``: the broker answers a fetch once
    64 KiB are there or after 5 ms, instead of at the first byte. Under a
    steady flow that is one fetch per 5 ms instead of one per produce request:
    measured at 9,800 hits/s, 8-12% less broker CPU and a lower hit-to-enriched
    p99 in each of three side-by-side pairs (docs/measurements.md).

    ``gc_freeze`` moves everything alive to the collector's permanent generation
    after each commit: state that lives for minutes is then not rescanned by
    every generation-2 collection (measured on the enrichment logic with 20,000
    visitors: 19 pauses of up to 93 ms per 200,000 hits without, one of 14 ms
    with, and +38% throughput). Cyclic garbage among frozen objects waits for
    the full collection every ``full_gc_interval_s``.

    ``assignment_strategy``: ``range`` keeps partition N of every input on one
    instance, which per-partition state needs with several inputs (the runner
    refuses anything else for them). Measured against ``cooperative-sticky``
    (docs/runtime.md, "Partition assignment"), it pauses the partitions that
    move less and never aborted a transaction during a rebalance, so it is the
    default for every processor; a single-input one may still choose
    ``cooperative-sticky``.

    ``wire_formats``: the catalog's wire format of inputs and outputs that are
    not Confluent Avro: ``connect-json`` topics (Kafka Connect's edge) are read
    and written as UTF-8 keys and JsonConverter envelopes, an output's value
    schema being its contract (``streams/runtime/codecs.py``).

    ``timer_max_attempts``: a timer whose ``on_timer`` raises is re-armed after
    ``timer_backoff_ms``, doubling up to ``timer_max_backoff_ms``, and
    dead-lettered (stage ``timer``) once this many attempts have raised.
    """

    app_id: str
    bootstrap_servers: str
    schema_registry_url: str
    output_schemas: Mapping[str, str]
    input_schemas: Mapping[str, str] = field(default_factory=dict)  # reader schema per input topic
    wire_formats: Mapping[str, str] = field(default_factory=dict)  # per topic; absent: confluent-avro (codecs.py)
    instance_id: str = "0"
    exactly_once: bool = True
    commit_interval_ms: int = 100
    min_commit_interval_ms: int = 30  # when caught up with the input, commit this early (0: only per interval)
    batch_size: int = 2000
    fetch_wait_max_ms: int = 5
    fetch_min_bytes: int = 65536
    poll_timeout_s: float = 0.05
    dead_letter_topic: str = DEFAULT_DEAD_LETTER_TOPIC
    key_schema: str = '"string"'
    auto_register_schemas: bool = True
    metrics_port: int | None = None
    error_budget: ErrorBudget = field(default_factory=ErrorBudget)
    assignment_strategy: str = "range"
    static_membership: bool = False
    session_timeout_ms: int = 10_000
    transaction_timeout_ms: int = 30_000
    changelog_replication: int = 1
    gc_freeze: bool = True
    full_gc_interval_s: float = 600.0
    clock: Callable[[], int] = wall_clock_ms
    consumer_overrides: dict[str, Any] = field(default_factory=dict)
    producer_overrides: dict[str, Any] = field(default_factory=dict)
    connection: Connection | None = None  # credentials and TLS; None: plaintext to bootstrap_servers
    max_record_bytes: int = 999_000  # key + value + headers; librdkafka refuses more than message.max.bytes (1e6)
    registry_retry_max_s: float = 5.0  # longest back-off while the schema registry does not answer
    timer_max_attempts: int = 5
    timer_backoff_ms: int = 1_000
    timer_max_backoff_ms: int = 60_000

    def commit_due(self, since_last_ms: int, caught_up: bool, uncommitted: bool) -> bool:
        """Whether this loop turn commits.

        Every ``commit_interval_ms``; and, once caught up with the input, as soon as
        ``min_commit_interval_ms`` passed with something to commit: read_committed
        readers see outputs only after the commit, so a processor keeping up with a
        steady flow commits often (hit-to-enriched latency in docs/measurements.md)
        while a backlog still commits once per interval and keeps its throughput.
        """
        if since_last_ms >= self.commit_interval_ms:
            return True
        return (
            caught_up
            and uncommitted
            and self.min_commit_interval_ms > 0
            and since_last_ms >= self.min_commit_interval_ms
        )

    @staticmethod
    def caught_up(queued_batch: int, batch_size: int) -> bool:
        """A batch that did not fill up drained what the consumer had fetched.

        "Nothing queued" alone misses a processor that keeps up with a flow that
        never pauses (fetch responses from many partitions or brokers landing
        while a batch is processed): it would only commit once per interval.
        """
        return queued_batch < batch_size

    @property
    def timer_retry(self) -> TimerRetry:
        return TimerRetry(self.timer_max_attempts, self.timer_backoff_ms, self.timer_max_backoff_ms)

    @property
    def transactional_id(self) -> str:
        return f"{self.app_id}-{self.instance_id}"
