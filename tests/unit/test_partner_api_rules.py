"""The partner API's pure parts: declaration rules, tagged URLs (attributed back by the enrichment), API keys."""

from __future__ import annotations

import string
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from passerelle.cli import build_parser
from passerelle.connectors.generator.shop import DECLARATIONS, Shop
from passerelle.connectors.partner_api.campaign_rules import (
    CAMPAIGN_MEDIA,
    CHANNELS,
    FieldError,
    key_problem,
    validate_declaration,
    xtor_medium,
)
from passerelle.connectors.partner_api.keys import (
    CHECK_BURST,
    CHECK_REFILL_S,
    SCOPES,
    AuthError,
    KeyRing,
    Throttled,
    check_scopes,
    hash_secret,
    new_key,
    verify_secret,
)
from passerelle.connectors.partner_api.tagging import (
    CampaignTag,
    landing_of,
    landing_problem,
    read_tag,
    strip_campaign_params,
    tag_of,
    tag_url,
)
from passerelle.streams.enrichment.attribution import attribute
from passerelle.streams.enrichment.params import FAMILY_KEYS

pytestmark = pytest.mark.unit
T0 = 1_764_000_000_000
FAST = {"n": 2**4, "r": 1, "p": 1}  # hashing cost for tests; the format records it


def campaign(**changes: Any) -> dict[str, Any]:
    record = {
        "key": "EREC-123",
        "name": "Black Friday",
        "partner": "mailer",
        "channel": "email",
        "medium": "email",
        "tagged_url_template": "https://shop.example/bf?xtor=EREC-123",
        "valid_from": T0,
        "valid_to": T0 + 86_400_000,
        "cost_model": "flat",
        "cost_amount": 1500.0,
        "currency": "EUR",
        "declared_at": T0,
    }
    record.update(changes)
    return record


def fields(errors: list[FieldError]) -> dict[str, str]:
    return {e.field: e.reason for e in errors}


# --- rules ---------------------------------------------------------------------------------------------------


def test_a_valid_declaration_has_no_error() -> None:
    assert validate_declaration(campaign(), {}, "mailer") == []


def test_the_shops_declarations_are_valid() -> None:
    for record in Shop(seed=1, start_ms=T0).campaigns():
        assert validate_declaration(record, {}, record["partner"]) == [], record["key"]
    assert len(DECLARATIONS) == 5


@pytest.mark.parametrize(
    "key",
    ["EREC-123", "SEC-9", "AL-72", "AD-3001", "EPR-1", "ES-77", "RSS-5", "CS-1", "CS12-4"],
)
def test_xtor_keys_the_enrichment_reads(key: str) -> None:
    assert key_problem(key, "xtor") is None
    assert attribute(f"https://s.example/?xtor={key}", None).campaign == key


@pytest.mark.parametrize("key", ["EREC123", "XYZ-1", "EREC-", "erec-123", "SEC9-1", "EREC-12a", "EREC-1-2", ""])
def test_bad_xtor_keys(key: str) -> None:
    assert key_problem(key, "xtor") is not None


@pytest.mark.parametrize("key", ["weekly_newsletter", "Sale.2026-11", "a", "x" * 100])
def test_slug_keys(key: str) -> None:
    assert key_problem(key, "utm") is None


@pytest.mark.parametrize("key", ["has space", "-lead", "a/b", "é", "x" * 101, "undeclared", "urls", "a@b"])
def test_bad_slug_keys(key: str) -> None:
    assert key_problem(key, "utm") is not None


def test_each_kind_of_invalid_field_is_named() -> None:
    bad = campaign(
        name="",
        partner="other",
        channel="tv",
        medium="telepathy",
        valid_from=T0 + 1,
        valid_to=T0,
        cost_model="CPX",
        cost_amount=-1.0,
        currency="eur",
    )
    assert fields(validate_declaration(bad, {}, "mailer")) == {
        "name": "required",
        "partner": "must be the declaring partner",
        "channel": f"one of {', '.join(CHANNELS)}",
        "medium": f"one of {', '.join(CAMPAIGN_MEDIA)}",
        "valid_to": "before valid_from",
        "cost_model": "one of CPC, CPM, CPA, flat",
        "cost_amount": "a finite number >= 0",
        "currency": "an ISO 4217 code in capitals, e.g. EUR",
    }


