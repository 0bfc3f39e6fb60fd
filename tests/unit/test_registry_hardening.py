"""The registry against hostile or careless requests (issue 17, item 8), in process over ``MemoryWriter``.

Deeply nested JSON is a 400, not a 500; bodies over the limit are refused
with 413 before they are read (by Content-Length) or as soon as they pass it
(chunked); a schema too large for one ``_schemas`` record is a 413 that names
the limit; and a slow compatibility check on one subject never makes another
subject wait. The same cases run against the real process and broker in
``tests/integration/test_registry_hardening.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import avro.schema
import pytest
from fastapi.testclient import TestClient

from passerelle.commands import registry as command
from passerelle.schemas.registry import app as app_module
from passerelle.schemas.registry import compatibility, errors, records, service
from passerelle.schemas.registry.app import create_app
from passerelle.schemas.registry.service import MemoryWriter, SchemaRegistry
from passerelle.schemas.registry.state import RegistryState

pytestmark = pytest.mark.unit

MEDIA_TYPE = "application/vnd.schemaregistry.v1+json"
# The documented limits (module docstrings, `passerelle registry --help`).
MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_SCHEMA_BYTES = 900 * 1024
MAX_RECORD_BYTES = 999_000  # under librdkafka's default message.max.bytes (1,000,000)
DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.fixture
def writer() -> MemoryWriter:
    return MemoryWriter(RegistryState())


@pytest.fixture
def reg(writer: MemoryWriter) -> SchemaRegistry:
    return SchemaRegistry(writer.state, writer)


@pytest.fixture
def http(reg: SchemaRegistry) -> Iterator[TestClient]:
    with TestClient(create_app(reg), raise_server_exceptions=False) as client:
        yield client


def record(*fields: dict[str, Any], name: str = "Hit", doc: str | None = None) -> str:
    schema: dict[str, Any] = {"type": "record", "name": name, "fields": list(fields)}
    if doc is not None:
        schema["doc"] = doc
    return json.dumps(schema)


def stored_size(text: str) -> int:
    """Bytes the schema takes in its ``_schemas`` record: compact JSON, escaped as a JSON string."""
    compact = json.dumps(json.loads(text), separators=(",", ":"), ensure_ascii=False)
    return len(json.dumps(compact, ensure_ascii=False).encode()) - 2


def schema_of_size(size: int, name: str = "Big") -> str:
    """A valid schema taking exactly ``size`` bytes as stored (its doc is the padding)."""
    base = stored_size(record({"name": "id", "type": "string"}, name=name, doc=""))
    text = record({"name": "id", "type": "string"}, name=name, doc="x" * (size - base))
    assert stored_size(text) == size
    return text


def assert_confluent_error(resp: Any, status: int, code: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith(MEDIA_TYPE)
    body = resp.json()
    assert set(body) == {"error_code", "message"}
    assert body["error_code"] == code and body["message"]
    return body


# --- 1. deeply nested JSON ---------------------------------------------------------------------

JSON_ROUTES = [
    ("POST", "/subjects/x/versions"),
    ("POST", "/subjects/x"),
    ("POST", "/compatibility/subjects/x/versions/latest"),
    ("POST", "/compatibility/subjects/x/versions"),
    ("PUT", "/config"),
    ("PUT", "/config/x"),
]


@pytest.mark.parametrize(("method", "path"), JSON_ROUTES)
def test_deeply_nested_body_is_400_not_500(http: TestClient, method: str, path: str) -> None:
    resp = http.request(method, path, content=DEEP, headers={"Content-Type": "application/json"})
    body = assert_confluent_error(resp, 400, 400)
    assert "nested too deeply" in body["message"]
    assert http.get("/").status_code == 200


def test_deeply_nested_schema_text_is_422(http: TestClient) -> None:
    resp = http.post("/subjects/x/versions", json={"schema": DEEP.decode()})
    body = assert_confluent_error(resp, 422, 42201)
    assert "nested too deeply" in body["message"]
    nested = '{"type":"array","items":' * 2000 + '"string"' + "}" * 2000  # valid Avro, far too deep
    assert_confluent_error(http.post("/subjects/x/versions", json={"schema": nested}), 422, 42201)


# --- 2. body and schema size ---------------------------------------------------------------------


def call_asgi(
    app: Any, headers: list[tuple[bytes, bytes]], chunks: Callable[[], bytes | None]
) -> tuple[int, dict[bytes, bytes], dict[str, Any], int]:
    """Drive the ASGI app for one POST; ``chunks`` gives each body piece (None: end). Returns what was read."""
    sent: list[dict[str, Any]] = []
    read = 0

    async def receive() -> dict[str, Any]:
        nonlocal read
        piece = chunks()
        read += len(piece or b"")
        return {"type": "http.request", "body": piece or b"", "more_body": piece is not None}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/subjects/x/versions",
        "raw_path": b"/subjects/x/versions",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"registry"), (b"content-type", b"application/json"), *headers],
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 8081),
    }
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), json.loads(body), read


def test_declared_length_over_the_limit_is_413_before_a_byte_is_read(reg: SchemaRegistry) -> None:
    def never() -> bytes | None:
        raise AssertionError("the body of a request declared too large was read")

    status, headers, body, read = call_asgi(
        create_app(reg), [(b"content-length", str(50 * 1024 * 1024).encode())], never
    )
    assert (status, body["error_code"], read) == (413, 41301, 0)
    assert str(MAX_BODY_BYTES) in body["message"]
    assert headers[b"connection"] == b"close"  # the rest of the body is never read: the connection cannot be reused


def test_chunked_body_stops_being_read_past_the_limit(reg: SchemaRegistry) -> None:
    piece = b" " * 65_536
    given = 0

    def endless() -> bytes | None:  # ends after twice the limit, so a registry that reads it all still answers
        nonlocal given
        given += len(piece)
        return piece if given <= 2 * MAX_BODY_BYTES else None

    status, headers, body, read = call_asgi(create_app(reg), [(b"transfer-encoding", b"chunked")], endless)
    assert (status, body["error_code"]) == (413, 41301)
    assert MAX_BODY_BYTES < read <= MAX_BODY_BYTES + len(piece)
    assert headers[b"connection"] == b"close"


def test_body_of_exactly_the_limit_is_read(http: TestClient) -> None:
    payload = json.dumps({"schema": record({"name": "id", "type": "string"})}).encode()
    padded = payload + b" " * (MAX_BODY_BYTES - len(payload))  # JSON allows trailing whitespace
    assert http.post("/subjects/x/versions", content=padded).json() == {"id": 1}
    resp = http.post("/subjects/x/versions", content=padded + b" ")
    assert_confluent_error(resp, 413, 41301)


def test_schema_over_the_limit_is_413_naming_it_and_nothing_is_written(http: TestClient, writer: MemoryWriter) -> None:
    too_big = schema_of_size(MAX_SCHEMA_BYTES + 1)
    body = assert_confluent_error(http.post("/subjects/x/versions", json={"schema": too_big}), 413, 41302)
    assert str(MAX_SCHEMA_BYTES) in body["message"] and "_schemas" in body["message"]
    assert writer.log == []
    quotes = record(*({"name": f"f{i}", "type": "string"} for i in range(25_000)))  # its quotes count twice
    compact = json.dumps(json.loads(quotes), separators=(",", ":"))
    assert len(compact.encode()) < MAX_SCHEMA_BYTES < stored_size(quotes)
    assert_confluent_error(http.post("/subjects/y/versions", json={"schema": quotes}), 413, 41302)
    assert writer.log == []


def test_schema_of_exactly_the_limit_fits_one_record(http: TestClient, writer: MemoryWriter) -> None:
    largest = schema_of_size(MAX_SCHEMA_BYTES)
    assert http.post("/subjects/x-value/versions", json={"schema": largest}).json() == {"id": 1}
    [(key, value)] = writer.log
    assert len(key) + len(value or b"") <= MAX_RECORD_BYTES


def test_a_subject_name_that_would_overflow_the_record_is_413(http: TestClient, writer: MemoryWriter) -> None:
    largest = schema_of_size(MAX_SCHEMA_BYTES)
    subject = "s" * 40_000  # twice in the record (key and value): the record would pass 999,000 bytes
    resp = http.post(f"/subjects/{subject}/versions", json={"schema": largest})
    assert "record" in assert_confluent_error(resp, 413, 41302)["message"]
    assert writer.log == []


def test_documented_limits() -> None:
    assert app_module.MAX_BODY_BYTES == MAX_BODY_BYTES
    assert service.MAX_SCHEMA_BYTES == MAX_SCHEMA_BYTES
    assert service.MAX_RECORD_BYTES == MAX_RECORD_BYTES
    assert app_module.__doc__ is not None and "4 MiB" in app_module.__doc__
    assert service.__doc__ is not None and "900 KiB" in service.__doc__
    parser = argparse.ArgumentParser(prog="passerelle")
    command.add_parser(parser.add_subparsers())
    with pytest.raises(SystemExit), contextlib.redirect_stdout(io.StringIO()) as out:
        parser.parse_args(["registry", "--help"])
    help_text = out.getvalue()
    assert "900 KiB" in help_text and "4 MiB" in help_text and "413" in help_text


# --- 3. one subject's slow check does not block the others ------------------------------------------


class HeldCheck:
    """Wraps ``compatibility.check``: holds the first check against earlier versions open, records every call.

    Each call is recorded as (label, versions it was checked against, level);
    the label is the schema's fields, ``name:type`` each.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls: list[tuple[str, list[int], str]] = []
        self._held_once = False
        real = compatibility.check

        def check(new: avro.schema.Schema, previous: Sequence[tuple[int, avro.schema.Schema]], level: str) -> Any:
            self.calls.append((label(new.to_json()), [v for v, _ in previous], level))
            if previous and not self._held_once:
                self._held_once = True
                self.entered.set()
                assert self.release.wait(30), "the held check was never released"
            return real(new, previous, level)

        monkeypatch.setattr(service.compatibility, "check", check)


