"""The rules a partner metric must follow, as one pure function shared by the API and the CSV import.

``validate_metric(item, partner, campaigns, today, received_at_ms)`` judges one
daily figure (a JSON item of ``POST /v1/metrics`` or a line of the CSV file
``passerelle metrics import`` reads, whose cells are strings) against the
current ``campaigns`` table and returns a :class:`MetricVerdict`: the
``PartnerMetric`` record to publish, or its problems as
:class:`~campaign_rules.FieldError` naming the field (the CSV column). No I/O,
no clock.

A figure:

- ``date``: the day it covers, a real ``yyyy-mm-dd`` day, from 2000-01-01 to
  tomorrow (a partner ahead of UTC may already report its "today").
- ``metric``: one of :data:`METRICS` — amounts ``cost``, ``revenue``; counts
  ``clicks``, ``impressions``, ``conversions``.
- ``value``: a finite number ≥ 0 (a JSON number, or a string holding one).
- ``currency``: an ISO 4217 code (any case, stored in capitals), required for
  an amount, refused for a count.
- ``campaign_key``: null/absent/empty for an account-level figure; else a key
  this partner declared, or a key nobody declared (accepted, and reported as
  *undeclared*: declare it to join the figure to its campaign). A key another
  partner declared is refused (``kind="foreign"``).

The record's ``metric_id`` is ``partner|campaign_key|date|metric``
(:func:`metric_id`), also its Kafka key: sending the figure of a day again
replaces it, and consumers of ``partners.metrics`` keep the last value per key.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any, Final

from passerelle.connectors.partner_api.campaign_rules import ISO_4217, FieldError
from passerelle.connectors.partner_api.impression_rules import MAX_ID, text_problem
from passerelle.connectors.partner_api.metric_names import AMOUNTS, COUNTS, FIELDS, METRICS

FIRST_DAY: Final = date(2000, 1, 1)
FOREIGN: Final = "foreign"
"""``FieldError.kind`` of a campaign key declared by another partner (403 when every item is one)."""


def metric_id(partner: str, campaign_key: str | None, day: str, metric: str) -> str:
    """The stable id (and Kafka key) of a figure: one per partner, campaign, day and metric."""
    return f"{partner}|{campaign_key or ''}|{day}|{metric}"


@dataclass(frozen=True)
class MetricVerdict:
    """What became of one figure: the record to publish, or the problems; whether its key is undeclared."""

    record: dict[str, Any] | None
    errors: list[FieldError] = field(default_factory=list)
    undeclared: str | None = None

    @property
    def foreign(self) -> bool:
        """Refused only because its campaign belongs to another partner."""
        return bool(self.errors) and all(e.kind == FOREIGN for e in self.errors)


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _day(value: Any, today: date, errors: list[FieldError]) -> str | None:
    if _blank(value):
        errors.append(FieldError("date", "required: yyyy-mm-dd"))
        return None
    text = value.strip() if isinstance(value, str) else None
    try:
        if text is None or len(text) != 10:
            raise ValueError
        day = date.fromisoformat(text)
    except ValueError:
        errors.append(FieldError("date", "a real day as yyyy-mm-dd, e.g. 2026-11-29"))
        return None
    if day > today + timedelta(days=1):
        errors.append(FieldError("date", f"in the future (after {(today + timedelta(days=1)).isoformat()})"))
    elif day < FIRST_DAY:
        errors.append(FieldError("date", f"before {FIRST_DAY.isoformat()}"))
    return text


def _value(value: Any, errors: list[FieldError]) -> float | None:
    if _blank(value):
        errors.append(FieldError("value", "required: a number >= 0"))
        return None
    number: float | None = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    if number is None or not math.isfinite(number):
        errors.append(FieldError("value", "a finite number >= 0 (decimal point: '.')"))
        return None
    if number < 0:
        errors.append(FieldError("value", "negative; a figure is >= 0"))
        return None
    return number


def validate_metric(
    item: Any,
    partner: str,
    campaigns: Mapping[str, Mapping[str, Any] | None],
    today: date,
    received_at_ms: int,
) -> MetricVerdict:
    """The verdict on one figure reported by ``partner``; ``campaigns`` is the ``campaigns`` table by key."""
    if not isinstance(item, Mapping):
        return MetricVerdict(None, [FieldError("", f"a metric is a JSON object, not {type(item).__name__}")])
    errors = [FieldError(str(name)[:64], "unknown field") for name in item if name not in FIELDS]
    day = _day(item.get("date"), today, errors)

    metric = item.get("metric")
    metric = metric.strip() if isinstance(metric, str) else metric
    if _blank(metric):
        errors.append(FieldError("metric", f"required: one of {', '.join(METRICS)}"))
    elif metric not in METRICS:
        errors.append(FieldError("metric", f"one of {', '.join(METRICS)}"))
    value = _value(item.get("value"), errors)

    currency = item.get("currency")
    currency = None if _blank(currency) else currency
    if metric in AMOUNTS and currency is None:
        errors.append(FieldError("currency", f"required for an amount ({metric}): an ISO 4217 code, e.g. EUR"))
    elif metric in COUNTS and currency is not None:
        errors.append(FieldError("currency", f"{metric} is a count: leave the currency empty"))
    elif currency is not None and (not isinstance(currency, str) or currency.strip().upper() not in ISO_4217):
        errors.append(FieldError("currency", "an ISO 4217 code, e.g. EUR"))
    if isinstance(currency, str):
        currency = currency.strip().upper()

    key = item.get("campaign_key")
    key = None if _blank(key) else key
    undeclared = None
    if key is not None:
        problem = text_problem(key, MAX_ID)
        if problem:
            errors.append(FieldError("campaign_key", problem))
        else:
            key = key.strip()
            declared = campaigns.get(key)
            if declared is None:
                undeclared = key
            elif declared.get("partner") != partner:
                errors.append(FieldError("campaign_key", f"campaign {key!r} belongs to another partner", FOREIGN))
    if errors or day is None or value is None or not isinstance(metric, str):
        return MetricVerdict(None, errors)
    record = {
        "metric_id": metric_id(partner, key, day, metric),
        "partner": partner,
        "campaign_key": key,
        "date": day,
        "metric": metric,
        "value": value,
        "currency": currency,
        "received_at": received_at_ms,
    }
    return MetricVerdict(record, [], undeclared)
