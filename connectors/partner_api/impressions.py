"""``POST /v1/impressions`` (scope ``impressions:write``): an ad server's banner impressions, in batches.

Each valid item becomes an ``AdImpression`` on ``ads.impressions`` keyed by
visitor id, its record time the impression's; ``ad_server`` is the API key's
partner. The rules of an item are ``impression_rules.validate_impression``,
the answer (200/207/422/503) ``batches``. A batch holds at most
``max_batch_impressions`` items (413 beyond).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from passerelle.connectors.partner_api.batches import BatchAnswer, Outcome, answers
from passerelle.connectors.partner_api.campaign_rules import FieldError
from passerelle.connectors.partner_api.impression_rules import validate_impression
from passerelle.connectors.partner_api.keys import Principal

if TYPE_CHECKING:
    from passerelle.connectors.partner_api.app import Backend

EXAMPLE: dict[str, Any] = {
    "impression_id": "imp-8f3a2c",
    "visitor_id": "v-123",
    "site": "shop.example",
    "campaign_key": "RT-1",
    "creative": "banner-300x250",
    "placement": "news.example/top",
    "event_time": "2026-11-29T10:15:00+01:00",
}


class ImpressionBatchIn(BaseModel):
    """A batch of impressions; each item is judged on its own (one bad item never loses the others)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"impressions": [EXAMPLE]}]})

    impressions: list[Any] = Field(
        description="Items {impression_id, visitor_id, site, campaign_key?, creative?, placement?, event_time} "
        "(event_time: ISO 8601 with a zone, or epoch milliseconds); at most PASSERELLE_API_MAX_BATCH_IMPRESSIONS."
    )


def judge(items: list[Any], partner: str, now_ms: int) -> Outcome:
    """The verdict on every item (pure)."""
    outcome = Outcome("impressions")
    for index, item in enumerate(items):
        record, errors = validate_impression(item, partner, now_ms)
        if record is None:
            outcome.refuse(index, errors)
        else:
            outcome.records.append((index, record["visitor_id"], record, record["event_time"]))
    return outcome


def install(app: FastAPI, backend: Backend, can_write: Callable[..., Awaitable[Principal]]) -> None:
    """Add ``POST /v1/impressions`` to the API."""
    from passerelle.connectors.partner_api.app import ApiError

    limit = backend.config.max_batch_impressions
    allowed = Depends(can_write)

    @app.post("/v1/impressions", response_model=BatchAnswer, tags=["impressions"],
              summary="report banner impressions (scope impressions:write); the valid ones are published",
              responses=answers(BatchAnswer))  # fmt: skip
    async def post_impressions(body: ImpressionBatchIn, who: Principal = allowed) -> Response:
        if len(body.impressions) > limit:
            raise ApiError(413, FieldError("impressions", f"{len(body.impressions)} impressions in one request; "
                                           f"at most {limit}, split the batch"))  # fmt: skip
        if not body.impressions:
            raise ApiError(422, FieldError("impressions", "empty: send at least one impression"))

        def work() -> Outcome:
            outcome = judge(body.impressions, who.partner, time.time_ns() // 1_000_000)
            outcome.publish(backend.impressions)
            return outcome

        return (await asyncio.to_thread(work)).response()