def test_cost_fields_go_together() -> None:
    assert fields(validate_declaration(campaign(currency=None), {}, "mailer")) == {
        "currency": "required with cost_amount"
    }
    assert "cost_amount" in fields(validate_declaration(campaign(cost_amount=None), {}, "mailer"))
    assert validate_declaration(campaign(cost_amount=None, currency=None, cost_model=None), {}, "mailer") == []
    assert "cost_amount" in fields(validate_declaration(campaign(cost_amount=float("nan")), {}, "mailer"))


def test_xtor_medium_must_be_the_prefixs() -> None:
    assert xtor_medium("SEC-9") == "cpc"
    errors = fields(validate_declaration(campaign(medium="display"), {}, "mailer"))
    assert errors == {"medium": "an xtor EREC campaign's medium is email"}


def test_the_template_must_carry_the_key() -> None:
    errors = validate_declaration(campaign(tagged_url_template="https://shop.example/?xtor=EREC-999"), {}, "mailer")
    assert fields(errors) == {"tagged_url_template": "its tag is read as campaign 'EREC-999', not 'EREC-123'"}
    errors = validate_declaration(campaign(tagged_url_template="https://shop.example/"), {}, "mailer")
    assert "carries no campaign tag" in fields(errors)["tagged_url_template"]
    errors = validate_declaration(campaign(tagged_url_template="ftp://shop.example/?xtor=EREC-123"), {}, "mailer")
    assert fields(errors) == {"tagged_url_template": "must be an absolute http(s) URL"}


def test_a_key_of_another_partner_is_a_clash_and_ones_own_is_not() -> None:
    table = {"EREC-123": campaign(partner="adserver")}
    errors = validate_declaration(campaign(), table, "mailer")
    assert [(e.field, e.kind) for e in errors] == [("key", "clash")]
    assert validate_declaration(campaign(name="renamed"), {"EREC-123": campaign()}, "mailer") == []


def test_utm_family_keys_and_template() -> None:
    record = campaign(
        key="weekly_newsletter",
        tagged_url_template="https://shop.example/?utm_source=mailer&utm_medium=email&utm_campaign=weekly_newsletter",
    )
    assert validate_declaration(record, {}, "mailer") == []
    assert fields(validate_declaration({**record, "key": "weekly newsletter"}, {}, "mailer"))["key"].startswith("1-100")


# --- tagging -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("landing", "tag", "expected"),
    [
        ("https://shop.example/p/1", CampaignTag("xtor", "EREC-123"), "https://shop.example/p/1?xtor=EREC-123"),
        (
            "https://shop.example/p?color=red&xtor=AD-1#reviews",
            CampaignTag("utm", "sale", "email", "mailer"),
            "https://shop.example/p?color=red&utm_source=mailer&utm_medium=email&utm_campaign=sale#reviews",
        ),
        (
            "https://shop.example/#!/p?utm_source=x&y=1",
            CampaignTag("mtm", "sale", "social", "tiktok"),
            "https://shop.example/?mtm_source=tiktok&mtm_medium=social&mtm_campaign=sale#!/p?y=1",
        ),
        (
            "https://shop.example?a=1&UTM_Campaign=old&amp;gclid=1",
            CampaignTag("at", "spring sale", "display", "news"),
            "https://shop.example/?a=1&at_platform=news&at_medium=display&at_campaign=spring%20sale",
        ),
        ("https://shop.example/#xtor=SEC-1", CampaignTag("xtor", "AL-72"), "https://shop.example/?xtor=AL-72"),
    ],
)
def test_tag_url_keeps_the_landing_pages_own_parameters(landing: str, tag: CampaignTag, expected: str) -> None:
    url = tag_url(landing, tag)
    assert url == expected
    found = attribute(url, None)
    assert (found.family, found.campaign) == (tag.family, tag.key)


def test_bad_landing_urls() -> None:
    for url in ("", "shop.example/p", "javascript:alert(1)", "https://", "https://shop.example/a b", "http://h:99999/"):
        assert landing_problem(url) is not None, url
    with pytest.raises(ValueError):
        tag_url("mailto:x@example.com", CampaignTag("xtor", "EREC-1"))


