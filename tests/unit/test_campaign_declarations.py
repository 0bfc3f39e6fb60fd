"""Campaign declarations on Kafka and auto-declaration rules: the rules alone, then the processor on the driver.

The driver encodes every output with the ``Campaign`` schema (``output_schemas``),
as the runner would, so a record the contract refuses fails the test. Table
records are fed as the runner's decoder gives them (timestamps as datetimes).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from passerelle.commands import processor as command
from passerelle.schemas.catalog import load_catalog
from passerelle.settings import CampaignDeclarationsSettings
from passerelle.streams.campaign_declarations.processor import (
    WRITTEN,
    CampaignDeclarationsProcessor,
    DeclarationsTopics,
)
from passerelle.streams.campaign_declarations.rules import (
    AutoRule,
    DeclarationRejected,
    DeclarationsConfig,
    RulesFileError,
    matching_rule,
    parse_rules,
)
from passerelle.streams.runtime.testing import ProcessorDriver, Step

pytestmark = pytest.mark.unit

T0 = 1_795_082_400_000  # 2026-11-19T10:00:00Z
CATALOG = load_catalog()
DECL, UNDECLARED, CAMPAIGNS = "campaigns.declarations", "campaigns.undeclared", "campaigns"


def campaign(key: str = "EREC-123", partner: str = "mailer", **fields: Any) -> dict[str, Any]:
    """A valid ``Campaign`` declaration."""
    record = {
        "key": key, "name": "Black Friday newsletter", "partner": partner, "channel": "email", "medium": "email",
        "tagged_url_template": f"https://shop.example/black-friday?xtor={key}", "valid_from": None,
        "valid_to": None, "cost_model": None, "cost_amount": None, "currency": None, "declared_at": T0 - 1000,
    }  # fmt: skip
    return {**record, **fields}


def as_decoded(record: dict[str, Any]) -> dict[str, Any]:
    """A record as the Avro decoder gives it: timestamp-millis as aware datetimes."""
    out = dict(record)
    for name in ("valid_from", "valid_to", "declared_at"):
        if out[name] is not None:
            out[name] = dt.datetime.fromtimestamp(out[name] / 1000, dt.UTC)
    return out


def draft(key: str, url: str, medium: str = "unknown", source: str = "unknown") -> dict[str, Any]:
    """An undeclared tag as the enrichment reports it (``Enricher._undeclared``)."""
    return {"key": key, "name": key, "partner": source, "channel": medium, "medium": medium,
            "tagged_url_template": url, "valid_from": None, "valid_to": None, "cost_model": None,
            "cost_amount": None, "currency": None, "declared_at": T0 - 5000}  # fmt: skip


def key_record(partner: str, scopes: tuple[str, ...] = ("campaigns:write",), revoked: bool = False) -> dict[str, Any]:
    return {"key_id": f"{partner:0<16}"[:16], "partner": partner, "scopes": list(scopes), "secret_hash": "x",
            "created_at": T0, "revoked_at": T0 if revoked else None, "label": None}  # fmt: skip


RULES = (
    AutoRule("retarget", "RT-", index=1),
    AutoRule("mailer", "EREC-", min=1000, max=1999, family="xtor", index=2),
)


class Flow:
    """The processor on the driver; ``campaigns`` and ``partners.keys`` as lookup tables."""

    def __init__(self, rules: tuple[AutoRule, ...] = RULES, partners: tuple[str, ...] = ("mailer", "retarget", "ads"),
                 table: dict[str, dict[str, Any]] | None = None, check_partners: bool = True) -> None:  # fmt: skip
        topics = DeclarationsTopics(partners_keys="partners.keys" if check_partners else None)
        self.proc = CampaignDeclarationsProcessor(topics, DeclarationsConfig(rules=rules))
        tables: dict[str, dict[str, Any]] = {"campaigns": {k: as_decoded(v) for k, v in (table or {}).items()}}
        if check_partners:
            tables["partners"] = {key_record(p)["key_id"]: key_record(p) for p in partners}
        self.driver = ProcessorDriver(self.proc, tables=tables, now=T0,
                                      output_schemas={CAMPAIGNS: CATALOG.schema_text("Campaign")})  # fmt: skip

    def declare(self, *records: tuple[str | None, dict[str, Any] | None] | tuple[str, None, str]) -> Step:
        fed = []
        for rec in records:
            key, value = rec[0], rec[1]
            headers = [("partner", rec[2].encode())] if len(rec) > 2 else None
            fed.append(self.driver.record(DECL, key, as_decoded(value) if value else value, T0, headers=headers))
        return self.driver.feed(*fed)

    def undeclared(self, *drafts: dict[str, Any]) -> Step:
        return self.driver.feed(*(self.driver.record(UNDECLARED, d["key"], d, T0) for d in drafts))

    def table_shows(self, step: Step) -> None:
        """The runner's table reader sees what was committed to ``campaigns``."""
        for out in step.outputs:
            self.driver.table_update("campaigns", out.key, None if out.value is None else as_decoded(out.value))


