"""The CRM normalizer: Debezium change events of customers and consents -> crm.profiles, through the test driver.

Events are built as the Debezium PostgreSQL source (3.6, pgoutput) writes them
with ``value.converter=JsonConverter`` (schemas enabled), ``decimal.handling.mode=double``,
``time.precision.mode=adaptive_time_microseconds`` and a ``StringConverter``
key holding the customer id, and fed as bytes: the driver decodes them with
the runtime's own codec.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from typing import Any

import pytest

from passerelle.schemas.catalog import load_catalog
from passerelle.schemas.models import age_band
from passerelle.streams.crm_normalizer.processor import STATE, CrmNormalizerProcessor, CrmNormalizerTopics
from passerelle.streams.crm_normalizer.rules import CdcError, CrmNormalizer, NormalizerConfig, parse_change
from passerelle.streams.runtime.records import InRecord, OutRecord
from passerelle.streams.runtime.testing import ProcessorDriver, Step

pytestmark = pytest.mark.unit

CUSTOMERS = "crm.cdc.customers"
CONSENTS = "crm.cdc.consents"
PROFILES = "crm.profiles"
CATALOG = load_catalog()
WIRE = {CUSTOMERS: "connect-json", CONSENTS: "connect-json"}
T1 = "2026-11-30T10:15:30.123456Z"
T1_MS = 1796033730123
T2 = "2026-12-01T08:00:00Z"
T2_MS = 1796112000000

# --- change events as the connector writes them --------------------------------------------------------------


def _f(kind: str, column: str, optional: bool = True, **extra: Any) -> dict[str, Any]:
    return {"type": kind, "optional": optional, **extra, "field": column}


ZONED = {"name": "io.debezium.time.ZonedTimestamp", "version": 1}
COLUMNS = {
    "customers": [
        _f("string", "customer_id", False), _f("string", "email"), _f("string", "first_name"),
        _f("string", "last_name"), _f("string", "gender"),
        _f("int32", "birth_date", name="io.debezium.time.Date", version=1), _f("string", "csp"),
        _f("string", "loyalty_tier"), _f("string", "postal_code"), _f("string", "country", False, default="FR"),
        _f("double", "lifetime_value", False, default=0.0), _f("string", "created_at", False, **ZONED),
        _f("string", "updated_at", False, **ZONED),
    ],
    "consents": [
        _f("string", "customer_id", False), _f("string", "channel", False), _f("boolean", "granted", False),
        _f("string", "source"), _f("string", "updated_at", False, **ZONED),
    ],
}  # fmt: skip
SOURCE_SCHEMA = {
    "type": "struct", "optional": False, "name": "io.debezium.connector.postgresql.Source", "field": "source",
    "fields": [
        _f("string", "version", False), _f("string", "connector", False), _f("string", "name", False),
        _f("int64", "ts_ms", False),
        _f("string", "snapshot", name="io.debezium.data.Enum", version=1, default="false", parameters={
            "allowed": "true,first,first_in_data_collection,last_in_data_collection,last,false,incremental"}),
        _f("string", "db", False), _f("string", "sequence"), _f("int64", "ts_us"), _f("int64", "ts_ns"),
        _f("string", "schema", False), _f("string", "table", False), _f("int64", "txId"), _f("int64", "lsn"),
        _f("int64", "xmin"),
    ],
}  # fmt: skip


def envelope_schema(table: str) -> dict[str, Any]:
    row = {"type": "struct", "fields": COLUMNS[table], "optional": True, "name": f"crm.public.{table}.Value"}
    return {
        "type": "struct", "optional": False, "name": f"crm.public.{table}.Envelope", "version": 2,
        "fields": [
            {**row, "field": "before"}, {**row, "field": "after"}, SOURCE_SCHEMA,
            {"type": "struct", "optional": True, "name": "event.block", "version": 1, "field": "transaction",
             "fields": [_f("string", "id", False), _f("int64", "total_order", False),
                        _f("int64", "data_collection_order", False)]},
            _f("string", "op", False), _f("int64", "ts_ms"), _f("int64", "ts_us"), _f("int64", "ts_ns"),
        ],
    }  # fmt: skip


def customer(cid: str = "C1", updated: str = T1, **changes: Any) -> dict[str, Any]:
    """A customers row as Debezium writes it: date as days, timestamptz as ISO strings, numeric as double."""
    row = {
        "customer_id": cid, "email": f"{cid.lower()}@example.com", "first_name": "Ada", "last_name": "Lovelace",
        "gender": "F", "birth_date": (date(1990, 5, 17) - date(1970, 1, 1)).days, "csp": "executive",
        "loyalty_tier": "gold", "postal_code": "75011", "country": "FR", "lifetime_value": 1234.5,
        "created_at": "2024-01-02T03:04:05.000006Z", "updated_at": updated,
    }  # fmt: skip
    row.update(changes)
    return row


def consent(cid: str = "C1", channel: str = "email", granted: bool = True, updated: str = T1) -> dict[str, Any]:
    return {"customer_id": cid, "channel": channel, "granted": granted, "source": "web form", "updated_at": updated}


_lsn = [24_000_000]


def event(table: str, op: str, before: dict[str, Any] | None, after: dict[str, Any] | None,
          snapshot: str = "false", ts_ms: int = T2_MS) -> dict[str, Any]:  # fmt: skip
    """A change event's payload: the row before and after, the source block, the op."""
    _lsn[0] += 8
    return {
        "before": before, "after": after,
        "source": {"version": "3.6.1.Final", "connector": "postgresql", "name": "crm", "ts_ms": ts_ms,
                   "snapshot": snapshot, "db": "crm", "sequence": json.dumps([None, str(_lsn[0])]),
                   "ts_us": ts_ms * 1000, "ts_ns": ts_ms * 1_000_000, "schema": "public", "table": table,
                   "txId": 771, "lsn": _lsn[0], "xmin": None},
        "transaction": None, "op": op, "ts_ms": ts_ms + 12, "ts_us": (ts_ms + 12) * 1000,
        "ts_ns": (ts_ms + 12) * 1_000_000,
    }  # fmt: skip


