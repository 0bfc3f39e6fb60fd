"""The rules of saved report templates, as pure functions: what a template may hold, how a save versions it.

A template is a named query definition owned by one partner (the partner of
the API key that created it): ``{"name": ..., "query": {...}}`` where
``query`` is the body ``POST /v1/query`` takes, its ``period`` the template's
default period. The period is stored as written (``last7``, ``{R:{D:-1}}``)
so running the template tomorrow covers tomorrow's "last 7 days": that is
what keeps a run URL refreshable forever.

Each save of an existing template bumps ``version`` by one and keeps its
``created_at`` and owner; only the owner reads, changes, runs or deletes it.

The run URL authenticates without an ``Authorization`` header (Excel's web
queries and a browser cannot send one) with the template's *run token*: 256
random bits, shown to the owner when the template is created or its token
renewed, stored only as a SHA-256 digest (a random token needs no slow hash).
The token lets its bearer run *this* template and nothing else: it cannot
list, read or change templates, nor run another query. It is revoked by
renewing it (``POST /v1/query/templates/{id}/token``) or deleting the
template. No I/O, no clock here: the caller passes ``now``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from passerelle.connectors.partner_api.campaign_rules import FieldError

TEMPLATE_ID: Final = re.compile(r"[a-z0-9]{16}")
MAX_NAME: Final = 200
MAX_QUERY_CHARS: Final = 16 * 1024
DEFAULT_PERIOD: Final = "last7"
"""The period of a template saved without one."""
FIELDS: Final = frozenset({"name", "query"})

QueryCheck = Callable[[Mapping[str, Any]], object]
"""Raises ``ValueError`` naming the problem of a query (``engine.parse_query``)."""
PeriodCheck = Callable[[str], object]
"""Raises ``ValueError`` naming the problem of a period expression (``periods.resolve`` at some ``now``)."""


@dataclass(frozen=True)
class Definition:
    """What a request asks a template to be, once checked."""

    name: str
    query: dict[str, Any]


def new_template_id() -> str:
    return secrets.token_hex(8)


def new_token() -> str:
    """A run token: 256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_matches(token: str, record: Mapping[str, Any]) -> bool:
    """Whether ``token`` is the template's current run token (constant-time)."""
    return hmac.compare_digest(token_hash(token), str(record.get("token_hash", "")))


def check_definition(
    body: Any, check_query: QueryCheck, check_period: PeriodCheck
) -> tuple[Definition | None, list[FieldError]]:
    """The definition a JSON body gives, or every problem found, each naming its field."""
    if not isinstance(body, Mapping):
        return None, [FieldError("body", "a template is a JSON object {name, query}")]
    errors = [FieldError(str(k)[:64], f"unknown field; known: {', '.join(sorted(FIELDS))}") for k in body
              if k not in FIELDS]  # fmt: skip
    name = body.get("name")
    if not isinstance(name, str) or not name.strip():
        errors.append(FieldError("name", "required: the template's name (1-200 characters)"))
    elif len(name.strip()) > MAX_NAME or any(ord(ch) < 32 for ch in name):
        errors.append(FieldError("name", f"at most {MAX_NAME} characters, no control characters"))
    query = body.get("query")
    if not isinstance(query, Mapping):
        errors.append(FieldError("query", "required: the query as a JSON object (metrics, dimensions, period…)"))
        return None, errors
    query = dict(query)
    query.setdefault("period", DEFAULT_PERIOD)
    if len(json.dumps(query)) > MAX_QUERY_CHARS:
        errors.append(FieldError("query", f"larger than {MAX_QUERY_CHARS} characters of JSON"))
        return None, errors
    try:
        check_query(query)
    except ValueError as exc:
        errors.append(FieldError("query", str(exc)))
    else:
        if not isinstance(query["period"], str):
            errors.append(FieldError("query.period", "a period expression such as last7"))
        else:
            try:
                check_period(query["period"])
            except ValueError as exc:
                errors.append(FieldError("query.period", str(exc)))
    if errors or not isinstance(name, str):
        return None, errors
    return Definition(name.strip(), query), []


def template_record(
    definition: Definition,
    template_id: str,
    partner: str,
    key_id: str | None,
    now_ms: int,
    previous: Mapping[str, Any] | None,
    token: str | None,
) -> dict[str, Any]:
    """The ``QueryTemplate`` record of a save: version 1, or the previous version + 1 keeping its creation.

    ``token`` is a new run token (required for a new template); None keeps the previous one.
    """
    if previous is not None and previous.get("partner") != partner:
        raise ValueError(f"template {template_id} belongs to another partner")
    if token is None and previous is None:
        raise ValueError("a new template needs a run token")
    return {
        "template_id": template_id,
        "partner": partner,
        "name": definition.name,
        "query": json.dumps(definition.query, sort_keys=True, separators=(",", ":")),
        "version": 1 if previous is None else int(previous["version"]) + 1,
        "created_at": now_ms if previous is None else int(previous["created_at"]),
        "updated_at": now_ms,
        "updated_by": key_id,
        "token_hash": token_hash(token) if token is not None else str(previous["token_hash"]),  # type: ignore[index]
    }


def with_token(record: Mapping[str, Any], token: str, key_id: str | None, now_ms: int) -> dict[str, Any]:
    """The record once its run token is renewed (the old one stops working): a new version."""
    return {**record, "token_hash": token_hash(token), "version": int(record["version"]) + 1, "updated_at": now_ms,
            "updated_by": key_id}  # fmt: skip


def stored_query(record: Mapping[str, Any]) -> dict[str, Any]:
    loaded = json.loads(str(record["query"]))
    return loaded if isinstance(loaded, dict) else {}


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def template_view(record: Mapping[str, Any]) -> dict[str, Any]:
    """A template as the API shows it (never the token's digest)."""
    return {
        "id": record["template_id"],
        "name": record["name"],
        "partner": record["partner"],
        "version": record["version"],
        "query": stored_query(record),
        "created_at": _iso(int(record["created_at"])),
        "updated_at": _iso(int(record["updated_at"])),
    }
