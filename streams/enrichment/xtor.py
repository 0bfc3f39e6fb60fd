"""AT Internet / Piano ``xtor`` tags: ``PREFIX-ID-[label]-…``.

The prefix names the source type and, with the numeric id, forms the campaign key that
partners declare (``EREC-123``, ``SEC-9``…), so the key is what attribution must recover
exactly; everything after it is descriptive and read best-effort. Labels sit in brackets
(``[]`` means "none") and may contain dashes, so the tag is split on dashes *outside*
brackets only. A tag we cannot read is never dropped: it comes back with medium
``unknown`` and its raw value, so undeclared or broken tags can be flagged downstream.

Prefixes (AT Internet "sources", Analytics Suite 2 / Piano):

======  =====================================  =============  ===================================
prefix  source type                            medium         descriptive fields read
======  =====================================  =============  ===================================
AD      advertising (display, sponsored ads)   ``display``    content=creative, source=site
AL      affiliation                            ``affiliate``  source=partner, content=2nd label
SEC     sponsored links (paid search)          ``cpc``        source/network=engine, term=keyword
EREC    email marketing, retention             ``email``      content=email label
EPR     email marketing, promotion/acquisition ``email``      content=email label
ES      email marketing, sending/system        ``email``      content=email label
RSS     RSS feed                               ``rss``        content=label
CS/CSn  custom marketing source (CS1, CS2…)    ``custom``     content=label
======  =====================================  =============  ===================================

Email tags read ``EREC-<id>-[email]-<YYYYMMDD>-[link]-<contact>@<list>-…``; the recipient
part is deliberately not surfaced. Paid-search tags come short (``SEC-9-GOO-[keyword]``)
or long (``SEC-13-GOO-[product]-[ad id]-S-[keyword]``, ``S``/``C`` = search/content
network); in the long form the keyword follows the ``S``/``C`` marker and the first label
becomes ``content``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Final

from passerelle.streams.enrichment import media

PREFIX_MEDIUM: Final[dict[str, str]] = {
    "AD": media.DISPLAY,
    "AL": media.AFFILIATE,
    "SEC": media.CPC,
    "EREC": media.EMAIL,
    "EPR": media.EMAIL,
    "ES": media.EMAIL,
    "RSS": media.RSS,
    "CS": media.CUSTOM,
}

# AT Internet's sponsored-link platform codes (third segment of a SEC tag).
SEARCH_ENGINE_CODES: Final[dict[str, str]] = {
    "GOO": "google",
    "BIN": "bing",
    "MSN": "bing",
    "YAH": "yahoo",
    "OVE": "yahoo",  # Overture, later Yahoo Search Marketing
    "BAI": "baidu",
    "YAN": "yandex",
    "QWA": "qwant",
    "ECO": "ecosia",
    "NAV": "naver",
}

_PREFIX = re.compile(r"([A-Za-z]+)(\d*)")
_ID = re.compile(r"(\d+)(?:\[(.*)\])?", re.DOTALL)
_LABELLED = re.compile(r"[^\[\]]*\[(.*)\]", re.DOTALL)


@dataclass(frozen=True)
class XtorTag:
    """What an xtor value says; ``campaign`` is ``None`` exactly when the tag is malformed."""

    raw: str
    prefix: str | None
    medium: str
    campaign: str | None = None
    source: str | None = None
    network: str | None = None
    term: str | None = None
    content: str | None = None


def parse_xtor(raw: str) -> XtorTag:
    """Read an xtor value (already URL-decoded); never raises, never loses the raw value."""
    tokens = _split_outside_brackets(raw.strip())
    head = _PREFIX.fullmatch(tokens[0].strip())
    if head is None:
        return XtorTag(raw=raw, prefix=None, medium=media.UNKNOWN)
    letters, digits = head.group(1).upper(), head.group(2)
    prefix = letters + digits
    if letters not in PREFIX_MEDIUM or (digits and letters != "CS"):
        return XtorTag(raw=raw, prefix=prefix, medium=media.UNKNOWN)
    ident = _ID.fullmatch(tokens[1].strip()) if len(tokens) > 1 else None
    if ident is None:
        return XtorTag(raw=raw, prefix=prefix, medium=media.UNKNOWN)
    campaign = f"{prefix}-{ident.group(1)}"
    id_label = _label(f"[{ident.group(2)}]") if ident.group(2) is not None else None
    rest = [token.strip() for token in tokens[2:]]
    tag = XtorTag(raw=raw, prefix=prefix, medium=PREFIX_MEDIUM[letters], campaign=campaign, content=id_label)
    if letters == "SEC":
        return _sponsored_link(tag, rest)
    if letters == "AL":
        return _with(tag, source=_at(rest, 0), content=_at(rest, 1) or id_label)
    if letters == "AD":
        return _with(tag, content=_at(rest, 0) or id_label, source=_at(rest, 3))
    return _with(tag, content=_at(rest, 0) or id_label)


def _sponsored_link(tag: XtorTag, rest: list[str]) -> XtorTag:
    engine_code = _label(rest[0]) if rest else None
    engine = None
    if engine_code:
        engine = SEARCH_ENGINE_CODES.get(engine_code.upper())
    labels = rest[1:]
    marker = next((i for i, token in enumerate(labels) if token.upper() in {"S", "C"}), None)
    if marker is not None and marker + 1 < len(labels):
        term, content = _at(labels, marker + 1), (_at(labels, 0) if marker > 0 else None)
    else:
        term, content = _at(labels, 0), None
    source = engine or (engine_code.lower() if engine_code else None)
    return _with(tag, source=source, network=engine, term=term, content=content or tag.content)


def _with(
    tag: XtorTag,
    *,
    source: str | None = None,
    network: str | None = None,
    term: str | None = None,
    content: str | None = None,
) -> XtorTag:
    return replace(tag, source=source, network=network, term=term, content=content)


def _at(tokens: list[str], index: int) -> str | None:
    return _label(tokens[index]) if index < len(tokens) else None


def _label(token: str) -> str | None:
    """``[text]`` → ``text``, ``12[text]`` → ``text``, ``[]``/empty → ``None``, bare → itself."""
    token = token.strip()
    labelled = _LABELLED.fullmatch(token)
    text = labelled.group(1) if labelled else token
    text = text.strip()
    return text or None


def _split_outside_brackets(value: str) -> list[str]:
    tokens: list[str] = []
    depth = 0
    current: list[str] = []
    for char in value:
        if char == "[":
            depth += 1
        elif char == "]" and depth:
            depth -= 1
        if char == "-" and depth == 0:
            tokens.append("".join(current))
            current = []
        else:
            current.append(char)
    tokens.append("".join(current))
    return tokens