def wire(table: str, payload: dict[str, Any] | None) -> bytes | None:
    """The value bytes: JsonConverter's envelope, or None (the tombstone after a delete)."""
    if payload is None:
        return None
    return json.dumps({"schema": envelope_schema(table), "payload": payload}).encode()


def created(row: dict[str, Any]) -> dict[str, Any]:
    return event("customers", "c", None, row)


def profile(cid: str = "C1", consent: bool = False, updated_at: int = T1_MS, **changes: Any) -> dict[str, Any]:
    expected = {
        "customer_id": cid, "email": f"{cid.lower()}@example.com", "gender": "F", "birth_year": 1990,
        "age_band": age_band(1990, 2026), "csp": "executive", "loyalty_tier": "gold",
        "marketing_consent": consent, "updated_at": updated_at,
    }  # fmt: skip
    expected.update(changes)
    return expected


# --- the harness --------------------------------------------------------------------------------------------


class Normalizer:
    """The processor on the driver: bytes in, decoded as the runtime would; outputs sealed against CrmProfile."""

    def __init__(self, privacy: bool = False, partitions: int = 3) -> None:
        topics = CrmNormalizerTopics(privacy_requests="privacy.requests" if privacy else None)
        self.proc = CrmNormalizerProcessor(topics)
        self.driver = ProcessorDriver(
            self.proc, partitions=range(partitions), wire_formats=WIRE,
            output_schemas={PROFILES: CATALOG.schema_text("CrmProfile")},
        )  # fmt: skip
        self.partitions = partitions

    def partition(self, key: str) -> int:
        return sum(key.encode()) % self.partitions  # any fixed function: both topics use the same one

    def raw(self, topic: str, key: bytes | None, value: bytes | None, partition: int = 0) -> InRecord:
        return self.driver.raw(topic, key, value, T2_MS, partition)

    def record(self, topic: str, key: str, payload: dict[str, Any] | None) -> InRecord:
        table = "customers" if topic == CUSTOMERS else "consents"
        return self.raw(topic, key.encode(), wire(table, payload), self.partition(key))

    def customers(self, *events: tuple[str, dict[str, Any] | None]) -> Step:
        return self.driver.feed(*(self.record(CUSTOMERS, k, e) for k, e in events))

    def consents(self, *events: tuple[str, dict[str, Any] | None]) -> Step:
        return self.driver.feed(*(self.record(CONSENTS, k, e) for k, e in events))

    def state(self, cid: str) -> Any:
        return self.driver.store(STATE, self.partition(cid)).get(cid)

    def metric(self, name: str, **labels: str) -> float:
        return self.driver.metric(f"passerelle_crm_normalizer_{name}", **labels) or 0.0


