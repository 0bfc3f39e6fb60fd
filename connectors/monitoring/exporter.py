"""The lag exporter: consumer lag, flow latencies and probes of what has no ``/metrics``, on one ``/metrics``.

One loop refreshes everything every ``interval_s`` and scrapes read the last
snapshot, so a scrape never waits on Kafka. Besides lag
(:mod:`passerelle.connectors.monitoring.lag`) and the flow latencies
(:mod:`passerelle.connectors.monitoring.flows`) it probes the schema registry
(``passerelle_registry_up``) and the Kafka Connect worker's REST API
(``passerelle_connect_up``, ``passerelle_connect_task_state``): neither serves
Prometheus metrics here (no JMX exporter agent is obtainable), and an alert
needs a series. With ``targets_dir`` it also refreshes the scrape targets
(:mod:`passerelle.connectors.monitoring.targets`).
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from passerelle.connectors.monitoring import flows, targets
from passerelle.connectors.monitoring.lag import LagReader, PartitionLag

if TYPE_CHECKING:
    from passerelle.schemas.clients import Connection

log = logging.getLogger(__name__)
CONNECT_STATES = ("RUNNING", "FAILED", "PAUSED", "UNASSIGNED", "RESTARTING", "STOPPED")


@dataclass(frozen=True)
class ExporterConfig:
    """What the exporter watches; ``passerelle lag`` fills it from settings."""

    bootstrap: str
    port: int = 9308
    host: str = "127.0.0.1"
    interval_s: float = 10.0
    groups: str = ""
    """Regular expression of the groups to report (empty: all)."""
    registry_url: str = ""
    registry_ca: str | None = None
    connect_url: str = ""
    targets_dir: Path | None = None
    flow_topics: flows.FlowTopics = field(default_factory=flows.FlowTopics)


class _Snapshot(Collector):
    """Serves the last refresh's lag rows and probe results (series vanish with their partitions)."""

    def __init__(self) -> None:
        self.rows: list[PartitionLag] = []
        self.connect_tasks: list[tuple[str, str, str]] = []  # connector, task ("connector" for itself), state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = ["group", "topic", "partition"]
        families = {
            "committed": GaugeMetricFamily("passerelle_consumer_group_committed_offset",
                                           "Offset the group committed (next record it reads)", labels=labels),
            "end": GaugeMetricFamily("passerelle_consumer_group_end_offset", "End offset (high watermark)",
                                     labels=labels),
            "records": GaugeMetricFamily("passerelle_consumer_group_lag_records",
                                         "End offset minus committed offset", labels=labels),
            "seconds": GaugeMetricFamily("passerelle_consumer_group_lag_seconds",
                                         "Age of the oldest record the group has not consumed (0: none readable)",
                                         labels=labels),
        }  # fmt: skip
        for row in self.rows:
            key = [row.group, row.topic, str(row.partition)]
            families["committed"].add_metric(key, row.committed)
            families["end"].add_metric(key, row.end)
            families["records"].add_metric(key, row.lag_records)
            families["seconds"].add_metric(key, row.lag_seconds)
        yield from families.values()
        tasks = GaugeMetricFamily("passerelle_connect_task_state",
                                  "1 for the state each Kafka Connect connector and task is in",
                                  labels=["connector", "task", "state"])  # fmt: skip
        for connector, task, state in self.connect_tasks:
            tasks.add_metric([connector, task, state], 1)
        yield tasks