def published(step: Step) -> dict[str, dict[str, Any] | None]:
    assert {o.topic for o in step.outputs} <= {CAMPAIGNS}
    return {o.key: o.value for o in step.outputs}


def reasons(step: Step) -> list[str]:
    return [str(error) for _, error, _ in step.dead_letters]


# --- declarations ----------------------------------------------------------------------------------------------


def test_a_valid_declaration_is_published_under_its_key_dated_now() -> None:
    f = Flow()
    step = f.declare(("EREC-123", campaign()))
    assert step.dead_letters == []
    assert published(step) == {"EREC-123": campaign(declared_at=T0)}
    assert f.driver.metric("passerelle_campaign_declarations_total", outcome="declared") == 1


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"key": "EREC-12x"}, "key"),
        ({"name": " "}, "name"),
        ({"medium": "cpc"}, "medium"),  # an xtor EREC campaign is email
        ({"channel": "tv"}, "channel"),
        ({"tagged_url_template": "ftp://shop.example/?xtor=EREC-123"}, "tagged_url_template"),
        ({"tagged_url_template": "https://shop.example/?xtor=EREC-9"}, "tagged_url_template"),
        ({"valid_from": T0, "valid_to": T0 - 1}, "valid_to"),
        ({"cost_amount": 10.0}, "currency"),
        ({"cost_model": "CPV", "cost_amount": 1.0, "currency": "EUR"}, "cost_model"),
        ({"cost_model": "CPC", "cost_amount": 1.0, "currency": "eur"}, "currency"),
        ({"partner": "Mailer!"}, "partner"),
        ({"partner": "stranger"}, "partner"),  # no key in partners.keys
    ],
)
def test_each_invalid_declaration_is_dead_lettered_with_a_reason_naming_the_field(change: dict[str, Any],
                                                                                    field: str) -> None:  # fmt: skip
    f = Flow()
    step = f.declare(("EREC-123", campaign(**change)))
    assert step.outputs == []
    [(record, error, stage)] = step.dead_letters
    assert isinstance(error, DeclarationRejected) and stage == "process" and record.topic == DECL
    assert field in {e.field for e in error.errors}
    assert f"{field}: " in str(error)
    assert f.driver.store(WRITTEN).items() == []  # nothing kept of a rejected record
    assert f.driver.metric("passerelle_campaign_declarations_total", outcome="rejected") == 1


def test_the_kafka_key_must_be_the_campaign_key() -> None:
    f = Flow()
    assert reasons(f.declare(("EREC-124", campaign()))) == ["key: differs from the record's Kafka key 'EREC-124'"]
    assert "key: the record has no Kafka key" in reasons(f.declare((None, campaign())))[0]


def test_a_revoked_or_read_only_key_does_not_make_a_partner() -> None:
    f = Flow(partners=())
    keys = {"a": key_record("mailer", revoked=True), "b": key_record("mailer", scopes=("campaigns:read",))}
    for key_id, record in keys.items():
        f.driver.table_update("partners", key_id, record)
    assert "unknown partner 'mailer'" in reasons(f.declare(("EREC-123", campaign())))[0]
    f.driver.table_update("partners", "c", key_record("mailer"))  # the cache follows the table
    assert list(published(f.declare(("EREC-123", campaign())))) == ["EREC-123"]


def test_the_partner_check_can_be_left_out() -> None:
    f = Flow(check_partners=False)
    assert list(published(f.declare(("EREC-123", campaign(partner="stranger"))))) == ["EREC-123"]


def test_another_partners_key_is_a_clash_and_the_owner_may_change_it() -> None:
    f = Flow(table={"EREC-123": campaign(partner="ads")})
    step = f.declare(("EREC-123", campaign(partner="mailer")))
    assert step.outputs == [] and reasons(step) == ["key: already declared by another partner"]
    changed = f.declare(("EREC-123", campaign(partner="ads", name="Renamed")))
    assert published(changed) == {"EREC-123": campaign(partner="ads", name="Renamed", declared_at=T0)}


def test_a_declaration_identical_to_the_current_one_publishes_nothing() -> None:
    f = Flow(table={"EREC-123": campaign(declared_at=T0 - 86_400_000)})
    assert f.declare(("EREC-123", campaign())).outputs == []
    assert f.driver.metric("passerelle_campaign_declarations_total", outcome="unchanged") == 1