def out(step: Step) -> list[tuple[str, Any]]:
    assert all(o.topic == PROFILES for o in step.outputs)
    assert all(o.encoded is not None for o in step.outputs)  # sealed: the Avro contract accepted each one
    return [(o.key, o.value) for o in step.outputs]


def reasons(step: Step) -> list[tuple[str, str]]:
    return [(stage, str(error)) for _, error, stage in step.dead_letters]


# --- upserts --------------------------------------------------------------------------------------------------


def test_a_new_customer_gets_a_profile() -> None:
    n = Normalizer()
    step = n.customers(("C1", created(customer())))
    assert out(step) == [("C1", profile())]
    assert profile()["age_band"] == "35-49"  # 36 in 2026, the year of the profile's updated_at
    assert n.state("C1")["row"]["birth_year"] == 1990
    assert "first_name" not in n.state("C1")["row"]  # only what a profile needs is kept
    assert n.metric("profiles_upserted_total") == 1
    assert step.dead_letters == []


def test_consents_recompute_the_profile_and_unknown_is_not_consent() -> None:
    n = Normalizer()
    n.customers(("C1", created(customer())))
    step = n.consents(("C1", event("consents", "c", None, consent(updated=T2))))
    assert out(step) == [("C1", profile(consent=True, updated_at=T2_MS))]
    revoked = n.consents(("C1", event("consents", "u", consent(updated=T2), consent(granted=False, updated=T2))))
    assert out(revoked) == [("C1", profile(consent=False, updated_at=T2_MS))]
    sms = n.consents(("C1", event("consents", "c", None, consent(channel="sms", granted=True))))
    assert out(sms) == []  # an sms consent, older than the profile: the profile did not change
    assert n.metric("events_skipped_total", reason="unchanged") == 1
    assert set(n.state("C1")["consents"]) == {"email", "sms"}


def test_the_year_of_updated_at_sets_the_age_band() -> None:
    n = Normalizer()
    born = (date(1990, 12, 31) - date(1970, 1, 1)).days
    step = n.customers(("C1", created(customer(updated="2015-06-01T00:00:00+02:00", birth_date=born))))
    [(_, value)] = out(step)
    assert (value["birth_year"], value["age_band"]) == (1990, "25-34")
    assert value["updated_at"] == int(datetime(2015, 5, 31, 22, tzinfo=UTC).timestamp() * 1000)
    old = n.customers(("C2", created(customer("C2", birth_date=-7_000, gender=None, csp=None, email=None))))
    [(_, value)] = out(old)
    assert (value["birth_year"], value["age_band"], value["gender"], value["email"]) == (1950, "65+", None, None)


def test_an_update_emits_only_what_changed() -> None:
    n = Normalizer()
    row = customer()
    n.customers(("C1", created(row)))
    renamed = {**row, "first_name": "Augusta"}  # not in the profile, updated_at not bumped (no trigger)
    assert out(n.customers(("C1", event("customers", "u", row, renamed)))) == []
    moved = {**renamed, "loyalty_tier": "platinum", "updated_at": T2}
    step = n.customers(("C1", event("customers", "u", renamed, moved)))
    assert out(step) == [("C1", profile(loyalty_tier="platinum", updated_at=T2_MS))]


