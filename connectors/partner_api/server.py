"""How uvicorn serves the partner API: bound before start-up, one line when ready, SIGTERM exits 0."""

from __future__ import annotations

import errno
import signal
import socket
import sys
from typing import Any

import uvicorn
from fastapi import FastAPI

from passerelle.connectors.partner_api.config import ApiStartupError


def bind(host: str, port: int) -> socket.socket:
    """A bound socket, or a one-line error saying why not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ApiStartupError(
                f"port {port} on {host} is already in use (another API running? set PASSERELLE_API_PORT or --port)"
            ) from exc
        raise ApiStartupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return sock


class Server(uvicorn.Server):
    """Says once when it accepts requests; SIGTERM ends it with status 0 (how supervisors stop it)."""

    url = ""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            print(f"partner API listening on {self.url} (docs at {self.url}/docs)", file=sys.stderr, flush=True)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await super().shutdown(sockets=sockets)
        self._captured_signals = [sig for sig in self._captured_signals if sig != signal.SIGTERM]


def server(app: FastAPI, host: str, port: int, **options: Any) -> Server:
    """A uvicorn server for ``app``; the proxy-headers middleware off (client addresses are not trusted)."""
    config = uvicorn.Config(app, ws="none", proxy_headers=False, lifespan="on", **options)
    srv = Server(config)
    shown = f"[{host}]" if ":" in host else host
    srv.url = f"http://{shown}:{port}"
    return srv
