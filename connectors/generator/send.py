"""Replay a ``Shop`` into the platform: reference data to Kafka, visitor events to the collector.

Campaigns and CRM profiles go straight to their compacted topics (they are
tables, not traffic) before any hit, so that enrichment knows the declared
campaigns and the customers when the hits arrive. Hits go through the
collector's HTTP API like a server-side tag's would, so the generator
exercises the real ingestion path: API keys, validation, acknowledgements.

Delivery is at least once. A 503 (the collector could not store some events)
is retried after its ``Retry-After``, resending only the events the collector
reported as failed; a lost connection mid-run resends the whole batch, which
may duplicate events already stored. Every event keeps its ``event_id`` across
retries, so consumers can drop the duplicates. Retries are bounded in number
and in time: a collector that stays unavailable ends the run with an error.
"""

from __future__ import annotations

import email.utils
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import httpx

from passerelle.schemas import clients
from passerelle.schemas.catalog import Catalog, load_catalog
from passerelle.schemas.clients import Connection
from passerelle.schemas.serde import AvroEncoder

CAMPAIGNS_TOPIC = "campaigns"
CRM_TOPIC = "crm.profiles"
RETRYABLE = frozenset({500, 502, 503, 504})


class GeneratorError(Exception):
    """A failure the user can act on (wrong URL, key, site, broker down); printed as one line by the CLI."""

    user_error = True
    exit_code = 1


class CollectorUnreachable(GeneratorError):
    """Nothing answers at the collector URL."""


class CollectorRefused(GeneratorError):
    """The collector refused a whole request for a reason retrying cannot fix (API key, site, size)."""


class CollectorUnavailable(GeneratorError):
    """The collector kept failing to store events past the retry bounds."""


class PublishError(GeneratorError):
    """Kafka did not acknowledge the reference data."""


# --- reference data to Kafka ------------------------------------------------------------------------------


def publish(
    records: Sequence[Mapping[str, Any]],
    *,
    conn: Connection,
    topic: str,
    catalog_topic: str,
    key_field: str,
    time_field: str | None = None,
    catalog: Catalog | None = None,
    timeout_s: float = 30.0,
) -> int:
    """Produce ``records`` to ``topic`` with the contracts of the catalog entry ``catalog_topic``.

    The two names differ in tests, which write to a unique topic: the schemas
    are the catalog's, the subjects follow the topic actually written
    (TopicNameStrategy), so any Confluent consumer of that topic decodes it.
    Idempotent producer with ``acks=all``: a retry inside the client cannot
    duplicate or reorder a table's records.
    """
    from confluent_kafka import KafkaError

    catalog = catalog or load_catalog(None)
    spec = catalog.topic(catalog_topic)
    client = clients.registry_client(conn)
    key_enc = AvroEncoder.for_subject(client, f"{topic}-key", catalog.schema_text(spec.key_schema))
    value_enc = AvroEncoder.for_subject(client, f"{topic}-value", catalog.schema_text(spec.value_schema))
    watch = clients.ErrorWatch(conn)
    producer = clients.producer(conn, {"linger.ms": 20, "message.timeout.ms": int(timeout_s * 1000)}, watch=watch)
    errors: list[Any] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(err)

    for record in records:
        kwargs: dict[str, Any] = {"on_delivery": on_delivery}
        if time_field and isinstance(record.get(time_field), int):
            kwargs["timestamp"] = record[time_field]
        clients.produce(producer, topic, value_enc.encode(record), key_enc.encode(str(record[key_field])), **kwargs)
        producer.poll(0)
    remaining = producer.flush(timeout_s + 5)
    if errors:
        first = errors[0]
        if first.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
            where = conn.bootstrap_servers
            raise PublishError(f"topic {topic!r} does not exist on {where}: create the catalog's topics")
        known = clients.kafka.classify(first, conn, repr(topic))
        if known is not None:
            raise known
        raise PublishError(f"{len(errors)} record(s) to {topic!r} not acknowledged by Kafka: {first.str()}")
    if remaining:
        fatal = watch.fatal()
        if fatal is not None:
            raise fatal
        raise PublishError(
            f"{remaining} record(s) to {topic!r} not acknowledged within {timeout_s:.0f} s; "
            f"is Kafka reachable at {conn.describe()}?"
        )
    return len(records)


def publish_campaigns(
    records: Sequence[Mapping[str, Any]],
    conn: Connection,
    topic: str = CAMPAIGNS_TOPIC,
    catalog_path: Path | None = None,
) -> int:
    """Declare the campaigns, keyed by campaign key (the compacted table keeps the latest declaration)."""
    return publish(
        records,
        conn=conn,
        topic=topic,
        catalog_topic=CAMPAIGNS_TOPIC,
        key_field="key",
        time_field="declared_at",
        catalog=load_catalog(catalog_path),
    )