def test_a_campaigns_tag_and_landing_come_back_from_its_template() -> None:
    record = campaign(
        key="sale", tagged_url_template="https://shop.example/s?x=1&mtm_source=m&mtm_medium=email&mtm_campaign=sale"
    )
    assert tag_of(record) == CampaignTag("mtm", "sale", "email", "m")
    assert landing_of(record) == "https://shop.example/s?x=1"
    assert read_tag("https://shop.example/") is None
    assert strip_campaign_params("https://s.example/?pk_campaign=a&b=2#x=1&gclid=z") == "https://s.example/?b=2#x=1"


_CAMPAIGN_KEYS = [*sorted(k for keys in FAMILY_KEYS.values() for k in keys), "at_custom3"]
_text = st.text(alphabet=string.ascii_letters + string.digits + "-._~%+ /:@!$'()*,;=?#&é", max_size=12)
_param_key = st.one_of(
    st.sampled_from(_CAMPAIGN_KEYS).map(str.upper), st.sampled_from(_CAMPAIGN_KEYS),
    st.sampled_from(_CAMPAIGN_KEYS).map(lambda k: "amp;" + k), st.text(string.ascii_lowercase + "_", max_size=8),
)  # fmt: skip
_param = st.tuples(_param_key, _text).map(lambda kv: f"{kv[0]}={kv[1]}".replace("#", "%23").replace("&", "%26"))


@st.composite
def landings(draw: st.DrawFn) -> str:
    scheme = draw(st.sampled_from(["http", "https"]))
    host = draw(st.sampled_from(["shop.example", "www.shop.example:8443", "127.0.0.1", "[::1]:8080"]))
    path = draw(st.text(alphabet=string.ascii_letters + string.digits + "-_./%", max_size=15))
    query = "&".join(draw(st.lists(_param, max_size=5)))
    plain = _text.map(lambda t: t.replace("&", "").replace("#", ""))
    fragment_parts: list[str] = draw(st.lists(st.one_of(_param, plain), max_size=4))
    empty_query: bool = draw(st.booleans())
    empty_fragment: bool = draw(st.booleans())
    separator: str = draw(st.sampled_from(["&", "?", "!/route?"]))
    url = f"{scheme}://{host}/{path.lstrip('/')}"
    if query or empty_query:
        url += "?" + query
    if fragment_parts or empty_fragment:
        url += "#" + separator.join(fragment_parts)
    return url.replace(" ", "%20").replace("é", "%C3%A9")


@st.composite
def tags(draw: st.DrawFn) -> CampaignTag:
    family = draw(st.sampled_from(["xtor", "at", "utm", "mtm"]))
    if family == "xtor":
        prefix = draw(st.sampled_from(["AD", "AL", "SEC", "EREC", "EPR", "ES", "RSS", "CS", "CS3"]))
        key = f"{prefix}-{draw(st.integers(0, 10**12))}"
        assert key_problem(key, "xtor") is None
        return CampaignTag("xtor", key)
    key = draw(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,30}", fullmatch=True))
    source = draw(st.one_of(st.none(), st.text(string.ascii_letters + string.digits + " &=#?+%._-", min_size=1,
                                                max_size=20).filter(lambda s: s.strip() == s and s)))  # fmt: skip
    return CampaignTag(family, key, draw(st.sampled_from(CAMPAIGN_MEDIA)), source)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(landing=landings(), tag=tags())
def test_every_tagged_url_is_attributed_back_to_its_campaign(landing: str, tag: CampaignTag) -> None:
    assert landing_problem(landing) is None, landing
    url = tag_url(landing, tag)
    found = attribute(url, None)
    assert found.family == tag.family and found.campaign == tag.key, url
    if tag.family != "xtor":
        assert found.medium == tag.medium and found.source == tag.source
    assert read_tag(url) == CampaignTag(tag.family, tag.key, tag.medium, tag.source)
    # the landing page's own parameters stay, in order
    own = [c for c in landing.partition("#")[0].partition("?")[2].split("&") if c and "=" in c]
    kept = [c for c in url.partition("#")[0].partition("?")[2].split("&") if c in own]
    assert kept == [c for c in own if c in kept]
    assert tag_url(url, tag) == url  # tagging again changes nothing


