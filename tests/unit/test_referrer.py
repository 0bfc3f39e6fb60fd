"""Referrer classification of untagged visits: direct, internal, organic, social, email, referral."""

from __future__ import annotations

import pytest

from passerelle.streams.enrichment.referrer import ReferrerClass, classify_referrer, referrer_host

pytestmark = pytest.mark.unit

SITE = frozenset({"shop.example", "www.boutique.example"})
R = ReferrerClass

CASES = [
    # direct
    pytest.param(None, R("direct"), id="none"),
    pytest.param("", R("direct"), id="empty"),
    pytest.param("   ", R("direct"), id="blank"),
    # internal
    pytest.param("https://shop.example/panier", R("internal", "shop.example"), id="internal-exact"),
    pytest.param("https://www.shop.example/", R("internal", "shop.example"), id="internal-www"),
    pytest.param("https://blog.shop.example/post", R("internal", "blog.shop.example"), id="internal-subdomain"),
    pytest.param(
        "https://boutique.example/", R("internal", "boutique.example"), id="internal-site-host-given-with-www"
    ),
    pytest.param("https://notshop.example/", R("referral", "notshop.example"), id="not-internal-suffix-without-dot"),
    # organic search
    pytest.param("https://www.google.com/", R("organic", "google"), id="google-com"),
    pytest.param("https://www.google.fr/", R("organic", "google"), id="google-fr"),
    pytest.param(
        "https://www.google.co.uk/search?q=rain+coat", R("organic", "google", "rain coat"), id="google-co-uk-term"
    ),
    pytest.param("https://www.google.com.br/url?sa=t&q=", R("organic", "google"), id="google-com-br-empty-q"),
    pytest.param(
        "https://docs.google.com/document/d/1/edit", R("referral", "docs.google.com"), id="google-docs-referral"
    ),
    pytest.param("https://google.evil.com/", R("referral", "google.evil.com"), id="google-lookalike-referral"),
    pytest.param("https://www.bing.com/search?q=velo%20electrique", R("organic", "bing", "velo electrique"), id="bing"),
    pytest.param(
        "https://fr.search.yahoo.com/search?p=tente+4+places", R("organic", "yahoo", "tente 4 places"), id="yahoo"
    ),
    pytest.param("https://www.yahoo.com/search?p=meteo", R("organic", "yahoo", "meteo"), id="yahoo-search-path"),
    pytest.param("https://news.yahoo.com/article", R("referral", "news.yahoo.com"), id="yahoo-news-referral"),
    pytest.param("https://duckduckgo.com/", R("organic", "duckduckgo"), id="duckduckgo"),
    pytest.param("https://www.qwant.com/?q=chaussures&t=web", R("organic", "qwant", "chaussures"), id="qwant"),
    pytest.param("https://www.ecosia.org/search?q=arbre", R("organic", "ecosia", "arbre"), id="ecosia"),
    pytest.param("https://www.baidu.com/s?wd=%E9%9E%8B", R("organic", "baidu", "鞋"), id="baidu-wd"),
    pytest.param("https://yandex.ru/search/?text=obuv", R("organic", "yandex", "obuv"), id="yandex-text"),
    pytest.param("https://www.startpage.com/do/search?query=lampe", R("organic", "startpage", "lampe"), id="startpage"),
    pytest.param("https://search.brave.com/search?q=tapis", R("organic", "brave", "tapis"), id="brave-search"),
    pytest.param("https://brave.com/download/", R("referral", "brave.com"), id="brave-site-referral"),
    pytest.param("www.google.fr/search?q=sans+schema", R("organic", "google", "sans schema"), id="no-scheme-host"),
    # social
    pytest.param("https://m.facebook.com/", R("social", "facebook"), id="facebook-mobile"),
    pytest.param("https://l.facebook.com/l.php?u=x", R("social", "facebook"), id="facebook-link-shim"),
    pytest.param("https://l.instagram.com/", R("social", "instagram"), id="instagram-link-shim"),
    pytest.param("https://t.co/AbC123", R("social", "twitter"), id="t-co"),
    pytest.param("https://x.com/someone/status/1", R("social", "twitter"), id="x-com"),
    pytest.param("https://www.linkedin.com/feed/", R("social", "linkedin"), id="linkedin"),
    pytest.param("https://lnkd.in/eXyZ", R("social", "linkedin"), id="lnkd-in"),
    pytest.param("https://www.pinterest.fr/pin/1/", R("social", "pinterest"), id="pinterest-fr"),
    pytest.param("https://m.youtube.com/watch?v=1", R("social", "youtube"), id="youtube-mobile"),
    pytest.param("https://www.tiktok.com/@shop", R("social", "tiktok"), id="tiktok"),
    pytest.param("https://old.reddit.com/r/france", R("social", "reddit"), id="reddit"),
    pytest.param("https://www.snapchat.com/", R("social", "snapchat"), id="snapchat"),
    pytest.param("https://bt.co/x", R("referral", "bt.co"), id="not-t-co"),
    # email (webmail)
    pytest.param("https://mail.google.com/", R("email", "mail.google.com"), id="gmail"),
    pytest.param("https://outlook.live.com/mail/0/inbox", R("email", "outlook.live.com"), id="outlook"),
    pytest.param("https://fr.mail.yahoo.com/d/folders/1", R("email", "fr.mail.yahoo.com"), id="yahoo-mail"),
    pytest.param("https://webmail.orange.fr/", R("email", "webmail.orange.fr"), id="webmail-first-label"),
    pytest.param("https://mail.ru/", R("referral", "mail.ru"), id="mail-ru-portal-referral"),
    # android apps
    pytest.param("android-app://com.google.android.googlequicksearchbox/", R("organic", "google"), id="android-google"),
    pytest.param("android-app://com.google.android.gm", R("email", "gmail"), id="android-gmail"),
    pytest.param("android-app://com.example.reader/", R("referral", "com.example.reader"), id="android-unknown-app"),
    # referral
    pytest.param("https://www.lemonde.fr/economie/article.html", R("referral", "lemonde.fr"), id="news-site"),
    pytest.param("https://user:pw@Blog.Example.COM:8443/x", R("referral", "blog.example.com"), id="port-userinfo-case"),
    pytest.param("//www.lemonde.fr/x", R("referral", "lemonde.fr"), id="protocol-relative"),
    pytest.param("http://192.168.1.20/admin", R("referral", "192.168.1.20"), id="ip-address"),
    # garbage
    pytest.param("javascript:void(0)", R("unknown"), id="javascript"),
    pytest.param("about:blank", R("unknown"), id="about-blank"),
    pytest.param("data:text/html,hello", R("unknown"), id="data-url"),
    pytest.param("http://", R("unknown"), id="scheme-only"),
    pytest.param("http://[::1", R("unknown"), id="broken-ipv6"),
    pytest.param("%%% ???", R("unknown"), id="garbage"),
]


@pytest.mark.parametrize(("referrer", "expected"), CASES)
def test_classify_referrer(referrer: str | None, expected: ReferrerClass) -> None:
    assert classify_referrer(referrer, SITE) == expected


def test_case_table_is_large_enough() -> None:
    assert len(CASES) >= 20


def test_without_site_hosts_own_site_is_a_referral() -> None:
    assert classify_referrer("https://www.shop.example/panier") == R("referral", "shop.example")


@pytest.mark.parametrize(
    ("referrer", "host"),
    [
        ("https://WWW.Google.FR./search", "www.google.fr"),
        ("android-app://com.google.android.gm", None),
        ("javascript:void(0)", None),
        (None, None),
    ],
)
def test_referrer_host(referrer: str | None, host: str | None) -> None:
    assert referrer_host(referrer) == host
