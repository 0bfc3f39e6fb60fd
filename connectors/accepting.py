"""Accepting the HTTP services' connections: every waiting connection at each wake-up, not one per loop iteration.

Since libuv 1.45 (libuv pull request 3696), uvloop's servers accept one
connection per turn of the event loop: most wake-ups have only one waiting.
A busy collector's turn runs every request that became ready, 20 to 70 ms
under load, so a burst of new connections (a newsletter, a TV spot, a load
generator starting) waits in the kernel's accept queue and is taken at about
50 connections per second. Measured on a collector serving batches of 20 to
256 new connections (``docs/measurements.md``): the last one was accepted 4.9
s after it connected, and a tenth of the requests waited over a second for
it, when no request took more than 131 ms inside the server.

``AcceptingServer`` does what asyncio's own loop does: a reader on the
listening socket accepts until the queue is empty, at most ``ACCEPT_BURST``
per wake-up so that a flood of connections cannot hold the loop, and hands
each connection to the loop's own transport (``connect_accepted_socket``:
uvloop's, with ``TCP_NODELAY``, when uvloop runs). With ``--workers``, the
processes sharing the socket race for what waits: wrk's 32 connections split
16/16 between two workers, its 256 split 144/112 (uvloop's one per turn:
17/15 and 128/128), and a busy worker leaves more to an idle one.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable

log = logging.getLogger(__name__)

ACCEPT_BURST = 512
"""Connections accepted per wake-up at most; the rest are taken at the next turn of the loop."""
RETRY_DELAY_S = 1.0
"""Out of file descriptors or memory: accepting pauses this long (asyncio's own loop does the same)."""
_PAUSING_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class AcceptingServer(asyncio.AbstractServer):
    """A listening socket served on ``loop``: what uvicorn's ``Server`` needs of the servers it closes at shutdown.

    The socket stays its owner's: ``close`` stops accepting, it does not close the socket.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        protocol_factory: Callable[[], asyncio.Protocol],
        backlog: int,
    ) -> None:
        self._loop, self._sock, self._protocol_factory = loop, sock, protocol_factory
        self._connecting: set[asyncio.Task[object]] = set()
        sock.setblocking(False)
        sock.listen(backlog)
        self._serving = True
        loop.add_reader(sock.fileno(), self._accept)

    def _accept(self) -> None:
        for _ in range(ACCEPT_BURST):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return  # the queue is empty
            except ConnectionAbortedError:
                continue  # that client gave up before its turn
            except OSError as exc:
                if exc.errno not in _PAUSING_ERRORS:
                    raise
                log.error("cannot accept connections (%s): trying again in %gs", exc, RETRY_DELAY_S)
                self._loop.remove_reader(self._sock.fileno())
                self._loop.call_later(RETRY_DELAY_S, self._resume)
                return
            conn.setblocking(False)
            task = self._loop.create_task(self._connect(conn))
            self._connecting.add(task)
            task.add_done_callback(self._connecting.discard)

    async def _connect(self, conn: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self._protocol_factory, conn)
        except OSError as exc:  # reset before the transport was made: nothing to answer
            log.debug("connection lost as it was accepted: %s", exc)
            conn.close()
        except Exception:  # the protocol could not be made: this connection only, the others go on
            log.exception("could not serve an accepted connection")
            conn.close()

    def _resume(self) -> None:
        if self._serving:
            self._loop.add_reader(self._sock.fileno(), self._accept)

    # asyncio.AbstractServer

    def close(self) -> None:
        if self._serving:
            self._serving = False
            self._loop.remove_reader(self._sock.fileno())

    async def wait_closed(self) -> None:
        return None

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return self._serving

    async def start_serving(self) -> None:
        return None

    async def serve_forever(self) -> None:
        raise NotImplementedError("served by uvicorn's Server: use Server.serve()")
