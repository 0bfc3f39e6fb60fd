"""Progress of a restore: records read out of records to read, per partition, logged and exported.

A restore has no time limit (a large state takes as long as it takes); what
an operator needs instead is to see it move: a log line every
``LOG_EVERY_S`` and two gauges per partition (done, total).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

LOG_EVERY_S = 5.0


class RestoreProgress:
    """Counts of one restore; ``report`` is called per consumed batch and logs at most every ``LOG_EVERY_S``.

    ``totals`` are offset ranges: on a compacted changelog (and with
    transaction markers) fewer records than that are read, so ``done`` stops
    below ``total`` at the end, and the gauges go back to 0.
    """

    def __init__(
        self,
        name: str,
        totals: Mapping[int, int],
        export: Callable[[int, int, int], None],
        every_s: float = LOG_EVERY_S,
    ) -> None:
        self.name = name
        self.totals = dict(totals)
        self.done = dict.fromkeys(self.totals, 0)
        self._export = export
        self._every = every_s
        self._started = self._last = time.monotonic()
        for partition, total in self.totals.items():
            export(partition, 0, total)

    def report(self) -> None:
        now = time.monotonic()
        if now - self._last < self._every:
            return
        self._last = now
        for partition, done in self.done.items():
            self._export(partition, done, self.totals[partition])
        done, total = sum(self.done.values()), sum(self.totals.values())
        rate = done / max(now - self._started, 1e-9)
        listing = ", ".join(f"{p}: {d}/{self.totals[p]}" for p, d in sorted(self.done.items()))
        log.info("%s restoring: %d/%d changelog records (%.0f/s) [%s]", self.name, done, total, rate, listing)

    def finish(self) -> None:
        for partition in self.totals:
            self._export(partition, 0, 0)
