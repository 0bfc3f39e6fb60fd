"""Compatibility levels of the embedded registry, with concrete schema pairs.

The Apache Avro checker decides reader/writer compatibility; these tests pin
which direction each level checks and how transitive levels differ.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from passerelle.schemas.registry import compatibility as c

pytestmark = pytest.mark.unit


def record(*fields: dict[str, Any], name: str = "Hit") -> str:
    return json.dumps({"type": "record", "name": name, "namespace": "passerelle.test", "fields": list(fields)})


ID = {"name": "id", "type": "string"}
V1 = record(ID)
ADD_WITH_DEFAULT = record(ID, {"name": "page", "type": "string", "default": ""})
ADD_WITHOUT_DEFAULT = record(ID, {"name": "page", "type": "string"})
COUNT_INT = record(ID, {"name": "n", "type": "int", "default": 0})
COUNT_LONG = record(ID, {"name": "n", "type": "long", "default": 0})
RENAMED = record({"name": "hit_id", "type": "string"})
RENAMED_WITH_ALIAS = record({"name": "hit_id", "type": "string", "aliases": ["id"]})
OTHER_NAME = record(ID, name="Visit")


def ok(new: str, old: str, level: str) -> bool:
    return not c.check(c.parse(new), [(1, c.parse(old))], level)


# new schema, old schema, expected per level (BACKWARD, FORWARD, FULL, NONE); transitive = same with one old version
CASES = [
    ("add field with default", ADD_WITH_DEFAULT, V1, (True, True, True, True)),
    ("add field without default", ADD_WITHOUT_DEFAULT, V1, (False, True, False, True)),
    ("remove field with default", V1, ADD_WITH_DEFAULT, (True, True, True, True)),
    ("remove field without default", V1, ADD_WITHOUT_DEFAULT, (True, False, False, True)),
    ("widen int to long", COUNT_LONG, COUNT_INT, (True, False, False, True)),
    ("narrow long to int", COUNT_INT, COUNT_LONG, (False, True, False, True)),
    ("change type string to int", record({"name": "id", "type": "int"}), V1, (False, False, False, True)),
    ("rename field", RENAMED, V1, (False, False, False, True)),
    ("rename field with alias", RENAMED_WITH_ALIAS, V1, (True, False, False, True)),
    ("rename record", OTHER_NAME, V1, (False, False, False, True)),
]


@pytest.mark.parametrize(("new", "old", "expected"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_each_level_on_a_single_previous_version(new: str, old: str, expected: tuple[bool, ...]) -> None:
    backward, forward, full, none = expected
    assert ok(new, old, c.BACKWARD) is backward
    assert ok(new, old, c.FORWARD) is forward
    assert ok(new, old, c.FULL) is full
    assert ok(new, old, c.NONE) is none
    # with a single previous version, transitive and non-transitive agree
    assert ok(new, old, c.BACKWARD_TRANSITIVE) is backward
    assert ok(new, old, c.FORWARD_TRANSITIVE) is forward
    assert ok(new, old, c.FULL_TRANSITIVE) is full


def test_transitive_levels_check_every_version_non_transitive_only_the_latest() -> None:
    # v1 has no 'page'; v2 adds it with a default; v3 drops the default.
    # v3 reads v2 data (page present) but not v1 data (page missing, no default).
    v1 = c.parse(V1)
    v2 = c.parse(ADD_WITH_DEFAULT)
    v3 = c.parse(ADD_WITHOUT_DEFAULT)
    history = [(1, v1), (2, v2)]
    assert c.check(v3, history, c.BACKWARD) == []
    problems = c.check(v3, history, c.BACKWARD_TRANSITIVE)
    assert len(problems) == 1
    assert "version 1" in problems[0]
    assert "READER_FIELD_MISSING_DEFAULT_VALUE" in problems[0]
    assert c.check(v3, history, c.FULL) == []
    assert c.check(v3, history, c.FULL_TRANSITIVE) != []


def test_forward_transitive_differs_from_forward() -> None:
    # v1 has 'page' without default, v2 gives it a default, v3 removes it:
    # v2 reads v3 data (default), v1 does not.
    v1 = c.parse(ADD_WITHOUT_DEFAULT)
    v2 = c.parse(ADD_WITH_DEFAULT)
    v3 = c.parse(V1)
    history = [(1, v1), (2, v2)]
    assert c.check(v3, history, c.FORWARD) == []
    assert any("version 1" in p for p in c.check(v3, history, c.FORWARD_TRANSITIVE))


def test_messages_name_the_direction_and_level() -> None:
    [problem] = c.check(c.parse(ADD_WITHOUT_DEFAULT), [(4, c.parse(V1))], "backward")
    assert "new schema cannot read data written by version 4" in problem
    assert "page" in problem
    assert problem.endswith("(compatibility BACKWARD)")
    [problem] = c.check(c.parse(V1), [(2, c.parse(ADD_WITHOUT_DEFAULT))], c.FORWARD)
    assert "version 2 cannot read data written by the new schema" in problem


def test_no_previous_version_is_always_compatible() -> None:
    assert c.check(c.parse(ADD_WITHOUT_DEFAULT), [], c.FULL_TRANSITIVE) == []


def test_levels_are_the_seven_confluent_ones_and_default_backward() -> None:
    assert set(c.LEVELS) == {
        "NONE", "BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "FORWARD_TRANSITIVE", "FULL", "FULL_TRANSITIVE",
    }  # fmt: skip
    assert c.DEFAULT_LEVEL == "BACKWARD"
    assert c.normalize_level("full_transitive") == "FULL_TRANSITIVE"
    with pytest.raises(ValueError):
        c.normalize_level("SIDEWAYS")
    with pytest.raises(ValueError):
        c.check(c.parse(V1), [], "SIDEWAYS")


@pytest.mark.parametrize("text", ["", "not json", '{"type": "record", "name": "R"}', '{"type": "nope"}'])
def test_invalid_schemas_are_refused(text: str) -> None:
    with pytest.raises(c.InvalidSchemaError):
        c.parse(text)


def test_identity_ignores_formatting_but_not_defaults() -> None:
    compact = c.normalized(c.parse(V1))
    spaced = c.normalized(c.parse(json.dumps(json.loads(V1), indent=4)))
    reordered = c.normalized(
        c.parse('{"fields": [{"type": "string", "name": "id"}], "namespace": "passerelle.test", "name": "Hit", '
                '"type": "record"}')
    )  # fmt: skip
    assert compact == spaced == reordered
    assert c.normalized(c.parse(ADD_WITH_DEFAULT)) != c.normalized(c.parse(ADD_WITHOUT_DEFAULT))