def test_a_snapshot_read_again_after_a_connector_restart_emits_nothing() -> None:
    n = Normalizer()
    n.customers(("C1", event("customers", "r", None, customer(), snapshot="first")))
    n.consents(("C1", event("consents", "r", None, consent(), snapshot="last")))
    again_customers = n.customers(("C1", event("customers", "r", None, customer(), snapshot="true")))
    again_consents = n.consents(("C1", event("consents", "r", None, consent(), snapshot="last")))
    assert out(again_customers) == out(again_consents) == []
    assert again_customers.changelog == again_consents.changelog == {}  # nothing written either
    # ... and after the partition moved (state restored from its changelog), still nothing
    p = n.partition("C1")
    n.driver.revoke(p)
    n.driver.restore(p)
    assert out(n.customers(("C1", event("customers", "r", None, customer(), snapshot="true")))) == []


def test_a_consent_before_its_customer_waits_for_the_row() -> None:
    n = Normalizer()
    step = n.consents(("C1", event("consents", "c", None, consent(updated=T2))))
    assert out(step) == [] and n.metric("events_skipped_total", reason="pending") == 1
    assert n.state("C1")["row"] is None
    step = n.customers(("C1", created(customer())))
    assert out(step) == [("C1", profile(consent=True, updated_at=T2_MS))]


def test_a_pending_consent_deleted_leaves_nothing() -> None:
    n = Normalizer()
    n.consents(("C1", event("consents", "c", None, consent())))
    step = n.consents(("C1", event("consents", "d", consent(), None)))
    assert out(step) == [] and n.state("C1") is None
    assert step.changelog == {("customers", n.partition("C1")): {"C1": None}}


# --- deletes and erasure ------------------------------------------------------------------------------------------


def test_a_deleted_customer_is_a_tombstone_and_cascaded_consent_deletes_bring_nothing_back() -> None:
    n = Normalizer()
    row, grant = customer(), consent()
    n.customers(("C1", created(row)))
    n.consents(("C1", event("consents", "c", None, grant)))
    p = n.partition("C1")
    step = n.customers(("C1", event("customers", "d", row, None)), ("C1", None))  # the delete, then its tombstone
    assert out(step) == [("C1", None)]
    assert n.state("C1") is None and n.driver.changelog(STATE, p) == {}
    cascade = n.consents(("C1", event("consents", "d", grant, None)), ("C1", None),
                         ("C1", event("consents", "d", consent(channel="sms"), None)), ("C1", None))  # fmt: skip
    assert out(cascade) == [] and cascade.dead_letters == []
    assert n.state("C1") is None and cascade.changelog == {}
    assert n.metric("profiles_erased_total", cause="delete") == 1
    assert n.metric("events_skipped_total", reason="tombstone") == 3
    assert n.metric("events_skipped_total", reason="gone") == 2


def test_consents_processed_before_the_delete_of_their_customer_still_end_with_nothing() -> None:
    """The two topics are read side by side: the cascade may be read first, or a late create after the delete."""
    n = Normalizer()
    row = customer()
    n.customers(("C1", created(row)))
    n.consents(("C1", event("consents", "c", None, consent())), ("C1", event("consents", "d", consent(), None)))
    assert out(n.customers(("C1", event("customers", "d", row, None)))) == [("C1", None)]
    late = n.consents(("C1", event("consents", "c", None, consent(channel="sms"))))
    assert out(late) == []  # kept as pending: no row, no profile
    cascade = n.consents(("C1", event("consents", "d", consent(channel="sms"), None)))
    assert out(cascade) == [] and n.state("C1") is None


def test_a_consent_withdrawn_by_deleting_its_row_never_looks_older() -> None:
    """Readers drop a profile older than the one they hold (the remarketing sequencer does)."""
    n = Normalizer()
    n.customers(("C1", created(customer())))
    granted = n.consents(("C1", event("consents", "c", None, consent(updated=T2))))
    assert out(granted)[0][1]["updated_at"] == T2_MS
    withdrawn = n.consents(("C1", event("consents", "d", consent(updated=T2), None, ts_ms=T2_MS + 5_000)))
    assert out(withdrawn) == [("C1", profile(consent=False, updated_at=T2_MS + 5_000))]
    backdated = customer(loyalty_tier="silver", updated="2020-01-01T00:00:00Z")  # updated_at set back by hand
    step = n.customers(("C1", event("customers", "u", customer(), backdated)))
    assert out(step) == [("C1", profile(loyalty_tier="silver", updated_at=T2_MS + 5_000))]


