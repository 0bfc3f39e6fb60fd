"""Campaign attribution: every tag family, precedence, encodings and malformed tags.

The table is the acceptance check of job 1 ("tagging without manual errors"): each row is
a landing URL as partners and tools really produce them, with the full attribution the
enrichment must derive from it.
"""

from __future__ import annotations

import pytest

from passerelle.schemas.models import TrafficSource
from passerelle.streams.enrichment.attribution import (
    DEFAULT,
    Attribution,
    AttributionConfig,
    attribute,
    attribute_params,
    parse_campaign_params,
)

pytestmark = pytest.mark.unit

SHOP = "https://www.shop.example"
UTM_THEN_XTOR = f"{SHOP}/?utm_source=newsletter&utm_medium=email&utm_campaign=rentree&xtor=EREC-77-[rentree]"
GOOGLE_FR = "https://www.google.fr/"
UTM_FIRST = AttributionConfig(precedence=("utm", "xtor"))
ONLY_UTM = AttributionConfig(precedence=("utm",))
CLICK_FIRST = AttributionConfig(precedence=("click_id", "utm"))

A = Attribution

CASES = [
    # --- AT Internet xtor ------------------------------------------------------------------------
    pytest.param(
        f"{SHOP}/soldes?xtor=EREC-123-[soldes_ete]-20261128-[hero_banner]-4512@7",
        None,
        DEFAULT,
        A(
            "email",
            campaign="EREC-123",
            content="soldes_ete",
            family="xtor",
            raw_tag="EREC-123-[soldes_ete]-20261128-[hero_banner]-4512@7",
        ),
        id="xtor-erec-email-retention",
    ),
    pytest.param(
        "https://www.idealista.com/inmueble/85799834/?xtor=EPR-201-[express_alerts_20190607]-20190607-"
        "[inmueble_28_77.000]-[]-20190607103902",
        None,
        DEFAULT,
        A(
            "email",
            campaign="EPR-201",
            content="express_alerts_20190607",
            family="xtor",
            raw_tag="EPR-201-[express_alerts_20190607]-20190607-[inmueble_28_77.000]-[]-20190607103902",
        ),
        id="xtor-epr-email-promotion",
    ),
    pytest.param(
        f"{SHOP}/compte?xtor=ES-44-[password_reset]-20260301",
        None,
        DEFAULT,
        A(
            "email",
            campaign="ES-44",
            content="password_reset",
            family="xtor",
            raw_tag="ES-44-[password_reset]-20260301",
        ),
        id="xtor-es-email-sending",
    ),
    pytest.param(
        "https://shop.example/?a=1#xtor=SEC-9-GOO-[brand]",
        None,
        DEFAULT,
        A(
            "cpc",
            source="google",
            campaign="SEC-9",
            term="brand",
            network="google",
            family="xtor",
            raw_tag="SEC-9-GOO-[brand]",
        ),
        id="xtor-sec-in-fragment",
    ),
    pytest.param(
        "https://www.ovhcloud.com/en/domains/?xtor=SEC-13-GOO-[noi_ovh_fr_se_web_domain]-[562743691637]-S-"
        "[ovh%20domain%20name]&xts=563736",
        None,
        DEFAULT,
        A(
            "cpc",
            source="google",
            campaign="SEC-13",
            term="ovh domain name",
            content="noi_ovh_fr_se_web_domain",
            network="google",
            family="xtor",
            raw_tag="SEC-13-GOO-[noi_ovh_fr_se_web_domain]-[562743691637]-S-[ovh domain name]",
        ),
        id="xtor-sec-long-form-keyword-after-S",
    ),
    pytest.param(
        f"{SHOP}/running?xtor=SEC-12-BIN-[chaussures+running]",
        None,
        DEFAULT,
        A(
            "cpc",
            source="bing",
            campaign="SEC-12",
            term="chaussures running",
            network="bing",
            family="xtor",
            raw_tag="SEC-12-BIN-[chaussures running]",
        ),
        id="xtor-sec-bing-plus-as-space",
    ),
    pytest.param(
        f"{SHOP}/?xtor=SEC-14-MSN-[velo]",
        None,
        DEFAULT,
        A(
            "cpc",
            source="bing",
            campaign="SEC-14",
            term="velo",
            network="bing",
            family="xtor",
            raw_tag="SEC-14-MSN-[velo]",
        ),
        id="xtor-sec-msn-is-bing",
    ),
    pytest.param(
        f"{SHOP}/?xtor=SEC-15-YAH-[tente]",
        None,
        DEFAULT,
        A(
            "cpc",
            source="yahoo",
            campaign="SEC-15",
            term="tente",
            network="yahoo",
            family="xtor",
            raw_tag="SEC-15-YAH-[tente]",
        ),
        id="xtor-sec-yahoo",
    ),
    pytest.param(
        f"{SHOP}/?xtor=SEC-16-XYZ-[kw]",
        None,
        DEFAULT,
        A("cpc", source="xyz", campaign="SEC-16", term="kw", family="xtor", raw_tag="SEC-16-XYZ-[kw]"),
        id="xtor-sec-unknown-engine-code-kept-as-source",
    ),
    pytest.param(
        "https://etna.io/?xtor=SEC-38-GOO",
        None,
        DEFAULT,
        A("cpc", source="google", campaign="SEC-38", network="google", family="xtor", raw_tag="SEC-38-GOO"),
        id="xtor-sec-without-keyword",
    ),
    pytest.param(
        f"{SHOP}/p/123?xtor=AL-72-[awin]-[banner_728]",
        None,
        DEFAULT,
        A(
            "affiliate",
            source="awin",
            campaign="AL-72",
            content="banner_728",
            family="xtor",
            raw_tag="AL-72-[awin]-[banner_728]",
        ),
        id="xtor-al-affiliation",
    ),
    pytest.param(
        f"{SHOP}/?xtor=AD-3001-[summer_creative]-[v2]-[728x90]-[lemonde.fr]-[home_top]-[clicked]",
        None,
        DEFAULT,
        A(
            "display",
            source="lemonde.fr",
            campaign="AD-3001",
            content="summer_creative",
            family="xtor",
            raw_tag="AD-3001-[summer_creative]-[v2]-[728x90]-[lemonde.fr]-[home_top]-[clicked]",
        ),
        id="xtor-ad-display",
    ),
    pytest.param(
        "https://www.lemonde.fr/planete/article/2026/06/01/x.html?xtor=RSS-3208",
        None,
        DEFAULT,
        A("rss", campaign="RSS-3208", family="xtor", raw_tag="RSS-3208"),
        id="xtor-rss",
    ),
    pytest.param(
        "https://www.lepoint.fr/monde/x.php?utm_medium=Social&utm_source=Twitter#xtor=CS1-32-%5BEchobox%5D",
        None,
        AttributionConfig(precedence=("xtor",)),
        A("custom", campaign="CS1-32", content="Echobox", family="xtor", raw_tag="CS1-32-[Echobox]"),
        id="xtor-cs1-custom-encoded-brackets-in-fragment",
    ),
    pytest.param(
        f"{SHOP}/?XTOR=erec-5-[relance_panier]",
        None,
        DEFAULT,
        A("email", campaign="EREC-5", content="relance_panier", family="xtor", raw_tag="erec-5-[relance_panier]"),
        id="xtor-uppercase-name-lowercase-prefix",
    ),
    pytest.param(
        f"{SHOP}/?xtor=AL-80-[partner-with-dashes]-[]",
        None,
        DEFAULT,
        A(
            "affiliate",
            source="partner-with-dashes",
            campaign="AL-80",
            family="xtor",
            raw_tag="AL-80-[partner-with-dashes]-[]",
        ),
        id="xtor-dashes-inside-brackets-and-empty-label",
    ),
    # --- malformed xtor: kept raw, medium unknown ---------------------------------------------------
    pytest.param(
        f"{SHOP}/?xtor=EREC", None, DEFAULT, A("unknown", family="xtor", raw_tag="EREC"), id="xtor-prefix-only"
    ),
    pytest.param(f"{SHOP}/?xtor=---", None, DEFAULT, A("unknown", family="xtor", raw_tag="---"), id="xtor-dashes-only"),
    pytest.param(
        f"{SHOP}/?xtor=ZZZ-1", None, DEFAULT, A("unknown", family="xtor", raw_tag="ZZZ-1"), id="xtor-unknown-prefix"
    ),
    pytest.param(
        f"{SHOP}/?xtor=EPR-abc-[x]",
        None,
        DEFAULT,
        A("unknown", family="xtor", raw_tag="EPR-abc-[x]"),
        id="xtor-id-not-numeric",
    ),
    pytest.param(
        f"{SHOP}/?xtor=AD1-5", None, DEFAULT, A("unknown", family="xtor", raw_tag="AD1-5"), id="xtor-digits-on-non-cs"
    ),
    pytest.param(
        f"{SHOP}/?xtor=&utm_source=nl&utm_medium=email",
        None,
        DEFAULT,
        A("email", source="nl", family="utm", raw_tag="utm_source=nl&utm_medium=email"),
        id="empty-xtor-is-no-tag",
    ),
    # --- Piano Analytics at_* ---------------------------------------------------------------------
    pytest.param(
        f"{SHOP}/?at_medium=email&at_campaign=new_offer&at_platform=brevo&at_creation=hero&at_variant=b",
        None,
        DEFAULT,
        A(
            "email",
            source="brevo",
            campaign="new_offer",
            content="hero",
            family="at",
            raw_tag="at_medium=email&at_campaign=new_offer&at_platform=brevo&at_creation=hero&at_variant=b",
        ),
        id="at-email",
    ),
    pytest.param(
        f"{SHOP}/tv#at_medium=affiliate&at_campaign=black_friday&at_term=tv+4k&at_custom3=x",
        None,
        DEFAULT,
        A(
            "affiliate",
            campaign="black_friday",
            term="tv 4k",
            family="at",
            raw_tag="at_medium=affiliate&at_campaign=black_friday&at_term=tv%204k&at_custom3=x",
        ),
        id="at-in-fragment-with-custom-property",
    ),
    # --- Google utm_* -----------------------------------------------------------------------------
    pytest.param(
        f"{SHOP}/?utm_source=brevo&utm_medium=email&utm_campaign=rentree_2026&utm_term=cartable&utm_content=cta_bas&utm_id=88",
        None,
        DEFAULT,
        A(
            "email",
            source="brevo",
            campaign="rentree_2026",
            term="cartable",
            content="cta_bas",
            family="utm",
            raw_tag="utm_source=brevo&utm_medium=email&utm_campaign=rentree_2026&utm_term=cartable&utm_content=cta_bas&utm_id=88",
        ),
        id="utm-all-fields",
    ),
    pytest.param(
        f"{SHOP}/?utm_source=newsletter&utm_medium=email&utm_campaign=soldes%20d%27%C3%A9t%C3%A9",
        None,
        DEFAULT,
        A(
            "email",
            source="newsletter",
            campaign="soldes d'été",
            family="utm",
            raw_tag="utm_source=newsletter&utm_medium=email&utm_campaign=soldes%20d%27%C3%A9t%C3%A9",
        ),
        id="utm-percent-encoded-accents",
    ),
    pytest.param(
        f"{SHOP}/?UTM_Source=Facebook&UTM_MEDIUM=Social&Utm_Campaign=Rentr%C3%A9e+Scolaire",
        None,
        DEFAULT,
        A(
            "Social",
            source="Facebook",
            campaign="Rentrée Scolaire",
            family="utm",
            raw_tag="utm_source=Facebook&utm_medium=Social&utm_campaign=Rentr%C3%A9e%20Scolaire",
        ),
        id="utm-uppercase-names-values-keep-case",
    ),
    pytest.param(
        f"{SHOP}/?utm_source=first&utm_medium=email&utm_source=second",
        None,
        DEFAULT,
        A("email", source="first", family="utm", raw_tag="utm_source=first&utm_medium=email"),
        id="utm-repeated-first-wins",
    ),
    pytest.param(
        f"{SHOP}/?utm_source=partner_blog&utm_campaign=printemps",
        None,
        DEFAULT,
        A(
            "unknown",
            source="partner_blog",
            campaign="printemps",
            family="utm",
            raw_tag="utm_source=partner_blog&utm_campaign=printemps",
        ),
        id="utm-without-medium",
    ),
    pytest.param(
        f"{SHOP}/?utm_id=camp_552&utm_medium=display",
        None,
        DEFAULT,
        A("display", campaign="camp_552", family="utm", raw_tag="utm_id=camp_552&utm_medium=display"),
        id="utm-id-as-campaign",
    ),
    pytest.param(
        "https://app.shop.example/#/produits/42?utm_source=nl&utm_medium=email&utm_campaign=x",
        None,
        DEFAULT,
        A("email", source="nl", campaign="x", family="utm", raw_tag="utm_source=nl&utm_medium=email&utm_campaign=x"),
        id="utm-in-hash-route",
    ),
    pytest.param(
        f"{SHOP}/?p=1&amp;utm_source=nl&amp;utm_medium=email",
        None,
        DEFAULT,
        A("email", source="nl", family="utm", raw_tag="utm_source=nl&utm_medium=email"),
        id="utm-html-escaped-ampersands",
    ),
    # --- Matomo mtm_* / legacy pk_* ---------------------------------------------------------------------
    pytest.param(
        f"{SHOP}/?mtm_campaign=noel&mtm_source=mailchimp&mtm_medium=email&mtm_keyword=jouets&mtm_content=header&mtm_cid=c9",
        None,
        DEFAULT,
        A(
            "email",
            source="mailchimp",
            campaign="noel",
            term="jouets",
            content="header",
            family="mtm",
            raw_tag="mtm_campaign=noel&mtm_source=mailchimp&mtm_medium=email&mtm_keyword=jouets&mtm_content=header&mtm_cid=c9",
        ),
        id="mtm-all-fields",
    ),
    pytest.param(
        f"{SHOP}/?mtm_cid=c42&mtm_kwd=lego",
        None,
        DEFAULT,
        A("unknown", campaign="c42", term="lego", family="mtm", raw_tag="mtm_cid=c42&mtm_kwd=lego"),
        id="mtm-cid-and-kwd-fallbacks",
    ),
    pytest.param(
        f"{SHOP}/?matomo_campaign=ete&matomo_kwd=piscine",
        None,
        DEFAULT,
        A("unknown", campaign="ete", term="piscine", family="mtm", raw_tag="matomo_campaign=ete&matomo_kwd=piscine"),
        id="matomo-alias-is-mtm",
    ),
    pytest.param(
        f"{SHOP}/?pk_campaign=Spring&pk_kwd=shoes&pk_source=newsletter&pk_medium=email&pk_content=footer",
        None,
        DEFAULT,
        A(
            "email",
            source="newsletter",
            campaign="Spring",
            term="shoes",
            content="footer",
            family="pk",
            raw_tag="pk_campaign=Spring&pk_kwd=shoes&pk_source=newsletter&pk_medium=email&pk_content=footer",
        ),
        id="pk-legacy",
    ),
    pytest.param(
        f"{SHOP}/?piwik_campaign=old_tag&piwik_kwd=vintage",
        None,
        DEFAULT,
        A(
            "unknown",
            campaign="old_tag",
            term="vintage",
            family="pk",
            raw_tag="piwik_campaign=old_tag&piwik_kwd=vintage",
        ),
        id="piwik-alias-is-pk",
    ),
    # --- click ids ------------------------------------------------------------------------------------
    pytest.param(
        f"{SHOP}/?gclid=Cj0KCQjw17n1BRDEARIsAFDH",
        None,
        DEFAULT,
        A(
            "cpc",
            source="google",
            click_id="Cj0KCQjw17n1BRDEARIsAFDH",
            network="google",
            family="click_id",
            raw_tag="Cj0KCQjw17n1BRDEARIsAFDH",
        ),
        id="gclid-alone-is-paid-google",
    ),
    pytest.param(
        f"{SHOP}/?msclkid=7b1e2f",
        None,
        DEFAULT,
        A("cpc", source="bing", click_id="7b1e2f", network="bing", family="click_id", raw_tag="7b1e2f"),
        id="msclkid-alone-is-paid-bing",
    ),
    pytest.param(
        f"{SHOP}/?dclid=CMi7",
        None,
        DEFAULT,
        A("display", source="google", click_id="CMi7", network="google", family="click_id", raw_tag="CMi7"),
        id="dclid-is-google-display",
    ),
    pytest.param(
        f"{SHOP}/?wbraid=Cl0KCQ",
        None,
        DEFAULT,
        A("cpc", source="google", click_id="Cl0KCQ", network="google", family="click_id", raw_tag="Cl0KCQ"),
        id="wbraid-is-google",
    ),
    pytest.param(
        f"{SHOP}/?gbraid=0AAAAA",
        None,
        DEFAULT,
        A("cpc", source="google", click_id="0AAAAA", network="google", family="click_id", raw_tag="0AAAAA"),
        id="gbraid-is-google",
    ),
    pytest.param(
        f"{SHOP}/?fbclid=IwAR2x",
        "https://l.facebook.com/",
        DEFAULT,
        A("social", source="facebook", click_id="IwAR2x", network="facebook", family="click_id", raw_tag="IwAR2x"),
        id="fbclid-is-facebook-social",
    ),
    pytest.param(
        f"{SHOP}/?fbclid=IwAR2x&gclid=G1",
        None,
        DEFAULT,
        A("cpc", source="google", click_id="G1", network="google", family="click_id", raw_tag="G1"),
        id="gclid-preferred-over-fbclid",
    ),
    pytest.param(
        f"{SHOP}/?utm_source=google&utm_medium=cpc&utm_campaign=brand_fr&gclid=G2",
        None,
        DEFAULT,
        A(
            "cpc",
            source="google",
            campaign="brand_fr",
            click_id="G2",
            network="google",
            family="utm",
            raw_tag="utm_source=google&utm_medium=cpc&utm_campaign=brand_fr",
        ),
        id="gclid-enriches-utm",
    ),
    pytest.param(
        f"{SHOP}/?gclid=G3&utm_campaign=generic",
        None,
        DEFAULT,
        A(
            "cpc",
            source="google",
            campaign="generic",
            click_id="G3",
            network="google",
            family="utm",
            raw_tag="utm_campaign=generic",
        ),
        id="gclid-fills-missing-utm-medium-and-source",
    ),
    pytest.param(
        f"{SHOP}/catalogue?xtor=SEC-5-GOO-[enseignes+catalogue]-[0]-0-[0]&gclid=CjwKCAjw",
        None,
        DEFAULT,
        A(
            "cpc",
            source="google",
            campaign="SEC-5",
            term="enseignes catalogue",
            click_id="CjwKCAjw",
            network="google",
            family="xtor",
            raw_tag="SEC-5-GOO-[enseignes catalogue]-[0]-0-[0]",
        ),
        id="gclid-enriches-xtor",
    ),
    pytest.param(
        f"{SHOP}/?xtor=ZZZ-1&msclkid=M1",
        None,
        DEFAULT,
        A("cpc", source="bing", click_id="M1", network="bing", family="xtor", raw_tag="ZZZ-1"),
        id="click-id-gives-medium-to-unreadable-xtor",
    ),
    # --- precedence -------------------------------------------------------------------------------------
    pytest.param(
        UTM_THEN_XTOR,
        None,
        DEFAULT,
        A("email", campaign="EREC-77", content="rentree", family="xtor", raw_tag="EREC-77-[rentree]"),
        id="precedence-default-xtor-beats-earlier-utm",
    ),
    pytest.param(
        UTM_THEN_XTOR,
        None,
        UTM_FIRST,
        A(
            "email",
            source="newsletter",
            campaign="rentree",
            family="utm",
            raw_tag="utm_source=newsletter&utm_medium=email&utm_campaign=rentree",
        ),
        id="precedence-configured-utm-first",
    ),
    pytest.param(
        f"{SHOP}/?utm_source=x&utm_medium=cpc&at_medium=display&at_campaign=promo",
        None,
        DEFAULT,
        A("display", campaign="promo", family="at", raw_tag="at_medium=display&at_campaign=promo"),
        id="precedence-at-beats-utm",
    ),
    pytest.param(
        f"{SHOP}/?pk_campaign=old&mtm_campaign=new",
        None,
        DEFAULT,
        A("unknown", campaign="new", family="mtm", raw_tag="mtm_campaign=new"),
        id="precedence-mtm-beats-pk",
    ),
    pytest.param(
        f"{SHOP}/?utm_source=google&utm_medium=cpc&gclid=G4",
        None,
        CLICK_FIRST,
        A("cpc", source="google", click_id="G4", network="google", family="click_id", raw_tag="G4"),
        id="precedence-click-id-first",
    ),
    pytest.param(
        f"{SHOP}/?utm_source=google&utm_medium=cpc&gclid=G5",
        None,
        ONLY_UTM,
        A("cpc", source="google", family="utm", raw_tag="utm_source=google&utm_medium=cpc"),
        id="precedence-without-click-id-ignores-it",
    ),
    pytest.param(
        f"{SHOP}/?xtor=EREC-1",
        GOOGLE_FR,
        ONLY_UTM,
        A("organic", source="google"),
        id="precedence-unlisted-family-falls-back-to-referrer",
    ),
    # --- no campaign tag: the referrer decides ------------------------------------------------------------
    pytest.param(f"{SHOP}/", None, DEFAULT, A("direct"), id="no-tag-no-referrer-direct"),
    pytest.param(
        f"{SHOP}/?page=2&sort=price",
        "https://www.google.co.uk/search?q=running+shoes",
        DEFAULT,
        A("organic", source="google", term="running shoes"),
        id="no-tag-organic-with-term",
    ),
    pytest.param(
        f"{SHOP}/panier",
        "https://blog.shop.example/article",
        DEFAULT,
        A("internal", source="blog.shop.example"),
        id="no-tag-internal-subdomain",
    ),
    pytest.param(
        f"{SHOP}/?ref=home",
        "https://www.example-blog.com/post/1",
        DEFAULT,
        A("referral", source="example-blog.com"),
        id="no-tag-referral",
    ),
    # --- garbage never raises ---------------------------------------------------------------------------
    pytest.param("", None, DEFAULT, A("direct"), id="empty-url"),
    pytest.param("javascript:alert(1)", "javascript:void(0)", DEFAULT, A("unknown"), id="javascript-url-and-referrer"),
    pytest.param("not a url %%% at all", "", DEFAULT, A("direct"), id="garbage-url"),
    pytest.param(
        "https://[::1/?xtor=AD-1",
        None,
        DEFAULT,
        A("display", campaign="AD-1", family="xtor", raw_tag="AD-1"),
        id="broken-host-still-reads-tag",
    ),
    pytest.param(
        "shop.example/landing?utm_source=nl&utm_medium=email&utm_campaign=%E9t%E9",
        None,
        DEFAULT,
        A(
            "email",
            source="nl",
            campaign="\ufffdt\ufffd",
            family="utm",
            raw_tag="utm_source=nl&utm_medium=email&utm_campaign=%EF%BF%BDt%EF%BF%BD",
        ),
        id="no-scheme-and-invalid-utf8-percent",
    ),
]

