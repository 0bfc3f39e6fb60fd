"""The real registry process, over a real broker, against hostile or careless requests (issue 17, item 8).

Each case as it was found: a body of ``[`` x 100,000 answered 500; a 50 MB
body was read whole (RSS 131 -> 377 MB) and an endless chunked one would have
been too; a 1.1 MB schema answered 500 from Kafka (MSG_SIZE_TOO_LARGE on the
``_schemas`` topic); and registering a second version of a 10,000-field schema
held the registry's global lock for the whole compatibility check, so every
other subject waited. The rules themselves are tested in process in
``tests/unit/test_registry_hardening.py``.
"""

from __future__ import annotations

import json
import select
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

from passerelle.deploy.local import stack
from tests.conftest import start_registry_process, stop_process
from tests.integration.test_registry_conformance import error_of

pytestmark = pytest.mark.integration

MEDIA_TYPE = "application/vnd.schemaregistry.v1+json"
MAX_BODY_BYTES = 4 * 1024 * 1024  # as documented
MAX_SCHEMA_BYTES = 900 * 1024
FIFTY_MB = 50 * 1024 * 1024


@dataclass
class Registry:
    url: str
    port: int
    proc: subprocess.Popen[bytes]

    def reset_peak(self) -> None:
        """Linux: make the peak RSS (VmHWM) start again from the current RSS."""
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")

    def peak_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmHWM in /proc status")


@pytest.fixture(scope="module")
def registry(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    topic = f"_schemas-hardening-{uuid.uuid4().hex[:8]}"
    port = stack.free_port()
    proc = start_registry_process(kafka_bootstrap, port, topic, tmp_path_factory.mktemp("registry") / "registry.log")
    try:
        yield Registry(f"http://127.0.0.1:{port}", port, proc)
    finally:
        stop_process(proc)
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
        admin.delete_topics([topic], operation_timeout=10)[topic].result(15)


@pytest.fixture
def http(registry: Registry) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=registry.url, timeout=300) as client:
        yield client


def schema_text(*fields: dict[str, Any], name: str = "Hit", doc: str | None = None) -> str:
    schema: dict[str, Any] = {"type": "record", "name": name, "namespace": "passerelle.test", "fields": list(fields)}
    if doc is not None:
        schema["doc"] = doc
    return json.dumps(schema)


def stored_size(text: str) -> int:
    compact = json.dumps(json.loads(text), separators=(",", ":"), ensure_ascii=False)
    return len(json.dumps(compact, ensure_ascii=False).encode()) - 2


def schema_of_size(size: int, name: str) -> str:
    base = stored_size(schema_text({"name": "id", "type": "string"}, name=name, doc=""))
    text = schema_text({"name": "id", "type": "string"}, name=name, doc="x" * (size - base))
    assert stored_size(text) == size
    return text


