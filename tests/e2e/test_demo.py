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

    # The retargeting stand-in, through the partner API only: declared, attributed, credited, measured.
    declared = int(re.search(r"retargeting campaigns (\d+) declared through the API", out).group(1))  # type: ignore[union-attr]
    assert declared == 2
    clicked, came_back = map(int, re.search(r"retargeted visitors\s+\d+: (\d+) clicked a banner, (\d+) came back",
                                            out).groups())  # type: ignore[union-attr]  # fmt: skip
    assert clicked > 0 and came_back > 0
    shown, sent_imps = map(int, re.search(r"impressions reported\s+(\d+) accepted of (\d+)", out).groups())  # type: ignore[union-attr]
    assert shown == sent_imps > 0
    found = re.search(r"hits attributed to the retargeting campaigns: (\d+) \(.*\), (\d+) undeclared", out)
    assert found and int(found.group(1)) >= clicked and int(found.group(2)) == 0, out
    postviews = re.search(r"post-view records: (\d+) on ads.postview \((\d+) visits, (\d+) of them without", out)
    # every visit that followed impressions is credited to them, the clicked ones and the direct returns
    assert postviews and int(postviews.group(2)) == clicked + came_back and int(postviews.group(3)) == came_back, out
    uploaded = re.search(r"metrics uploaded\s+(\d+) accepted of (\d+).*", out)
    assert uploaded and int(uploaded.group(1)) == int(uploaded.group(2)) > 0 and "undeclared" not in uploaded.group(0)

    down = cli(env, "down", "--purge")
    assert down.returncode == 0 and "kafka     stopped" in down.stdout
    assert not Path(env["PASSERELLE_STATE_DIR"]).exists()
    assert cli(env, "status").returncode == 3
