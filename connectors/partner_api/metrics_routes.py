"""``POST /v1/metrics`` (scope ``metrics:write``): a partner's daily figures (cost, clicks…), in batches.

Each valid item becomes a ``PartnerMetric`` on ``partners.metrics`` keyed by
its ``metric_id`` (``partner|campaign_key|date|metric``): sending a day again
replaces its figures (consumers keep the last value per key). The rules of an
item are ``metric_rules.validate_metric`` (the CSV import applies the same);
campaign keys nobody declared are accepted and listed in ``undeclared``; a
key another partner declared is refused for that item, 403 if every item is
one. A batch holds at most ``max_batch_metrics`` items (413 beyond).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from passerelle.connectors.partner_api.batches import MetricsAnswer, Outcome, answers
from passerelle.connectors.partner_api.campaign_rules import FieldError
from passerelle.connectors.partner_api.keys import Principal
from passerelle.connectors.partner_api.metric_rules import METRICS, validate_metric

if TYPE_CHECKING:
    from passerelle.connectors.partner_api.app import Backend

EXAMPLE: dict[str, Any] = {
    "date": "2026-11-29",
    "campaign_key": "RT-1",
    "metric": "cost",
    "value": 12.5,
    "currency": "EUR",
}


class MetricBatchIn(BaseModel):
    """A batch of daily figures; each item is judged on its own."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"metrics": [EXAMPLE]}]})

    metrics: list[Any] = Field(
        description=f"Items {{date (yyyy-mm-dd), campaign_key (or null), metric ({', '.join(METRICS)}), value "
        "(>= 0), currency (ISO 4217 for cost and revenue, null for counts)}; at most "
        "PASSERELLE_API_MAX_BATCH_METRICS."
    )


def judge(
    items: list[Any], partner: str, campaigns: Mapping[str, Mapping[str, Any] | None], today: date, now_ms: int
) -> tuple[Outcome, list[str]]:
    """The verdict on every item and the undeclared campaign keys of the accepted ones (pure)."""
    outcome = Outcome("metrics")
    undeclared: set[str] = set()
    for index, item in enumerate(items):
        verdict = validate_metric(item, partner, campaigns, today, now_ms)
        if verdict.record is None:
            outcome.refuse(index, verdict.errors)
            continue
        record = verdict.record
        outcome.records.append((index, record["metric_id"], record, None))
        if verdict.undeclared:
            undeclared.add(verdict.undeclared)
    return outcome, sorted(undeclared)


def install(app: FastAPI, backend: Backend, can_write: Callable[..., Awaitable[Principal]]) -> None:
    """Add ``POST /v1/metrics`` to the API."""
    from passerelle.connectors.partner_api.app import ApiError

    limit = backend.config.max_batch_metrics
    allowed = Depends(can_write)

    @app.post("/v1/metrics", response_model=MetricsAnswer, tags=["metrics"],
              summary="report daily figures: cost, clicks, impressions… (scope metrics:write)",
              responses=answers(MetricsAnswer))  # fmt: skip
    async def post_metrics(body: MetricBatchIn, who: Principal = allowed) -> Response:
        if len(body.metrics) > limit:
            raise ApiError(413, FieldError("metrics", f"{len(body.metrics)} metrics in one request; at most "
                                           f"{limit}, split the batch"))  # fmt: skip
        if not body.metrics:
            raise ApiError(422, FieldError("metrics", "empty: send at least one metric"))

        def work() -> tuple[Outcome, list[str]]:
            now = time.time_ns() // 1_000_000
            today = datetime.now(UTC).date()
            outcome, undeclared = judge(body.metrics, who.partner, backend.campaigns.snapshot(), today, now)
            outcome.publish(backend.metrics)
            return outcome, undeclared

        outcome, undeclared = await asyncio.to_thread(work)
        published = {str(r["campaign_key"]) for _, _, r, _ in outcome.records if r["campaign_key"]}
        return outcome.response(undeclared=[key for key in undeclared if key in published])