def test_a_privacy_request_forgets_the_customer_and_retracts_their_profile() -> None:
    n = Normalizer(privacy=True)
    row = customer()
    n.customers(("C1", created(row)), ("C2", created(customer("C2"))))
    request = {"request_id": "r1", "kind": "erasure", "customer_id": "C1", "visitor_id": None,
               "marketing_consent": None, "requested_at": T2_MS, "source": "dpo"}  # fmt: skip
    step = n.driver.table_update("privacy", "C1", request)
    assert out(step) == [("C1", None)] and n.state("C1") is None and n.state("C2") is not None
    assert n.metric("profiles_erased_total", cause="privacy") == 1
    later = n.customers(("C1", event("customers", "u", row, {**row, "csp": "retired", "updated_at": T2})))
    assert out(later) == [] and n.state("C1") is None  # the request is held: the person does not come back
    assert n.metric("events_skipped_total", reason="erased") == 1
    assert out(n.customers(("C1", event("customers", "d", row, None)))) == [("C1", None)]  # a delete still erases


# --- what cannot be applied ---------------------------------------------------------------------------------------

BAD_EVENTS = [
    (CUSTOMERS, "C1", {**created(customer()), "op": "t", "before": None, "after": None}, "truncate of customers"),
    (CUSTOMERS, "C1", {**created(customer()), "op": "m"}, "unknown Debezium op 'm'"),
    (CUSTOMERS, "C1", {k: v for k, v in created(customer()).items() if k != "op"}, "unknown Debezium op None"),
    (CUSTOMERS, "C1", event("customers", "u", None, None), "customers op 'u' without its 'after' row"),
    (CUSTOMERS, "C1", event("customers", "d", None, None), "customers op 'd' without its 'before' row"),
    (CUSTOMERS, "C1", created({k: v for k, v in customer().items() if k != "updated_at"}),
     "customers row without its 'updated_at' column"),
    (CUSTOMERS, "C1", created(customer(birth_date="1990-05-17")), "customers.birth_date is '1990-05-17'"),
    (CUSTOMERS, "C1", created(customer(updated=1796033730123)), "not an ISO-8601 timestamp"),
    (CUSTOMERS, "C1", created(customer(updated="2026-11-30T10:15:30")), "carries its offset"),
    (CUSTOMERS, "C1", created(customer(email=42)), "customers.email is 42, not a string"),
    (CUSTOMERS, "C2", created(customer()), "key 'C2' is not the row's customer_id 'C1'"),
    (CUSTOMERS, "C1", event("consents", "c", None, consent()), "a change of table 'consents' on the customers topic"),
    (CONSENTS, "C1", event("consents", "c", None, {**consent(), "granted": "yes"}), "consents.granted is 'yes'"),
    (CONSENTS, "C1", event("consents", "c", None, {**consent(), "channel": None}), "consents.channel is None"),
]  # fmt: skip


@pytest.mark.parametrize(("topic", "key", "payload", "reason"), BAD_EVENTS)
def test_an_event_that_cannot_be_applied_is_dead_lettered_with_its_bytes(
    topic: str, key: str, payload: dict[str, Any], reason: str
) -> None:
    n = Normalizer()
    n.customers(("C1", created(customer())))
    before = n.state("C1")
    good = n.record(CUSTOMERS, "C3", created(customer("C3")))
    bad = n.record(topic, key, payload)
    step = n.driver.feed(bad, good)
    assert out(step) == [("C3", profile("C3"))]  # the others go on
    [(record, error, stage)] = step.dead_letters
    assert stage == "process" and isinstance(error, CdcError) and reason in str(error)
    assert record.raw_value == bad.raw_value and record.raw_key == key.encode()
    assert n.state("C1") == before


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        (b"C1", b'{"schema": {"type": "struct"', "not Kafka Connect JSON"),
        (b"C1", b"\x00\x00\x00\x00\x07\x02C1", "not Kafka Connect JSON"),  # an Avro record on a JSON topic
        (b"\xffC1", wire("customers", created(customer())), "key is not UTF-8"),
    ],
)
def test_bytes_that_are_not_connect_json_are_dead_lettered_at_deserialize(
    key: bytes, value: bytes, reason: str
) -> None:
    n = Normalizer()
    step = n.driver.feed(n.raw(CUSTOMERS, key, value), n.record(CUSTOMERS, "C3", created(customer("C3"))))
    assert out(step) == [("C3", profile("C3"))]
    [(record, error, stage)] = step.dead_letters
    assert stage == "deserialize" and reason in str(error)
    assert (record.raw_key, record.raw_value) == (key, value)


