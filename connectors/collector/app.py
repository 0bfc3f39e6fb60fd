"""The collector's HTTP API: ``GET /hit`` (pixel), ``POST /v1/events`` (JSON batches), health and metrics.

``GET /imp`` is the ad impression pixel: a banner's ``AdImpression`` on
``ads.impressions`` (``impressions.py``), answered like ``GET /hit``.

Answers are promises: 2xx only once the broker acknowledged every accepted
event of the request, 503 with ``Retry-After`` when it did not, so that a tag
or a server-side sender retries instead of losing hits. Invalid events are
answered 4xx (pixel) or reported per index (batch) and never reach Kafka;
valid events of a partly invalid batch are delivered anyway. "Invalid"
includes what only encoding finds out (too large once encoded, text that is
not valid Unicode): sending those again can never succeed, so they are never
answered 503.

A client gets ``body_timeout_s`` to send a body (408 after it) and may
disconnect at any point: that is one log line, not an application error.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import unquote

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from passerelle.connectors.collector.config import CollectorConfig
from passerelle.connectors.collector.impressions import pixel_to_impression
from passerelle.connectors.collector.jsonio import json_response, loads
from passerelle.connectors.collector.metrics import CollectorMetrics
from passerelle.connectors.collector.producer import HITS, IMPRESSIONS, DeliveryResult, HitProducer, OutRecord
from passerelle.connectors.collector.validation import (
    ROW_EVENT_ID,
    HitRules,
    InvalidEvent,
    RequestContext,
    client_ip,
    events_to_rows,
    pixel_to_record,
)

log = logging.getLogger(__name__)

PIXEL_GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
"""A 1x1 transparent GIF (43 bytes)."""

CLOSE = {"Connection": "close"}
"""On an answer sent before the request's body was read: the rest of it is not worth reading."""

NO_CACHE = {
    "Cache-Control": "no-cache, no-store, must-revalidate, private, max-age=0",
    "Pragma": "no-cache",
    "Expires": "0",
}


_CONTEXT_HEADERS = {b"x-forwarded-for": 0, b"user-agent": 1, b"referer": 2}


