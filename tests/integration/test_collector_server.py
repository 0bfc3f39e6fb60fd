"""Issue 17, the collector's HTTP server as deployed: ``passerelle collector``, real sockets on 127.0.0.1.

The ASGI test client calls the app directly and so bypasses what uvicorn
does around it (proxy headers, connection handling, concurrency limits):
these tests talk HTTP/1.1 over raw sockets to the real process. Every wait is
bounded, so a regression fails in seconds instead of hanging the suite.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import stop_process
from tests.integration.kafka_helpers import create_topics
from tests.integration.test_collector import KEY, SITE, read

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 2.0
"""Headers and body timeouts of the process under test: short, so each slow-client test takes seconds."""


@dataclass
class Served:
    port: int
    topic: str
    log: Path

    def log_since(self, offset: int) -> str:
        return self.log.read_text(errors="replace")[offset:]

    def log_size(self) -> int:
        return len(self.log.read_text(errors="replace"))

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serving(bootstrap: str, registry: str, log: Path, **settings: str) -> Iterator[Served]:
    """``passerelle collector`` on a free port with ``PASSERELLE_COLLECTOR_<NAME>`` settings, until the block ends."""
    port, topic = _free_port(), f"hits.raw.server.{uuid.uuid4().hex[:8]}"
    create_topics(bootstrap, {topic: 1})
    env = {k: v for k, v in os.environ.items() if not k.startswith("PASSERELLE_")}
    env.update(PASSERELLE_BOOTSTRAP_SERVERS=bootstrap, PASSERELLE_SCHEMA_REGISTRY_URL=registry,
               PASSERELLE_COLLECTOR_PORT=str(port), PASSERELLE_COLLECTOR_SITES=json.dumps({SITE: KEY}))  # fmt: skip
    env.update({f"PASSERELLE_COLLECTOR_{name.upper()}": value for name, value in settings.items()})
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "passerelle", "collector", "--topic", topic],
                                env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while "collector listening" not in log.read_text(errors="replace"):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield Served(port, topic, log)
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def guarded(
    kafka_bootstrap: str, schema_registry_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """One collector with 2 s headers and body timeouts and room for 4 connections, shared by the module."""
    log = tmp_path_factory.mktemp("collector") / "collector.log"
    with serving(kafka_bootstrap, schema_registry_url, log, headers_timeout_seconds=str(TIMEOUT_S),
                 body_timeout_seconds=str(TIMEOUT_S), max_concurrency="4") as served:  # fmt: skip
        yield served


def closed_after(sock: socket.socket, trickle: bytes, limit_s: float, every_s: float = 0.2) -> float | None:
    """Send ``trickle`` a byte at a time; the seconds until the server closed the connection (None: still open)."""
    started = time.monotonic()
    sock.settimeout(every_s)
    for byte in trickle:
        if time.monotonic() - started > limit_s:
            return None
        try:
            sock.sendall(bytes([byte]))
            if sock.recv(4096) == b"":
                return time.monotonic() - started
        except TimeoutError:
            continue
        except OSError:  # reset, broken pipe: closed
            return time.monotonic() - started
    return None


def answer(sock: socket.socket, limit_s: float) -> bytes:
    """Everything the server sends until it closes the connection (bounded by ``limit_s``)."""
    sock.settimeout(limit_s)
    data = b""
    with contextlib.suppress(TimeoutError, ConnectionResetError):
        while chunk := sock.recv(4096):
            data += chunk
    return data


def wait_for(predicate: Callable[[], bool], limit_s: float = 5.0) -> None:
    deadline = time.monotonic() + limit_s
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.05)


# --- item 7: X-Forwarded-For -----------------------------------------------------------------------------------


def pixel_from_localhost(served: Served, visitor: str) -> None:
    resp = httpx.get(f"http://127.0.0.1:{served.port}/hit", headers={"X-Forwarded-For": "198.51.100.7"},
                     params={"site": SITE, "vid": visitor, "url": "https://shop.example/"})  # fmt: skip
    assert resp.status_code == 200, resp.text


def test_forwarded_for_is_ignored_unless_trusted(
    kafka_bootstrap: str, schema_registry_url: str, tmp_path: Path
) -> None:
    """Item 7: with TRUST_FORWARDED=false (the default) uvicorn still believed X-Forwarded-For from 127.0.0.1."""
    with serving(kafka_bootstrap, schema_registry_url, tmp_path / "off.log") as served:
        pixel_from_localhost(served, "xff-off")
        records = read(kafka_bootstrap, schema_registry_url, served.topic, until=1)
    assert [value["ip_truncated"] for _, value in records] == ["127.0.0.0"]

    with serving(kafka_bootstrap, schema_registry_url, tmp_path / "on.log", trust_forwarded="true") as served:
        pixel_from_localhost(served, "xff-on")  # 127.0.0.1 is a trusted proxy by default
        records = read(kafka_bootstrap, schema_registry_url, served.topic, until=1)
    assert [value["ip_truncated"] for _, value in records] == ["198.51.100.0"]


# --- item 9: slow clients ----------------------------------------------------------------------------------------


def test_headers_sent_a_byte_at_a_time_are_cut_off(guarded: Served) -> None:
    """Item 9: headers at 5 bytes/s held a connection as long as the client liked."""
    before = guarded.log_size()
    request = f"GET /hit?site={SITE}&vid=slow HTTP/1.1\r\nHost: x\r\nUser-Agent: {'s' * 200}\r\n\r\n".encode()
    with guarded.connect() as sock:
        elapsed = closed_after(sock, request, limit_s=TIMEOUT_S + 5)
    assert elapsed is not None, "the server kept a connection whose headers never ended"
    assert elapsed < TIMEOUT_S + 2
    wait_for(lambda: "headers" in guarded.log_since(before))
    new = guarded.log_since(before)
    assert "Traceback" not in new
    assert len([line for line in new.splitlines() if "headers" in line]) == 1, new


def test_a_connection_that_sends_nothing_is_closed(guarded: Served) -> None:
    with guarded.connect() as sock:
        started = time.monotonic()
        assert answer(sock, TIMEOUT_S + 5) == b""
        assert time.monotonic() - started < TIMEOUT_S + 2


def test_a_body_sent_a_byte_at_a_time_is_answered_408(guarded: Served) -> None:
    """Item 9: the body of a batch at 5 bytes/s held the connection (and the request) for minutes."""
    body = json.dumps([{"visitor_id": "slow-body", "url": "https://shop.example/"}]).encode().ljust(400)
    head = (f"POST /v1/events HTTP/1.1\r\nHost: x\r\nX-Api-Key: {KEY}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()  # fmt: skip
    before = guarded.log_size()
    with guarded.connect() as sock:
        sock.sendall(head)
        elapsed = closed_after(sock, body, limit_s=TIMEOUT_S + 5)
        assert elapsed is not None, "the server waited for a body trickling in at 5 bytes/s"
        assert elapsed < TIMEOUT_S + 2
    new = guarded.log_since(before)
    assert "Traceback" not in new


def test_the_408_reaches_a_client_that_stops_sending(guarded: Served) -> None:
    head = (f"POST /v1/events HTTP/1.1\r\nHost: x\r\nX-Api-Key: {KEY}\r\nContent-Type: application/json\r\n"
            "Content-Length: 500\r\n\r\n[{").encode()  # fmt: skip
    with guarded.connect() as sock:
        sock.sendall(head)
        started = time.monotonic()
        data = answer(sock, TIMEOUT_S + 5)
        assert time.monotonic() - started < TIMEOUT_S + 2
    assert data.startswith(b"HTTP/1.1 408 "), data
    assert b"connection: close" in data.lower()


def test_a_body_answered_without_being_read_does_not_hold_the_connection(guarded: Served) -> None:
    """A request answered at once (here 405) whose body keeps trickling: bounded by headers + body timeouts."""
    head = b"POST /hit HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n"
    with guarded.connect() as sock:
        sock.sendall(head)
        elapsed = closed_after(sock, b"x" * 5000, limit_s=2 * TIMEOUT_S + 5)
    assert elapsed is not None, "the server kept reading a body nobody wanted"
    assert elapsed < 2 * TIMEOUT_S + 2


def test_a_client_that_disconnects_mid_body_is_one_log_line(guarded: Served) -> None:
    """Item 9: each such disconnect logged "Exception in ASGI application" and a full traceback."""
    before = guarded.log_size()
    head = (f"POST /v1/events HTTP/1.1\r\nHost: x\r\nX-Api-Key: {KEY}\r\nContent-Type: application/json\r\n"
            "Content-Length: 500\r\n\r\n[{\"visitor_id\":").encode()  # fmt: skip
    with guarded.connect() as sock:
        sock.sendall(head)
        time.sleep(0.2)
    wait_for(lambda: "disconnected" in guarded.log_since(before))
    time.sleep(0.3)
    new = guarded.log_since(before)
    assert "Traceback" not in new and "Exception in ASGI" not in new, new
    assert len([line for line in new.splitlines() if "disconnected" in line]) == 1, new


def test_concurrent_connections_are_bounded(guarded: Served) -> None:
    """Item 9: without a limit, slow clients could open connections until the process ran out of them."""
    held = [guarded.connect() for _ in range(3)]
    try:
        for sock in held:
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # started, never finished
        time.sleep(0.1)
        resp = httpx.get(f"http://127.0.0.1:{guarded.port}/healthz", timeout=5)
        assert resp.status_code == 503, resp.text
    finally:
        for sock in held:
            sock.close()
    wait_for(lambda: httpx.get(f"http://127.0.0.1:{guarded.port}/healthz", timeout=5).status_code == 200)
    assert httpx.get(f"http://127.0.0.1:{guarded.port}/healthz", timeout=5).status_code == 200


def test_valid_traffic_is_served_as_before(guarded: Served, kafka_bootstrap: str, schema_registry_url: str) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{guarded.port}", timeout=10) as client:
        pixel = client.get("/hit", params={"site": SITE, "vid": "fine-pixel", "url": "https://shop.example/"})
        events = [{"visitor_id": "fine-batch", "url": "https://shop.example/?utm_source=nl"}]
        batch = client.post("/v1/events", headers={"X-Api-Key": KEY}, json=events)
        again = client.get("/hit", params={"site": SITE, "vid": "fine-again", "url": "https://shop.example/"})
    assert (pixel.status_code, batch.status_code, again.status_code) == (200, 200, 200), batch.text
    records = read(kafka_bootstrap, schema_registry_url, guarded.topic, until=3, idle=3)
    visitors = {value["visitor_id"] for _, value in records}
    assert {"fine-pixel", "fine-batch", "fine-again"} <= visitors
