"""The rules an ad impression sent to ``POST /v1/impressions`` must follow, as one pure function.

``validate_impression(item, ad_server, now_ms)`` turns one JSON item into the
``AdImpression`` record published on ``ads.impressions`` (keyed by visitor
id), or lists its problems as :class:`~campaign_rules.FieldError` naming the
item's field (``visitor_id``…; the route prefixes ``impressions[i].``). No
I/O, no clock: the caller passes the time.

An item:

- ``impression_id`` (required): the ad server's stable id of the impression,
  1-128 visible ASCII characters; a retry must carry the same id so that
  consumers deduplicate it.
- ``visitor_id`` (required), ``site`` (required): 1-128 characters, no
  control characters (surrounding spaces are stripped).
- ``campaign_key``, ``creative``, ``placement`` (optional, null or absent):
  1-128 (campaign key) or 1-256 characters, no control characters.
- ``event_time`` (required): when the banner was served, ISO 8601 with a
  zone (``2026-11-29T10:00:00Z``, ``...+01:00``) or epoch milliseconds; at
  most :data:`MAX_SKEW_MS` ahead of the server's clock and at most
  :data:`MAX_AGE_MS` old (the topic's retention, the post-view lookback).
- ``ad_server`` is not sent: it is the partner of the API key.

Unknown fields are refused (a typo must not lose data silently).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from passerelle.connectors.partner_api.campaign_rules import FieldError
from passerelle.schemas.timeconv import parse_epoch_ms

MAX_ID: Final = 128
MAX_LABEL: Final = 256
MAX_AGE_MS: Final = 30 * 24 * 3600 * 1000
"""Oldest impression accepted: ``ads.impressions`` keeps 30 days, the post-view lookback."""
MAX_SKEW_MS: Final = 5 * 60 * 1000
"""Furthest ahead of the server's clock an impression may be (clock skew)."""
IMPRESSION_ID: Final = re.compile(r"[!-~]{1,128}")
FIELDS: Final = ("impression_id", "visitor_id", "site", "campaign_key", "creative", "placement", "event_time")


def text_problem(value: Any, limit: int) -> str | None:
    """Why ``value`` is not a 1-``limit`` character text without control characters (None: it is)."""
    if not isinstance(value, str):
        return "a string"
    if not value.strip():
        return "required (empty)"
    if len(value.strip()) > limit:
        return f"longer than {limit} characters"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        return "contains control characters"
    return None


def validate_impression(item: Any, ad_server: str, now_ms: int) -> tuple[dict[str, Any] | None, list[FieldError]]:
    """(the ``AdImpression`` record, []) for a valid item, else (None, every problem found)."""
    if not isinstance(item, Mapping):
        return None, [FieldError("", f"an impression is a JSON object, not {type(item).__name__}")]
    errors: list[FieldError] = []
    for name in item:
        if name == "ad_server":
            errors.append(FieldError("ad_server", "set from your API key's partner; leave it out"))
        elif name not in FIELDS:
            errors.append(FieldError(str(name)[:64], "unknown field"))

    impression_id = item.get("impression_id")
    if impression_id is None:
        errors.append(FieldError("impression_id", "required"))
    elif not isinstance(impression_id, str) or not IMPRESSION_ID.fullmatch(impression_id.strip()):
        errors.append(FieldError("impression_id", f"1-{MAX_ID} visible ASCII characters (no spaces)"))
    for name in ("visitor_id", "site"):
        value = item.get(name)
        problem = "required" if value is None else text_problem(value, MAX_ID)
        if problem:
            errors.append(FieldError(name, problem))
    for name, limit in (("campaign_key", MAX_ID), ("creative", MAX_LABEL), ("placement", MAX_LABEL)):
        value = item.get(name)
        problem = None if value is None else text_problem(value, limit)
        if problem:
            errors.append(FieldError(name, problem))

    event_time: int | None = None
    if item.get("event_time") is None:
        errors.append(FieldError("event_time", "required: ISO 8601 with a zone, or epoch milliseconds"))
    else:
        try:
            event_time = parse_epoch_ms(item["event_time"])
        except ValueError as exc:
            errors.append(FieldError("event_time", f"event_time {exc}"))
        else:
            if event_time > now_ms + MAX_SKEW_MS:
                errors.append(FieldError("event_time", "in the future (more than 5 minutes ahead of the server)"))
            elif event_time < now_ms - MAX_AGE_MS:
                errors.append(FieldError("event_time", "older than 30 days (the post-view lookback)"))
    if errors or event_time is None:
        return None, errors

    def opt(name: str) -> str | None:
        value = item.get(name)
        return None if value is None else str(value).strip()

    record = {
        "impression_id": str(impression_id).strip(),
        "visitor_id": str(item["visitor_id"]).strip(),
        "site": str(item["site"]).strip(),
        "campaign_key": opt("campaign_key"),
        "creative": opt("creative"),
        "placement": opt("placement"),
        "ad_server": ad_server,
        "event_time": event_time,
    }
    return record, []
