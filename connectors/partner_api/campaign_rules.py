"""The rules a campaign declaration must follow, as one pure function.

``validate_declaration(candidate, current_table, partner)`` judges a
``Campaign`` record (the Avro dict published on ``campaigns``) against the
current ``campaigns`` table, for the partner declaring it. The partner API
calls it before publishing; a processor reading ``campaigns.declarations``
would call the same function on each record, so both paths accept exactly
the same declarations. No I/O, no clock.

What is checked (each problem is a :class:`FieldError` naming the field):

- ``key``: the campaign key hits will carry. Its format depends on the tag
  family the ``tagged_url_template`` uses. ``xtor``: a prefix the enrichment
  understands (``streams/enrichment/xtor.py``: ``AD``, ``AL``, ``SEC``,
  ``EREC``, ``EPR``, ``ES``, ``RSS``, ``CS``/``CS1``…), a dash and a numeric id
  (``EREC-123``), exactly what the enrichment recovers from an xtor tag.
  ``at``/``utm``/``mtm``: a slug of 1-100 ``A-Z a-z 0-9 _ . -`` starting with
  a letter or digit (campaign names are case-sensitive, as the enrichment
  reads them). ``undeclared`` and ``urls`` are reserved (API paths).
- ``tagged_url_template``: an absolute http(s) URL carrying the campaign's
  tag in one of the families ``xtor``, ``at``, ``utm``, ``mtm``, read back
  by the enrichment's own parser as this key.
- ``medium``: one of the enrichment's media (``streams/enrichment/media.py``)
  a campaign can have (:data:`CAMPAIGN_MEDIA`); for ``xtor`` the medium of the
  prefix (``EREC`` is ``email``, ``SEC`` is ``cpc``…), since that is what the
  enrichment attributes.
- ``channel``: one of :data:`CHANNELS`.
- ``valid_from`` ≤ ``valid_to`` when both are set.
- cost: ``cost_model`` one of :data:`COST_MODELS`, ``cost_amount`` finite and
  ≥ 0, ``currency`` an ISO 4217 code; an amount needs a model and a
  currency, a currency or a model needs an amount.
- ``partner``: the declaring partner itself.
- a key another partner declared is a clash (``kind="clash"``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from passerelle.connectors.partner_api.tagging import (
    TAG_FAMILIES,
    CampaignTag,
    landing_problem,
    read_tag,
    strip_campaign_params,
    tag_url,
)
from passerelle.streams.enrichment import media
from passerelle.streams.enrichment.xtor import PREFIX_MEDIUM

XTOR_KEY: Final = re.compile(r"(?P<letters>AD|AL|SEC|EREC|EPR|ES|RSS|CS)(?P<digits>\d*)-(?P<id>\d{1,18})")
"""An xtor campaign key as the enrichment recovers it (prefix upper-case; only ``CS`` takes digits)."""
SLUG_KEY: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
PARTNER_ID: Final = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
"""A partner id: lower-case slug (names keys, topics' records, metrics)."""
RESERVED_KEYS: Final = frozenset({"undeclared", "urls"})
MAX_NAME: Final = 200

CAMPAIGN_MEDIA: Final = (
    media.EMAIL,
    media.CPC,
    media.DISPLAY,
    media.AFFILIATE,
    media.RSS,
    media.CUSTOM,
    media.SOCIAL,
    media.REFERRAL,
)
"""Media a declared campaign may have: the enrichment's vocabulary minus what no campaign is (direct, internal,
organic, unknown)."""

CHANNELS: Final[Mapping[str, str]] = {
    "email": media.EMAIL,
    "search": media.CPC,
    "display": media.DISPLAY,
    "affiliation": media.AFFILIATE,
    "social": media.SOCIAL,
    "rss": media.RSS,
    "custom": media.CUSTOM,
    "referral": media.REFERRAL,
}
"""Channels (how reports group campaigns) and the medium each usually has (the default when a medium is not given)."""
CHANNEL_OF_MEDIUM: Final[Mapping[str, str]] = {medium: channel for channel, medium in CHANNELS.items()}

COST_MODELS: Final = ("CPC", "CPM", "CPA", "flat")

ISO_4217: Final = frozenset(
    {
        "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT", "BGN", "BHD", "BIF",
        "BMD", "BND", "BOB", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD", "CAD", "CDF", "CHF", "CLP", "CNY", "COP", "CRC",
        "CUP", "CVE", "CZK", "DJF", "DKK", "DOP", "DZD", "EGP", "ERN", "ETB", "EUR", "FJD", "FKP", "GBP", "GEL", "GHS",
        "GIP", "GMD", "GNF", "GTQ", "GYD", "HKD", "HNL", "HTG", "HUF", "IDR", "ILS", "INR", "IQD", "IRR", "ISK", "JMD",
        "JOD", "JPY", "KES", "KGS", "KHR", "KMF", "KPW", "KRW", "KWD", "KYD", "KZT", "LAK", "LBP", "LKR", "LRD", "LSL",
        "LYD", "MAD", "MDL", "MGA", "MKD", "MMK", "MNT", "MOP", "MRU", "MUR", "MVR", "MWK", "MXN", "MYR", "MZN", "NAD",
        "NGN", "NIO", "NOK", "NPR", "NZD", "OMR", "PAB", "PEN", "PGK", "PHP", "PKR", "PLN", "PYG", "QAR", "RON", "RSD",
        "RUB", "RWF", "SAR", "SBD", "SCR", "SDG", "SEK", "SGD", "SHP", "SLE", "SOS", "SRD", "SSP", "STN", "SVC", "SYP",
        "SZL", "THB", "TJS", "TMT", "TND", "TOP", "TRY", "TTD", "TWD", "TZS", "UAH", "UGX", "USD", "UYU", "UZS", "VES",
        "VND", "VUV", "WST", "XAF", "XCD", "XCG", "XOF", "XPF", "YER", "ZAR", "ZMW", "ZWG",
    }
)
"""Active ISO 4217 currency codes (funds, metals and test codes excluded)."""


@dataclass(frozen=True)
class FieldError:
    """One problem with one field of a declaration; ``kind`` is ``invalid`` or ``clash`` (another partner's key)."""

    field: str
    reason: str
    kind: str = "invalid"

    def as_json(self) -> dict[str, str]:
        return {"field": self.field, "reason": self.reason}


def xtor_medium(key: str) -> str | None:
    """The medium the enrichment gives an xtor key's visits, or None if ``key`` is not an xtor key."""
    match = XTOR_KEY.fullmatch(key)
    if match is None or (match["digits"] and match["letters"] != "CS"):
        return None
    return PREFIX_MEDIUM[match["letters"]]


def key_problem(key: Any, family: str | None) -> str | None:
    """Why ``key`` cannot be a campaign key of ``family`` (None: xtor or slug, whichever it looks like)."""
    if not isinstance(key, str) or not key:
        return "required"
    if key in RESERVED_KEYS:
        return f"{key!r} is reserved"
    if family == "xtor" or (family is None and XTOR_KEY.fullmatch(key)):
        if xtor_medium(key) is None:
            return (
                "an xtor key is a known prefix (AD, AL, SEC, EREC, EPR, ES, RSS, CS, CS1…), a dash and a numeric id, "
                "e.g. EREC-123"
            )
        return None
    if not SLUG_KEY.fullmatch(key):
        return "1-100 characters A-Z a-z 0-9 _ . - starting with a letter or digit"
    return None


def _text(value: Any, field: str, errors: list[FieldError], limit: int = MAX_NAME) -> None:
    if not isinstance(value, str) or not value.strip():
        errors.append(FieldError(field, "required"))
    elif len(value) > limit:
        errors.append(FieldError(field, f"longer than {limit} characters"))
    elif any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        errors.append(FieldError(field, "contains control characters"))


def validate_declaration(
    candidate: Mapping[str, Any], current_table: Mapping[str, Mapping[str, Any] | None], partner: str
) -> list[FieldError]:
    """Every problem of ``candidate`` (a ``Campaign`` record) declared by ``partner``; empty when it is valid."""
    errors: list[FieldError] = []
    template = candidate.get("tagged_url_template")
    tag = read_tag(template) if isinstance(template, str) else None
    key = candidate.get("key")

    problem = key_problem(key, tag.family if tag else None)
    if problem:
        errors.append(FieldError("key", problem))

    _text(candidate.get("name"), "name", errors)
    if candidate.get("partner") != partner:
        errors.append(FieldError("partner", "must be the declaring partner"))

    url_problem = landing_problem(template)
    if url_problem:
        errors.append(FieldError("tagged_url_template", url_problem))
    elif tag is None:
        errors.append(FieldError("tagged_url_template", f"carries no campaign tag ({', '.join(TAG_FAMILIES)})"))
    elif problem is None and tag.key != key:
        errors.append(FieldError("tagged_url_template", f"its tag is read as campaign {tag.key!r}, not {key!r}"))

    medium = candidate.get("medium")
    if medium not in CAMPAIGN_MEDIA:
        errors.append(FieldError("medium", f"one of {', '.join(CAMPAIGN_MEDIA)}"))
    elif problem is None and isinstance(key, str) and tag is not None and tag.family == "xtor":
        expected = xtor_medium(key)
        if expected is not None and medium != expected:
            errors.append(FieldError("medium", f"an xtor {key.split('-')[0]} campaign's medium is {expected}"))
    if candidate.get("channel") not in CHANNELS:
        errors.append(FieldError("channel", f"one of {', '.join(CHANNELS)}"))

    valid_from, valid_to = candidate.get("valid_from"), candidate.get("valid_to")
    for name, value in (("valid_from", valid_from), ("valid_to", valid_to)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            errors.append(FieldError(name, "a UTC time after 1970"))
    if isinstance(valid_from, int) and isinstance(valid_to, int) and valid_from > valid_to:
        errors.append(FieldError("valid_to", "before valid_from"))

    errors.extend(_cost_errors(candidate))

    if isinstance(key, str) and problem is None:
        existing = current_table.get(key)
        if existing is not None and existing.get("partner") != partner:
            errors.append(FieldError("key", "already declared by another partner", kind="clash"))
    return errors


def _cost_errors(candidate: Mapping[str, Any]) -> list[FieldError]:
    errors: list[FieldError] = []
    model, amount, currency = candidate.get("cost_model"), candidate.get("cost_amount"), candidate.get("currency")
    if model is not None and model not in COST_MODELS:
        errors.append(FieldError("cost_model", f"one of {', '.join(COST_MODELS)}"))
    if amount is not None:
        if isinstance(amount, bool) or not isinstance(amount, int | float) or not math.isfinite(amount) or amount < 0:
            errors.append(FieldError("cost_amount", "a finite number >= 0"))
        if currency is None:
            errors.append(FieldError("currency", "required with cost_amount"))
        if model is None:
            errors.append(FieldError("cost_model", "required with cost_amount"))
    elif currency is not None or model is not None:
        errors.append(FieldError("cost_amount", "required with cost_model and currency"))
    if currency is not None and currency not in ISO_4217:
        errors.append(FieldError("currency", "an ISO 4217 code in capitals, e.g. EUR"))
    return errors


def draft_defaults(draft: Mapping[str, Any]) -> dict[str, Any]:
    """What an undeclared tag's draft says, as declaration fields: family, source, landing URL (the URL the tag
    was seen on, untagged), name, and the medium when it is one a campaign may have.

    The API's "declare from the list" and the processor's automatic
    declarations both start from it, so a tag is declared alike either way.
    """
    seen = str(draft.get("tagged_url_template") or "")
    tag = read_tag(seen) if seen else None
    defaults: dict[str, Any] = {"name": draft.get("name") or draft.get("key")}
    if tag is not None and tag.family in TAG_FAMILIES:
        defaults["family"] = tag.family
        if tag.source:
            defaults["source"] = tag.source
    if landing_problem(seen) is None:
        defaults["landing_url"] = strip_campaign_params(seen)
    if draft.get("medium") in CAMPAIGN_MEDIA:
        defaults["medium"] = draft["medium"]
    return defaults


MAX_SOURCE: Final = 100
"""Longest ``source`` written in a tag (``utm_source``, ``at_platform``, ``mtm_source``)."""


def campaign_record(
    key: str,
    data: Mapping[str, Any],
    partner: str,
    now_ms: int,
    *,
    source_given: bool = False,
    landing_field: str = "landing_url",
    medium_hint: str = "",
) -> tuple[dict[str, Any], list[FieldError]]:
    """The ``Campaign`` record ``data`` declares for ``partner`` (defaults filled, the landing URL tagged), and the
    problems found building it; ``validate_declaration`` then judges the record.

    The API (a request's fields over a draft's) and the campaign-declarations
    processor (an automatic rule over a draft) both build with it: the family
    given, else xtor for an xtor-shaped key, utm otherwise; the medium given,
    else the xtor prefix's or the channel's; the channel given, else the
    medium's; the source given, else the partner id (no source in an xtor tag:
    an error when ``source_given``). ``data``'s times are epoch milliseconds.
    """
    errors: list[FieldError] = []
    family = data.get("family") or ("xtor" if xtor_medium(key) else "utm")
    key_error = key_problem(key, family)
    if key_error is not None:
        errors.append(FieldError("key", key_error))
    medium = data.get("medium")
    if medium is None:
        medium = xtor_medium(key) if family == "xtor" else CHANNELS.get(str(data.get("channel")))
        if medium is None and key_error is None:
            errors.append(FieldError("medium", f"required (one of {', '.join(CAMPAIGN_MEDIA)}){medium_hint}"))
    channel = data.get("channel") or CHANNEL_OF_MEDIUM.get(str(medium))
    source = None
    if family != "xtor":
        source = str(data.get("source") or partner)
        if len(source) > MAX_SOURCE or any(ord(ch) < 32 for ch in source) or not source.strip():
            errors.append(FieldError("source", f"1-{MAX_SOURCE} characters, no control characters"))
    elif data.get("source") is not None and source_given:
        errors.append(FieldError("source", "an xtor tag carries no source; leave it out"))
    landing = data.get("landing_url")
    template = ""
    problem = landing_problem(landing)
    if problem is not None:
        note = "the URL the tag was seen on: " if landing_field != "landing_url" else ""
        errors.append(FieldError(landing_field, note + problem))
    elif key_error is None:
        template = tag_url(str(landing), CampaignTag(family, key, medium if family != "xtor" else None, source))
    record = {
        "key": key,
        "name": data.get("name"),
        "partner": partner,
        "channel": channel or "",
        "medium": medium or "",
        "tagged_url_template": template,
        "valid_from": data.get("valid_from"),
        "valid_to": data.get("valid_to"),
        "cost_model": data.get("cost_model"),
        "cost_amount": data.get("cost_amount"),
        "currency": data.get("currency"),
        "declared_at": now_ms,
    }
    return record, errors