# --- keys ----------------------------------------------------------------------------------------------------


def test_hashing_is_salted_and_verified_in_constant_time() -> None:
    one, two = hash_secret("s3cret", **FAST), hash_secret("s3cret", **FAST)
    assert one != two and one.startswith("scrypt$n=16,r=1,p=1$")
    assert verify_secret("s3cret", one) and verify_secret("s3cret", two)
    assert not verify_secret("s3cret!", one)
    for broken in ("", "md5$x$y$z", "scrypt$n=3,r=1,p=1$AA$AA", "scrypt$n=16$AA$AA", one.replace("scrypt", "bcrypt")):
        assert not verify_secret("s3cret", broken)


def test_the_default_cost_is_scrypt_16384() -> None:
    started = time.perf_counter()
    stored = hash_secret("x")
    assert stored.startswith("scrypt$n=16384,r=8,p=1$")
    assert verify_secret("x", stored)
    assert time.perf_counter() - started < 5


def test_keys_authenticate_until_revoked() -> None:
    made = new_key("mailer", ["campaigns:read", "campaigns:write", "campaigns:read"], T0, label="tool", **FAST)
    assert made.record["scopes"] == ["campaigns:write", "campaigns:read"]
    assert made.api_key.startswith(made.key_id + ".") and made.api_key.split(".")[1] not in str(made.record)
    ring = KeyRing()
    ring.update(made.key_id, made.record)
    who = ring.authenticate(made.api_key)
    assert (who.partner, who.key_id, who.scopes) == ("mailer", made.key_id, frozenset(made.record["scopes"]))
    assert ring.authenticate(made.api_key) == who  # the second time from the verified cache
    for wrong in ("", "nodot", made.key_id + ".", made.api_key[:-1] + ("A" if made.api_key[-1] != "A" else "B"),
                  "0123456789abcdef." + made.api_key.split(".")[1]):  # fmt: skip
        with pytest.raises(AuthError):
            ring.authenticate(wrong)
    ring.update(made.key_id, {**made.record, "revoked_at": T0 + 1})
    with pytest.raises(AuthError, match="revoked"):
        ring.authenticate(made.api_key)
    ring.update(made.key_id, None)
    with pytest.raises(AuthError, match="unknown"):
        ring.authenticate(made.api_key)


def test_wrong_secrets_of_one_key_id_are_throttled_before_hashing() -> None:
    """A known key id with wrong secrets costs scrypt each time: the budget stops that, then refills."""
    made = new_key("mailer", ["campaigns:read"], T0, **FAST)
    other = new_key("mailer", ["campaigns:read"], T0, **FAST)
    now = [1000.0]
    ring = KeyRing({made.key_id: made.record, other.key_id: other.record}, clock=lambda: now[0])
    wrong = made.key_id + "." + "A" * 43
    for _ in range(CHECK_BURST):
        with pytest.raises(AuthError, match="wrong secret"):
            ring.authenticate(wrong)
    with pytest.raises(Throttled) as throttled:
        ring.authenticate(made.api_key)  # even the right secret waits: refused without hashing
    assert 0 < throttled.value.retry_after_s <= CHECK_REFILL_S
    assert ring.authenticate(other.api_key).key_id == other.key_id  # another key id is not affected
    now[0] += CHECK_REFILL_S
    assert ring.authenticate(made.api_key).key_id == made.key_id  # refilled: checked, and the budget restored
    for _ in range(CHECK_BURST):
        with pytest.raises(AuthError, match="wrong secret"):
            ring.authenticate(wrong)
    assert ring.authenticate(made.api_key).key_id == made.key_id  # verified already: no check spent


def test_scopes_are_checked() -> None:
    assert check_scopes(reversed(SCOPES)) == list(SCOPES)
    with pytest.raises(ValueError, match="campaigns:delete"):
        check_scopes(["campaigns:delete"])
    with pytest.raises(ValueError, match="at least one"):
        check_scopes([])


# --- commands ------------------------------------------------------------------------------------------------


COMMANDS = [["api"], ["partners"], ["partners", "add"], ["partners", "list"], ["partners", "revoke"],
            ["campaigns"], ["campaigns", "undeclared"]]  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS)
def test_the_commands_have_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args([*command, "--help"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith("usage: passerelle")