def test_a_payload_that_is_not_a_change_event_is_dead_lettered() -> None:
    n = Normalizer()
    step = n.driver.feed(n.raw(CONSENTS, b"C1", b'["not", "an", "event"]'))
    assert reasons(step) == [("process", "not a Debezium change event: the value is list")]
    step = n.driver.feed(n.raw(CONSENTS, None, wire("consents", event("consents", "c", None, consent()))))
    assert reasons(step) == [("process", "key None is not the row's customer_id 'C1'")]


# --- rules, settings, command -------------------------------------------------------------------------------------


def test_the_consent_channel_is_configurable() -> None:
    rules = CrmNormalizer(NormalizerConfig(consent_channel="sms"))
    state = rules.apply(None, parse_change("customers", created(customer()), "C1")).state
    step = rules.apply(state, parse_change("consents", event("consents", "c", None, consent(channel="sms")), "C1"))
    assert step.profile is not None and step.profile["marketing_consent"] is True


def test_parse_change_keeps_the_commit_time_of_deletes() -> None:
    change = parse_change("consents", event("consents", "d", consent(), None, ts_ms=123), "C1")
    assert (change.op, change.channel, change.at) == ("d", "email", 123)
    no_time = {**event("consents", "d", consent(), None), "source": {"table": "consents"}, "ts_ms": None}
    with pytest.raises(CdcError, match="without its time"):
        parse_change("consents", no_time, "C1")


def test_settings_command_and_runner_configuration() -> None:
    from passerelle.cli import build_parser
    from passerelle.commands.crm_normalizer import build
    from passerelle.settings import CrmNormalizerSettings

    settings = CrmNormalizerSettings(_env_file=None)  # type: ignore[call-arg]
    assert settings.to_config() == NormalizerConfig(consent_channel="email")
    assert settings.processing_guarantee == "exactly_once"
    with pytest.raises(ValueError, match="crm_normalizer_consent_channel"):
        CrmNormalizerSettings(crm_normalizer_consent_channel="fax")
    proc = build(settings)
    assert isinstance(proc, CrmNormalizerProcessor)
    assert (tuple(proc.inputs), tuple(proc.outputs)) == ((CUSTOMERS, CONSENTS), (PROFILES,))
    assert [t.topic for t in proc.tables] == ["privacy.requests"]
    config = settings.runner_config("passerelle-crm-normalizer", proc, CATALOG)
    assert dict(config.input_schemas) == {}  # Debezium's events have no Avro contract
    assert dict(config.output_schemas) == {PROFILES: CATALOG.schema_text("CrmProfile")}
    assert dict(config.wire_formats) == {**WIRE, PROFILES: "confluent-avro"}
    assert config.exactly_once
    assert CATALOG.topic(CUSTOMERS).partitions == CATALOG.topic(CONSENTS).partitions  # co-partitioned
    args = build_parser().parse_args(["crm-normalizer", "--app-id", "x"])
    assert args.app_id == "x"


def test_the_driver_reads_bytes_of_connect_json_inputs_only() -> None:
    n = Normalizer()
    with pytest.raises(ValueError, match="not a connect-json input"):
        n.driver.raw(PROFILES, b"C1", b"{}", 0)
    emitted = OutRecord(PROFILES, "C1", {**profile(), "updated_at": "today"})
    with pytest.raises(Exception, match="cannot encode record"):
        assert n.driver.seal is not None
        n.driver.seal([emitted])  # the contract judges what would be written
