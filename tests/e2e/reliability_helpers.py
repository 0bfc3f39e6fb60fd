"""Helpers of the reliability check: a set of restartable CLI processes and a seeded SIGKILL schedule."""

from __future__ import annotations

import random
import signal
import threading
import time
from collections import Counter
from pathlib import Path

from tests.e2e.flow_helpers import Proc


class Fleet:
    """The running processes by name; a killed one is replaced by a fresh one with the same arguments and env."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.lock = threading.Lock()
        self.procs: dict[str, Proc] = {}
        self.specs: dict[str, tuple[list[str], dict[str, str]]] = {}
        self.retired: list[Proc] = []  # killed instances, for their logs
        self.kills: Counter[str] = Counter()

    def start(self, name: str, args: list[str], env: dict[str, str]) -> Proc:
        with self.lock:
            self.specs[name] = (args, env)
            proc = self.procs[name] = Proc(name, args, env, self.logs)
            return proc

    def kill_and_restart(self, name: str) -> None:
        """SIGKILL the process (by its pid), wait for it to be gone, start it again with the same settings."""
        with self.lock:
            proc = self.procs[name]
            if proc.alive():
                proc.popen.send_signal(signal.SIGKILL)
            proc.popen.wait(30)
            self.retired.append(proc)
            self.kills[name] += 1
            args, env = self.specs[name]
            with open(proc.log, "a") as out:
                out.write(f"\n===== SIGKILL #{self.kills[name]} at {time.strftime('%H:%M:%S')}, restarting =====\n")
            self.procs[name] = Proc(name, args, env, self.logs)

    def current(self) -> list[Proc]:
        with self.lock:
            return list(self.procs.values())

    def dead(self) -> list[str]:
        """Names of current processes that exited on their own (a killed one is replaced under the lock)."""
        with self.lock:
            return [name for name, proc in self.procs.items() if not proc.alive()]


def kill_schedule(rng: random.Random, names: list[str], kills_each: int, start_s: float, window_s: float,
                  min_gap_s: float) -> list[tuple[float, str]]:  # fmt: skip
    """(seconds from the start, process) pairs: each process killed ``kills_each`` times, one per equal slot of
    the window, at a random moment of its slot, at least ``min_gap_s`` after its previous kill."""
    plan: list[tuple[float, str]] = []
    slot = window_s / kills_each
    for name in names:
        last = -min_gap_s
        for k in range(kills_each):
            low = max(start_s + k * slot, last + min_gap_s)
            high = max(low, start_s + (k + 1) * slot)
            last = rng.uniform(low, high)
            plan.append((last, name))
    return sorted(plan)


class Chaos(threading.Thread):
    """Runs a kill schedule against a fleet in the background; ``stop()`` abandons what is left of it."""

    def __init__(self, fleet: Fleet, plan: list[tuple[float, str]]) -> None:
        super().__init__(name="chaos", daemon=True)
        self.fleet = fleet
        self.plan = plan
        self.done: list[tuple[float, str]] = []
        self.errors: list[str] = []
        self._halt = threading.Event()
        self.started_at = 0.0

    def run(self) -> None:
        self.started_at = time.monotonic()
        for at, name in self.plan:
            if self._halt.wait(max(0.0, self.started_at + at - time.monotonic())):
                return
            try:
                self.fleet.kill_and_restart(name)
                self.done.append((round(time.monotonic() - self.started_at, 1), name))
                print(f"chaos: SIGKILL {name} at +{self.done[-1][0]}s, restarted")
            except Exception as exc:  # reported by the test
                self.errors.append(f"{name}: {type(exc).__name__}: {exc}")

    def stop(self) -> None:
        self._halt.set()