def publish_profiles(
    records: Sequence[Mapping[str, Any]],
    conn: Connection,
    topic: str = CRM_TOPIC,
    catalog_path: Path | None = None,
) -> int:
    """Publish the CRM profiles, keyed by customer id."""
    return publish(
        records,
        conn=conn,
        topic=topic,
        catalog_topic=CRM_TOPIC,
        key_field="customer_id",
        time_field="updated_at",
        catalog=load_catalog(catalog_path),
    )


# --- events to the collector ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SendOptions:
    """How to post: batch size, optional pacing, and the bounds on retrying."""

    batch_size: int = 100
    rate: float | None = None
    """Events per second at most; None sends as fast as the collector answers."""
    timeout_s: float = 30.0
    max_attempts: int = 6
    max_retry_s: float = 120.0
    """Most time spent waiting between attempts of one batch."""
    max_retry_after_s: float = 30.0
    """A ``Retry-After`` longer than this is shortened: the bound on the whole run stays predictable."""
    progress_every_s: float = 5.0

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.rate is not None and self.rate <= 0:
            raise ValueError(f"rate must be > 0 events/s, got {self.rate}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")


@dataclass
class SendReport:
    """What a run did, counted from what was sent and what the collector answered."""

    visitors: int = 0
    events: int = 0
    accepted: int = 0
    rejected: int = 0
    failed: int = 0
    retries: int = 0
    orders: int = 0
    identified: int = 0
    campaigns: int = 0
    profiles: int = 0
    elapsed_s: float = 0.0
    first_rejection: str | None = None
    _visitors: set[str] = field(default_factory=set, repr=False)
    _identified: set[str] = field(default_factory=set, repr=False)

    def count(self, events: Sequence[Mapping[str, Any]]) -> None:
        """Add a batch's visitors, orders and identified visitors."""
        for event in events:
            visitor = str(event.get("visitor_id"))
            self._visitors.add(visitor)
            if event.get("customer_id"):
                self._identified.add(visitor)
            self.orders += event.get("type") == "order"
        self.visitors, self.identified = len(self._visitors), len(self._identified)

    def lines(self) -> list[str]:
        """The final summary, one fact a line."""
        lines = [
            f"visitors             {self.visitors}",
            f"events sent          {self.events} in {self.elapsed_s:.1f} s",
            f"  accepted           {self.accepted}",
            f"  rejected           {self.rejected}",
        ]
        if self.failed:
            lines.append(f"  failed             {self.failed}")
        if self.retries:
            lines.append(f"  retried requests   {self.retries}")
        lines += [
            f"orders               {self.orders}",
            f"identified visitors  {self.identified}",
            f"campaigns            {self.campaigns}",
            f"crm profiles         {self.profiles}",
        ]
        if self.first_rejection:
            lines.append(f"first rejection      {self.first_rejection}")
        return lines


def retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay in seconds or HTTP date), None when absent or bad."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


