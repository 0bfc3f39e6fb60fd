"""The topic catalog: loads, names topics and subjects, and refuses what would break a deploy."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from passerelle.schemas.catalog import (
    DEFAULT_CATALOG,
    DEFAULT_SCHEMA_DIR,
    TopicSpec,
    load_catalog,
    load_schema_text,
    parsed_schema,
)
from passerelle.schemas.errors import ContractError
from passerelle.schemas.topics_admin import TopicState, diff_topic, plan, replication_factor

pytestmark = pytest.mark.unit

EXPECTED = {
    "hits.raw": ("Hit", 6, "delete"),
    "hits.enriched": ("EnrichedHit", 6, "delete"),
    "crm.profiles": ("CrmProfile", None, "compact"),
    "identity.links": ("IdentityLink", None, "compact"),
    "campaigns": ("Campaign", None, "compact"),
    "campaigns.undeclared": ("Campaign", None, "compact"),
    "ads.impressions": ("AdImpression", None, "delete"),
    "partners.metrics": ("PartnerMetric", None, "delete"),
    "campaigns.declarations": ("Campaign", 1, "delete"),
    "ads.postview": ("PostView", 6, "delete"),
    "partners.keys": ("PartnerKey", 1, "compact"),
    "query.templates": ("QueryTemplate", 1, "compact"),
    "carts.abandoned": ("CartAbandoned", None, "delete"),
    "campaigns.live": ("CampaignCounts", 1, "compact"),
    "campaigns.live.deltas": ("CampaignCounts", 6, "delete"),
    "remarketing.messages": ("RemarketingMessage", None, "delete"),
    "remarketing.deliveries": ("RemarketingDelivery", None, "delete"),
    "conversions.paths": ("ConversionPath", None, "delete"),
    "privacy.requests": ("PrivacyRequest", None, "delete"),
    "crm.cdc.customers": (None, 3, "delete"),
    "crm.cdc.consents": (None, 3, "delete"),
    "crm.activity.deltas": ("WebActivityDelta", 6, "delete"),
    "conversions.paths.events": ("PathEvent", 6, "delete"),
    "crm.web_activity": ("WebActivity", 3, "compact"),
    "crm.conversion_paths": ("CrmConversionPath", 3, "compact"),
    "crm.customer_channels": ("CustomerChannels", 3, "compact"),
    "attribution.markov": ("MarkovAttribution", 1, "compact"),
    "connect.configs": (None, 1, "compact"),
    "connect.offsets": (None, None, "compact"),
    "connect.status": (None, None, "compact"),
    "errors.connect": (None, 1, "delete"),
    "errors.deadletters": ("DeadLetter", None, "delete"),
}
NOT_AVRO = {  # wire formats other than confluent-avro: nothing registered
    "crm.cdc.customers": "connect-json",
    "crm.cdc.consents": "connect-json",
    "crm.web_activity": "connect-json",
    "crm.conversion_paths": "connect-json",
    "crm.customer_channels": "connect-json",
    "connect.configs": "raw",
    "connect.offsets": "raw",
    "connect.status": "raw",
    "errors.connect": "raw",
    "errors.deadletters": "raw",
}

TOPIC = """
[[topic]]
name = "{name}"
value_schema = "{value}"
partitions = {partitions}
cleanup_policy = "{policy}"
retention_ms = -1
doc = "test topic"
"""


@pytest.fixture
def catalog_copy(tmp_path: Path) -> Path:
    """A private copy of the catalog and its schemas, free to break."""
    shutil.copy(DEFAULT_CATALOG, tmp_path / "catalog.toml")
    shutil.copytree(DEFAULT_SCHEMA_DIR, tmp_path / "avro")
    return tmp_path / "catalog.toml"


def write_catalog(tmp_path: Path, body: str) -> Path:
    shutil.copytree(DEFAULT_SCHEMA_DIR, tmp_path / "avro", dirs_exist_ok=True)
    path = tmp_path / "catalog.toml"
    path.write_text(body)
    return path


def test_the_shipped_catalog_declares_every_topic() -> None:
    catalog = load_catalog()
    assert catalog.names == list(EXPECTED)
    for name, (value, partitions, policy) in EXPECTED.items():
        spec = catalog.topic(name)
        assert spec.value_schema == value
        assert spec.key_schema == "StringKey"
        assert spec.cleanup_policy == policy
        assert spec.compatibility == ("BACKWARD" if value else "NONE")  # no contract, nothing to be compatible with
        assert spec.wire_format == NOT_AVRO.get(name, "confluent-avro")
        assert spec.registered == (name not in NOT_AVRO)
        assert spec.doc
        if partitions is not None:
            assert spec.partitions == partitions
        if policy == "compact" and spec.wire_format != "raw":  # Connect's own topics: what its worker sets
            assert spec.retention_ms == -1
    assert catalog.topic("errors.deadletters").retention_ms == 30 * 24 * 3600 * 1000


def test_subjects_and_configs() -> None:
    spec = load_catalog().topic("crm.profiles")
    assert spec.key_subject == "crm.profiles-key"
    assert spec.value_subject == "crm.profiles-value"
    assert spec.configs() == {"cleanup.policy": "compact", "retention.ms": "-1"}


def test_schema_text_is_compact_json_of_the_file() -> None:
    text = load_schema_text("Hit")
    assert "\n" not in text
    assert json.loads(text) == json.loads((DEFAULT_SCHEMA_DIR / "Hit.avsc").read_text())
    assert parsed_schema("Hit") is parsed_schema("Hit")  # parsed once


def test_a_copied_catalog_reads_its_own_schemas(catalog_copy: Path) -> None:
    catalog = load_catalog(catalog_copy)
    assert catalog.schema_dir == catalog_copy.parent / "avro"
    assert json.loads(catalog.schema_text("Campaign"))["name"] == "Campaign"


def test_unknown_topic_names_the_topic_and_the_known_ones() -> None:
    with pytest.raises(ContractError, match=r"unknown topic 'hits\.rwa' in the catalog.*known: hits\.raw"):
        load_catalog().topic("hits.rwa")
    with pytest.raises(ContractError, match="nope"):
        load_catalog().select(["hits.raw", "nope"])


@pytest.mark.parametrize(
    ("text", "cause"),
    [
        ('{"type": "record", "name": "Hit", "fields": [', "malformed JSON"),
        ('{"type": "record", "name": "Hit", "fields": [{"name": "x", "type": "nosuchtype"}]}', "invalid Avro"),
        ('{"type": "record", "name": "Hit"}', "invalid Avro"),
    ],
)
def test_malformed_avsc_is_one_line_naming_the_file(catalog_copy: Path, text: str, cause: str) -> None:
    (catalog_copy.parent / "avro" / "Hit.avsc").write_text(text)
    with pytest.raises(ContractError) as info:
        load_catalog(catalog_copy)
    message = str(info.value)
    assert "Hit.avsc" in message and cause in message
    assert "\n" not in message


def test_missing_schema_file_is_named(catalog_copy: Path) -> None:
    (catalog_copy.parent / "avro" / "DeadLetter.avsc").unlink()
    with pytest.raises(ContractError, match=r"DeadLetter\.avsc not found"):
        load_catalog(catalog_copy)


def test_load_schema_text_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "Broken.avsc").write_text("{nope")
    with pytest.raises(ContractError, match=r"Broken\.avsc"):
        load_schema_text("Broken", tmp_path)
    with pytest.raises(ContractError, match=r"Absent\.avsc not found"):
        parsed_schema("Absent", tmp_path)


@pytest.mark.parametrize(
    ("partitions", "policy", "cause"),
    [
        (0, "delete", "partitions must be >= 1"),
        (-2, "compact", "partitions must be >= 1"),
        (3, "archive", "cleanup_policy 'archive' is not one of delete, compact"),
    ],
)
def test_bad_partitions_or_policy_are_rejected(tmp_path: Path, partitions: int, policy: str, cause: str) -> None:
    path = write_catalog(tmp_path, TOPIC.format(name="t.one", value="Hit", partitions=partitions, policy=policy))
    with pytest.raises(ContractError, match=cause):
        load_catalog(path)


def test_bad_compatibility_is_rejected(tmp_path: Path) -> None:
    body = TOPIC.format(name="t.one", value="Hit", partitions=1, policy="delete") + 'compatibility = "SOMETIMES"\n'
    with pytest.raises(ContractError, match="compatibility 'SOMETIMES'"):
        load_catalog(write_catalog(tmp_path, body))


def test_duplicate_topic_is_rejected(tmp_path: Path) -> None:
    one = TOPIC.format(name="t.one", value="Hit", partitions=1, policy="delete")
    with pytest.raises(ContractError, match=r"'t\.one' is declared twice"):
        load_catalog(write_catalog(tmp_path, one + one))


def test_unknown_and_missing_fields_are_rejected(tmp_path: Path) -> None:
    one = TOPIC.format(name="t.one", value="Hit", partitions=1, policy="delete")
    with pytest.raises(ContractError, match=r"unknown field.*partitons"):
        load_catalog(write_catalog(tmp_path, one + "partitons = 3\n"))
    with pytest.raises(ContractError, match=r"missing field.*value_schema"):
        load_catalog(write_catalog(tmp_path, one.replace('value_schema = "Hit"', "")))


def test_unknown_value_schema_is_rejected(tmp_path: Path) -> None:
    body = TOPIC.format(name="t.one", value="Nope", partitions=1, policy="delete")
    with pytest.raises(ContractError, match=r"Nope\.avsc not found"):
        load_catalog(write_catalog(tmp_path, body))


def test_malformed_toml_and_missing_catalog(tmp_path: Path) -> None:
    with pytest.raises(ContractError, match="malformed TOML"):
        load_catalog(write_catalog(tmp_path, "[[topic]\nname ="))
    with pytest.raises(ContractError, match="not found"):
        load_catalog(tmp_path / "absent.toml")


# --- the pure side of topic administration -----------------------------------------------------

SPEC = TopicSpec("t.one", "StringKey", "Hit", 6, "delete", 604800000, "BACKWARD", "doc")


def test_no_drift_when_the_broker_matches() -> None:
    state = TopicState("t.one", 6, {"cleanup.policy": "delete", "retention.ms": "604800000", "x": "y"})
    assert diff_topic(SPEC, state) == []


def test_drift_names_each_difference() -> None:
    state = TopicState("t.one", 3, {"cleanup.policy": "compact", "retention.ms": "-1"})
    drift = diff_topic(SPEC, state)
    assert drift == [
        "partitions 3 on the broker, 6 in the catalog",
        "cleanup.policy compact on the broker, delete in the catalog",
        "retention.ms -1 on the broker, 604800000 in the catalog",
    ]


def test_plan_splits_missing_from_existing() -> None:
    other = TopicSpec("t.two", "StringKey", "Hit", 1, "compact", -1, "BACKWARD", "doc")
    to_create, outcomes = plan([SPEC, other], {"t.two": TopicState("t.two", 2, {})})
    assert to_create == [SPEC]
    assert [(o.name, o.status) for o in outcomes] == [("t.two", "drift")]
    assert outcomes[0].line() == "t.two: DRIFT: partitions 2 on the broker, 1 in the catalog"


def test_replication_factor_follows_the_cluster() -> None:
    assert replication_factor(1) == 1
    assert replication_factor(2) == 2
    assert replication_factor(5) == 3
    assert replication_factor(5, 2) == 2


# --- wire formats other than Confluent Avro ------------------------------------------------------------

CONNECT = """
[[topic]]
name = "t.cdc"
wire_format = "connect-json"
partitions = 3
cleanup_policy = "delete"
retention_ms = -1
compatibility = "NONE"
doc = "change events"
"""


def test_a_connect_json_or_raw_topic_needs_no_value_schema(tmp_path: Path) -> None:
    raw = CONNECT.replace('"t.cdc"', '"t.raw"').replace('"connect-json"', '"raw"')
    catalog = load_catalog(write_catalog(tmp_path, CONNECT + raw))
    cdc, other = catalog.topic("t.cdc"), catalog.topic("t.raw")
    assert (cdc.value_schema, cdc.wire_format, cdc.registered) == (None, "connect-json", False)
    assert (other.value_schema, other.wire_format, other.registered) == (None, "raw", False)


def test_an_avro_topic_still_needs_its_value_schema(tmp_path: Path) -> None:
    body = CONNECT.replace('wire_format = "connect-json"\n', "")
    with pytest.raises(
        ContractError, match=r"topic 't\.cdc': missing field\(s\) value_schema \(required for confluent-avro"
    ):
        load_catalog(write_catalog(tmp_path, body))
    with pytest.raises(ContractError, match="wire_format 'json' is not one of confluent-avro, raw, connect-json"):
        load_catalog(write_catalog(tmp_path, CONNECT.replace('"connect-json"', '"json"')))


def test_a_connect_json_contract_is_checked_at_load(tmp_path: Path) -> None:
    with_schema = CONNECT.replace("partitions = 3", 'value_schema = "CrmProfile"\npartitions = 3')
    assert load_catalog(write_catalog(tmp_path, with_schema)).topic("t.cdc").value_schema == "CrmProfile"
    (tmp_path / "avro" / "Mixed.avsc").write_text(json.dumps({
        "type": "record", "name": "Mixed", "namespace": "passerelle", "doc": "d",
        "fields": [{"name": "x", "type": ["string", "int"], "doc": "d"}]}))  # fmt: skip
    with pytest.raises(ContractError, match=r"topic 't\.cdc': value_schema Mixed: .*union"):
        load_catalog(write_catalog(tmp_path, with_schema.replace("CrmProfile", "Mixed")))
    with pytest.raises(ContractError, match="key_schema must be a string schema"):
        load_catalog(write_catalog(tmp_path, CONNECT.replace("partitions = 3", 'key_schema = "Hit"\npartitions = 3')))


def test_schemas_register_nothing_for_topics_not_in_avro() -> None:
    from passerelle.commands.schemas import subject_plans

    catalog = load_catalog()
    subjects = {plan.subject for plan in subject_plans(catalog)}
    assert "crm.profiles-value" in subjects
    assert not {s for s in subjects if s.rpartition("-")[0] in NOT_AVRO}
    assert subject_plans(catalog, ["crm.cdc.customers", "crm.web_activity", "connect.configs"]) == []


def test_topics_list_names_the_wire_format_of_topics_not_in_avro() -> None:
    from passerelle.commands.topics import catalog_table

    rows = {line.split()[0]: line for line in catalog_table(load_catalog())}
    assert "- (connect-json)" in rows["crm.cdc.customers"]
    assert "WebActivity (connect-json)" in rows["crm.web_activity"]
    assert "DeadLetter (raw)" in rows["errors.deadletters"]
    assert "(" not in rows["crm.profiles"]


def test_the_missing_contract_of_a_topic_is_one_line() -> None:
    catalog = load_catalog()
    with pytest.raises(ContractError, match="no value schema: the topic is raw or connect-json"):
        catalog.schema_text(catalog.topic("crm.cdc.customers").value_schema)
