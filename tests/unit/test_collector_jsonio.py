"""Issue 18: the batches' JSON is read and written by msgspec, and a client cannot tell.

``loads`` must give what ``json.loads`` gives, value for value, and fail where it fails, with its
message; ``json_response`` must carry the same JSON as Starlette's ``JSONResponse``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.responses import JSONResponse

from passerelle.connectors.collector.jsonio import json_response, loads


def _outcome(call: Any, body: bytes) -> tuple[str, str]:
    try:
        return "ok", repr(call(body))  # repr: -0.0 against 0.0, 1 against 1.0, key order
    except Exception as exc:
        return type(exc).__name__, str(exc)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=12,
)
_SYMBOLS = [*'[]{}",:0123456789.eE+-\\/utrfalsnNIy \t\n\x01\x7f', "é", "\\ud800", "\\u00e9", "Infinity", "NaN"]


@settings(max_examples=1500, deadline=None)
@given(_JSON, st.booleans())
def test_loads_reads_what_json_reads(value: Any, ascii_only: bool) -> None:
    body = json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    assert _outcome(loads, body) == _outcome(json.loads, body)


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(_SYMBOLS), max_size=24).map(lambda parts: "".join(parts).encode()) | st.binary())
def test_loads_fails_where_json_fails_with_its_words(body: bytes) -> None:
    assert _outcome(loads, body) == _outcome(json.loads, body)


@pytest.mark.parametrize(
    "body",
    [b"NaN", b"[1e400]", b"\xef\xbb\xbf{}", '{"a": 1}'.encode("utf-16"), b'"\\ud800"', b"[" * 5000 + b"]" * 5000,
     b'{"a": 1, "a": 2}', b"123456789012345678901234567890", b"", b"{"],
)  # fmt: skip
def test_loads_on_what_msgspec_refuses(body: bytes) -> None:
    assert _outcome(loads, body) == _outcome(json.loads, body)


@pytest.mark.parametrize(
    "content",
    [{"accepted": 2, "rejected": 0, "results": [{"index": 0, "status": "accepted", "event_id": "é-1"}]},
     {"error": "site: unknown site 'x\\u2028'", "errors": ["a\nb", '"q"', "\x00"]},
     {"errors": ["\ud800"]}],  # a lone surrogate: msgspec will not write it, Starlette's answer (or error) stands
)  # fmt: skip
def test_json_response_carries_what_json_response_carries(content: Any) -> None:
    try:
        expected = JSONResponse(content, status_code=207)
    except UnicodeEncodeError:
        with pytest.raises(UnicodeEncodeError):
            json_response(content, status_code=207)
        return
    got = json_response(content, status_code=207)
    assert got.status_code == 207 and got.media_type == "application/json"
    assert json.loads(bytes(got.body)) == json.loads(bytes(expected.body)) == content
    assert dict(got.headers) == dict(expected.headers) | {"content-length": str(len(got.body))}