class Exporter:
    """Refreshes lag, flows and probes in a loop; serve ``registry`` on ``/metrics``."""

    def __init__(self, conn: Connection, config: ExporterConfig) -> None:
        self.config = config
        self.conn = conn
        self.registry = CollectorRegistry()
        r = self.registry
        self.snapshot = _Snapshot()
        r.register(self.snapshot)
        self.flow_seconds = Histogram(
            "passerelle_flow_latency_seconds",
            "End-to-end latency of a flow, from the times its records carry (hit_to_enriched, "
            "hit_to_abandoned_cart, abandonment_to_partner)",
            ["flow"], buckets=flows.BUCKETS, registry=r,
        )  # fmt: skip
        for flow in flows.FLOWS:
            self.flow_seconds.labels(flow)
        self.registry_up = Gauge("passerelle_registry_up", "1 when the schema registry answers", ["url"], registry=r)
        self.connect_up = Gauge("passerelle_connect_up", "1 when the Kafka Connect REST API answers", ["url"],
                                registry=r)  # fmt: skip
        self.refresh_errors = Counter("passerelle_lag_refresh_errors_total",
                                      "Refreshes that failed, by part (lag, flows, registry, connect, targets)",
                                      ["part"], registry=r)  # fmt: skip
        self.last_refresh = Gauge("passerelle_lag_last_refresh_timestamp_seconds", "When the last refresh ended",
                                  registry=r)  # fmt: skip
        self._reader: LagReader | None = None
        self._clock = flows.FlowClock(config.flow_topics)
        self._flow_consumer: Any = None
        self._flow_assigned: set[str] = set()
        self._decoder: Any = None

    # --- parts -------------------------------------------------------------------------------------

    def refresh_lag(self) -> None:
        if self._reader is None:
            self._reader = LagReader(self.conn, self.config.groups)
        self.snapshot.rows = self._reader.read()

    def refresh_flows(self, budget_s: float = 0.5) -> int:
        """Consume what the flow topics got since the last refresh; returns the records observed."""
        from confluent_kafka import OFFSET_END, TopicPartition

        from passerelle.schemas import clients
        from passerelle.schemas.serde import AvroDecoder, SchemaCache, registry_fetcher

        if self._flow_consumer is None:
            self._flow_consumer = clients.consumer(self.conn, "passerelle-lag-exporter",
                                                   {"isolation.level": "read_committed"})  # fmt: skip
            self._decoder = AvroDecoder(SchemaCache(registry_fetcher(clients.registry_client(self.conn))))
        missing = [t for t in self.config.flow_topics.all() if t not in self._flow_assigned]
        if missing:
            meta = self._flow_consumer.list_topics(timeout=5.0)
            present = [t for t in missing if t in meta.topics and meta.topics[t].error is None]
            new = [TopicPartition(t, p, OFFSET_END) for t in present for p in meta.topics[t].partitions]
            if new:
                self._flow_consumer.incremental_assign(new)
                self._flow_assigned |= {tp.topic for tp in new}
        if not self._flow_assigned:
            return 0
        seen = 0
        deadline = time.monotonic() + budget_s
        while time.monotonic() < deadline:
            msgs = self._flow_consumer.consume(1000, timeout=0.1)
            if not msgs:
                break
            for msg in msgs:
                if msg.error() is not None:
                    continue
                try:
                    value = self._decoder.decode(msg.value()) if msg.value() is not None else None
                except Exception:
                    self.refresh_errors.labels("flows").inc()
                    continue
                observed = self._clock.observe(msg.topic(), value)
                if observed is not None:
                    self.flow_seconds.labels(observed[0]).observe(observed[1])
                    seen += 1
        return seen

    def probe_registry(self) -> None:
        url = self.config.registry_url.rstrip("/")
        if not url:
            return
        context = ssl.create_default_context(cafile=self.config.registry_ca) if self.config.registry_ca else None
        try:
            with urllib.request.urlopen(url + "/", timeout=3.0, context=context) as resp:
                ok = resp.status == 200
        except Exception:
            ok = False
        self.registry_up.labels(url).set(1 if ok else 0)

    def probe_connect(self) -> None:
        url = self.config.connect_url.rstrip("/")
        if not url:
            return
        try:
            with urllib.request.urlopen(f"{url}/connectors?expand=status", timeout=3.0) as resp:
                body = json.loads(resp.read())
        except Exception:
            self.connect_up.labels(url).set(0)
            return
        self.connect_up.labels(url).set(1)
        self.snapshot.connect_tasks = connect_states(body)

    def refresh_targets(self) -> None:
        if self.config.targets_dir is None:
            return
        for target in targets.write_targets(self.config.targets_dir, targets.discover(self.config.bootstrap)):
            log.info("scrape target added: %s on %s", target.command, target.address)

    def refresh(self) -> None:
        """One round of every part; a part that fails is counted and logged, the others still run."""
        for part, step in (("lag", self.refresh_lag), ("flows", self.refresh_flows), ("registry", self.probe_registry),
                           ("connect", self.probe_connect), ("targets", self.refresh_targets)):  # fmt: skip
            try:
                step()
            except Exception as exc:
                self.refresh_errors.labels(part).inc()
                log.warning("lag exporter: %s refresh failed: %s", part, exc)
        self.last_refresh.set(time.time())

    def run(self, stop: threading.Event) -> None:
        """Refresh every ``interval_s`` until ``stop`` is set."""
        while not stop.is_set():
            started = time.monotonic()
            self.refresh()
            stop.wait(max(0.0, self.config.interval_s - (time.monotonic() - started)))

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
        if self._flow_consumer is not None:
            self._flow_consumer.close()


def connect_states(body: Any) -> list[tuple[str, str, str]]:
    """``GET /connectors?expand=status`` -> (connector, task, state); the connector itself as task "connector"."""
    out = []
    for name, entry in sorted((body or {}).items()):
        status = entry.get("status", {}) if isinstance(entry, dict) else {}
        state = status.get("connector", {}).get("state")
        if state:
            out.append((name, "connector", str(state)))
        for task in status.get("tasks", []):
            out.append((name, str(task.get("id")), str(task.get("state"))))
    return out