def test_two_declarations_of_one_key_in_a_batch_cannot_both_win() -> None:
    f = Flow()
    step = f.declare(("EREC-123", campaign(partner="mailer")), ("EREC-123", campaign(partner="ads")))
    assert published(step) == {"EREC-123": campaign(partner="mailer", declared_at=T0)}
    assert reasons(step) == ["key: already declared by another partner"]
    # still before the table shows the write (the next batches): the write stands for it
    assert reasons(f.declare(("EREC-123", campaign(partner="ads")))) == ["key: already declared by another partner"]
    assert f.driver.changelog(WRITTEN) == {"EREC-123": {"record": campaign(declared_at=T0), "at": T0}}
    f.table_shows(step)  # the table caught up: the write is no longer pending, the table alone says
    assert f.driver.store(WRITTEN).items() == []
    assert reasons(f.declare(("EREC-123", campaign(partner="ads")))) == ["key: already declared by another partner"]


def test_a_pending_write_survives_a_restart_and_is_dropped_once_the_table_shows_it() -> None:
    f = Flow()
    step = f.declare(("EREC-123", campaign()))
    f.driver.revoke()
    f.driver.restore()  # the table lagging: the write still stands
    assert reasons(f.declare(("EREC-123", campaign(partner="ads")))) == ["key: already declared by another partner"]
    f.driver.revoke()
    f.table_shows(step)  # read while the partition was away
    f.driver.restore()
    assert f.driver.store(WRITTEN).items() == []


def test_a_write_another_writer_overtook_stops_shadowing_the_table() -> None:
    f = Flow()
    f.declare(("EREC-123", campaign()))
    f.driver.table_update("campaigns", "EREC-123", None)  # the API deleted it, and we never saw our write
    f.driver.now = T0 + f.proc.config.pending_ms
    assert list(published(f.declare(("EREC-123", campaign(partner="ads"))))) == ["EREC-123"]


# --- deletions -------------------------------------------------------------------------------------------------


def test_a_tombstone_with_the_owners_partner_header_deletes_the_campaign() -> None:
    f = Flow(table={"EREC-123": campaign()})
    step = f.declare(("EREC-123", None, "mailer"))
    assert published(step) == {"EREC-123": None} and step.dead_letters == []
    assert f.driver.metric("passerelle_campaign_declarations_total", outcome="deleted") == 1
    # until the table shows the deletion, the key is free for anyone
    assert list(published(f.declare(("EREC-123", campaign(partner="ads"))))) == ["EREC-123"]


def test_a_tombstone_without_header_or_of_another_partner_is_dead_lettered() -> None:
    f = Flow(table={"EREC-123": campaign()})
    no_header = f.declare(("EREC-123", None))
    assert no_header.outputs == [] and reasons(no_header) == [
        "partner: a deletion (tombstone) must carry a 'partner' header naming the campaign's partner"
    ]
    other = f.declare(("EREC-123", None, "ads"))
    assert other.outputs == [] and reasons(other) == ["key: campaign 'EREC-123' belongs to another partner"]
    assert "unknown partner 'nobody'" in reasons(f.declare(("EREC-123", None, "nobody")))[0]


def test_a_tombstone_for_a_key_nobody_declared_does_nothing() -> None:
    f = Flow()
    step = f.declare(("EREC-999", None, "mailer"))
    assert step.outputs == [] and step.dead_letters == []
    assert f.driver.metric("passerelle_campaign_declarations_total", outcome="absent") == 1


# --- auto-declaration ------------------------------------------------------------------------------------------

RT_URL = "https://shop.example/promo?utm_source=retarget&utm_medium=display&utm_campaign=RT-1042&size=m"
EREC_URL = "https://shop.example/news?xtor=EREC-1500-[black-friday]-20261120&ref=1"


def test_an_undeclared_tag_matching_a_prefix_rule_is_declared_for_its_partner() -> None:
    f = Flow()
    step = f.undeclared(draft("RT-1042", RT_URL, medium="display", source="retarget"))
    assert step.dead_letters == []
    assert published(step) == {"RT-1042": {
        "key": "RT-1042", "name": "RT-1042", "partner": "retarget", "channel": "display", "medium": "display",
        "tagged_url_template": "https://shop.example/promo?size=m&utm_source=retarget&utm_medium=display"
                               "&utm_campaign=RT-1042",
        "valid_from": None, "valid_to": None, "cost_model": None, "cost_amount": None, "currency": None,
        "declared_at": T0,
    }}  # fmt: skip
    assert f.driver.metric("passerelle_campaign_auto_declarations_total", outcome="declared") == 1


