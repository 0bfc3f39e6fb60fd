"""Which referrer hosts are search engines, social networks and webmails.

Kept apart from the classifier so the lists can grow (a new engine, a new network) without
touching the rules. Hosts are matched on whole labels (``t.co`` matches ``t.co`` and
``x.t.co``, never ``bt.co``), so mobile and link-shim subdomains such as ``m.facebook.com``
or ``l.instagram.com`` need no entry of their own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from passerelle.streams.enrichment import media

# ``google.com``, ``google.fr``, ``google.co.uk``, ``google.com.br``: one country TLD pattern.
_CC = r"(?:com?\.)?[a-z]{2,3}"


@dataclass(frozen=True)
class SearchEngine:
    """A search engine, the host pattern that identifies it and where it puts the query."""

    name: str
    host: re.Pattern[str]
    term_params: tuple[str, ...] = ("q",)
    path_prefix: str | None = None  # for portals that are a search engine on one path only


def _host(pattern: str) -> re.Pattern[str]:
    return re.compile(rf"(?:[a-z0-9-]+\.)*{pattern}")


SEARCH_ENGINES: Final[tuple[SearchEngine, ...]] = (
    SearchEngine("google", _host(rf"google\.{_CC}")),
    SearchEngine("bing", _host(r"bing\.com")),
    SearchEngine("yahoo", _host(rf"search\.yahoo\.{_CC}"), ("p", "q")),
    SearchEngine("yahoo", _host(rf"yahoo\.{_CC}"), ("p", "q"), path_prefix="/search"),
    SearchEngine("duckduckgo", _host(r"duckduckgo\.com")),
    SearchEngine("qwant", _host(r"qwant\.com")),
    SearchEngine("ecosia", _host(r"ecosia\.org")),
    SearchEngine("baidu", _host(r"baidu\.com"), ("wd", "word", "q")),
    SearchEngine("yandex", _host(rf"(?:yandex\.{_CC}|ya\.ru)"), ("text", "q")),
    SearchEngine("startpage", _host(r"startpage\.(?:com|nl)"), ("query", "q")),
    SearchEngine("brave", _host(r"search\.brave\.com")),
    SearchEngine("aol", _host(rf"search\.aol\.{_CC}"), ("q", "query")),
    SearchEngine("ask", _host(r"ask\.com")),
    SearchEngine("naver", _host(r"search\.naver\.com"), ("query",)),
    SearchEngine("seznam", _host(r"search\.seznam\.cz")),
    SearchEngine("lilo", _host(r"search\.lilo\.org")),
    SearchEngine("sogou", _host(r"sogou\.com"), ("query",)),
    SearchEngine("360", _host(r"so\.com")),
    SearchEngine("kagi", _host(r"kagi\.com")),
    SearchEngine("mojeek", _host(r"mojeek\.com")),
)

# Google properties that are not the search engine: a link from a Google Doc is a referral.
GOOGLE_NON_SEARCH_SUBDOMAINS: Final = frozenset(
    {"accounts", "calendar", "chat", "docs", "drive", "groups", "keep", "meet", "myaccount", "play", "sites"}
)

SOCIAL_DOMAINS: Final[dict[str, str]] = {
    "facebook.com": "facebook",
    "fb.com": "facebook",
    "fb.me": "facebook",
    "fb.watch": "facebook",
    "messenger.com": "facebook",
    "instagram.com": "instagram",
    "twitter.com": "twitter",
    "t.co": "twitter",
    "x.com": "twitter",
    "linkedin.com": "linkedin",
    "lnkd.in": "linkedin",
    "pin.it": "pinterest",
    "youtube.com": "youtube",
    "youtu.be": "youtube",
    "tiktok.com": "tiktok",
    "reddit.com": "reddit",
    "redd.it": "reddit",
    "snapchat.com": "snapchat",
    "tumblr.com": "tumblr",
    "vk.com": "vk",
    "threads.net": "threads",
    "bsky.app": "bluesky",
    "mastodon.social": "mastodon",
    "whatsapp.com": "whatsapp",
    "wa.me": "whatsapp",
    "t.me": "telegram",
    "telegram.org": "telegram",
    "discord.com": "discord",
    "discord.gg": "discord",
    "twitch.tv": "twitch",
    "quora.com": "quora",
}
SOCIAL_PATTERNS: Final[tuple[tuple[str, re.Pattern[str]], ...]] = (("pinterest", _host(rf"pinterest\.{_CC}")),)

WEBMAIL_DOMAINS: Final = frozenset(
    {
        "mail.google.com",
        "mail.yahoo.com",
        "mail.live.com",
        "outlook.live.com",
        "outlook.office.com",
        "outlook.office365.com",
        "mail.aol.com",
        "mail.proton.me",
        "navigator.gmx.net",
        "navigator.web.de",
        "e.mail.ru",
        "zimbra.free.fr",
    }
)
# ``webmail.orange.fr``, ``mail.zoho.com``, ``messagerie.sfr.fr``: a webmail by its first label.
WEBMAIL_FIRST_LABELS: Final = frozenset({"mail", "webmail", "messagerie", "email"})

# Android apps announce themselves as ``android-app://<package>/`` referrers.
APP_PACKAGES: Final[dict[str, tuple[str, str]]] = {
    "com.google.android.googlequicksearchbox": (media.ORGANIC, "google"),
    "com.google.android.gm": (media.EMAIL, "gmail"),
    "com.microsoft.office.outlook": (media.EMAIL, "outlook"),
    "com.facebook.katana": (media.SOCIAL, "facebook"),
    "com.facebook.orca": (media.SOCIAL, "facebook"),
    "com.instagram.android": (media.SOCIAL, "instagram"),
    "com.twitter.android": (media.SOCIAL, "twitter"),
    "com.linkedin.android": (media.SOCIAL, "linkedin"),
    "com.pinterest": (media.SOCIAL, "pinterest"),
    "com.reddit.frontpage": (media.SOCIAL, "reddit"),
    "com.zhiliaoapp.musically": (media.SOCIAL, "tiktok"),
    "com.snapchat.android": (media.SOCIAL, "snapchat"),
    "com.whatsapp": (media.SOCIAL, "whatsapp"),
    "org.telegram.messenger": (media.SOCIAL, "telegram"),
}
