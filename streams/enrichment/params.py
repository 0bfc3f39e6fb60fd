"""Campaign parameters as found in a landing URL: which keys count, and how to read them.

Landing URLs come from every tool a marketing team uses, hand-edited emails included, so
the reader is lenient: it looks in the query string *and* the ``#`` fragment (AT Internet
recommends ``#xtor=`` so search engines do not index the tag), decodes ``%xx`` and ``+``,
ignores the case of parameter names, tolerates HTML-escaped ``&amp;`` and never raises.
Only keys of the known campaign families are kept, so unrelated site parameters (session
ids, filters, e-mail addresses in forms) never travel further as "campaign" data.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Final
from urllib.parse import unquote_plus

FAMILIES: Final = ("xtor", "at", "utm", "mtm", "pk", "click_id")
"""Every family name that an ``AttributionConfig.precedence`` may list."""

# Keys per family. Matomo and Piwik aliases follow Matomo's documented defaults
# (``matomo_*`` is the newer spelling of ``mtm_*``, ``piwik_*`` the older one of ``pk_*``).
FAMILY_KEYS: Final[Mapping[str, frozenset[str]]] = {
    "xtor": frozenset({"xtor"}),
    "at": frozenset(
        {
            "at_medium",
            "at_campaign",
            "at_platform",
            "at_creation",
            "at_variant",
            "at_format",
            "at_general_placement",
            "at_detail_placement",
            "at_term",
            "at_type",
            "at_send_date",
            "at_link",
            "at_recipient_id",
            "at_recipient_list",
        }
    ),
    "utm": frozenset(
        {
            "utm_source",
            "utm_medium",
            "utm_campaign",
            "utm_term",
            "utm_content",
            "utm_id",
            "utm_source_platform",
            "utm_creative_format",
            "utm_marketing_tactic",
        }
    ),
    "mtm": frozenset(
        {
            "mtm_campaign",
            "mtm_cpn",
            "mtm_cid",
            "mtm_source",
            "mtm_medium",
            "mtm_keyword",
            "mtm_kwd",
            "mtm_content",
            "mtm_group",
            "mtm_placement",
            "matomo_campaign",
            "matomo_keyword",
            "matomo_kwd",
        }
    ),
    "pk": frozenset(
        {
            "pk_campaign",
            "pk_cpn",
            "pk_cid",
            "pk_source",
            "pk_medium",
            "pk_kwd",
            "pk_keyword",
            "pk_content",
            "pk_group",
            "pk_placement",
            "piwik_campaign",
            "piwik_kwd",
            "piwik_keyword",
        }
    ),
    "click_id": frozenset({"gclid", "gbraid", "wbraid", "dclid", "msclkid", "yclid", "fbclid"}),
}

_AT_CUSTOM = re.compile(r"at_custom\d{1,2}")
_KEY_TO_FAMILY: Final[dict[str, str]] = {key: family for family, keys in FAMILY_KEYS.items() for key in keys}
# The fragment is split on ``?`` and ``#`` too: hash-routed pages (``#!/p?utm_source=x``) and
# tags pasted twice (``#xtor=SEC-1?x=y#xtor=SEC-2``) are common in the wild.
_FRAGMENT_SEPARATORS = re.compile(r"[&?#]")


def family_of(key: str) -> str | None:
    """Name the family a (lower-case) parameter name belongs to, so callers can group tags."""
    family = _KEY_TO_FAMILY.get(key)
    if family is None and _AT_CUSTOM.fullmatch(key):
        return "at"
    return family


def parse_campaign_params(url: str) -> dict[str, str]:
    """The campaign parameters of a landing URL, for the ``campaign_params`` map of a hit.

    Keys are lower-cased, values decoded but otherwise untouched (campaign names are
    case-sensitive in the tools that declare them). The first non-empty occurrence of a key
    wins, the query string before the fragment, because that is what the browser-side tags
    of AT Internet and Google read.

    ``normalize_params`` over the decoded pairs, in one pass: the collector reads every hit's
    URL, so a value is decoded only once its key is kept, and text with neither ``%`` nor
    ``+`` (most keys, many values) is not decoded at all (``unquote_plus`` returns it as is).
    """
    if not isinstance(url, str):
        return {}
    query, fragment = _split_query_fragment(url)
    found: dict[str, str] = {}
    _collect(query.split("&"), found)
    if fragment:
        _collect(_FRAGMENT_SEPARATORS.split(fragment), found)
    return found


def _collect(chunks: Iterable[str], found: dict[str, str]) -> None:
    """Add the campaign pairs among ``chunks`` (``key=value``) to ``found``, as ``normalize_params`` would."""
    for chunk in chunks:
        key, sep, value = chunk.partition("=")
        if not sep:
            continue
        if "%" in key or "+" in key:
            key = _decode(key)
        key = key.strip().lower()
        if key.startswith("amp;"):  # a URL copied out of HTML without unescaping
            key = key[4:]
        if key in found or (key not in _KEY_TO_FAMILY and not _AT_CUSTOM.fullmatch(key)):
            continue
        if "%" in value or "+" in value:
            value = _decode(value)
        value = value.strip()
        if value:
            found[key] = value


def normalize_params(params: Mapping[str, str] | Iterable[tuple[str, str]]) -> dict[str, str]:
    """Keep known campaign keys only, lower-case them, first non-empty value wins.

    Used both on freshly parsed URLs and on maps a hit already carries, which may have been
    filled by another tool with different key case or with unrelated keys.
    """
    items = params.items() if isinstance(params, Mapping) else params
    found: dict[str, str] = {}
    for raw_key, raw_value in items:
        if not isinstance(raw_key, str) or not isinstance(raw_value, str):
            continue
        key = raw_key.strip().lower()
        if key.startswith("amp;"):  # a URL copied out of HTML without unescaping
            key = key[4:]
        value = raw_value.strip()
        if value and key not in found and family_of(key) is not None:
            found[key] = value
    return found


def _split_query_fragment(url: str) -> tuple[str, str]:
    """Split by hand rather than with ``urlsplit``, which raises on some malformed hosts."""
    before_hash, _, fragment = url.partition("#")
    _, _, query = before_hash.partition("?")
    return query, fragment


def _decode(text: str) -> str:
    return unquote_plus(text, errors="replace")
