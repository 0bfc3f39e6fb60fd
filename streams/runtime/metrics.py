"""Prometheus metrics of the runtime; names prefixed ``passerelle_``, base units, no per-key labels.

Metrics are updated per batch, not per record, so they cost nothing measurable
on the hot path; latency histograms observe a bounded sample of each batch.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 10, 50, 100, 500, 1000, 2000, 5000, 10000)


class RuntimeMetrics:
    """All runtime metrics of one process, in their own registry (tests run several runners)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        p = ["processor"]
        self.records_in = Counter("passerelle_records_in_total", "Records consumed", [*p, "topic"], registry=r)
        self.records_out = Counter("passerelle_records_out_total", "Records produced", [*p, "topic"], registry=r)
        self.dead_letters = Counter(
            "passerelle_dead_letters_total", "Records sent to the dead-letter topic", [*p, "stage"], registry=r
        )
        self.registry_retries = Counter(
            "passerelle_schema_registry_retries_total",
            "Records that waited because the schema registry did not answer (retried, never dead-lettered)",
            p, registry=r,
        )  # fmt: skip
        self.batch_size = Histogram(
            "passerelle_batch_size_records", "Records per consumed batch", p, buckets=BATCH_BUCKETS, registry=r
        )
        self.processing_seconds = Histogram(
            "passerelle_batch_processing_seconds",
            "Time to decode, process and produce one batch",
            p,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.event_to_emit_seconds = Histogram(
            "passerelle_event_to_emit_seconds",
            "Record timestamp to output produce time",
            p,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.consumer_lag = Gauge(
            "passerelle_consumer_lag_records", "High watermark minus position", [*p, "topic", "partition"],
            registry=r,
        )  # fmt: skip
        self.state_keys = Gauge("passerelle_state_keys", "Keys held in a state store", [*p, "store"], registry=r)
        self.restore_seconds = Histogram(
            "passerelle_state_restore_seconds",
            "Time to restore a partition's stores from their changelogs",
            p,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.restored_records = Counter(
            "passerelle_state_restored_records_total", "Changelog records replayed on restore", p, registry=r
        )
        self.restore_total = Gauge(
            "passerelle_state_restore_total_records",
            "Changelog records the restore in progress reads for a partition (0 once restored)",
            [*p, "partition"], registry=r,
        )  # fmt: skip
        self.restore_done = Gauge(
            "passerelle_state_restore_done_records",
            "Changelog records the restore in progress has read for a partition (0 once restored)",
            [*p, "partition"], registry=r,
        )  # fmt: skip
        self.expired_keys = Counter(
            "passerelle_state_expired_keys_total", "Keys deleted for being idle longer than their store's ttl_ms",
            [*p, "store"], registry=r,
        )  # fmt: skip
        self.commit_seconds = Histogram(
            "passerelle_commit_seconds",
            "Time the loop waits for one commit (transaction, or flush and offset commit); "
            "read_committed readers see outputs only after it",
            p,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.commits = Counter("passerelle_commits_total", "Commits (transactions or offset commits)", p, registry=r)
        self.aborts = Counter("passerelle_transaction_aborts_total", "Aborted transactions", p, registry=r)
        self.timers_fired = Counter(
            "passerelle_timers_fired_total", "Timers whose handler ran to completion", [*p, "kind"], registry=r
        )
        self.timer_retries = Counter(
            "passerelle_timer_retries_total",
            "Timers whose handler raised, re-armed with back-off (given up: passerelle_dead_letters_total"
            '{stage="timer"})',
            [*p, "kind"],
            registry=r,
        )
        self.table_records = Gauge(
            "passerelle_lookup_table_keys", "Keys held in a lookup table", [*p, "table"], registry=r
        )

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        """Expose ``/metrics`` on ``addr:port`` from a daemon thread."""
        start_http_server(port, addr=addr, registry=self.registry)