class _Refused(Exception):
    """A whole request refused before any event is looked at (auth, size, shape)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        return JSONResponse({"error": str(self)}, status_code=self.status, headers=self.headers)


def hit_rules(config: CollectorConfig) -> HitRules:
    """The validation rules the configuration implies."""
    return HitRules(
        sites=frozenset(config.sites),
        max_event_age_ms=int(config.max_event_age_s * 1000),
        max_clock_skew_ms=int(config.max_clock_skew_s * 1000),
        keep_ip=config.keep_ip,
        ipv4_prefix=config.ipv4_prefix,
        ipv6_prefix=config.ipv6_prefix,
    )


class Collector:
    """Request handling, separate from routing so that each step reads on its own."""

    def __init__(self, config: CollectorConfig, producer: HitProducer, metrics: CollectorMetrics) -> None:
        self.config = config
        self.producer = producer
        self.metrics = metrics
        self.rules = hit_rules(config)
        self._keys = [(site, key.encode()) for site, key in config.sites.items()]
        self._proxies = config.forwarding_proxies
        self._gif = Response(PIXEL_GIF, media_type="image/gif", headers=NO_CACHE)  # sent as is, made once

    # --- shared steps ---------------------------------------------------------------------------

    def context(self, request: Request) -> RequestContext:
        """The request's peer and the headers an event may take, read in one pass over the raw headers.

        As ``request.headers.get`` reads them (the first of repeated headers,
        latin-1), without a lookup through Starlette's ``Headers`` per name.
        """
        found: list[str | None] = [None, None, None]
        for name, value in request.scope["headers"]:
            slot = _CONTEXT_HEADERS.get(name)
            if slot is not None and found[slot] is None:
                found[slot] = value.decode("latin-1")
        client = request.scope.get("client")
        peer = client[0] if client else None
        forwarded_for, user_agent, referer = found
        return RequestContext(
            received_at_ms=time.time_ns() // 1_000_000,
            client_ip=client_ip(peer, forwarded_for, self._proxies),
            user_agent=user_agent,
            referer=referer,
        )

    async def deliver(self, endpoint: str, hits: Sequence[dict[str, Any]]) -> list[DeliveryResult]:
        """Produce hits given as their Avro values (``event_to_record``), keyed by visitor id."""
        records = [OutRecord(h["visitor_id"], h, h["event_time"]) for h in hits]
        return await self.deliver_records(endpoint, records, HITS)

    async def deliver_rows(self, endpoint: str, rows: list[tuple[Any, ...]]) -> list[DeliveryResult]:
        """Produce hits given as rows (``events_to_rows``), keyed by visitor id."""
        started = time.perf_counter()
        results = await self.producer.send_rows(rows)
        return self._delivered(endpoint, started, results)

    async def deliver_records(self, endpoint: str, records: list[OutRecord], stream: str) -> list[DeliveryResult]:
        started = time.perf_counter()
        results = await self.producer.send(records, stream)
        return self._delivered(endpoint, started, results)

    def _delivered(self, endpoint: str, started: float, results: list[DeliveryResult]) -> list[DeliveryResult]:
        """What the metrics and the log tell of one request's deliveries; ``results`` unchanged."""
        self.metrics.observe_produce(endpoint, time.perf_counter() - started)
        failed = rejected = 0
        for result in results:
            if not result.ok:
                if result.rejected:
                    rejected += 1
                else:
                    failed += 1
        if failed:
            self.metrics.count(endpoint, "failed", failed)
            log.warning("%d of %d event(s) not acknowledged: %s", failed, len(results), _first_error(results))
        if rejected:
            self.metrics.count(endpoint, "rejected", rejected)
        if failed + rejected < len(results):
            self.metrics.count(endpoint, "accepted", len(results) - failed - rejected)
        return results

    def unavailable(self, body: dict[str, Any]) -> JSONResponse:
        retry = str(self.config.retry_after_s)
        return JSONResponse(body, status_code=503, headers={"Retry-After": retry, **NO_CACHE})

    # --- pixel ----------------------------------------------------------------------------------

    async def pixel(self, request: Request) -> Response:
        try:
            hit = pixel_to_record(query_params(request.scope), self.context(request), self.rules)
        except InvalidEvent as exc:
            self.metrics.count("pixel", "rejected")
            return JSONResponse({"error": "invalid hit", "errors": exc.errors}, status_code=400, headers=NO_CACHE)
        (result,) = await self.deliver("pixel", [hit])
        if result.rejected:
            return JSONResponse({"error": "invalid hit", "errors": [result.error]}, status_code=400, headers=NO_CACHE)
        if not result.ok:
            return self.unavailable({"error": "the hit could not be stored, retry later", "event_id": hit["event_id"]})
        return self._gif

    async def impression(self, request: Request) -> Response:
        """``GET /imp``: one ``AdImpression``, the GIF once the broker acknowledged it (400 / 503 as ``/hit``)."""
        try:
            imp = pixel_to_impression(request.query_params, self.context(request), self.rules)
        except InvalidEvent as exc:
            self.metrics.count("impression", "rejected")
            return JSONResponse({"error": "invalid impression", "errors": exc.errors}, 400, headers=NO_CACHE)
        record = OutRecord(imp.visitor_id, imp.to_avro(), imp.event_time)
        (result,) = await self.deliver_records("impression", [record], IMPRESSIONS)
        if result.rejected:
            return JSONResponse({"error": "invalid impression", "errors": [result.error]}, 400, headers=NO_CACHE)
        if not result.ok:
            body = {"error": "the impression could not be stored, retry later", "impression_id": imp.impression_id}
            return self.unavailable(body)
        return Response(PIXEL_GIF, media_type="image/gif", headers=NO_CACHE)

    # --- batches --------------------------------------------------------------------------------

    def covered_sites(self, request: Request) -> frozenset[str]:
        """The sites the request's API key covers; 401 without a key, 403 with a key no site has."""
        key = request.headers.get("x-api-key", "").strip()
        if not key:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() == "bearer":
                key = token.strip()
        if not key:
            raise _Refused(401, "missing API key (X-Api-Key or Authorization: Bearer)", {"WWW-Authenticate": "Bearer"})
        given = key.encode()
        # compare_digest against every key: the time taken does not tell which site's key was close.
        covered = frozenset([site for site, expected in self._keys if hmac.compare_digest(given, expected)])
        if not covered:
            raise _Refused(403, "API key not valid")
        return covered

    async def read_body(self, request: Request) -> bytes:
        """The body, refused as soon as it is known to exceed the limit (declared or actually sent)."""
        limit = self.config.max_body_bytes
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise _Refused(415, f"Content-Encoding {encoding!r} not supported; send the JSON uncompressed")
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                raise _Refused(400, "Content-Length is not a number") from None
            if size > limit:
                raise _Refused(413, f"body of {size} bytes exceeds the limit of {limit} bytes")
        body = bytearray()
        timeout = self.config.body_timeout_s
        try:
            async with asyncio.timeout(timeout):
                async for chunk in request.stream():
                    body += chunk
                    if len(body) > limit:
                        raise _Refused(413, f"body exceeds the limit of {limit} bytes")
        except TimeoutError:
            log.info("request body not complete after %gs (%d bytes received): answered 408", timeout, len(body))
            raise _Refused(408, f"request body not received within {timeout:g}s", CLOSE) from None
        except ClientDisconnect:
            log.info("client disconnected before sending its whole body (%d bytes received)", len(body))
            raise _Refused(499, "client disconnected") from None  # nobody reads it; counted in the metrics
        return bytes(body)

    def events_of(self, body: bytes) -> list[Any]:
        try:
            payload = loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise _Refused(400, f"body is not valid JSON: {exc}") from None
        except RecursionError:  # [[[[... within the size limit: the parser recurses once per level
            raise _Refused(400, "body is not valid JSON: nested too deeply") from None
        events = payload.get("events") if isinstance(payload, dict) else payload
        if not isinstance(events, list):
            raise _Refused(400, 'body must be {"events": [...]} or a JSON array of events')
        if not events:
            raise _Refused(400, "the request carries no events")
        limit = self.config.max_batch_events
        if len(events) > limit:
            raise _Refused(413, f"{len(events)} events in one request; at most {limit}, split the batch")
        return events

    async def batch(self, request: Request) -> Response:
        try:
            covered = self.covered_sites(request)
            events = self.events_of(await self.read_body(request))
            named = {e["site"] for e in events if isinstance(e, dict) and isinstance(e.get("site"), str)}
            foreign = sorted(named - covered)
            if foreign:
                raise _Refused(403, f"this API key does not cover site(s) {', '.join(map(repr, foreign))}")
        except _Refused as refused:
            return refused.response()

        ctx, rules = self.context(request), self.rules.for_sites(covered)
        outcomes = events_to_rows(events, ctx, rules)
        hits = [o for o in outcomes if type(o) is tuple]  # rows: HIT_FIELDS' order
        invalid = {i: o.errors for i, o in enumerate(outcomes) if isinstance(o, InvalidEvent)}  # index -> errors
        rejected = len(invalid)
        if rejected:
            self.metrics.count("batch", "rejected", rejected)  # later ones are counted by deliver_rows()

        deliveries = await self.deliver_rows("batch", hits) if hits else []
        results: list[dict[str, Any]] = []
        failed = 0
        position = 0  # in hits and deliveries
        for index in range(len(events)):
            errors = invalid.get(index) if invalid else None
            if errors is not None:
                results.append({"index": index, "status": "rejected", "errors": errors})
                continue
            outcome, event_id = deliveries[position], hits[position][ROW_EVENT_ID]
            position += 1
            if outcome.error is None:
                results.append({"index": index, "status": "accepted", "event_id": event_id})
            elif outcome.rejected:  # final: too large once encoded, not encodable
                results.append({"index": index, "status": "rejected", "event_id": event_id,
                                "errors": [outcome.error]})  # fmt: skip
                rejected += 1
            else:
                results.append({"index": index, "status": "failed", "event_id": event_id,
                                "errors": [outcome.error]})  # fmt: skip
                failed += 1
        accepted = len(events) - rejected - failed
        body = {"accepted": accepted, "rejected": rejected, "failed": failed, "results": results}
        if failed:
            body["error"] = f"{failed} event(s) could not be stored, retry them later"
            return self.unavailable(body)
        del body["failed"]
        status = 200 if not rejected else 400 if not accepted else 207
        return json_response(body, status_code=status)

    # --- operations -----------------------------------------------------------------------------

    async def health(self) -> Response:
        ok, detail = await asyncio.to_thread(self.producer.reachable)
        return JSONResponse({"status": "ok" if ok else "unavailable", "detail": detail}, status_code=200 if ok else 503)


