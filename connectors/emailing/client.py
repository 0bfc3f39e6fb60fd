"""The partner's HTTP API, one message at a time, with retries inside a bounded budget.

Every request of a message carries the same ``Idempotency-Key`` (the message
id) and the same body, so however many times the bridge sends it (retries,
or a restart before the offset was committed), the partner can keep one.
Headers are never logged: they hold the credentials.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from passerelle.connectors.emailing.config import EmailingConfig
from passerelle.connectors.emailing.metrics import EmailingMetrics
from passerelle.connectors.emailing.retry import Verdict, classify, next_delay, parse_retry_after, request_outcome

log = logging.getLogger(__name__)

IDEMPOTENCY_HEADER = "Idempotency-Key"
USER_AGENT = "passerelle-emailing/1"


class Interrupted(Exception):
    """The bridge is stopping while a message waits for its next attempt: leave it undecided (not committed)."""


@dataclass(frozen=True)
class Attempt:
    """One request and what came back: a status and body excerpt, or a transport error."""

    status: int | None
    answer: str
    retry_after_s: float | None
    seconds: float


@dataclass(frozen=True)
class DeliveryResult:
    """The decision on one message.

    ``reason``: ``delivered``, ``duplicate`` (the partner already had the key),
    ``rejected`` (a 4xx: retrying cannot help) or ``retries_exhausted``.
    ``last_answer`` is the partner's last body excerpt, or the transport
    error when there was no answer.
    """

    delivered: bool
    reason: str
    attempts: int
    last_status: int | None
    last_answer: str
    latency_s: float
    first_attempt_at_ms: int


def excerpt(text: str, limit: int) -> str:
    """One line of at most ``limit`` characters: enough to tell the error, short enough for a header."""
    squeezed = " ".join(text.split())
    return squeezed if len(squeezed) <= limit else squeezed[: max(0, limit - 1)] + "…"


def encode_body(payload: Mapping[str, Any]) -> bytes:
    """Compact, key-order-preserving JSON: the same payload always gives the same bytes."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


class PartnerClient:
    """Sends message bodies to the partner; one ``httpx.Client`` per thread (each partition worker has its own)."""

    def __init__(
        self,
        config: EmailingConfig,
        metrics: EmailingMetrics | None = None,
        *,
        stop: threading.Event | None = None,
        rng: random.Random | None = None,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self.config = config
        self.metrics = metrics or EmailingMetrics()
        self.stop = stop or threading.Event()
        self._rng = rng or random.Random()
        self._rng_lock = threading.Lock()
        self._transport = transport
        self._clock = clock
        self._wall_ms = wall_ms
        self._local = threading.local()
        self._clients: list[httpx.Client] = []
        self._clients_lock = threading.Lock()
        self._headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
            **config.extra_headers,
            **config.auth.headers(),
        }

    def _client(self) -> httpx.Client:
        client: httpx.Client | None = getattr(self._local, "client", None)
        if client is None:
            client = httpx.Client(
                timeout=self.config.request_timeout_s, transport=self._transport, follow_redirects=False
            )
            self._local.client = client
            with self._clients_lock:
                self._clients.append(client)
        return client

    def send_once(self, body: bytes, key: str) -> Attempt:
        """One request; never raises for network trouble (that is an attempt without a status)."""
        headers = {**self._headers, IDEMPOTENCY_HEADER: key}
        started = self._clock()
        try:
            response = self._client().request(
                self.config.method.upper(), self.config.partner_url, content=body, headers=headers
            )
        except httpx.HTTPError as exc:
            seconds = self._clock() - started
            answer = excerpt(f"{type(exc).__name__}: {exc}", self.config.body_excerpt_chars)
            attempt = Attempt(None, answer, None, seconds)
        else:
            seconds = self._clock() - started
            retry_after = None
            if response.status_code in (429, 503):
                retry_after = parse_retry_after(response.headers.get("retry-after"))
            answer = excerpt(response.text, self.config.body_excerpt_chars)
            attempt = Attempt(response.status_code, answer, retry_after, seconds)
        self.metrics.request_seconds.observe(seconds)
        self.metrics.requests.labels(request_outcome(attempt.status, self.config.already_delivered)).inc()
        return attempt

    def deliver(self, payload: Mapping[str, Any], key: str) -> DeliveryResult:
        """Send until delivered, rejected or out of budget; raise :class:`Interrupted` if stopped while waiting."""
        body = encode_body(payload)
        policy = self.config.retry
        first_at_ms = self._wall_ms()
        started = self._clock()
        attempts = 0
        while True:
            attempts += 1
            attempt = self.send_once(body, key)
            verdict = classify(attempt.status, self.config.already_delivered)
            elapsed = self._clock() - started
            if verdict is not Verdict.RETRY:
                delivered = verdict is Verdict.DELIVERED
                reason = "rejected"
                if delivered:
                    reason = "duplicate" if attempt.status in self.config.already_delivered else "delivered"
                return DeliveryResult(delivered, reason, attempts, attempt.status, attempt.answer, elapsed, first_at_ms)
            with self._rng_lock:
                delay = next_delay(attempts, elapsed, policy, attempt.retry_after_s, self._rng)
            if delay is None:
                log.info(
                    "message %s: retry budget spent after %d attempt(s), last status %s", key, attempts, attempt.status
                )
                return DeliveryResult(
                    False, "retries_exhausted", attempts, attempt.status, attempt.answer, elapsed, first_at_ms
                )
            log.debug("message %s: attempt %d got %s, next in %.3fs", key, attempts, attempt.status, delay)
            if self.stop.wait(delay):
                raise Interrupted(key)

    def close(self) -> None:
        with self._clients_lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()
