"""Prometheus metrics of the collector, in their own registry so several apps can live in one test process.

Labels are bounded (endpoint, outcome, HTTP status): never a site, visitor or
IP, which would make the series count grow with the traffic.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class CollectorMetrics:
    """Counters and histograms of one collector app."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "passerelle_collector_events",
            "Events received, by endpoint (pixel, batch, impression) and outcome (accepted, rejected, failed)",
            ["endpoint", "outcome"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "passerelle_collector_request_seconds",
            "Time to answer a request, acknowledgements included",
            ["endpoint", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.produce_seconds = Histogram(
            "passerelle_collector_produce_seconds",
            "Time from producing a request's records to the broker's last acknowledgement",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._event_children = {
            (endpoint, outcome): self.events.labels(endpoint, outcome)
            for endpoint in ("pixel", "batch", "impression")
            for outcome in ("accepted", "rejected", "failed")
        }
        self._request_children: dict[tuple[str, int], Any] = {}
        self._produce_children: dict[str, Any] = {}

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        """One answered request; the labelled child is looked up once per (endpoint, status), not per request."""
        key = (endpoint, status)
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.request_seconds.labels(endpoint, str(status))
        child.observe(seconds)

    def observe_produce(self, endpoint: str, seconds: float) -> None:
        child = self._produce_children.get(endpoint)
        if child is None:
            child = self._produce_children[endpoint] = self.produce_seconds.labels(endpoint)
        child.observe(seconds)

    def count(self, endpoint: str, outcome: str, amount: int = 1) -> None:
        """Add ``amount`` events to ``endpoint``'s ``outcome`` (accepted, rejected, failed)."""
        self._event_children[(endpoint, outcome)].inc(amount)

    def render(self) -> bytes:
        """The text exposition format, for ``GET /metrics``."""
        return generate_latest(self.registry)