def response_of(sock: socket.socket) -> tuple[int, dict[str, str], Any]:
    """Read one HTTP/1.1 response (Content-Length framed) from a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65_536)
        assert piece, f"connection closed before a response: {data!r}"
        data += piece
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        piece = sock.recv(65_536)
        assert piece, "connection closed inside the response body"
        rest += piece
    return int(lines[0].split()[1]), headers, json.loads(rest[:length])


def request_head(registry: Registry, *headers: str) -> bytes:
    lines = [
        "POST /subjects/big-body/versions HTTP/1.1",
        f"Host: 127.0.0.1:{registry.port}",
        f"Content-Type: {MEDIA_TYPE}",
        *headers,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# --- 1. deep JSON ---------------------------------------------------------------------------------


def test_deeply_nested_json_body_is_400(http: httpx.Client) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    resp = http.post("/subjects/deep/versions", content=deep, headers={"Content-Type": MEDIA_TYPE})
    assert resp.status_code == 400, resp.text
    assert resp.json()["error_code"] == 400 and "nested too deeply" in resp.json()["message"]
    assert http.get("/").status_code == 200


# --- 2. body and schema size ------------------------------------------------------------------------


def test_declared_50_mb_body_is_refused_before_it_is_sent(registry: Registry) -> None:
    with socket.create_connection(("127.0.0.1", registry.port), timeout=60) as sock:
        sock.sendall(request_head(registry, f"Content-Length: {FIFTY_MB}"))  # and not a byte of the body
        status, headers, body = response_of(sock)
        assert (status, body["error_code"]) == (413, 41301)
        assert str(MAX_BODY_BYTES) in body["message"]
        assert headers["connection"] == "close"
        assert sock.recv(1) == b""  # closed: never drained


def test_50_mb_body_is_not_read_into_memory(registry: Registry) -> None:
    registry.reset_peak()
    before = registry.peak_mb()
    answer: tuple[int, int] | None = None
    try:
        resp = httpx.post(
            f"{registry.url}/subjects/big-body/versions",
            content=b" " * FIFTY_MB,
            headers={"Content-Type": MEDIA_TYPE},
            timeout=120,
        )
        answer = (resp.status_code, resp.json()["error_code"])
    except httpx.TransportError:
        pass  # the registry answered 413 and closed while the client was still sending: fine too
    grown = registry.peak_mb() - before
    assert grown < 30, f"peak RSS grew by {grown:.0f} MB for a body refused by its Content-Length"
    assert answer in (None, (413, 41301))


def test_chunked_body_is_cut_off_past_the_limit(registry: Registry) -> None:
    registry.reset_peak()
    before = registry.peak_mb()
    chunk = b" " * 65_536
    framed = b"%x\r\n" % len(chunk) + chunk + b"\r\n"
    sent = 0
    with socket.create_connection(("127.0.0.1", registry.port), timeout=60) as sock:
        sock.sendall(request_head(registry, "Transfer-Encoding: chunked"))
        try:
            while sent < FIFTY_MB and not select.select([sock], [], [], 0)[0]:  # until it answers
                sock.sendall(framed)
                sent += len(chunk)
            if sent >= FIFTY_MB:
                sock.sendall(b"0\r\n\r\n")  # a registry without a limit reads it all, then answers
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed after its answer, which is already in our receive buffer
        status, headers, body = response_of(sock)
    assert (status, body["error_code"]) == (413, 41301), body
    assert headers["connection"] == "close"
    assert sent < FIFTY_MB
    grown = registry.peak_mb() - before
    assert grown < 30, f"peak RSS grew by {grown:.0f} MB"


def test_schema_too_large_for_a_kafka_record_is_413_not_500(registry: Registry) -> None:
    client = SchemaRegistryClient({"url": registry.url})
    too_big = schema_of_size(1_100_000, name="TooBig")  # the 1.1 MB schema that answered 500 from Kafka
    err = error_of(lambda: client.register_schema("too-big-value", Schema(too_big, "AVRO")))
    assert (err.http_status_code, err.error_code) == (413, 41302), err.error_message
    assert str(MAX_SCHEMA_BYTES) in err.error_message
    just_over = schema_of_size(MAX_SCHEMA_BYTES + 1, name="JustOver")
    err = error_of(lambda: client.register_schema("too-big-value", Schema(just_over, "AVRO")))
    assert (err.http_status_code, err.error_code) == (413, 41302)
    assert error_of(lambda: client.get_versions("too-big-value")).error_code == 40401  # nothing written


def test_schema_of_the_documented_maximum_registers_and_reads_back(registry: Registry) -> None:
    largest = schema_of_size(MAX_SCHEMA_BYTES, name="Largest")
    subject = "a-topic.with-a-realistic-name.v1-value"
    client = SchemaRegistryClient({"url": registry.url})
    schema_id = client.register_schema(subject, Schema(largest, "AVRO"))
    fresh = SchemaRegistryClient({"url": registry.url})
    assert json.loads(fresh.get_schema(schema_id).schema_str) == json.loads(largest)
    assert fresh.get_latest_version(subject).schema_id == schema_id


# --- 3. a big schema's check does not block other subjects ------------------------------------------


def big_schema(fields: int) -> str:
    return schema_text(*({"name": f"f{i}", "type": "string", "default": ""} for i in range(fields)), name="Big")


def test_a_10000_field_check_does_not_block_other_subjects(registry: Registry, http: httpx.Client) -> None:
    run = uuid.uuid4().hex[:6]
    big_subject = f"big-{run}-value"
    first = http.post(f"/subjects/{big_subject}/versions", json={"schema": big_schema(10_000)})
    assert first.status_code == 200, first.text
    big: dict[str, Any] = {}

    def register_second_version() -> None:  # one more optional field: compatible, after a 10,000-field check
        big["start"] = time.monotonic()
        with httpx.Client(base_url=registry.url, timeout=300) as own:
            big["response"] = own.post(f"/subjects/{big_subject}/versions", json={"schema": big_schema(10_001)})
        big["end"] = time.monotonic()

    thread = threading.Thread(target=register_second_version, daemon=True)
    thread.start()
    others: list[tuple[str, float, float]] = []  # (what, start, end)
    small = schema_text({"name": "id", "type": "string"}, name=f"Small{run}")
    i = 0
    while thread.is_alive():
        start = time.monotonic()
        resp = http.post(f"/subjects/other-{run}-{i}-value/versions", json={"schema": small})
        assert resp.status_code == 200, resp.text
        others.append(("register", start, time.monotonic()))
        start = time.monotonic()
        assert http.get(f"/subjects/other-{run}-{i}-value/versions").json() == [1]
        others.append(("get", start, time.monotonic()))
        i += 1
    thread.join()
    assert big["response"].status_code == 200, big["response"].text
    assert http.get(f"/subjects/{big_subject}/versions").json() == [1, 2]
    big_took = big["end"] - big["start"]
    during = [(what, end - start) for what, start, end in others if start >= big["start"] and end <= big["end"]]
    assert sum(1 for what, _ in during if what == "register") >= 2, (big_took, others)
    slowest = max(end - start for _, start, end in others)
    print(f"10,000-field register {big_took:.1f}s; {len(during)} other requests meanwhile, slowest {slowest:.2f}s")
    assert slowest < big_took / 3, (
        f"a request on another subject took {slowest:.1f}s while the 10,000-field register took {big_took:.1f}s"
    )
