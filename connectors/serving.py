"""How the HTTP services (collector, partner API) are served by uvicorn from the command line.

Both bind their port before anything else starts, so a taken port is one
``error:`` line naming the setting to change, not a log of a half-started
server; both print one line when they accept requests; and both exit 0 on
SIGTERM, which is how supervisors (systemd, Kubernetes) stop a healthy
process. uvicorn re-raises a captured SIGTERM after its shutdown, which
would end the process with status 143.
"""

from __future__ import annotations

import asyncio
import errno
import signal
import socket
import sys

import uvicorn

from passerelle.connectors.accepting import AcceptingServer
from passerelle.errors import PasserelleError


def bind(host: str, port: int, *, service: str = "server", port_setting: str = "--port") -> socket.socket:
    """A bound socket, or a one-line error saying why not (``service`` and ``port_setting`` name what to change)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PasserelleError(
                f"port {port} on {host} is already in use (another {service} running? set {port_setting} or --port)"
            ) from exc
        raise PasserelleError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return sock


def url_of(host: str, port: int) -> str:
    """``http://host:port``, an IPv6 address in brackets."""
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


class Server(uvicorn.Server):
    """Prints ``ready_line`` once it accepts requests; SIGTERM ends it with status 0.

    The sockets it is given are served by ``AcceptingServer`` (every waiting
    connection at each wake-up) rather than by the loop's ``create_server``,
    which under uvloop takes one connection per turn of the loop; TLS, which
    uvicorn would handle, keeps uvicorn's way.
    """

    def __init__(self, config: uvicorn.Config, ready_line: str) -> None:
        super().__init__(config)
        self.ready_line = ready_line

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        if sockets is None or self.config.ssl is not None:
            await super().startup(sockets=sockets)
        else:
            await super().startup(sockets=[])  # the lifespan and the server's state, no listener yet
            loop = asyncio.get_running_loop()
            accepting = [AcceptingServer(loop, s, self._protocol, self.config.backlog) for s in sockets]
            self.servers = accepting  # type: ignore[assignment]  # what uvicorn closes and awaits at shutdown
        if self.started:
            print(self.ready_line, file=sys.stderr, flush=True)

    def _protocol(self) -> asyncio.Protocol:
        """One connection's protocol, as uvicorn's own ``startup`` makes it."""
        protocol: asyncio.Protocol = self.config.http_protocol_class(  # type: ignore[call-arg]
            config=self.config, server_state=self.server_state, app_state=self.lifespan.state
        )
        return protocol

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await super().shutdown(sockets=sockets)
        self._captured_signals = [sig for sig in self._captured_signals if sig != signal.SIGTERM]
