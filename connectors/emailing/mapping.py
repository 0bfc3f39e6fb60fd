"""From a ``RemarketingMessage`` to the JSON body the partner expects.

Partners disagree on field names, not on content, so the mapping is data:
``fields`` maps each output key (dotted for nesting: ``recipient.email``) to a
source path in the message (dotted, list indexes allowed: ``products.0.id``,
``promotion.code``), and ``constants`` adds fixed values (a template id, a
sender). Without ``fields`` the body is the generic one of
:func:`default_payload`. Pure functions: the same message always gives the
same body, which is what makes a retry with the same idempotency key honest.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

_MISSING = object()


@dataclass(frozen=True)
class PayloadMapping:
    """Which body to send: the generic one (``fields`` None) or one field per output key."""

    fields: Mapping[str, str] | None = None
    constants: Mapping[str, Any] = field(default_factory=dict)


def iso_millis(value: Any) -> str | None:
    """UTC ISO 8601 with milliseconds, from int millis or an aware datetime (what fastavro reads)."""
    if value is None:
        return None
    moment = value.astimezone(UTC) if isinstance(value, datetime) else datetime.fromtimestamp(value / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def epoch_millis(value: Any) -> int:
    """Int UTC millis from int millis or an aware datetime."""
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    return int(value)


def message_view(message: Mapping[str, Any]) -> dict[str, Any]:
    """The message as mappings see it: timestamps as int millis, plus ``created_at_iso``."""
    view = dict(message)
    if view.get("created_at") is not None:
        view["created_at"] = epoch_millis(view["created_at"])
        view["created_at_iso"] = iso_millis(view["created_at"])
    return view


def _product(p: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("id", "name", "price", "currency", "quantity", "category", "url", "image_url")
    return {k: p.get(k) for k in keys}


def _line(line: Mapping[str, Any]) -> dict[str, Any]:
    return {k: line.get(k) for k in ("product_id", "name", "price", "quantity", "currency")}


def default_payload(message: Mapping[str, Any]) -> dict[str, Any]:
    """The generic body: ids, recipient, step, products (at most 6, as sent), cart lines and promotion."""
    promotion = message.get("promotion")
    return {
        "message_id": message["message_id"],
        "sequence_id": message.get("sequence_id"),
        "step": message.get("step"),
        "site": message.get("site"),
        "customer_id": message.get("customer_id"),
        "email": message.get("email"),
        "products": [_product(p) for p in message.get("products") or []],
        "cart_lines": [_line(line) for line in message.get("lines") or []],
        "promotion": None
        if promotion is None
        else {
            "code": promotion.get("code"),
            "description": promotion.get("description"),
            "discount_percent": promotion.get("discount_percent"),
        },
        "created_at": iso_millis(message.get("created_at")),
    }


def lookup(data: Any, path: str) -> Any:
    """The value at a dotted ``path`` (list items by index); None when any step is missing."""
    current = data
    for part in path.split("."):
        if isinstance(current, Mapping):
            current = current.get(part, _MISSING)
        elif isinstance(current, list) and part.lstrip("-").isdigit():
            index = int(part)
            current = current[index] if -len(current) <= index < len(current) else _MISSING
        else:
            current = _MISSING
        if current is _MISSING:
            return None
    return current


def _place(body: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = body
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ValueError(f"output key {dotted!r} nests under {part!r}, which already holds a value")
        node = child
    node[parts[-1]] = value


def build_payload(message: Mapping[str, Any], mapping: PayloadMapping | None = None) -> dict[str, Any]:
    """The partner body of ``message`` under ``mapping`` (constants first, so mapped fields win)."""
    mapping = mapping or PayloadMapping()
    view = message_view(message)
    body: dict[str, Any] = {}
    for key, value in mapping.constants.items():
        _place(body, key, value)
    if mapping.fields is None:
        body.update(default_payload(view))
        return body
    for key, path in mapping.fields.items():
        _place(body, key, lookup(view, path))
    return body
