"""The operations dashboard's panels, defined once: title, PromQL, unit, legend.

An operations page (reading Prometheus's HTTP API) and a Grafana dashboard
generator both draw from this list, so the page, the JSON shipped in
``deploy/monitoring/grafana/`` and the integration test that runs every query
against the real Prometheus cannot disagree. Units are Grafana's unit ids
(``reqps``, ``Bps``, ``s``, ``short``, ``percentunit``), which a page maps to its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True)
class Panel:
    """One chart: a PromQL expression over time, one line per series."""

    id: str
    title: str
    query: str
    unit: str
    legend: str
    """Grafana legend format, e.g. ``{{processor}} {{topic}}``."""
    section: str
    description: str = ""


PANELS: Final[tuple[Panel, ...]] = (
    Panel("throughput_in", "Records consumed per second", "passerelle:records_in:rate1m", "reqps",
          "{{processor}} ← {{topic}}", "flow", "Records each processor reads, per input topic (1-minute rate)."),
    Panel("throughput_out", "Records produced per second", "passerelle:records_out:rate1m", "reqps",
          "{{processor}} → {{topic}}", "flow", "Records each processor writes, per output topic."),
    Panel("broker_bytes_in", "Bytes written to the broker per second", "kafka:bytes_in:rate1m", "Bps",
          "{{topic}}", "flow", "The broker's BytesInPerSec per topic, from its JMX exporter agent."),
    Panel("lag_records", "Consumer lag (records)", "passerelle:consumer_group_lag_records:sum", "short",
          "{{group}} {{topic}}", "lag", "End offset minus committed offset, per group and topic."),
    Panel("lag_seconds", "Consumer lag (seconds)", "passerelle:consumer_group_lag_seconds:max", "s",
          "{{group}} {{topic}}", "lag", "Age of the oldest record each group has not consumed yet."),
    Panel("event_to_emit_p95", "Event to emit, p95 per processor",
          "histogram_quantile(0.95, sum by (processor, le) (rate(passerelle_event_to_emit_seconds_bucket[5m])))",
          "s", "{{processor}}", "latency", "Input record time to output produce time, one hop."),
    Panel("flow_latency_p95", "End-to-end latency, p95 per flow",
          "histogram_quantile(0.95, sum by (flow, le) (rate(passerelle_flow_latency_seconds_bucket[5m])))",
          "s", "{{flow}}", "latency",
          "hit_to_enriched, hit_to_abandoned_cart (includes the idle timeout), abandonment_to_partner."),
    Panel("dead_letters", "Dead letters per second",
          "sum by (processor, stage) (rate(passerelle_dead_letters_total[5m]))",
          "reqps", "{{processor}} {{stage}}", "failures", "Records sent to the dead-letter topic."),
    Panel("partner_deliveries", "Emailing partner requests per second",
          "sum by (outcome) (rate(passerelle_emailing_requests_total[5m]))",
          "reqps", "{{outcome}}", "partners", "Requests to the emailing partner by outcome."),
    Panel("collector_answers", "Collector answers per second",
          "sum by (status) (rate(passerelle_collector_request_seconds_count[5m]))",
          "reqps", "{{status}}", "collector", "HTTP answers of the collector by status (503: shedding)."),
    Panel("targets_up", "Processes answering", "up", "short", "{{job}} {{instance}}", "health",
          "1 when Prometheus could scrape the process's /metrics."),
)  # fmt: skip


def by_id(panel_id: str) -> Panel:
    """The panel named ``panel_id``; a clear error naming the known ones otherwise."""
    for panel in PANELS:
        if panel.id == panel_id:
            return panel
    raise KeyError(f"no panel {panel_id!r}; known: {', '.join(p.id for p in PANELS)}")
