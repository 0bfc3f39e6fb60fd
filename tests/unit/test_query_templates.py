"""The rules of saved report templates: what a definition may hold, versioning, ownership, the run token."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from passerelle.connectors.data_query import engine, periods
from passerelle.connectors.partner_api import query_templates as qt

NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)
QUERY = {"metrics": ["visits"], "dimensions": ["day"], "period": "{R:{D:-1}}"}


def check(body: Any) -> tuple[qt.Definition | None, dict[str, str]]:
    found, errors = qt.check_definition(body, engine.parse_query, lambda text: periods.resolve(text, NOW, "UTC"))
    return found, {e.field: e.reason for e in errors}


def test_a_valid_definition_keeps_its_period_relative() -> None:
    found, errors = check({"name": "  Yesterday's visits ", "query": QUERY})
    assert errors == {} and found is not None
    assert found.name == "Yesterday's visits" and found.query["period"] == "{R:{D:-1}}"


def test_a_definition_without_a_period_gets_last7() -> None:
    found, _ = check({"name": "n", "query": {"metrics": ["visits"]}})
    assert found is not None and found.query["period"] == qt.DEFAULT_PERIOD


@pytest.mark.parametrize(
    ("body", "field", "named"),
    [
        ({"query": QUERY}, "name", "required"),
        ({"name": "x" * 201, "query": QUERY}, "name", "200"),
        ({"name": "n"}, "query", "required"),
        ({"name": "n", "query": {**QUERY, "metrics": ["visitz"]}}, "query", "visitz"),
        ({"name": "n", "query": {**QUERY, "dimensions": ["colour"]}}, "query", "colour"),
        ({"name": "n", "query": {**QUERY, "period": "someday"}}, "query.period", "someday"),
        ({"name": "n", "query": QUERY, "owner": "rival"}, "owner", "unknown field"),
        ([], "body", "JSON object"),
    ],
)
def test_each_problem_names_its_field(body: Any, field: str, named: str) -> None:
    found, errors = check(body)
    assert found is None and named in errors[field]


def test_saving_again_bumps_the_version_and_keeps_creation_owner_and_token() -> None:
    found, _ = check({"name": "v1", "query": QUERY})
    assert found is not None
    first = qt.template_record(found, "a" * 16, "mailer", "k1", 1_000, None, "s3cr3t")
    assert (first["version"], first["created_at"], first["updated_at"]) == (1, 1_000, 1_000)
    assert json.loads(first["query"]) == QUERY and "s3cr3t" not in json.dumps(first)  # only its digest is stored
    second = qt.template_record(qt.Definition("v2", QUERY), "a" * 16, "mailer", "k2", 5_000, first, None)
    assert (second["version"], second["created_at"], second["updated_at"], second["name"]) == (2, 1_000, 5_000, "v2")
    assert qt.token_matches("s3cr3t", second) and not qt.token_matches("other", second)
    with pytest.raises(ValueError, match="another partner"):
        qt.template_record(qt.Definition("x", QUERY), "a" * 16, "rival", "k3", 6_000, second, None)


def test_a_renewed_token_revokes_the_old_one() -> None:
    record = qt.template_record(qt.Definition("n", QUERY), "b" * 16, "mailer", None, 1_000, None, "old")
    renewed = qt.with_token(record, "new", "k1", 2_000)
    assert renewed["version"] == 2 and qt.token_matches("new", renewed) and not qt.token_matches("old", renewed)


def test_the_view_never_shows_the_token_digest() -> None:
    record = qt.template_record(qt.Definition("n", QUERY), "c" * 16, "mailer", None, 0, None, qt.new_token())
    view = qt.template_view(record)
    assert view["id"] == "c" * 16 and view["created_at"] == "1970-01-01T00:00:00Z" and "token_hash" not in view
