"""Prometheus metrics of the partner API (``GET /metrics``), in their own registry per app.

Requests are labelled by the route's *template* (``/v1/campaigns/{key}``),
never the path itself, so a partner's keys or template ids do not become
series; a path no route matches is ``unmatched``. Partners are not a label
either: the series count stays bounded whatever the traffic.
"""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class ApiMetrics:
    """Request latency by route, method and status; whether the API's tables are read and followed."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.request_seconds = Histogram(
            "passerelle_api_request_seconds",
            "Time to answer a request (a streamed answer: until its last byte), by route template and status",
            ["route", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ready = Gauge(
            "passerelle_api_ready",
            "1 when the API's tables are read and followed (/healthz 200)",
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestTimer:
    """ASGI middleware observing each HTTP request into :attr:`ApiMetrics.request_seconds`."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") == "/metrics":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # an exception before the answer started is what the server will send

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")  # set by the router once a route matched
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.request_seconds.labels(template, scope.get("method", ""), str(status)).observe(
                time.perf_counter() - started
            )
