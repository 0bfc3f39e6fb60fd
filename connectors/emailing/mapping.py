"""From a ``RemarketingMessage`` to the JSON body the partner expects.

Partners disagree on field names, not on content, so the mapping is data:
``fields`` maps each output key (dotted for nesting: ``recipient.email``) to a
source path in the message (dotted, list indexes allowed: ``products.0.id``,
``promotion.code``), and ``constants`` adds fixed values (a template id, a
sender). Without ``fields`` the body is the generic one of
:func:`default_payload`. Pure functions: the same message always gives the
same body, which is what makes a retry with the same idempotency key honest.

Only absolute ``http``/``https`` URLs reach the partner. The product URLs
(``url``, ``image_url``) come from the sites' tags, which anyone can post to
the collector; a ``javascript:``, ``data:``, ``vbscript:``, relative or
otherwise odd one would end up in an email's ``href``/``src``. Every body
and every export file is built from :func:`message_view`, which sets such a
URL to None (the key stays, so the JSON shows ``null``, the same as a product
without a URL): whatever ``fields`` a mapping picks, the unsafe value is not
there to pick. The rest of the message goes out unchanged. The callers
(bridge, export) report what was dropped with :func:`report_unsafe_urls`,
once per message. ``constants`` are configuration, not data: not checked.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

_MISSING = object()

SAFE_URL_SCHEMES = frozenset({"http", "https"})
"""The only URL schemes sent to partners."""
PRODUCT_URL_FIELDS = ("url", "image_url")
"""The URL fields of a message: those of each product (``products.N.url``, ``products.N.image_url``)."""
_LOGGED_URL_CHARS = 80


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


def is_safe_url(value: Any) -> bool:
    """True for an absolute ``http``/``https`` URL with a host, nothing else.

    Refused as well: any ASCII control character or space anywhere (browsers
    drop tabs and newlines inside a URL and strip leading spaces and controls,
    so ``java\\tscript:`` or a space then ``javascript:`` would still run; a
    valid URL has them percent-encoded), a host-less ``https:evil.example`` or
    ``https:\\\\evil.example`` (browsers guess a host there), a
    scheme-relative ``//host/p``, and what ``urlsplit`` cannot parse (a bad
    port, an unclosed IPv6 bracket).
    """
    if not isinstance(value, str) or not value:
        return False
    if any(ord(char) <= 0x20 or ord(char) == 0x7F for char in value):
        return False
    try:
        parts = urlsplit(value)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError:
        return False
    return parts.scheme in SAFE_URL_SCHEMES and bool(host)


def unsafe_urls(message: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """``(path, value)`` of each URL of ``message`` that :func:`message_view` drops, in message order."""
    found: list[tuple[str, Any]] = []
    for index, product in enumerate(message.get("products") or []):
        if not isinstance(product, Mapping):
            continue
        for key in PRODUCT_URL_FIELDS:
            value = product.get(key)
            if value is not None and not is_safe_url(value):
                found.append((f"products.{index}.{key}", value))
    return found


def report_unsafe_urls(message: Mapping[str, Any], logger: logging.Logger) -> int:
    """Log one warning for the message's unsafe URLs, if any (paths and a short ``repr`` of each); their count."""
    found = unsafe_urls(message)
    if found:
        shown = ", ".join(
            f"{path}={value[:_LOGGED_URL_CHARS]!r}" if isinstance(value, str) else f"{path}={type(value).__name__}"
            for path, value in found
        )
        logger.warning(
            "message %r: %d URL(s) not sent to the partner (only absolute http/https URLs are): %s",
            message.get("message_id"),
            len(found),
            shown,
        )
    return len(found)


def _safe_urls(product: Any) -> Any:
    if not isinstance(product, Mapping):
        return product
    safe = dict(product)
    for key in PRODUCT_URL_FIELDS:
        if safe.get(key) is not None and not is_safe_url(safe[key]):
            safe[key] = None
    return safe


def message_view(message: Mapping[str, Any]) -> dict[str, Any]:
    """The message as mappings see it: timestamps as int millis, plus ``created_at_iso``; unsafe URLs as None.

    A copy: ``message`` itself is not changed.
    """
    view = dict(message)
    if view.get("created_at") is not None:
        view["created_at"] = epoch_millis(view["created_at"])
        view["created_at_iso"] = iso_millis(view["created_at"])
    if view.get("products"):
        view["products"] = [_safe_urls(p) for p in view["products"]]
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
    """The partner body of ``message`` under ``mapping`` (constants first, so mapped fields win).

    Unsafe product URLs are null in the body (see the module doc); call
    :func:`report_unsafe_urls` to say so.
    """
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
