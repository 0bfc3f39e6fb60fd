"""Tagged landing URLs: a campaign's tag written in its family's syntax, the landing URL's own parameters kept.

Pure functions, no I/O. The contract is the enrichment's own reader
(``passerelle.streams.enrichment.attribution.attribute``): every URL made here
is attributed back to its campaign by it, whatever the landing URL carried
(``tests/unit/test_partner_api_rules.py`` checks it over generated campaigns
and URLs). Hence:

- the campaign's tag is written in the query string, in the family's syntax:
  ``xtor=EREC-123`` (AT Internet), ``at_medium=…&at_campaign=…`` (Piano
  Analytics), ``utm_source=…&utm_medium=…&utm_campaign=…`` (Google),
  ``mtm_source=…&mtm_medium=…&mtm_campaign=…`` (Matomo);
- campaign parameters the landing URL already carried, of any family, in
  the query or the fragment (``#xtor=…``), are removed first: left there, a
  higher-precedence family (an old ``xtor`` under a new ``utm_*`` tag) would
  win the attribution. They are recognised exactly as the enrichment
  recognises them (any case, ``%xx``-encoded, ``amp;``-prefixed);
- every other parameter, the path and the fragment stay as they were.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote, unquote_plus, urlsplit, urlunsplit

from passerelle.streams.enrichment.attribution import AttributionConfig, attribute
from passerelle.streams.enrichment.params import family_of

TAG_FAMILIES: Final = ("xtor", "at", "utm", "mtm")
"""Families a declared campaign can be tagged with (the enrichment reads ``pk_*`` and click ids too)."""

MAX_URL_LENGTH: Final = 2048
"""Longest landing URL accepted (and longest tagged URL returned): what browsers and mail clients keep whole."""

_FRAGMENT_SEPARATORS = re.compile(r"([&?#])")
_ATTRIBUTION = AttributionConfig(TAG_FAMILIES)


@dataclass(frozen=True)
class CampaignTag:
    """What a tagged URL carries: the family, the campaign key, and the medium/source where the family has them."""

    family: str
    key: str
    medium: str | None = None
    source: str | None = None

    def params(self) -> list[tuple[str, str]]:
        """The tag's parameters, in the order the family's own tools write them."""
        if self.family == "xtor":
            return [("xtor", self.key)]
        prefix, source_key = {"at": ("at", "at_platform"), "utm": ("utm", "utm_source"), "mtm": ("mtm", "mtm_source")}[
            self.family
        ]
        pairs: list[tuple[str, str]] = []
        if self.source:
            pairs.append((source_key, self.source))
        if self.medium:
            pairs.append((f"{prefix}_medium", self.medium))
        pairs.append((f"{prefix}_campaign", self.key))
        return pairs

    def __post_init__(self) -> None:
        if self.family not in TAG_FAMILIES:
            raise ValueError(f"unknown tag family {self.family!r}; one of {', '.join(TAG_FAMILIES)}")


def landing_problem(url: Any) -> str | None:
    """Why ``url`` cannot be a landing URL (absolute ``http``/``https`` with a host), or None."""
    if not isinstance(url, str) or not url:
        return "must be an absolute http(s) URL"
    if len(url) > MAX_URL_LENGTH:
        return f"longer than {MAX_URL_LENGTH} characters"
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        return "contains spaces or control characters (encode them)"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError as exc:
        return f"not a valid URL ({exc})"
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return "must be an absolute http(s) URL"
    return None


def is_campaign_param(chunk: str) -> bool:
    """Whether a ``key=value`` chunk is a campaign parameter the enrichment reads (as ``params.py`` reads it)."""
    if "=" not in chunk:
        return False
    key = unquote_plus(chunk.partition("=")[0], errors="replace").strip().lower()
    if key.startswith("amp;"):
        key = key[4:]
    return family_of(key) is not None


def strip_campaign_params(url: str) -> str:
    """``url`` without any campaign parameter (query and fragment); everything else untouched."""
    parts = urlsplit(url)
    query = "&".join(chunk for chunk in parts.query.split("&") if chunk and not is_campaign_param(chunk))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, _strip_fragment(parts.fragment)))


def _strip_fragment(fragment: str) -> str:
    """Drop campaign chunks of a fragment (split on ``&``, ``?``, ``#`` as the enrichment does), keep the rest.

    ``#!/p?utm_source=x&y=1`` becomes ``#!/p?y=1``: a dropped chunk's ``?`` or
    ``#`` moves to the next chunk kept, so a hash route keeps its shape.
    """
    if not fragment:
        return fragment
    tokens = _FRAGMENT_SEPARATORS.split(fragment)
    pairs = [("", tokens[0])] + [(tokens[i], tokens[i + 1]) for i in range(1, len(tokens) - 1, 2)]
    kept: list[str] = []
    pending: str | None = None  # a structural separator ("", "?", "#") whose chunk was dropped
    for sep, chunk in pairs:
        if is_campaign_param(chunk):
            if sep != "&" and pending is None:
                pending = sep
            continue
        if pending is not None and sep == "&":
            sep = pending
        pending = None
        kept.append(sep + chunk)
    return "".join(kept)


def tag_url(landing: str, tag: CampaignTag) -> str:
    """``landing`` carrying ``tag`` (any campaign parameter it had removed); ``ValueError`` for a bad landing URL."""
    problem = landing_problem(landing)
    if problem is not None:
        raise ValueError(f"landing URL {problem}")
    parts = urlsplit(strip_campaign_params(landing))
    own = [chunk for chunk in parts.query.split("&") if chunk]
    ours = [f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in tag.params()]
    return urlunsplit((parts.scheme, parts.netloc, parts.path or "/", "&".join(own + ours), parts.fragment))


def read_tag(url: str) -> CampaignTag | None:
    """The campaign tag the enrichment reads in ``url`` (families of :data:`TAG_FAMILIES`), or None."""
    found = attribute(url, None, _ATTRIBUTION)
    if found.family is None or not found.campaign:
        return None
    medium = None if found.family == "xtor" else found.medium
    source = None if found.family == "xtor" else found.source
    return CampaignTag(found.family, found.campaign, medium, source)


def tag_of(campaign: Mapping[str, Any]) -> CampaignTag | None:
    """The tag of a declared campaign, read from its ``tagged_url_template`` (the family is what it carries)."""
    tag = read_tag(str(campaign.get("tagged_url_template") or ""))
    if tag is None:
        return None
    medium = None if tag.family == "xtor" else campaign.get("medium") or tag.medium
    return CampaignTag(tag.family, str(campaign["key"]), medium, tag.source)


def landing_of(campaign: Mapping[str, Any]) -> str:
    """The campaign's default landing URL: its template without the tag."""
    return strip_campaign_params(str(campaign.get("tagged_url_template") or ""))
