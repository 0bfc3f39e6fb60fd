"""Run the embedded registry: bind the port, load the topic, serve HTTP in the foreground.

The port is bound before Kafka is touched so a second registry fails at once
with a clear message instead of after loading the topic; the socket is then
handed to uvicorn, so nothing can take the port in between. The auth file and
the TLS certificate are checked before that, so a mistake in either is one
line at once.
"""

from __future__ import annotations

import errno
import logging
import signal
import socket
import ssl
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import uvicorn

from passerelle.schemas.clients import Connection
from passerelle.schemas.registry.app import MAX_BODY_BYTES, create_app
from passerelle.schemas.registry.auth import Authenticator
from passerelle.schemas.registry.errors import RegistryStartupError
from passerelle.schemas.registry.service import MAX_SCHEMA_BYTES, SchemaRegistry
from passerelle.schemas.registry.state import RegistryState
from passerelle.schemas.registry.store import KafkaStore

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


class TlsConfigError(RegistryStartupError):
    """The certificate or key for HTTPS is missing, unreadable or does not match."""


def check_tls(certfile: Path | None, keyfile: Path | None) -> tuple[Path, Path] | None:
    """Both files for HTTPS, or None for plain HTTP; one without the other, or a bad pair, is one error."""
    if certfile is None and keyfile is None:
        return None
    if certfile is None or keyfile is None:
        given, missing = (
            ("PASSERELLE_REGISTRY_SSL_CERTFILE", "PASSERELLE_REGISTRY_SSL_KEYFILE")
            if certfile is not None
            else ("PASSERELLE_REGISTRY_SSL_KEYFILE", "PASSERELLE_REGISTRY_SSL_CERTFILE")
        )
        raise TlsConfigError(f"{given} is set but {missing} is not: HTTPS needs both the certificate and its key")
    certfile, keyfile = Path(certfile).expanduser(), Path(keyfile).expanduser()
    for path in (certfile, keyfile):
        if not path.is_file():
            raise TlsConfigError(f"cannot read {path} for HTTPS: no such file")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(certfile, keyfile)
    except (ssl.SSLError, OSError) as exc:
        raise TlsConfigError(
            f"cannot use certificate {certfile} with key {keyfile} for HTTPS: "
            f"{getattr(exc, 'reason', None) or exc.strerror or exc} (both must be PEM, and the key must match)"
        ) from None
    return certfile, keyfile


def run(
    conn: Connection,
    host: str,
    port: int,
    topic: str,
    auth_file: Path | None = None,
    ssl_certfile: Path | None = None,
    ssl_keyfile: Path | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    max_schema_bytes: int = MAX_SCHEMA_BYTES,
) -> None:
    """Serve the registry until interrupted; start-up problems raise ``RegistryStartupError`` (one line).

    ``auth_file``: users and roles (see :mod:`passerelle.schemas.registry.auth`), else no
    authentication; ``ssl_certfile`` and ``ssl_keyfile`` together: HTTPS.
    ``max_body_bytes`` and ``max_schema_bytes``: the limits (413 over them) the
    app and service modules document.
    """
    authenticator = Authenticator.from_file(auth_file) if auth_file is not None else None
    tls = check_tls(ssl_certfile, ssl_keyfile)
    sock = bind(host, port)
    state = RegistryState()
    store = KafkaStore(conn, topic, state)
    try:
        store.start()
        app = create_app(SchemaRegistry(state, store, max_schema_bytes), authenticator, max_body_bytes)
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            ssl_certfile=str(tls[0]) if tls else None,
            ssl_keyfile=str(tls[1]) if tls else None,
        )
        scheme = "https" if tls else "http"
        guarded = f", basic auth for {len(authenticator.users)} user(s)" if authenticator else ""

        def ready() -> None:
            print(
                f"schema registry listening on {scheme}://{host}:{port} (topic {topic}{guarded})",
                file=sys.stderr,
                flush=True,
            )

        _Server(config, on_ready=ready).run(sockets=[sock])
    finally:
        store.close()
        sock.close()


def wait_ready(url: str, timeout: float, cafile: str | Path | None = None) -> None:
    """Block until ``GET url/`` answers 200, so callers start using the registry only once it has loaded.

    ``cafile`` verifies an HTTPS registry whose certificate no system CA signed.
    """
    context = ssl.create_default_context(cafile=str(cafile)) if cafile is not None else None
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url.rstrip("/") + "/", timeout=2, context=context) as resp:
                if resp.status == 200:
                    return
                last = f"HTTP {resp.status}"
        except Exception as exc:
            last = str(exc)
        time.sleep(0.2)
    raise RegistryNotReadyError(f"the schema registry at {url} did not answer within {timeout:.0f}s ({last})")
