"""Campaign attribution of a hit: which tag family decides, and what it says.

A landing URL may carry several tag families at once (an AT Internet ``xtor`` added by the
emailing partner, ``utm_*`` added by a link shortener, a ``gclid`` added by Google Ads).
Which one describes the visit is a business decision, not an accident of parameter order,
so it is set by ``AttributionConfig.precedence``: the first family *listed there* that is
present in the URL decides. Click ids are facts rather than declarations: when another
family decides, a click id still fills ``click_id`` and ``network`` (and the medium or
source if the tags left them empty), as long as ``"click_id"`` is in the precedence.
Without any campaign tag the referrer decides (see ``referrer.py``).

Medium vocabulary (``media.py``): tags declared with a medium (``utm_medium``,
``at_medium``, ``mtm_medium``, ``pk_medium``) keep it verbatim; otherwise passerelle infers
one of ``email``, ``cpc``, ``display``, ``affiliate``, ``rss``, ``custom``, ``social``,
``organic``, ``referral``, ``internal``, ``direct``, ``unknown`` — ``unknown`` meaning a
tag was present but said nothing usable (its raw value stays in ``raw_tag``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final
from urllib.parse import quote, urlencode

from passerelle.schemas.models import TrafficSource
from passerelle.streams.enrichment import media
from passerelle.streams.enrichment.params import FAMILIES, family_of, normalize_params, parse_campaign_params
from passerelle.streams.enrichment.referrer import classify_referrer
from passerelle.streams.enrichment.xtor import parse_xtor

__all__ = [
    "DEFAULT",
    "Attribution",
    "AttributionConfig",
    "attribute",
    "attribute_params",
    "parse_campaign_params",
]


@dataclass(frozen=True)
class Attribution:
    """Where a visit came from, in the shape of the ``TrafficSource`` of an enriched hit.

    ``family`` names the parameter family that decided (``xtor``, ``at``, ``utm``, ``mtm``,
    ``pk``, ``click_id``) or is ``None`` when the referrer did; ``raw_tag`` is what that
    family carried, so an undeclared or unreadable tag can be flagged instead of lost: the
    full xtor value, the click id, or the family's parameters re-encoded as a query string.
    """

    medium: str
    source: str | None = None
    campaign: str | None = None
    term: str | None = None
    content: str | None = None
    click_id: str | None = None
    network: str | None = None
    family: str | None = None
    raw_tag: str | None = None

    def traffic_source(self) -> dict[str, Any]:
        """The ``TrafficSource`` of an enriched hit, field for field from the model: the one conversion."""
        return {name: getattr(self, name) for name in TRAFFIC_SOURCE_FIELDS}


TRAFFIC_SOURCE_FIELDS: Final = tuple(TrafficSource.model_fields)
"""What an ``Attribution`` hands on to an enriched hit; ``family`` and ``raw_tag`` stay in the enrichment."""


@dataclass(frozen=True)
class AttributionConfig:
    """Which tag family wins when a URL carries several; families left out are ignored."""

    precedence: tuple[str, ...] = FAMILIES

    def __post_init__(self) -> None:
        unknown = [family for family in self.precedence if family not in FAMILIES]
        if unknown:
            raise ValueError(f"unknown campaign families {unknown}; known: {list(FAMILIES)}")


DEFAULT: Final = AttributionConfig()


@dataclass(frozen=True)
class _Roles:
    """Which keys of a key/value family fill which field; earlier keys are preferred."""

    medium: tuple[str, ...]
    source: tuple[str, ...]
    campaign: tuple[str, ...]
    term: tuple[str, ...]
    content: tuple[str, ...]


_ROLES: Final[dict[str, _Roles]] = {
    "at": _Roles(("at_medium",), ("at_platform",), ("at_campaign",), ("at_term",), ("at_creation",)),
    "utm": _Roles(("utm_medium",), ("utm_source",), ("utm_campaign", "utm_id"), ("utm_term",), ("utm_content",)),
    "mtm": _Roles(
        ("mtm_medium",),
        ("mtm_source",),
        ("mtm_campaign", "mtm_cpn", "matomo_campaign", "mtm_cid"),
        ("mtm_keyword", "mtm_kwd", "matomo_keyword", "matomo_kwd"),
        ("mtm_content",),
    ),
    "pk": _Roles(
        ("pk_medium",),
        ("pk_source",),
        ("pk_campaign", "pk_cpn", "piwik_campaign", "pk_cid"),
        ("pk_kwd", "pk_keyword", "piwik_kwd", "piwik_keyword"),
        ("pk_content",),
    ),
}

# Click id → (network, medium), in the order used when a URL carries several.
CLICK_IDS: Final[dict[str, tuple[str, str]]] = {
    "gclid": ("google", media.CPC),
    "gbraid": ("google", media.CPC),
    "wbraid": ("google", media.CPC),
    "dclid": ("google", media.DISPLAY),
    "msclkid": ("bing", media.CPC),
    "yclid": ("yandex", media.CPC),
    "fbclid": ("facebook", media.SOCIAL),
}


def attribute(
    url: str,
    referrer: str | None,
    config: AttributionConfig = DEFAULT,
    site_hosts: frozenset[str] = frozenset(),
) -> Attribution:
    """Attribute a landing URL (tags in query or fragment), falling back to its referrer."""
    return attribute_params(parse_campaign_params(url), referrer, config, site_hosts)


def attribute_params(
    params: Mapping[str, str],
    referrer: str | None,
    config: AttributionConfig = DEFAULT,
    site_hosts: frozenset[str] = frozenset(),
) -> Attribution:
    """Attribute a hit that already carries its campaign parameters (e.g. ``Hit.campaign_params``)."""
    found = normalize_params(params)
    present = {family_of(key) for key in found}
    decider = next((family for family in config.precedence if family in present), None)
    if decider is None:
        by_referrer = classify_referrer(referrer, site_hosts)
        return Attribution(medium=by_referrer.medium, source=by_referrer.source, term=by_referrer.term)
    if decider == "click_id":
        return _from_click_id(found)
    result = _from_xtor(found["xtor"]) if decider == "xtor" else _from_roles(decider, found)
    if "click_id" in present and "click_id" in config.precedence:
        result = _with_click_id(result, _from_click_id(found))
    return result


def _from_xtor(raw: str) -> Attribution:
    tag = parse_xtor(raw)
    return Attribution(
        medium=tag.medium,
        source=tag.source,
        campaign=tag.campaign,
        term=tag.term,
        content=tag.content,
        network=tag.network,
        family="xtor",
        raw_tag=raw,
    )


def _from_roles(family: str, found: Mapping[str, str]) -> Attribution:
    roles = _ROLES[family]
    return Attribution(
        medium=_first(found, roles.medium) or media.UNKNOWN,
        source=_first(found, roles.source),
        campaign=_first(found, roles.campaign),
        term=_first(found, roles.term),
        content=_first(found, roles.content),
        family=family,
        raw_tag=_encode(found, family),
    )


def _from_click_id(found: Mapping[str, str]) -> Attribution:
    key = next(key for key in CLICK_IDS if key in found)
    network, medium = CLICK_IDS[key]
    value = found[key]
    return Attribution(medium=medium, source=network, click_id=value, network=network, family="click_id", raw_tag=value)


def _with_click_id(result: Attribution, click: Attribution) -> Attribution:
    return replace(
        result,
        click_id=click.click_id,
        network=result.network or click.network,
        source=result.source or click.source,
        medium=click.medium if result.medium == media.UNKNOWN else result.medium,
    )


def _first(found: Mapping[str, str], keys: Iterable[str]) -> str | None:
    return next((found[key] for key in keys if key in found), None)


def _encode(found: Mapping[str, str], family: str) -> str:
    """Re-encode a family's parameters losslessly, in the order they were found."""
    items = [(key, value) for key, value in found.items() if family_of(key) == family]
    return urlencode(items, quote_via=quote, errors="surrogatepass")
