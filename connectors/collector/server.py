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
  ``GuardedH11Protocol`` closes a connection that has not delivered a
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

from passerelle.connectors.collector.config import CollectorConfig

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger(__name__)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline whenever the server waits on the client rather than on the app.

    The deadline is armed when the connection opens and when a response is
    complete, and cleared only when the app starts on a new request: bytes
    trickling in do not push it back, which is the whole point. A connection
    still waiting at the deadline is closed, with one log line.
    """

    headers_timeout_s: ClassVar[float] = 10.0
    body_timeout_s: ClassVar[float] = 20.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._guard()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._deadline is not None and self._busy():
            self._disarm()  # a request's headers are in: the app and its own timeouts take over

    def on_response_complete(self) -> None:
        super().on_response_complete()  # may start a pipelined request
        self._guard()

    def _busy(self) -> bool:
        """The app is handling a request (its body, if it reads one, is bounded by the app)."""
        return self.cycle is not None and not self.cycle.response_complete

    def _guard(self) -> None:
        if self._busy() or self.transport.is_closing():
            self._disarm()
        elif self._deadline is None:
            # Unread body of an answered request (a 413, a GET with a body): that, then the next headers.
            draining = self.conn.their_state is h11.SEND_BODY
            timeout = self.headers_timeout_s + (self.body_timeout_s if draining else 0.0)
            self._deadline = self.loop.call_later(timeout, self._expired, timeout)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self, timeout: float) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        pending, _ = self.conn.trailing_data
        if self.conn.their_state is h11.SEND_BODY:
            log.info("closed a connection: the rest of a request body did not arrive within %gs", timeout)
        elif pending:
            log.info("closed a connection: request headers not complete after %gs (%d bytes)", timeout, len(pending))
        else:
            log.debug("closed an idle connection after %gs", timeout)  # pre-connections, keep-alives: routine
        self.transport.close()


def guarded_protocol(config: CollectorConfig) -> type[GuardedH11Protocol]:
    """The protocol class with ``config``'s timeouts (uvicorn instantiates it per connection)."""
    attrs = {"headers_timeout_s": config.headers_timeout_s, "body_timeout_s": config.body_timeout_s}
    return type("GuardedH11Protocol", (GuardedH11Protocol,), attrs)


def uvicorn_config(app: FastAPI, config: CollectorConfig, **options: Any) -> uvicorn.Config:
    """uvicorn settings for the collector; ``options`` (log level, lifespan...) are passed on."""
    return uvicorn.Config(
        app,
        http=guarded_protocol(config),
        ws="none",
        proxy_headers=False,
        limit_concurrency=config.max_concurrency,
        **options,
    )
