"""Run the embedded registry: bind the port, load the topic, serve HTTP in the foreground.

The port is bound before Kafka is touched so a second registry fails at once
with a clear message instead of after loading the topic; the socket is then
handed to uvicorn, so nothing can take the port in between.
"""

from __future__ import annotations

import errno
import logging
import signal
import socket
import sys
import time
import urllib.request
from collections.abc import Callable

import uvicorn

from schemas.registry.app import create_app
from schemas.registry.errors import RegistryStartupError
from schemas.registry.service import SchemaRegistry
from schemas.registry.state import RegistryState
from schemas.registry.store import KafkaStore

log = logging.getLogger(__name__)


class PortInUseError(RegistryStartupError):
    """Another process listens on the registry's port."""


class RegistryNotReadyError(RegistryStartupError):
    """The registry did not answer within the time allowed."""


def bind(host: str, port: int) -> socket.socket:
    """A bound (not yet listening) socket, or a one-line error saying why not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT leftovers are no conflict
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUseError(
                f"port {port} on {host} is already in use (another registry running? set PASSERELLE_REGISTRY_PORT)"
            ) from exc
        raise RegistryStartupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return sock


class _Server(uvicorn.Server):
    """uvicorn server that says once, on stderr, when it really accepts requests."""

    def __init__(self, config: uvicorn.Config, on_ready: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_ready = on_ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            self._on_ready()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await super().shutdown(sockets=sockets)
        # SIGTERM is how `passerelle down` stops a service: return normally (exit 0, store closed)
        # instead of uvicorn re-raising it once shut down, which would kill the process by the signal.
        self._captured_signals = [sig for sig in self._captured_signals if sig != signal.SIGTERM]


def run(bootstrap_servers: str, host: str, port: int, topic: str) -> None:
    """Serve the registry until interrupted; start-up problems raise ``RegistryStartupError`` (one line)."""
    sock = bind(host, port)
    state = RegistryState()
    store = KafkaStore(bootstrap_servers, topic, state)
    try:
        store.start()
        app = create_app(SchemaRegistry(state, store))
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")

        def ready() -> None:
            print(f"schema registry listening on http://{host}:{port} (topic {topic})", file=sys.stderr, flush=True)

        _Server(config, on_ready=ready).run(sockets=[sock])
    finally:
        store.close()
        sock.close()


def wait_ready(url: str, timeout: float) -> None:
    """Block until ``GET url/`` answers 200, so callers start using the registry only once it has loaded."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url.rstrip("/") + "/", timeout=2) as resp:
                if resp.status == 200:
                    return
                last = f"HTTP {resp.status}"
        except Exception as exc:
            last = str(exc)
        time.sleep(0.2)
    raise RegistryNotReadyError(f"the schema registry at {url} did not answer within {timeout:.0f}s ({last})")