def test_an_xtor_tag_in_a_rules_range_is_declared_with_its_prefixs_medium() -> None:
    f = Flow()
    step = f.undeclared(draft("EREC-1500", EREC_URL, medium="email"))
    [record] = published(step).values()
    assert record is not None
    assert (record["partner"], record["medium"], record["channel"]) == ("mailer", "email", "email")
    assert record["tagged_url_template"] == "https://shop.example/news?ref=1&xtor=EREC-1500"


@pytest.mark.parametrize(
    "tag",
    [
        draft("EREC-999", "https://shop.example/?xtor=EREC-999", medium="email"),  # below the range
        draft("EREC-2000", "https://shop.example/?xtor=EREC-2000", medium="email"),  # above it
        draft("EREC-15a", "https://shop.example/?utm_campaign=EREC-15a", medium="email"),  # not a number
        draft("SEC-1500", "https://shop.example/?xtor=SEC-1500", medium="cpc"),  # another prefix
        draft("rt-1042", "https://shop.example/?utm_campaign=rt-1042", medium="display"),  # case-sensitive
    ],
)
def test_an_undeclared_tag_no_rule_matches_is_left_alone(tag: dict[str, Any]) -> None:
    f = Flow()
    step = f.undeclared(tag)
    assert step.outputs == [] and step.dead_letters == []
    assert f.driver.metric("passerelle_campaign_auto_declarations_total", outcome="no_rule") == 1


def test_a_rule_never_touches_a_key_already_declared_nor_one_just_written() -> None:
    f = Flow(table={"RT-1042": campaign("RT-1042", partner="ads", channel="display", medium="display",
                                        tagged_url_template="https://shop.example/?utm_campaign=RT-1042")})  # fmt: skip
    assert f.undeclared(draft("RT-1042", RT_URL, medium="display")).outputs == []
    f.declare(("EREC-1500", campaign("EREC-1500")))  # declared on Kafka, not shown by the table yet
    assert f.undeclared(draft("EREC-1500", EREC_URL, medium="email")).outputs == []
    assert f.driver.metric("passerelle_campaign_auto_declarations_total", outcome="already_declared") == 2


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        (
            draft("RT-9", "https://shop.example/?utm_source=retarget&utm_campaign=RT-9"),  # no medium anywhere
            "auto-declaration by rule 1 (partner 'retarget', prefix 'RT-'): medium: required",
        ),
        (
            draft("RT-é9", "https://shop.example/?utm_campaign=RT-%C3%A99", medium="display"),  # not a slug
            "auto-declaration by rule 1 (partner 'retarget', prefix 'RT-'): key: 1-100 characters",
        ),
    ],
)
def test_a_tag_a_rule_matches_but_the_rules_refuse_is_dead_lettered_naming_rule_and_field(
    tag: dict[str, Any], expected: str
) -> None:
    f = Flow()
    step = f.undeclared(tag)
    assert step.outputs == []
    [message] = reasons(step)
    assert message.startswith(expected) and ";" not in message  # the one problem, not its consequences
    assert f.driver.metric("passerelle_campaign_auto_declarations_total", outcome="rejected") == 1
    assert f.undeclared({**tag, "medium": "display"}).outputs != [] or "key" in expected  # a medium fixes the first


def test_without_rules_undeclared_tags_are_ignored() -> None:
    f = Flow(rules=())
    assert f.undeclared(draft("RT-1042", RT_URL, medium="display")).outputs == []


def test_rules_match_by_family_and_source() -> None:
    rules = (AutoRule("a", "RT-", family="xtor", index=1), AutoRule("b", "RT-", source="other", index=2),
             AutoRule("c", "RT-", source="retarget", index=3))  # fmt: skip
    found = matching_rule(rules, "RT-1042", draft("RT-1042", RT_URL, source="retarget"))
    assert found is not None and found.partner == "c"


# --- the rules file --------------------------------------------------------------------------------------------


