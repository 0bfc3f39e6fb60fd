"""A restore says how far it is: records done/total per partition, logged and exported, no time limit."""

from __future__ import annotations

import logging

import pytest

from passerelle.streams.runtime.restore import RestoreProgress

pytestmark = pytest.mark.unit


def test_progress_is_exported_per_partition_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    exported: list[tuple[int, int, int]] = []
    progress = RestoreProgress("enrichment", {0: 1000, 3: 500}, lambda *a: exported.append(a), every_s=0)
    assert exported == [(0, 0, 1000), (3, 0, 500)]
    progress.done[0] += 400
    progress.done[3] += 500
    with caplog.at_level(logging.INFO, logger="passerelle.streams.runtime.restore"):
        progress.report()
    assert exported[-2:] == [(0, 400, 1000), (3, 500, 500)]
    assert "enrichment restoring: 900/1500 changelog records" in caplog.text
    assert "0: 400/1000, 3: 500/500" in caplog.text
    progress.finish()
    assert exported[-2:] == [(0, 0, 0), (3, 0, 0)]  # the gauges go back to 0 once restored


def test_progress_logs_at_most_every_interval(caplog: pytest.LogCaptureFixture) -> None:
    progress = RestoreProgress("p", {0: 10}, lambda *a: None, every_s=3600)
    with caplog.at_level(logging.INFO, logger="passerelle.streams.runtime.restore"):
        for _ in range(100):
            progress.report()
    assert caplog.text == ""