SITE = frozenset({"shop.example"})


@pytest.mark.parametrize(("url", "referrer", "config", "expected"), CASES)
def test_attribution_table(url: str, referrer: str | None, config: AttributionConfig, expected: Attribution) -> None:
    assert attribute(url, referrer, config, SITE) == expected


def test_table_is_large_enough() -> None:
    assert len(CASES) >= 40


def test_parse_campaign_params_keeps_only_campaign_keys_first_wins() -> None:
    url = (
        f"{SHOP}/p?sessionid=abc&UTM_Source=NL&utm_source=ignored&email=a%40b.c&Gclid=G&xtor=EPR-1"
        "#xtor=EPR-2&at_medium=email&page=3"
    )
    assert parse_campaign_params(url) == {"utm_source": "NL", "gclid": "G", "xtor": "EPR-1", "at_medium": "email"}


def test_parse_campaign_params_decodes_plus_and_percent() -> None:
    url = f"{SHOP}/?utm_term=chaussures+de+sport&utm_campaign=soldes%20d%27%C3%A9t%C3%A9"
    assert parse_campaign_params(url) == {"utm_term": "chaussures de sport", "utm_campaign": "soldes d'été"}


@pytest.mark.parametrize("garbage", ["", "?", "#", "&&&", "?=x&=&x=", "%%%", "javascript:alert(1)", "https://[::1"])
def test_parse_campaign_params_never_raises(garbage: str) -> None:
    assert parse_campaign_params(garbage) == {}


