"""Prometheus metrics of the emailing bridge, in their own registry so several bridges can live in one test process.

Labels are bounded (request outcome, message outcome): never a customer,
email or message id, which would make the series count grow with the traffic.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
REQUEST_OUTCOMES = ("delivered", "duplicate", "throttled", "server_error", "client_error", "transport_error")
MESSAGE_OUTCOMES = ("delivered", "dead_lettered")


class EmailingMetrics:
    """Counters and histograms of one bridge."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "passerelle_emailing_requests",
            "HTTP requests to the partner, by outcome (delivered, duplicate, throttled, server_error, "
            "client_error, transport_error)",
            ["outcome"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "passerelle_emailing_request_seconds",
            "Time of one HTTP request to the partner, answer or error included",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.dead_letters = Counter(
            "passerelle_emailing_dead_letters",
            "Messages sent to the dead-letter topic (rejected by the partner, retry budget spent, undecodable)",
            registry=r,
        )
        self.unsafe_urls = Counter(
            "passerelle_emailing_unsafe_urls",
            "URLs left out of the partner's bodies (null) because they were not absolute http/https URLs",
            registry=r,
        )
        self.messages = Counter(
            "passerelle_emailing_messages",
            "Messages decided, by outcome (delivered, dead_lettered)",
            ["outcome"],
            registry=r,
        )
        self.delivery_seconds = Histogram(
            "passerelle_emailing_delivery_seconds",
            "Time from a message's first attempt to its outcome, retries and backoff included",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        for outcome in REQUEST_OUTCOMES:
            self.requests.labels(outcome)
        for outcome in MESSAGE_OUTCOMES:
            self.messages.labels(outcome)

    def render(self) -> bytes:
        """The text exposition format, for ``GET /metrics``."""
        return generate_latest(self.registry)
