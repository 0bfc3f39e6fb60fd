"""The README's demo command end to end, through the CLI, on a private stack of its own."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from passerelle.deploy.local.stack import free_port

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, str]]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PASSERELLE_")}
    base.update(
        PASSERELLE_STATE_DIR=str(tmp_path / "state"),
        PASSERELLE_KAFKA_PORT=str(free_port()),
        PASSERELLE_CONTROLLER_PORT=str(free_port()),
        PASSERELLE_REGISTRY_PORT=str(free_port()),
    )
    yield base
    subprocess.run([sys.executable, "-m", "passerelle", "down", "--purge"], env=base, cwd=ROOT, check=False,
                   capture_output=True, timeout=120)  # fmt: skip


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "passerelle", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=300, check=False)  # fmt: skip


def test_up_is_idempotent_and_demo_reads_back_decoded_hits(env: dict[str, str]) -> None:
    first = cli(env, "up")
    assert first.returncode == 0, first.stderr
    assert "kafka     started" in first.stdout and "registry  started" in first.stdout
    again = cli(env, "up")
    assert again.returncode == 0 and "already running" in again.stdout
    pids = re.findall(r"pid (\d+)", first.stdout)
    assert pids == re.findall(r"pid (\d+)", again.stdout)  # no second broker
    status = cli(env, "status")
    assert status.returncode == 0 and status.stdout.count("answering") == 2

    demo = cli(env, "demo", "--visitors", "8", "--seed", "3")
    assert demo.returncode == 0, demo.stderr
    out = demo.stdout
    assert "hits.raw: created" in out or "hits.raw: exists" in out
    assert "hits.enriched-value" in out
    sent = int(re.search(r"accepted\s+(\d+)", out).group(1))  # type: ignore[union-attr]
    assert sent > 0 and re.search(r"rejected\s+0\b", out)
    assert f"read back {sent} enriched hits" in out  # every hit posted to the collector came out enriched
    lines = [line for line in out.splitlines() if re.match(r"\d\d-\d\d \d\d:\d\d v-", line)]
    assert lines, out
    identified = int(re.search(r"identified visitors\s+(\d+)", out).group(1))  # type: ignore[union-attr]
    with_crm = int(re.search(r"(\d+) with CRM attributes", out).group(1))  # type: ignore[union-attr]
    assert identified > 0 and with_crm > 0  # identities stitched and CRM profiles joined
    assert re.search(r"by medium: \w+=\d+", out)

    down = cli(env, "down", "--purge")
    assert down.returncode == 0 and "kafka     stopped" in down.stdout
    assert not Path(env["PASSERELLE_STATE_DIR"]).exists()
    assert cli(env, "status").returncode == 3
