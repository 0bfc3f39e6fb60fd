"""JSON in and out of ``POST /v1/events``: msgspec where it agrees with the standard library, ``json`` otherwise.

A batch body is read once and its answer written once per request, and both
grow with the batch: msgspec does each in a fraction of ``json``'s time. What
a client sees must not change with it, so msgspec only takes the inputs on
which it gives what ``json.loads`` gives. It refuses some that ``json``
accepts (``NaN``, ``1e400``, a UTF-8 BOM, UTF-16, lone surrogates) and never
accepts one that ``json`` refuses (the unit tests fuzz both on valid and
malformed bodies): whatever msgspec refuses goes to ``json.loads``, which
decides, with its own error message. Answers are written by msgspec, and by
Starlette's ``JSONResponse`` (the ``json`` module) if msgspec cannot.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
from starlette.responses import JSONResponse, Response

_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode


def loads(body: bytes) -> Any:
    """``json.loads(body)``: the same value, or the same exception."""
    try:
        return _decode(body)
    except Exception:  # msgspec's refusals, recursion included: the standard library decides
        return json.loads(body)


def json_response(content: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A ``JSONResponse`` of ``content`` (compact UTF-8 JSON), written by msgspec when it can."""
    try:
        body = _encode(content)
    except Exception:  # what msgspec will not write (a lone surrogate...): Starlette's answer, or its error
        return JSONResponse(content, status_code=status_code, headers=headers)
    return Response(body, status_code=status_code, headers=headers, media_type="application/json")
