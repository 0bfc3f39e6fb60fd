"""Issue 18: ``passerelle collector --workers 2`` as a real process: one port, two producers, a clean stop."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.integration.kafka_helpers import create_topics
from tests.integration.test_collector import KEY, SITE, read

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError):
                continue
    return found


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_two_workers_share_the_port_deliver_everything_and_stop_on_sigterm(
    kafka_bootstrap: str, schema_registry_url: str, tmp_path: Path
) -> None:
    port, topic = _free_port(), f"hits.raw.workers.{uuid.uuid4().hex[:8]}"
    create_topics(kafka_bootstrap, {topic: 3})
    env = {k: v for k, v in os.environ.items() if not k.startswith("PASSERELLE_")}
    env.update(PASSERELLE_BOOTSTRAP_SERVERS=kafka_bootstrap, PASSERELLE_SCHEMA_REGISTRY_URL=schema_registry_url,
               PASSERELLE_COLLECTOR_SITES=json.dumps({SITE: KEY}))  # fmt: skip
    log = tmp_path / "collector.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "passerelle", "collector", "--workers", "2", "--port", str(port), "--topic", topic],
            env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 90
        while log.read_text(errors="replace").count("collector listening") < 2:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        workers = _children(proc.pid)
        assert len(workers) == 2, (workers, log.read_text())

        base = f"http://127.0.0.1:{port}"
        sent = []
        for i in range(30):  # a new connection each time: the kernel hands them to either worker
            eid = f"w-{i:02d}"
            url = f"https://{SITE}/page/{i}"
            resp = httpx.get(f"{base}/hit", params={"site": SITE, "vid": f"v-{i}", "eid": eid, "url": url})
            assert resp.status_code == 200 and resp.headers["content-type"] == "image/gif", resp.text
            sent.append(eid)
        batch = [{"event_id": f"b-{i}", "visitor_id": f"v-{i}", "url": f"https://{SITE}/"} for i in range(10)]
        resp = httpx.post(f"{base}/v1/events", json={"events": batch}, headers={"X-Api-Key": KEY})
        assert resp.status_code == 200 and resp.json()["accepted"] == 10, resp.text
        sent += [e["event_id"] for e in batch]

        records = read(kafka_bootstrap, schema_registry_url, topic, until=len(sent))
        assert sorted(value["event_id"] for _, value in records) == sorted(sent)

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in workers if _alive(pid)], "a worker outlived its parent"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_worker_that_cannot_start_stops_the_collector_with_an_error(kafka_bootstrap: str) -> None:
    """A registry nobody listens on: each worker fails at start-up, the parent stops the others and exits 1."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PASSERELLE_")}
    env.update(PASSERELLE_BOOTSTRAP_SERVERS=kafka_bootstrap,
               PASSERELLE_SCHEMA_REGISTRY_URL=f"http://127.0.0.1:{_free_port()}",
               PASSERELLE_COLLECTOR_SITES=json.dumps({SITE: KEY}))  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "passerelle", "collector", "--workers", "2", "--port", str(_free_port())],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "collector worker" in proc.stderr and "exited with status" in proc.stderr