def label(schema: Any) -> str:
    """A record schema (as JSON data) by its fields: ``name:type`` each."""
    return " ".join(f"{f['name']}:{json.dumps(f['type'])}" for f in schema["fields"])


class Call(threading.Thread):
    """One registry call on its own thread: its result, or the error it raised."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.fn = fn
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as exc:
            self.error = exc

    def outcome(self, timeout: float = 30) -> Any:
        self.join(timeout)
        assert not self.is_alive(), "the call did not finish"
        if self.error is not None:
            raise self.error
        return self.result


ID = {"name": "id", "type": "string"}
PAGE = {"name": "page", "type": ["null", "string"], "default": None}


def test_a_slow_check_on_one_subject_lets_other_subjects_register_and_read(
    reg: SchemaRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = HeldCheck(monkeypatch)
    slow_v1, slow_v2 = record(ID, name="Slow"), record(ID, PAGE, name="Slow")
    reg.register("a-value", slow_v1)
    reg.register("b-value", record(ID, name="Other"))
    slow = Call(lambda: reg.register("a-value", slow_v2))
    slow.start()
    try:
        assert held.entered.wait(30)
        others = [
            Call(lambda: reg.register("b-value", record(ID, PAGE, name="Other"))),  # a new version elsewhere
            Call(lambda: reg.register("c-value", record(ID, name="Third"))),  # a new subject
            Call(lambda: reg.register("a-value", slow_v1)),  # already registered: answered without waiting
            Call(lambda: reg.set_subject_level("d-value", "FULL")),
            Call(lambda: reg.versions("a-value")),
        ]
        for call in others:
            call.start()
        deadline = time.monotonic() + 20
        for call in others:
            call.join(max(0.0, deadline - time.monotonic()))
        still_running = slow.is_alive()
        finished = [not call.is_alive() for call in others]
    finally:
        held.release.set()
    assert all(finished), f"calls blocked behind another subject's check: {finished}"
    assert still_running, "the slow check was not held while the others ran"
    outcomes = [call.outcome() for call in others]
    assert sorted(outcomes[:2]) == [3, 4] and outcomes[2:] == [1, "FULL", [1]]
    assert slow.outcome() == 5
    assert reg.versions("a-value") == [1, 2] and reg.versions("b-value") == [1, 2] and reg.versions("c-value") == [1]


def test_two_registers_on_one_subject_are_serialized(reg: SchemaRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    reg.register("s-value", record(ID, name="Slow"))
    as_string = record(ID, {"name": "n", "type": "string", "default": ""}, name="Slow")
    as_int = record(ID, {"name": "n", "type": "int", "default": 0}, name="Slow")  # reads v1, not as_string
    held = HeldCheck(monkeypatch)
    first = Call(lambda: reg.register("s-value", as_string))
    first.start()
    assert held.entered.wait(30)
    second = Call(lambda: reg.register("s-value", as_int))
    second.start()
    second.join(0.3)  # give it every chance to slip past the first one
    held.release.set()
    assert first.outcome() == 2
    with pytest.raises(errors.RegistryError) as refused:
        second.outcome()
    assert refused.value.http_status == 409
    assert reg.versions("s-value") == [1, 2]
    rival = label(json.loads(as_int))
    assert [previous for name, previous, _ in held.calls if name == rival] == [[1, 2]]  # never checked a stale state


def test_a_level_change_during_a_check_is_checked_again(reg: SchemaRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    reg.register("s-value", record(ID, {"name": "gone", "type": "string"}, name="Slow"))
    dropped = record(ID, name="Slow")  # BACKWARD yes (a reader ignores the field), FORWARD no (no default)
    held = HeldCheck(monkeypatch)
    pending = Call(lambda: reg.register("s-value", dropped))
    pending.start()
    try:
        assert held.entered.wait(30)
        change = Call(lambda: reg.set_global_level("FORWARD"))
        change.start()
        change.join(20)
        changed = not change.is_alive()
    finally:
        held.release.set()
    assert changed, "changing the global level waited for a subject's check"
    assert change.outcome() == "FORWARD"
    with pytest.raises(errors.RegistryError) as refused:
        pending.outcome()
    assert refused.value.http_status == 409
    assert [level for _, _, level in held.calls] == ["BACKWARD", "FORWARD"]
    assert reg.versions("s-value") == [1]


def test_the_follower_does_not_parse_a_schema_the_writer_already_normalized(
    writer: MemoryWriter, reg: SchemaRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Applying a big schema's record must not parse it again (1 s for 10,000 fields, readers waiting)."""
    parsed: list[str] = []
    real = compatibility.parse

    def counting(text: str) -> avro.schema.Schema:
        parsed.append(text)
        return real(text)

    monkeypatch.setattr(compatibility, "parse", counting)
    reg.register("x-value", record(ID, name="Once"))
    assert len(parsed) == 1
    replayed = RegistryState()  # another registry replaying the topic has to parse it, once
    for key, value in writer.log:
        decoded = records.decode(key, value)
        assert decoded is not None
        replayed.apply(*decoded)
    assert len(parsed) == 2 and replayed.normalized_of(1) == writer.state.normalized_of(1) is not None


