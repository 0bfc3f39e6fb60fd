"""The README's CRM demo (``./dev demo-crm``) end to end, through the CLI, on a private stack with Connect."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from passerelle.deploy.local.stack import free_port

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def env() -> Iterator[dict[str, str]]:
    # Under the checkout, not pytest's tmp (mode 700): PostgreSQL runs as the `postgres` user and must enter it.
    state = ROOT / f".passerelle-e2e-crm-{os.getpid()}"
    base = {k: v for k, v in os.environ.items() if not k.startswith("PASSERELLE_")}
    base.update(
        PASSERELLE_STATE_DIR=str(state),
        PASSERELLE_KAFKA_PORT=str(free_port()),
        PASSERELLE_CONTROLLER_PORT=str(free_port()),
        PASSERELLE_REGISTRY_PORT=str(free_port()),
        PASSERELLE_POSTGRES_PORT=str(free_port()),
        PASSERELLE_CONNECT_PORT=str(free_port()),
    )
    yield base
    subprocess.run([sys.executable, "-m", "passerelle", "down", "--purge"], env=base, cwd=ROOT, check=False,
                   capture_output=True, timeout=120)  # fmt: skip
    shutil.rmtree(state, ignore_errors=True)


def cli(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "passerelle", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, check=False)  # fmt: skip


def test_demo_crm_shows_the_crm_changing_and_the_hits_following(env: dict[str, str]) -> None:
    demo = cli(env, "demo-crm", timeout=420)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr
    out = demo.stdout
    assert "postgres  started" in out and "connect   started" in out
    assert re.search(r"crm-source\s+created", out) and re.search(r"crm-sink\s+created", out)
    assert re.search(r"-> crm.profiles after [\d.]+s: F, \d\d-\d\d, executive, silver, marketing consent True", out)
    hits = [line for line in out.splitlines() if "demo-visitor" in line]
    assert len(hits) == 5, out
    assert "(F, 35-49, executive)" in hits[1] or re.search(r"\(F, [\d-]+, executive\)", hits[1])
    assert re.search(r"\(F, [\d-]+, retired\)", hits[3])  # the CRM changed, the next hit followed
    assert re.search(r"visits_30d=1, orders_30d=1, revenue_30d=89.90", out)  # written back by the JDBC sink
    assert "web_activity: row deleted by the JDBC sink" in out
    assert hits[4].rstrip().endswith("(visitor no longer linked to anyone)") and "DEMO-" not in hits[4]

    status = cli(env, "status")
    assert status.returncode == 0 and status.stdout.count("answering") == 4  # kafka, registry, postgres, connect
    down = cli(env, "down", "--purge")
    assert down.returncode == 0
    assert "connect   stopped" in down.stdout and "postgres  stopped" in down.stdout
    assert cli(env, "status").returncode == 3
