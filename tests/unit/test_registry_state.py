"""The registry state rebuilt from ``_schemas`` records, and the records each operation writes.

The state must be a pure function of the records, so replaying what one
registry wrote gives another registry the same ids, versions and configs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest

from passerelle.schemas.registry import errors, records
from passerelle.schemas.registry.service import MemoryWriter, SchemaRegistry, parse_version
from passerelle.schemas.registry.state import RegistryState

pytestmark = pytest.mark.unit


def avro(*fields: str, name: str = "Hit") -> str:
    return json.dumps(
        {"type": "record", "name": name, "fields": [{"name": f, "type": "string", "default": ""} for f in fields]}
    )


A, B, C = avro("a"), avro("a", "b"), avro("a", "b", "c")


def replay(raw: Sequence[tuple[bytes, bytes | None]]) -> RegistryState:
    state = RegistryState()
    for key, value in raw:
        decoded = records.decode(key, value)
        if decoded is not None:
            state.apply(*decoded)
    return state


@pytest.fixture
def writer() -> MemoryWriter:
    return MemoryWriter(RegistryState())


@pytest.fixture
def reg(writer: MemoryWriter) -> SchemaRegistry:
    return SchemaRegistry(writer.state, writer)


def snapshot(state: RegistryState) -> tuple[Any, ...]:
    return (
        {s: [(e.version, e.id, e.schema, e.deleted) for e in state.versions(s, True)] for s in state.subjects},
        state.global_level,
        dict(state.subject_levels),
        {i: state.schema_by_id(i) for i in range(1, state.max_id + 1)},
    )


# --- applying records ---------------------------------------------------------------------


def test_state_from_confluent_records() -> None:
    raw = [
        (b'{"keytype":"CONFIG","subject":null,"magic":0}', b'{"compatibilityLevel":"FULL"}'),
        (b'{"keytype":"SCHEMA","subject":"t-value","version":1,"magic":1}',
         json.dumps({"subject": "t-value", "version": 1, "id": 7, "schema": A, "deleted": False}).encode()),
        (b'{"keytype":"SCHEMA","subject":"t-value","version":2,"magic":1}',
         json.dumps({"subject": "t-value", "version": 2, "id": 9, "schema": B, "deleted": False}).encode()),
        (b'{"keytype":"CONFIG","subject":"t-value","magic":0}', b'{"compatibilityLevel":"NONE"}'),
        (b'{"keytype":"NOOP","magic":0}', b"{}"),
        (b'{"keytype":"SOMETHING_NEW","magic":0}', b"{}"),
        (b"not json", b"{}"),
    ]  # fmt: skip
    state = replay(raw)
    assert [(e.version, e.id) for e in state.versions("t-value")] == [(1, 7), (2, 9)]
    assert state.schema_by_id(9) == B
    assert state.max_id == 9
    assert state.global_level == "FULL"
    assert state.level_for("t-value") == "NONE"
    assert state.level_for("other") == "FULL"


def test_delete_subject_record_soft_deletes_up_to_its_version() -> None:
    state = RegistryState()
    for v in (1, 2, 3):
        state.apply(records.schema_key("s", v), records.schema_value("s", v, v, avro(*"abc"[:v])))
    state.apply(records.delete_subject_key("s"), records.delete_subject_value("s", 2))
    assert [e.version for e in state.versions("s")] == [3]
    assert [e.version for e in state.versions("s", include_deleted=True)] == [1, 2, 3]
    assert state.schema_by_id(1) == A  # soft-deleted ids still resolve


def test_tombstones_hard_delete_and_config_removal() -> None:
    state = RegistryState()
    state.apply(records.schema_key("s", 1), records.schema_value("s", 1, 1, A, deleted=True))
    state.apply(records.config_key("s"), records.config_value("FORWARD"))
    state.apply(records.config_key(None), records.config_value("NONE"))
    state.apply(records.schema_key("s", 1), None)
    state.apply(records.config_key("s"), None)
    state.apply(records.config_key(None), None)
    assert "s" not in state.subjects
    assert state.schema_by_id(1) is None
    assert state.level_for("s") == "BACKWARD"


def test_malformed_values_are_skipped() -> None:
    state = RegistryState()
    state.apply(records.schema_key("s", 1), {"subject": "s"})  # no version, id, schema
    state.apply(records.schema_key("s", 1), records.schema_value("s", 2, 1, A))  # key and value disagree
    state.apply(records.config_key(None), {"compatibilityLevel": "SIDEWAYS"})
    assert state.subjects == {}
    assert state.global_level == "BACKWARD"


def test_keys_are_compact_in_confluent_field_order() -> None:
    assert records.encode_key(records.schema_key("s", 3)) == b'{"keytype":"SCHEMA","subject":"s","version":3,"magic":1}'
    assert records.encode_key(records.config_key(None)) == b'{"keytype":"CONFIG","subject":null,"magic":0}'
    assert (
        records.encode_key(records.delete_subject_key("s")) == b'{"keytype":"DELETE_SUBJECT","subject":"s","magic":0}'
    )
    assert records.encode_key(records.noop_key()) == b'{"keytype":"NOOP","magic":0}'
    assert records.encode_key({"magic": 1, "version": 1, "subject": "s", "keytype": "SCHEMA"}) == records.encode_key(
        records.schema_key("s", 1)
    )
    assert records.encode_value(None) is None
    assert json.loads(records.encode_value(records.schema_value("s", 1, 5, A)) or b"") == {
        "subject": "s", "version": 1, "id": 5, "schema": A, "deleted": False,
    }  # fmt: skip


# --- operations: ids and versions ---------------------------------------------------------


def test_ids_versions_and_reuse(reg: SchemaRegistry, writer: MemoryWriter) -> None:
    assert reg.register("x-value", A) == 1
    assert reg.register("x-value", json.dumps(json.loads(A), indent=2)) == 1  # same schema, other formatting
    assert reg.versions("x-value") == [1]
    assert reg.register("y-value", A) == 1  # same schema under another subject: same id
    assert reg.register("x-value", B) == 2
    assert reg.versions("x-value") == [1, 2]
    assert reg.version("x-value", "latest").id == 2
    assert reg.version("x-value", 1).schema == A.replace(" ", "")
    assert reg.lookup("x-value", A).version == 1
    assert reg.id_users(1) == reg.state.users_of(1)
    assert [(u.subject, u.version) for u in reg.id_users(1)] == [("x-value", 1), ("y-value", 1)]
    assert len(writer.log) == 3  # re-registering wrote nothing


def test_incompatible_and_invalid_schemas(reg: SchemaRegistry) -> None:
    reg.register("s", A)
    no_default = json.dumps({"type": "record", "name": "Hit", "fields": [{"name": "z", "type": "int"}]})
    with pytest.raises(errors.RegistryError) as caught:
        reg.register("s", no_default)
    assert (caught.value.http_status, caught.value.error_code) == (409, 409)
    assert 'incompatible with an earlier schema for subject "s"' in caught.value.message
    for bad in ('{"type": "record"}', None, "{"):
        with pytest.raises(errors.RegistryError) as caught:
            reg.register("s", bad)
        assert (caught.value.http_status, caught.value.error_code) == (422, 42201)
    with pytest.raises(errors.RegistryError) as caught:
        reg.register("s", A, schema_type="PROTOBUF")
    assert caught.value.error_code == 42201
    reg.set_subject_level("s", "none")
    assert reg.register("s", no_default) == 2


def test_not_found_codes(reg: SchemaRegistry) -> None:
    reg.register("s", A)
    cases = [
        (lambda: reg.versions("nope"), 40401),
        (lambda: reg.version("s", 5), 40402),
        (lambda: reg.version("s", "first"), 42202),
        (lambda: reg.version("s", 0), 42202),
        (lambda: reg.lookup("nope", A), 40401),
        (lambda: reg.lookup("s", B), 40403),
        (lambda: reg.schema_by_id(42), 40403),
        (lambda: reg.subject_level("s"), 40408),
        (lambda: reg.set_global_level("SIDEWAYS"), 42203),
    ]
    for call, code in cases:
        with pytest.raises(errors.RegistryError) as caught:
            call()
        assert caught.value.error_code == code


def test_parse_version() -> None:
    assert parse_version("latest") is None
    assert parse_version("-1") is None
    assert parse_version("3") == 3
    with pytest.raises(errors.RegistryError):
        parse_version("2147483648")


# --- operations: deletes ------------------------------------------------------------------


def test_soft_then_hard_delete_of_a_subject(reg: SchemaRegistry, writer: MemoryWriter) -> None:
    reg.register("s", A)
    reg.register("s", B)
    reg.set_subject_level("s", "FULL")
    with pytest.raises(errors.RegistryError) as caught:
        reg.delete_subject("s", permanent=True)
    assert caught.value.error_code == 40405
    assert reg.delete_subject("s") == [1, 2]
    assert reg.subjects() == []
    assert reg.subjects(deleted=True) == ["s"]
    assert reg.subjects(deleted_only=True) == ["s"]
    assert reg.versions("s", deleted=True) == [1, 2]
    assert reg.schema_by_id(2)[0]  # soft-deleted ids still resolve
    assert "s" not in reg.state.subject_levels  # the subject's config goes with it
    with pytest.raises(errors.RegistryError) as caught:
        reg.delete_subject("s")
    assert caught.value.error_code == 40404
    assert reg.delete_subject("s", permanent=True) == [1, 2]
    assert reg.subjects(deleted=True) == []
    with pytest.raises(errors.RegistryError) as caught:
        reg.schema_by_id(2)
    assert caught.value.error_code == 40403
    assert replay(writer.log).subjects == {}


def test_register_after_soft_delete_continues_versions_and_keeps_ids(reg: SchemaRegistry) -> None:
    reg.register("s", A)
    reg.register("s", B)
    reg.delete_subject("s")
    assert reg.register("s", A) == 1  # same id, new version
    assert reg.versions("s") == [3]
    assert reg.register("t", C) == 3


def test_delete_single_versions(reg: SchemaRegistry) -> None:
    reg.register("s", A)
    reg.register("s", B)
    with pytest.raises(errors.RegistryError) as caught:
        reg.delete_version("s", 2, permanent=True)
    assert caught.value.error_code == 40407
    assert reg.delete_version("s", "latest") == 2
    assert reg.versions("s") == [1]
    with pytest.raises(errors.RegistryError) as caught:
        reg.delete_version("s", 2)
    assert caught.value.error_code == 40406
    assert reg.delete_version("s", 2, permanent=True) == 2
    assert reg.versions("s", deleted=True) == [1]
    with pytest.raises(errors.RegistryError) as caught:
        reg.delete_version("s", 9)
    assert caught.value.error_code == 40402


def test_hard_deleted_schema_can_be_registered_again(reg: SchemaRegistry) -> None:
    reg.register("s", A)
    reg.delete_subject("s")
    reg.delete_subject("s", permanent=True)
    assert reg.register("s", B) == 2  # ids never go back while this state lives
    assert reg.versions("s") == [1]


# --- config and compatibility tests -------------------------------------------------------


def test_config(reg: SchemaRegistry) -> None:
    assert reg.global_level() == "BACKWARD"
    assert reg.set_global_level("full") == "FULL"
    assert reg.subject_level("s", default_to_global=True) == "FULL"
    assert reg.set_subject_level("s", "NONE") == "NONE"
    assert reg.subject_level("s") == "NONE"
    assert reg.delete_subject_level("s") == "NONE"
    assert reg.delete_global_level() == "FULL"
    assert reg.global_level() == "BACKWARD"


def test_compatibility_tests_follow_the_level(reg: SchemaRegistry) -> None:
    reg.register("s", A)
    reg.register("s", B)
    dropped_default = json.dumps({"type": "record", "name": "Hit", "fields": [{"name": "z", "type": "int"}]})
    assert reg.test_compatibility("s", C) == []
    assert reg.test_compatibility("s", C, "1") == []
    problems = reg.test_compatibility("s", dropped_default, "latest")
    assert problems and "version 2" in problems[0]
    assert reg.test_compatibility("new-subject", dropped_default) == []
    for version, code in (("7", 40402), ("x", 42202)):
        with pytest.raises(errors.RegistryError) as caught:
            reg.test_compatibility("s", C, version)
        assert caught.value.error_code == code
    with pytest.raises(errors.RegistryError) as caught:
        reg.test_compatibility("nope", C, "latest")
    assert caught.value.error_code == 40401


# --- replay -------------------------------------------------------------------------------


def test_replaying_the_written_records_rebuilds_the_same_state(reg: SchemaRegistry, writer: MemoryWriter) -> None:
    reg.set_global_level("FULL")
    reg.register("a", A)
    reg.register("a", B)
    reg.register("b", B)
    reg.set_subject_level("b", "NONE")
    reg.register("b", avro("q", name="Other"))
    reg.delete_version("a", 1)
    reg.delete_subject("b")
    reg.delete_subject("b", permanent=True)
    assert snapshot(replay(writer.log)) == snapshot(reg.state)
    # compaction keeps the last record per key: the result must not change
    last: dict[bytes, bytes | None] = {}
    for key, value in writer.log:
        last.pop(key, None)
        last[key] = value
    compacted = [(k, v) for k, v in last.items() if v is not None]
    assert snapshot(replay(compacted))[:3] == snapshot(reg.state)[:3]