def test_applying_a_new_schema_parses_it_without_blocking_readers(monkeypatch: pytest.MonkeyPatch) -> None:
    """A record from the topic (a replay, another registry) is parsed before the state's lock is taken."""
    state = RegistryState()
    state.apply(records.schema_key("other-value", 1), records.schema_value("other-value", 1, 1, record(ID)))
    parsing, release = threading.Event(), threading.Event()
    real = compatibility.parse

    def slow_parse(text: str) -> avro.schema.Schema:
        parsing.set()
        assert release.wait(30), "the parse was never released"
        return real(text)

    monkeypatch.setattr(compatibility, "parse", slow_parse)
    big = record(ID, PAGE, name="Big")
    applying = Call(
        lambda: state.apply(records.schema_key("big-value", 1), records.schema_value("big-value", 1, 2, big))
    )
    applying.start()
    try:
        assert parsing.wait(30)
        reader = Call(lambda: (state.versions("other-value"), state.schema_by_id(1), state.subject_names()))
        reader.start()
        reader.join(20)
        answered = not reader.is_alive()
    finally:
        release.set()
    assert answered, "a reader waited for the parse of a schema it did not ask for"
    applying.outcome()
    assert [e.id for e in state.versions("big-value")] == [2] and state.normalized_of(2) is not None
    assert reader.outcome()[2] == ["other-value"]
