"""The README's demo command end to end, through the CLI, on a private stack of its own."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.local.stack import free_port

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

    demo = cli(env, "demo", "--count", "8", "--seed", "3")
    assert demo.returncode == 0, demo.stderr
    assert "hits.raw: created" in demo.stdout or "hits.raw: exists" in demo.stdout
    assert "hits.raw-value" in demo.stdout
    lines = [line for line in demo.stdout.splitlines() if re.match(r"p\d+@\d+ ", line)]
    assert len(lines) == 8
    assert any("page_view" in line for line in lines) and any("cart_add" in line for line in lines)
    assert "read back 8 hits" in demo.stdout

    down = cli(env, "down", "--purge")
    assert down.returncode == 0 and "kafka     stopped" in down.stdout
    assert not Path(env["PASSERELLE_STATE_DIR"]).exists()
    assert cli(env, "status").returncode == 3
