"""How uvicorn serves the collector on a public port: who is believed, how long a client may take, how many at once.

uvicorn's defaults suit an app behind a trusted front end, not a port any
browser or script reaches:

- its proxy-headers middleware rewrites the client address from
  ``X-Forwarded-For`` for peers in ``FORWARDED_ALLOW_IPS`` (127.0.0.1 by
  default), whatever the collector's own setting says. It is turned off:
  the app reads the header itself, and only from the configured proxies.
- its HTTP/1.1 protocol has no time limit for a request to arrive: a new
  connection may stay silent, and headers sent a byte at a time hold it for
  as long as the client likes (each byte cancels the keep-alive timer).
  ``GuardedHttpToolsProtocol`` (``GuardedH11Protocol`` without httptools) closes a connection that has not delivered a
  request's headers within ``headers_timeout_s``; the app bounds the body it
  reads (``body_timeout_s``, answered 408), and the same protocol deadline
  bounds a body the app answered without reading.
- no bound on concurrent connections and requests: ``limit_concurrency``
  answers 503 beyond ``max_concurrency``.

WebSocket upgrades are off: the collector has none, and an upgraded
connection would leave the guarded protocol.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, ClassVar

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from passerelle.connectors.collector.config import CollectorConfig, CollectorStartupError

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools not installed: h11 only
    HttpToolsProtocol = None  # type: ignore[assignment,misc]

if TYPE_CHECKING:
    from starlette.types import ASGIApp

log = logging.getLogger(__name__)


class _Deadline:
    """The deadline logic, shared by the h11 and httptools protocols (a mixin placed before the protocol class).

    The deadline is armed when the connection opens and when a response is
    complete, and cleared only when the app starts on a new request: bytes
    trickling in do not push it back, which is the whole point. A connection
    still waiting at the deadline is closed, with one log line.
    """

    headers_timeout_s: ClassVar[float] = 10.0
    body_timeout_s: ClassVar[float] = 20.0
    _deadline: asyncio.TimerHandle | None = None
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    cycle: Any

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._guard()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)  # type: ignore[misc]

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # type: ignore[misc]
        if self._deadline is not None and self._busy():
            self._disarm()  # a request's headers are in: the app and its own timeouts take over

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]  # may start a pipelined request
        self._guard()

    def _busy(self) -> bool:
        """The app is handling a request (its body, if it reads one, is bounded by the app)."""
        return self.cycle is not None and not self.cycle.response_complete

    def _draining(self) -> bool:
        """The client is still sending the body of a request the app has answered."""
        raise NotImplementedError

    def _pending_headers(self) -> int:
        """Bytes of a request whose headers are not complete yet (0: none)."""
        raise NotImplementedError

    def _guard(self) -> None:
        if self._busy() or self.transport.is_closing():
            self._disarm()
        elif self._deadline is None:
            # Unread body of an answered request (a 413, a GET with a body): that, then the next headers.
            timeout = self.headers_timeout_s + (self.body_timeout_s if self._draining() else 0.0)
            self._deadline = self.loop.call_later(timeout, self._expired, timeout)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self, timeout: float) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        pending = self._pending_headers()
        if self._draining():
            log.info("closed a connection: the rest of a request body did not arrive within %gs", timeout)
        elif pending:
            log.info("closed a connection: request headers not complete after %gs (%d bytes)", timeout, pending)
        else:
            log.debug("closed an idle connection after %gs", timeout)  # pre-connections, keep-alives: routine
        self.transport.close()


class GuardedH11Protocol(_Deadline, H11Protocol):  # type: ignore[misc]
    """uvicorn's h11 protocol with a deadline whenever the server waits on the client rather than on the app."""

    def _draining(self) -> bool:
        return self.conn.their_state is h11.SEND_BODY

    def _pending_headers(self) -> int:
        pending, _ = self.conn.trailing_data
        return len(pending)


if HttpToolsProtocol is not None:

    class GuardedHttpToolsProtocol(_Deadline, HttpToolsProtocol):  # type: ignore[misc]
        """uvicorn's httptools protocol (the C parser: several times less CPU per request than h11), guarded.

        httptools keeps no buffer of a partial request, so the parser's
        callbacks tell where the client is: a message begun whose headers are
        not complete, or whose body is not complete.
        """

        _state: str = "idle"  # idle, headers (message begun), body (headers complete, message not)
        _received: int = 0

        def data_received(self, data: bytes) -> None:
            if self._state != "body":
                self._received += len(data)
            super().data_received(data)

        def on_message_begin(self) -> None:
            self._state = "headers"
            super().on_message_begin()

        def on_headers_complete(self) -> None:
            self._state, self._received = "body", 0
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._state = "idle"
            super().on_message_complete()

        def _draining(self) -> bool:
            return self._state == "body"

        def _pending_headers(self) -> int:
            return self._received if self._state == "headers" else 0


def guarded_protocol(config: CollectorConfig, http: str = "auto") -> type[asyncio.Protocol]:
    """The protocol class with ``config``'s timeouts (uvicorn instantiates it per connection).

    ``http``: ``auto`` (httptools when installed, else h11), ``httptools`` or ``h11``.
    """
    if http not in ("auto", "h11", "httptools"):
        raise ValueError(f"unknown HTTP protocol {http!r}: auto, h11 or httptools")
    if http == "httptools" and HttpToolsProtocol is None:
        raise CollectorStartupError("httptools is not installed: pip install httptools (or use the h11 protocol)")
    base: type[asyncio.Protocol] = GuardedH11Protocol
    if http != "h11" and HttpToolsProtocol is not None:
        base = GuardedHttpToolsProtocol
    attrs = {"headers_timeout_s": config.headers_timeout_s, "body_timeout_s": config.body_timeout_s}
    return type(base.__name__, (base,), attrs)


def uvicorn_config(app: ASGIApp, config: CollectorConfig, http: str = "auto", **options: Any) -> uvicorn.Config:
    """uvicorn settings for the collector; ``options`` (log level, lifespan...) are passed on.

    The event loop is uvloop when installed (uvicorn's ``auto``), the parser httptools (``http``).
    """
    return uvicorn.Config(
        app,
        http=guarded_protocol(config, http),
        ws="none",
        proxy_headers=False,
        limit_concurrency=config.max_concurrency,
        **options,
    )
