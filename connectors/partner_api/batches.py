"""Batches of events a partner sends (impressions, metrics): per-item verdicts, publishing, the answer.

One bad item never loses the others: valid items are published (each
acknowledged by Kafka before the answer), invalid ones are listed by index and
field. The answer is ``{"accepted": n, "errors": [{"index", "field",
"reason"}]}`` (plus what a route adds, e.g. ``undeclared``):

- 200 every item accepted;
- 207 some accepted, some refused;
- 422 none accepted (403 when every refusal is another partner's campaign);
- 503 with ``Retry-After`` when Kafka did not acknowledge some valid item:
  send the same batch again (ids are stable, consumers keep one record per
  id).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel

from passerelle.connectors.partner_api.campaign_rules import FieldError
from passerelle.connectors.partner_api.metric_rules import FOREIGN
from passerelle.connectors.partner_api.tables import TopicWriter

RETRY_AFTER_S = 5


class ItemError(BaseModel):
    index: int
    field: str
    reason: str


class BatchAnswer(BaseModel):
    accepted: int
    errors: list[ItemError]


class MetricsAnswer(BatchAnswer):
    undeclared: list[str]


@dataclass
class Outcome:
    """The verdicts of one batch: records to publish (with their item index) and the refusals."""

    list_name: str
    records: list[tuple[int, str, dict[str, Any], int | None]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    failed: int = 0

    def refuse(self, index: int, errors: Sequence[FieldError]) -> None:
        for error in errors:
            where = f"{self.list_name}[{index}]" + (f".{error.field}" if error.field else "")
            self.errors.append({"index": index, "field": where, "reason": error.reason})
            self.kinds.append(error.kind)

    def publish(self, writer: TopicWriter) -> None:
        """Write the valid records (blocking; run it off the event loop); unacknowledged ones become errors."""
        if not self.records:
            return
        results = writer.write_many([(key, value, ts) for _, key, value, ts in self.records])
        kept = []
        for (index, key, value, ts), problem in zip(self.records, results, strict=True):
            if problem is None:
                kept.append((index, key, value, ts))
                continue
            final = problem.startswith("rejected: ")
            reason = problem.removeprefix("rejected: ") if final else f"{problem}; nothing lost, send the batch again"
            self.refuse(index, [FieldError("", reason)])
            self.failed += 0 if final else 1
        self.records = kept

    @property
    def accepted(self) -> int:
        return len(self.records)

    def status(self) -> int:
        if self.failed:
            return 503
        if not self.errors:
            return 200
        if self.accepted:
            return 207
        return 403 if all(kind == FOREIGN for kind in self.kinds) else 422

    def response(self, **extra: Any) -> JSONResponse:
        status = self.status()
        errors = sorted(self.errors, key=lambda e: e["index"])
        headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
        return JSONResponse({"accepted": self.accepted, "errors": errors, **extra}, status, headers=headers)


def answers(model: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of a batch route."""
    shape = {"model": model}
    return {
        207: {**shape, "description": "some items accepted (published), the others listed in errors"},
        401: {"description": "no valid API key"},
        403: {"description": "the key lacks the scope, or every item names another partner's campaign"},
        413: {"description": "body or batch too large"},
        422: {"description": "malformed body, or no item valid (errors list them)"},
        503: {**shape, "description": "Kafka did not acknowledge some items: send the same batch again"},
    }