def test_the_rules_file_is_read_in_order() -> None:
    text = """
[[rule]]
partner = "retarget"
prefix = "RT-"
channel = "display"

[[rule]]
partner = "mailer"
prefix = "EREC-"
min = 1000
max = 1999
family = "xtor"
"""
    assert parse_rules(text) == (
        AutoRule("retarget", "RT-", channel="display", index=1),
        AutoRule("mailer", "EREC-", min=1000, max=1999, family="xtor", index=2),
    )
    assert parse_rules("") == ()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[[rule]]\nprefix = "RT-"', "rule 1, field 'partner': required"),
        ('[[rule]]\npartner = "a"\nprefix = "A"\n[[rule]]\npartner = "b"', "rule 2, field 'prefix': required"),
        ('[[rule]]\npartner = "a"\nprefix = "A"\nmin = 5\nmax = 4', "rule 1, field 'max': below min"),
        ('[[rule]]\npartner = "a"\nprefix = "A"\nmin = "5"', "rule 1, field 'min': an integer"),
        ('[[rule]]\npartner = "a"\nprefix = "A"\nmedium = "tv"', "rule 1, field 'medium': one of"),
        ('[[rule]]\npartner = "a"\nprefix = "A"\nfamily = "pk"', "rule 1, field 'family': one of"),
        ('[[rule]]\npartner = "a"\nprefix = "A"\nprefx = "B"', "rule 1, field 'prefx': unknown field"),
        ('[[rule]]\npartner = "A B"\nprefix = "A"', "rule 1, field 'partner': required, a partner id"),
        ('[rule]\npartner = "a"', "'rule' must be an array of tables"),
        ('[[rules]]\npartner = "a"', "unknown top-level key 'rules'"),
        ("[[rule]\n", "not TOML"),
    ],
)
def test_a_malformed_rules_file_is_one_error_naming_the_rule_and_field(text: str, expected: str) -> None:
    with pytest.raises(RulesFileError, match=r"^rules file: ") as raised:
        parse_rules(text)
    assert expected in str(raised.value)
    assert "\n" not in str(raised.value).split(": ", 2)[-1] or expected == "not TOML"


# --- settings, command, catalog --------------------------------------------------------------------------------


def test_settings_read_the_rules_file_and_a_bad_one_stops_the_start(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text('[[rule]]\npartner = "retarget"\nprefix = "RT-"\n')
    config = CampaignDeclarationsSettings(campaign_declarations_auto_rules=str(path)).to_config()
    assert config.rules == (AutoRule("retarget", "RT-", index=1),)
    assert CampaignDeclarationsSettings().to_config() == DeclarationsConfig()
    assert CampaignDeclarationsSettings().max_error_ratio == 1.0
    path.write_text('[[rule]]\npartner = "retarget"\n')
    with pytest.raises(RulesFileError, match=r"rules .*rules.toml: rule 1, field 'prefix': required"):
        CampaignDeclarationsSettings(campaign_declarations_auto_rules=str(path)).to_config()
    with pytest.raises(RulesFileError, match="cannot read"):
        CampaignDeclarationsSettings(campaign_declarations_auto_rules=str(tmp_path / "none.toml")).to_config()


def test_the_command_builds_the_processor_with_the_rules(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    from passerelle.cli import build_parser, main

    path = tmp_path / "rules.toml"
    path.write_text('[[rule]]\npartner = "retarget"\nprefix = "RT-"\n')
    seen: list[tuple[Any, ...]] = []

    def run(*args: Any) -> int:
        seen.append(args)
        return 0

    monkeypatch.setattr(command, "run_processor", run)
    monkeypatch.setenv("PASSERELLE_CAMPAIGN_DECLARATIONS_AUTO_RULES", str(path))
    args = build_parser().parse_args(["campaign-declarations"])
    assert args.func(args) == 0
    [(settings, proc, app_id, _)] = seen
    assert isinstance(settings, CampaignDeclarationsSettings) and isinstance(proc, CampaignDeclarationsProcessor)
    assert proc.config.rules == (AutoRule("retarget", "RT-", index=1),)
    assert app_id == "passerelle-campaign-declarations"
    path.write_text('[[rule]]\npartner = "retarget"\nprefix = "RT-"\nmax = -1\n')
    assert main(["campaign-declarations"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: campaign auto-declaration rules ") and "rule 1, field 'max'" in err
    assert len(err.splitlines()) == 1


def test_the_runner_takes_its_schemas_from_the_catalog_and_the_inputs_are_co_partitioned() -> None:
    proc = CampaignDeclarationsProcessor()
    config = CampaignDeclarationsSettings().runner_config("passerelle-campaign-declarations", proc, CATALOG)
    schema = CATALOG.schema_text("Campaign")
    assert config.input_schemas == {DECL: schema, UNDECLARED: schema}
    assert config.output_schemas == {CAMPAIGNS: schema}
    assert {CATALOG.topic(t).partitions for t in (DECL, UNDECLARED, CAMPAIGNS)} == {1}
    assert [t.topic for t in proc.tables] == ["campaigns", "partners.keys"]
    assert set(proc.tombstone_inputs) == {DECL, UNDECLARED}