class EventSender:
    """Posts events to ``POST /v1/events`` in batches; one instance per run (it keeps the report)."""

    def __init__(
        self,
        collector_url: str,
        api_key: str,
        options: SendOptions | None = None,
        *,
        client: httpx.Client | None = None,
        progress: TextIO | None = sys.stderr,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = collector_url.rstrip("/")
        self.endpoint = f"{self.url}/v1/events"
        self.options = options or SendOptions()
        self.client = client or httpx.Client(timeout=self.options.timeout_s)
        self._owns_client = client is None
        self.headers = {"X-Api-Key": api_key}
        self.progress = progress
        self.sleep = sleep
        self.clock = clock
        self.report = SendReport()
        self._reached = False

    def close(self) -> None:
        if self._owns_client:
            self.client.close()

    def __enter__(self) -> EventSender:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def probe(self) -> None:
        """Fail early, before anything is published, when nothing listens at the collector URL."""
        try:
            self.client.get(f"{self.url}/healthz", timeout=min(5.0, self.options.timeout_s))
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        self._reached = True

    def send(self, events: Iterable[dict[str, Any]]) -> SendReport:
        """Post every event in order, pacing to ``rate``; returns the report (also kept on ``self.report``)."""
        total = len(events) if isinstance(events, Sequence) else None
        size = self.options.batch_size
        if self.options.rate is not None:
            size = min(size, max(1, int(self.options.rate)))  # about one request a second at low rates
        started = last_progress = self.clock()
        batch: list[dict[str, Any]] = []
        for event in events:
            batch.append(event)
            if len(batch) >= size:
                self._send_batch(batch, started)
                batch = []
                if self.clock() - last_progress >= self.options.progress_every_s:
                    last_progress = self.clock()
                    self._progress(total, started)
        if batch:
            self._send_batch(batch, started)
        self.report.elapsed_s = self.clock() - started
        return self.report

    # --- one batch --------------------------------------------------------------------------------------

    def _send_batch(self, batch: list[dict[str, Any]], started: float) -> None:
        rate = self.options.rate
        if rate is not None:
            due = started + self.report.events / rate
            now = self.clock()
            if due > now:
                self.sleep(due - now)
        self.report.events += len(batch)
        self.report.count(batch)
        self._post(batch)

    def _post(self, batch: list[dict[str, Any]]) -> None:
        """Post until every event is accepted or rejected; failed events are retried within the bounds."""
        opts = self.options
        pending = batch
        waited = 0.0
        reason = ""
        for attempt in range(1, opts.max_attempts + 1):
            delay = min(2.0 ** (attempt - 1) * 0.5, opts.max_retry_after_s)
            try:
                response = self.client.post(self.endpoint, json={"events": pending}, headers=self.headers)
            except httpx.TransportError as exc:
                if not self._reached and isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
                    raise self._unreachable(exc) from exc
                reason = f"{type(exc).__name__}: {exc}"
            else:
                self._reached = True
                status = response.status_code
                body = _json(response)
                if status in RETRYABLE:
                    pending = self._settle_partly(pending, body)
                    if not pending:
                        return
                    reason = f"HTTP {status}"
                    hinted = retry_after(response.headers.get("retry-after"))
                    if hinted is not None:
                        delay = min(hinted, opts.max_retry_after_s)
                elif status in (200, 207, 400) and isinstance(body, dict) and "results" in body:
                    self._settle(pending, body)
                    return
                else:
                    raise self._refused(status, body)
            if attempt == opts.max_attempts or waited + delay > opts.max_retry_s:
                break
            self.report.retries += 1
            self.sleep(delay)
            waited += delay
        self.report.failed += len(pending)
        raise CollectorUnavailable(
            f"{len(pending)} event(s) not stored by the collector at {self.url} after {attempt} attempt(s) "
            f"over {waited:.0f} s (last: {reason}); {self.report.accepted} accepted so far"
        )

    def _settle(self, pending: list[dict[str, Any]], body: dict[str, Any]) -> None:
        """Count a final answer (200, 207 or 400 with per-event results)."""
        for entry in body.get("results", []):
            if entry.get("status") == "accepted":
                self.report.accepted += 1
            elif entry.get("status") == "rejected":
                self.report.rejected += 1
                if self.report.first_rejection is None:
                    index = entry.get("index")
                    event_id = pending[index].get("event_id") if isinstance(index, int) else None
                    errors = "; ".join(entry.get("errors") or [])
                    self.report.first_rejection = f"event {event_id}: {errors}"

    def _settle_partly(self, pending: list[dict[str, Any]], body: Any) -> list[dict[str, Any]]:
        """Count what a 5xx answer settled; the events still to retry (all of them if it says nothing)."""
        if not isinstance(body, dict) or not isinstance(body.get("results"), list):
            return pending
        results = body["results"]
        if len(results) != len(pending):
            return pending
        self._settle(pending, {"results": [r for r in results if r.get("status") != "failed"]})
        return [pending[i] for i, r in enumerate(results) if r.get("status") == "failed"]

    # --- messages ---------------------------------------------------------------------------------------

    def _unreachable(self, exc: Exception) -> CollectorUnreachable:
        return CollectorUnreachable(
            f"cannot reach the collector at {self.url} ({type(exc).__name__}); is `passerelle collector` running "
            "there? (--collector URL)"
        )

    def _refused(self, status: int, body: Any) -> GeneratorError:
        detail = body.get("error") if isinstance(body, dict) else None
        detail = detail or f"HTTP {status}"
        if status in (401, 403):
            return CollectorRefused(
                f"the collector at {self.url} refused the request (HTTP {status}: {detail}); check --api-key "
                "and --site against PASSERELLE_COLLECTOR_SITES"
            )
        if status == 413:
            return CollectorRefused(f"the collector refused a batch as too large ({detail}); lower --batch-size")
        if status == 404:
            return CollectorRefused(f"no collector API at {self.endpoint} (HTTP 404); check --collector")
        return CollectorRefused(f"the collector at {self.url} refused a batch (HTTP {status}: {detail})")

    def _progress(self, total: int | None, started: float) -> None:
        if self.progress is None:
            return
        r = self.report
        elapsed = max(self.clock() - started, 1e-9)
        of = f"/{total}" if total is not None else ""
        print(
            f"generate: {r.events}{of} events sent, {r.accepted} accepted, {r.rejected} rejected, "
            f"{r.events / elapsed:.0f} events/s",
            file=self.progress,
            flush=True,
        )


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None
