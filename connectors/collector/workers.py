"""``passerelle collector --workers N``: N collector processes on one port, each with its own Kafka producer.

One Python process uses one core. With N > 1 the parent binds the port once
and starts N workers, fresh interpreters (``python -m passerelle collector``
with the listening socket's descriptor passed on), which accept connections
on that same socket: the kernel spreads them. Each worker starts its own
producer (schemas, delivery reports) and answers its own requests; nothing is
shared but the socket, so every promise holds per worker as it does alone.

The parent does no HTTP. It waits: SIGTERM or SIGINT is passed on to every
worker, which finishes its requests and flushes its producer, and the parent
exits 0 once all of them have (status 1 if one had to be killed). A worker
that exits by itself (a start-up error, a crash) stops the others and the
parent exits 1: a supervisor restarts the whole, rather than a collector
quietly serving on fewer cores than it was given. Workers are told to stop
if the parent dies (``PR_SET_PDEATHSIG``), so none is left orphaned.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
STOP_TIMEOUT_S = 30.0
"""How long a worker has to finish its requests and flush its producer before it is killed."""


def worker_command(fd: int, parent: int, argv: Sequence[str]) -> list[str]:
    """The command of one worker: the same options, one process, on the inherited socket ``fd``."""
    return [sys.executable, "-m", "passerelle", "collector", *argv, "--workers", "1",
            "--worker-fd", str(fd), "--worker-parent", str(parent)]  # fmt: skip


def adopt_socket(fd: int, parent: int) -> socket.socket:
    """In a worker: the parent's listening socket, and a SIGTERM when the parent dies."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # no prctl: the parent still stops its workers
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before prctl took effect
        raise SystemExit("the collector's parent process is gone: not starting")
    return socket.socket(fileno=fd)


class Supervisor:
    """Starts the workers, waits, passes SIGTERM / SIGINT on, stops them all if one exits."""

    def __init__(self, sock: socket.socket, workers: int, argv: Sequence[str]) -> None:
        self.sock = sock
        self.count = workers
        self.argv = list(argv)
        self.procs: list[subprocess.Popen[bytes]] = []
        self._stopping: int | None = None

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = signum

    def run(self) -> int:
        """Serve until a signal (0 once every worker stopped cleanly) or a worker's own exit (1)."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        fd = self.sock.fileno()
        self.sock.listen(2048)  # before any worker runs: connections queue instead of being refused
        try:
            for _ in range(self.count):
                if self._stopping is not None:
                    break
                command = worker_command(fd, os.getpid(), self.argv)
                # Own session: Ctrl-C reaches the parent only, which stops each worker with SIGTERM (status 0).
                self.procs.append(subprocess.Popen(command, pass_fds=(fd,), start_new_session=True))
            print(f"collector: {len(self.procs)} worker(s) on one port (pids "
                  f"{', '.join(str(p.pid) for p in self.procs)})", file=sys.stderr, flush=True)  # fmt: skip
            failed = None
            while self._stopping is None and failed is None:
                failed = next((p for p in self.procs if p.poll() is not None), None)
                if failed is None:
                    time.sleep(0.2)
            if failed is not None:
                print(f"error: collector worker {failed.pid} exited with status {failed.returncode}; stopping the "
                      f"others", file=sys.stderr, flush=True)  # fmt: skip
            clean = self.stop()
            return 0 if failed is None and clean else 1
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def stop(self) -> bool:
        """SIGTERM every worker still running, SIGKILL after ``STOP_TIMEOUT_S``; True if none had to be killed."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        clean = True
        for proc in self.procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("collector worker %d did not stop within %gs: killed", proc.pid, STOP_TIMEOUT_S)
                proc.kill()
                proc.wait()
                clean = False
            else:
                clean = clean and proc.returncode == 0
        return clean