def query_params(scope: Scope) -> dict[str, str]:
    """The query string as a dict, as Starlette's ``request.query_params`` reads it (latin-1, last value wins,
    blanks kept) without building its multi-dict on every pixel.

    ``dict(parse_qsl(..., keep_blank_values=True))`` (the unit tests compare them), decoding only the names
    and values that carry a ``+`` or a ``%``: most pixel parameters are plain (``site``, ``vid``, ``type``).
    """
    params: dict[str, str] = {}
    for pair in scope["query_string"].decode("latin-1").split("&"):
        if not pair:
            continue
        name, _, value = pair.partition("=")
        if "+" in name:
            name = name.replace("+", " ")
        if "%" in name:
            name = unquote(name)
        if "+" in value:
            value = value.replace("+", " ")
        if "%" in value:
            value = unquote(value)
        params[name] = value
    return params


def _first_error(results: Sequence[DeliveryResult]) -> str:
    return next((r.error for r in results if r.error), "")


Handler = Callable[[Request], Awaitable[Response]]


class CollectorApp(FastAPI):
    """FastAPI, with the two routes every tag calls served straight from the ASGI call.

    ``GET /hit`` and ``POST /v1/events`` are most of the traffic; FastAPI's
    per-request machinery (middleware stack, routing, the endpoint's
    dependency resolution) cost more CPU than the collector's own work on a
    pixel. They go from ``__call__`` to their handler with a plain Starlette
    ``Request``; every other method or path (``/imp``, ``/healthz``,
    ``/metrics``, a 404, a 405, the lifespan) goes through FastAPI as before.
    The routes stay declared on FastAPI too, so its OpenAPI description
    lists them.
    """

    hot_routes: dict[tuple[str, str], tuple[str, Handler]]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            route = self.hot_routes.get((scope["method"], scope["path"]))
            if route is not None:
                endpoint, handler = route
                started = time.perf_counter()
                response = await handler(Request(scope, receive))
                self.state.collector.metrics.observe_request(
                    endpoint, response.status_code, time.perf_counter() - started
                )
                await response(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


GC_INTERVAL_S = 1.0
"""Seconds between two collections of the young generations once serving (``settle_heap``)."""
GC_FULL_EVERY = 60
"""Every this many collections, a full one (what lives long: caches, connections)."""


def settle_heap(loop: asyncio.AbstractEventLoop, interval_s: float = GC_INTERVAL_S) -> Callable[[], None]:
    """Freeze what start-up made, and collect cycles on a clock instead of by allocation counts; returns the undo.

    ``passerelle collector`` freezes the heap before serving; uvicorn's own
    start-up comes after that, hence a second freeze here. A batch of 100
    events makes several hundred dicts and lists that live until the broker's
    acknowledgement (30-60 ms). Counted collections (CPython's: every 700
    allocations not yet freed) run while they are in flight and walk them:
    several times per request at 700, and still 80 times a second at 5,000,
    about 6% of the collector's time under wrk (``gc.callbacks``). Those
    objects are freed by reference counting once answered; only cycles need
    the collector. So the automatic collections stop, and the loop collects
    the two young generations every ``interval_s`` (what is in flight at that
    instant is walked once, a few ms) and everything every ``GC_FULL_EVERY``
    collections: garbage cycles live at most that long. Measured in one bench
    run against the threshold of 5,000: 9-10% more events per second.
    """
    gc.collect()
    gc.freeze()
    gc.disable()
    count = 0
    handle: asyncio.TimerHandle | None = None

    def collect() -> None:
        nonlocal count, handle
        count += 1
        gc.collect(2 if count % GC_FULL_EVERY == 0 else 1)
        handle = loop.call_later(interval_s, collect)

    def undo() -> None:
        if handle is not None:
            handle.cancel()
        gc.enable()

    handle = loop.call_later(interval_s, collect)
    return undo


def create_app(config: CollectorConfig, producer: HitProducer | None = None, settle: bool = False) -> FastAPI:
    """The ASGI app; its lifespan starts the producer (schemas, reports served on its loop), flushes it at shutdown.

    ``settle``: ``settle_heap()`` once serving, for a process that is only the collector (``passerelle
    collector``); an app embedded in another process (tests, benches) leaves that process's GC alone.
    """
    producer = producer or HitProducer(config)
    collector = Collector(config, producer, CollectorMetrics())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(producer.start)
        producer.serve_on(asyncio.get_running_loop())
        unsettle = settle_heap(asyncio.get_running_loop()) if settle else None
        try:
            yield
        finally:
            if unsettle is not None:
                unsettle()
            await asyncio.to_thread(producer.close)

    # The API description is for integrators, not for the public port: published only when asked. No /docs or
    # /redoc pages either way, which would load their scripts from a CDN.
    openapi_url = "/openapi.json" if config.serve_openapi else None
    app = CollectorApp(
        title="passerelle collector", lifespan=lifespan, openapi_url=openapi_url, docs_url=None, redoc_url=None
    )
    app.state.collector = collector
    app.hot_routes = {("GET", "/hit"): ("pixel", collector.pixel), ("POST", "/v1/events"): ("batch", collector.batch)}

    def timed(endpoint: str, response: Response, started: float) -> Response:
        elapsed = time.perf_counter() - started
        collector.metrics.observe_request(endpoint, response.status_code, elapsed)
        return response

    @app.get("/hit", summary="pixel hit: query parameters, answers a 1x1 GIF")
    async def hit(request: Request) -> Response:
        started = time.perf_counter()
        return timed("pixel", await collector.pixel(request), started)

    @app.get("/imp", summary="ad impression pixel: query parameters, answers a 1x1 GIF")
    async def imp(request: Request) -> Response:
        started = time.perf_counter()
        return timed("impression", await collector.impression(request), started)

    @app.post("/v1/events", summary="JSON batch of events, API key required")
    async def events(request: Request) -> Response:
        started = time.perf_counter()
        return timed("batch", await collector.batch(request), started)

    @app.get("/healthz", summary="200 when the broker answers metadata for the topic")
    async def healthz() -> Response:
        return await collector.health()

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics() -> Response:
        return Response(collector.metrics.render(), media_type=collector.metrics.content_type)

    return app
