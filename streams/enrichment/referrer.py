"""Traffic source of a visit that carries no campaign tag, read from its referrer.

Untagged visits still have to land in a channel, or the channel report silently
under-counts search and social. The rules, in order:

1. no referrer → ``direct``;
2. the site itself or a subdomain of it → ``internal`` (source = host);
3. a webmail (``mail.google.com``, ``outlook.live.com``, ``webmail.*``…) → ``email``;
4. a search engine → ``organic``, source = engine name, term from ``q=``/``p=``/… if sent;
5. a social network or messaging app → ``social``, source = network name;
6. any other web host → ``referral``, source = host without ``www.``;
7. anything that is not an http(s) URL or host (``javascript:``, ``about:blank``,
   ``data:``, garbage) → ``unknown``.

Android app referrers (``android-app://com.google.android.gm``) are mapped by package.
Never raises: a referrer is whatever the browser or a tag plugin put in the hit.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import SplitResult, parse_qsl, urlsplit

from passerelle.streams.enrichment import media
from passerelle.streams.enrichment.known_hosts import (
    APP_PACKAGES,
    GOOGLE_NON_SEARCH_SUBDOMAINS,
    SEARCH_ENGINES,
    SOCIAL_DOMAINS,
    SOCIAL_PATTERNS,
    WEBMAIL_DOMAINS,
    WEBMAIL_FIRST_LABELS,
)

_SCHEME = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*):")
_VALID_HOST = re.compile(r"[\w-]+(?:\.[\w-]+)*", re.UNICODE)
_APP_SCHEMES = frozenset({"android-app", "ios-app"})


@dataclass(frozen=True)
class ReferrerClass:
    """The channel a referrer implies, in the same vocabulary as campaign attribution."""

    medium: str
    source: str | None = None
    term: str | None = None


def classify_referrer(referrer: str | None, site_hosts: Iterable[str] = frozenset()) -> ReferrerClass:
    """Classify a referrer URL; ``site_hosts`` are the site's own hosts (subdomains included)."""
    text = referrer.strip() if isinstance(referrer, str) else ""
    if not text:
        return ReferrerClass(media.DIRECT)
    parts = _split(text)
    if parts is None:
        return ReferrerClass(media.UNKNOWN)
    if parts.scheme in _APP_SCHEMES:
        return _app(parts)
    host = _host(parts)
    if host is None:
        return ReferrerClass(media.UNKNOWN)
    if any(_within(host, site) for site in _normalize_hosts(site_hosts)):
        return ReferrerClass(media.INTERNAL, _strip_www(host))
    if _is_webmail(host):
        return ReferrerClass(media.EMAIL, host)
    engine = _search_engine(host, parts.path)
    if engine is not None:
        name, term_params = engine
        return ReferrerClass(media.ORGANIC, name, _term(parts, term_params))
    network = _social_network(host)
    if network is not None:
        return ReferrerClass(media.SOCIAL, network)
    return ReferrerClass(media.REFERRAL, _strip_www(host))


def referrer_host(referrer: str | None) -> str | None:
    """The lower-case host of a web referrer, or ``None`` when it has none we can trust."""
    text = referrer.strip() if isinstance(referrer, str) else ""
    parts = _split(text) if text else None
    if parts is None or parts.scheme in _APP_SCHEMES:
        return None
    return _host(parts)


def _split(text: str) -> SplitResult | None:
    """Parse http(s) URLs and bare hosts (``www.google.fr/search``); refuse other schemes."""
    if text.startswith("//"):
        text = "http:" + text
    scheme = _SCHEME.match(text)
    if scheme is None or "." in scheme.group(1):  # ``www.site.fr:8080/x`` is a host, not a scheme
        text = "http://" + text
    elif scheme.group(1).lower() not in {"http", "https", *_APP_SCHEMES}:
        return None
    try:
        return urlsplit(text)
    except ValueError:  # e.g. an unbalanced IPv6 bracket
        return None


def _host(parts: SplitResult) -> str | None:
    try:
        host = parts.hostname
    except ValueError:
        return None
    if not host:
        return None
    host = host.rstrip(".")
    return host if _VALID_HOST.fullmatch(host) else None


def _app(parts: SplitResult) -> ReferrerClass:
    package = parts.netloc.lower()
    if not package:
        return ReferrerClass(media.UNKNOWN)
    medium, source = APP_PACKAGES.get(package, (media.REFERRAL, package))
    return ReferrerClass(medium, source)


def _normalize_hosts(hosts: Iterable[str]) -> Iterable[str]:
    for entry in hosts:
        host = referrer_host(entry) if isinstance(entry, str) else None
        if host:
            yield _strip_www(host)


def _within(host: str, domain: str) -> bool:
    return host == domain or host.endswith("." + domain)


def _strip_www(host: str) -> str:
    return host[4:] if host.startswith("www.") and host.count(".") > 1 else host


def _is_webmail(host: str) -> bool:
    if any(_within(host, domain) for domain in WEBMAIL_DOMAINS):
        return True
    labels = host.split(".")
    return len(labels) >= 3 and labels[0] in WEBMAIL_FIRST_LABELS


def _search_engine(host: str, path: str) -> tuple[str, tuple[str, ...]] | None:
    for engine in SEARCH_ENGINES:
        if not engine.host.fullmatch(host):
            continue
        if engine.path_prefix is not None and not path.startswith(engine.path_prefix):
            continue
        if engine.name == "google" and host.split(".")[0] in GOOGLE_NON_SEARCH_SUBDOMAINS:
            return None
        return engine.name, engine.term_params
    return None


def _social_network(host: str) -> str | None:
    labels = host.split(".")
    for start in range(len(labels) - 1):
        network = SOCIAL_DOMAINS.get(".".join(labels[start:]))
        if network is not None:
            return network
    for name, pattern in SOCIAL_PATTERNS:
        if pattern.fullmatch(host):
            return name
    return None


def _term(parts: SplitResult, names: tuple[str, ...]) -> str | None:
    """The search words, when the engine still sends them (most no longer do)."""
    query = dict(reversed(parse_qsl(parts.query, errors="replace")))  # reversed: first occurrence wins
    for name in names:
        value = query.get(name, "").strip()
        if value:
            return value
    return None