def test_attribute_params_from_a_hit_map_with_mixed_case_keys() -> None:
    params = {"Utm_Source": "brevo", "utm_medium": "email", "foo": "bar", "GCLID": "G9"}
    assert attribute_params(params, None) == A(
        "email",
        source="brevo",
        click_id="G9",
        network="google",
        family="utm",
        raw_tag="utm_source=brevo&utm_medium=email",
    )


def test_attribute_params_without_tags_uses_referrer_and_site_hosts() -> None:
    assert attribute_params({}, "https://www.shop.example/cart", site_hosts=SITE) == A(
        "internal", source="shop.example"
    )


def test_config_rejects_unknown_family() -> None:
    with pytest.raises(ValueError, match="gclid"):
        AttributionConfig(precedence=("utm", "gclid"))


def test_default_precedence_order() -> None:
    assert DEFAULT.precedence == ("xtor", "at", "utm", "mtm", "pk", "click_id")


def test_traffic_source_is_the_attribution_without_what_only_the_enrichment_uses() -> None:
    attr = attribute(f"{SHOP}/?utm_source=nl&utm_medium=email&utm_campaign=spring&gclid=abc", None)
    source = attr.traffic_source()
    assert TrafficSource.from_avro(source).model_dump() == source  # every field the enriched hit's record has
    assert source == {"medium": "email", "source": "nl", "campaign": "spring", "term": None, "content": None,
                      "click_id": "abc", "network": "google"}  # fmt: skip
