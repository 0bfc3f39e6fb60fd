"""How uvicorn serves the partner API: the proxy-headers middleware off, one line when ready, SIGTERM exits 0."""

from __future__ import annotations

import socket
from typing import Any

import uvicorn
from fastapi import FastAPI

from passerelle.connectors import serving


def bind(host: str, port: int) -> socket.socket:
    """A bound socket, or a one-line error naming ``PASSERELLE_API_PORT``."""
    return serving.bind(host, port, service="API", port_setting="PASSERELLE_API_PORT")


def server(app: FastAPI, host: str, port: int, **options: Any) -> serving.Server:
    """A uvicorn server for ``app``; the proxy-headers middleware off (client addresses are not trusted)."""
    config = uvicorn.Config(app, ws="none", proxy_headers=False, lifespan="on", **options)
    url = serving.url_of(host, port)
    return serving.Server(config, f"partner API listening on {url} (docs at {url}/docs)")
