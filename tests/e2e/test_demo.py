"""The README's two demos end to end, through the CLI, on one private stack of their own.

``demo`` runs first on the broker and registry it starts; ``demo-crm`` (``./dev demo-crm``) then adds
PostgreSQL and Kafka Connect to the same stack, as a newcomer running one after the other would. One stack
for both saves a broker's start and stop in the suite; the second test stops it all with ``down --purge``.
"""

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


@pytest.fixture(scope="module")
def env() -> Iterator[dict[str, str]]:
    # Under the checkout, not pytest's tmp (mode 700): PostgreSQL runs as the `postgres` user and must enter it.
    state = ROOT / f".passerelle-e2e-demo-{os.getpid()}"
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


def test_demo_crm_shows_the_crm_changing_and_the_hits_following(env: dict[str, str]) -> None:
    demo = cli(env, "demo-crm", timeout=420)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr
    out = demo.stdout
    assert "postgres  started" in out and "connect   started" in out  # added to the demo's running stack
    assert "kafka     already running" in out
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
    assert down.returncode == 0 and "kafka     stopped" in down.stdout
    assert "connect   stopped" in down.stdout and "postgres  stopped" in down.stdout
    assert not Path(env["PASSERELLE_STATE_DIR"]).exists()
    assert cli(env, "status").returncode == 3
