"""A burst of new connections to a busy server is taken at once, not one per turn of the event loop.

Real sockets on 127.0.0.1 and the collector's server stack (``serving.Server``,
uvloop and httptools when installed). The server's loop is kept busy by a few
clients whose requests each hold it for 10 ms; a burst of connections then
arrives. How long the burst takes is counted in busy requests served
meanwhile, not in seconds: a slow machine slows both alike. With one
connection accepted per turn (uvloop's own servers), the burst of 64 lets
about 64 turns of busy requests through (about 200 requests here); accepted at once, a dozen.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest
import uvicorn
import uvloop

from passerelle.connectors import serving
from passerelle.connectors.accepting import AcceptingServer

BUSY_CLIENTS = 4
BURST = 64


class App:
    """``/busy`` holds the loop 10 ms (a batch being validated and encoded); anything else answers at once."""

    def __init__(self) -> None:
        self.busy_served = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["path"] == "/busy":
            time.sleep(0.01)
            self.busy_served += 1
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})


@contextlib.contextmanager
def served(app: App, server_class: type[uvicorn.Server] = serving.Server) -> Iterator[tuple[int, uvicorn.Server]]:
    sock = serving.bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    server = server_class(config, "ready") if server_class is serving.Server else server_class(config)  # type: ignore[call-arg]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.01)
    try:
        yield port, server
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def busy_client(port: int, stop: threading.Event) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    while not stop.is_set():
        conn.request("GET", "/busy")
        conn.getresponse().read()
    conn.close()


def burst(port: int) -> list[bytes]:
    """``BURST`` connections opened together, one request each; their answers."""
    socks = []
    for _ in range(BURST):
        sock = socket.socket()
        sock.settimeout(60)
        sock.connect(("127.0.0.1", port))  # completed by the kernel: the server has not accepted it yet
        socks.append(sock)
    for sock in socks:
        sock.sendall(b"GET /fast HTTP/1.1\r\nhost: test\r\n\r\n")
    answers = []
    for sock in socks:
        data = b""
        while not data.endswith(b"ok"):
            chunk = sock.recv(4096)
            assert chunk, "connection closed before the answer"
            data += chunk
        answers.append(data)
        sock.close()
    return answers


def busy_requests_during_burst(server_class: type[uvicorn.Server] = serving.Server) -> int:
    app = App()
    with served(app, server_class) as (port, _):
        stop = threading.Event()
        clients = [threading.Thread(target=busy_client, args=(port, stop), daemon=True) for _ in range(BUSY_CLIENTS)]
        for client in clients:
            client.start()
        try:
            while app.busy_served < 20:  # the loop is busy
                time.sleep(0.01)
            before = app.busy_served
            answers = burst(port)
            during = app.busy_served - before
        finally:
            stop.set()
            for client in clients:
                client.join(30)
    assert len(answers) == BURST and all(a.startswith(b"HTTP/1.1 200") for a in answers)
    return during


def test_a_burst_of_connections_to_a_busy_server_is_accepted_at_once() -> None:
    during = busy_requests_during_burst()
    # Accepted at once: the burst's requests are read at the next turns. One per turn: ~BURST turns of busy requests.
    assert during < BURST, f"{during} busy requests were served while {BURST} new connections waited"


def test_the_accepting_server_stops_at_close_and_leaves_the_socket_open() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        sock = serving.bind("127.0.0.1", 0)
        server = AcceptingServer(loop, sock, asyncio.Protocol, backlog=16)
        assert server.is_serving()
        server.close()
        await server.wait_closed()
        assert not server.is_serving()
        assert sock.fileno() != -1  # uvicorn closes the sockets it was given, after its servers
        client = socket.create_connection(sock.getsockname(), timeout=5)  # queued by the kernel, not accepted
        await asyncio.sleep(0.05)
        assert server.get_loop() is loop
        client.close()
        sock.close()

    asyncio.run(scenario())


def test_uvicorns_own_listener_is_what_the_burst_test_tells_apart() -> None:
    """The same burst against uvicorn's own listener (the loop's ``create_server``): the first test tells them apart.

    Should a later uvloop accept every waiting connection again, this fails, and ``AcceptingServer`` may go.
    """
    during = busy_requests_during_burst(uvicorn.Server)
    assert during >= 2 * BURST, f"only {during} busy requests during the burst: the test no longer tells them apart"


LOOPS = [pytest.param(None, id="asyncio"), pytest.param(uvloop.new_event_loop, id="uvloop")]


@pytest.mark.parametrize("loop_factory", LOOPS)
def test_a_connection_whose_protocol_fails_does_not_stop_the_others(
    caplog: pytest.LogCaptureFixture, loop_factory: Callable[[], asyncio.AbstractEventLoop] | None
) -> None:
    class Hello(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            stream = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
            stream.write(b"hello")
            stream.close()

    made = [0]

    def factory() -> asyncio.Protocol:
        made[0] += 1
        if made[0] == 1:
            raise RuntimeError("first protocol fails")
        return Hello()

    async def scenario() -> bytes:
        loop = asyncio.get_running_loop()
        sock = serving.bind("127.0.0.1", 0)
        server = AcceptingServer(loop, sock, factory, backlog=16)
        try:
            first = await asyncio.open_connection(*sock.getsockname())
            assert await asyncio.wait_for(first[0].read(), 10) == b""  # closed, no answer
            first[1].close()
            second = await asyncio.open_connection(*sock.getsockname())
            answer = await asyncio.wait_for(second[0].read(), 10)
            second[1].close()
            return answer
        finally:
            server.close()
            sock.close()

    with caplog.at_level("ERROR", logger="passerelle.connectors.accepting"), asyncio.Runner(
        loop_factory=loop_factory
    ) as runner:
        assert runner.run(scenario()) == b"hello"
    assert "could not serve an accepted connection" in caplog.text
