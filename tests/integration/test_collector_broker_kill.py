"""The collector's promise under a broker SIGKILL: every event answered as accepted is on the topic after a restart.

A private broker (the session's cannot be killed) takes batches from the
collector while it is SIGKILLed and started again on the same log. Events the
collector answered ``accepted`` (in a 200, a 207 or the per-event results of a
503) were acknowledged with ``acks=all``: each one must be read back; the
others were answered 503 and are the client's to send again. The collector
must accept events again once the broker is back, without a restart.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from passerelle.connectors.collector.app import create_app
from passerelle.connectors.collector.config import CollectorConfig
from passerelle.deploy.local import stack
from tests.integration.kafka_helpers import TopicReader, create_topics
from tests.integration.test_collector import KEY, SITE

pytestmark = pytest.mark.integration

BATCH = 20


async def _send_until(client: httpx.AsyncClient, stop: threading.Event, acked: dict[str, float], tag: str) -> None:
    n = 0
    while not stop.is_set():
        ids = [f"{tag}-{n}-{i}" for i in range(BATCH)]
        n += 1
        events = [{"event_id": eid, "visitor_id": f"v-{i}", "url": f"https://{SITE}/k"} for i, eid in enumerate(ids)]
        resp = await client.post("/v1/events", json={"events": events}, headers={"X-Api-Key": KEY})
        assert resp.status_code in (200, 503), resp.text
        now = time.monotonic()
        for entry in resp.json()["results"]:
            if entry["status"] == "accepted":
                acked[entry["event_id"]] = now
            else:
                assert entry["status"] == "failed", entry  # never rejected: the events are valid
        if resp.status_code == 503:
            await asyncio.sleep(0.2)


def test_acknowledged_events_survive_a_broker_sigkill_and_restart(schema_registry_url: str, tmp_path: Path) -> None:
    cfg = stack.StackConfig(
        state_dir=tmp_path / "stack",
        cache_dir=Path(os.environ.get("PASSERELLE_CACHE_DIR", Path.home() / ".cache" / "passerelle")),
        kafka_port=stack.free_port(),
        controller_port=stack.free_port(),
        broker_heap="512m",
    )
    pid, _ = stack.start_broker(cfg, progress=False)
    topic = f"hits.raw.kill.{uuid.uuid4().hex[:8]}"
    try:
        create_topics(cfg.bootstrap, {topic: 3})
        config = CollectorConfig(bootstrap_servers=cfg.bootstrap, schema_registry_url=schema_registry_url,
                                 sites={SITE: KEY}, topic=topic, produce_timeout_s=2.0)  # fmt: skip
        acked: dict[str, float] = {}
        marks: dict[str, float] = {}

        async def scenario() -> None:
            app = create_app(config)
            async with app.router.lifespan_context(app):
                transport = httpx.ASGITransport(app=app, client=("203.0.113.77", 51234))
                async with httpx.AsyncClient(transport=transport, base_url="http://c", timeout=30) as client:
                    stop = threading.Event()
                    senders = [asyncio.create_task(_send_until(client, stop, acked, f"s{k}")) for k in range(4)]
                    # Kill once events were acknowledged (a loaded machine may take seconds for the first
                    # metadata and acknowledgement), and while the senders keep sending.
                    deadline = time.monotonic() + 60
                    while time.monotonic() < deadline and len(acked) < 4 * BATCH:
                        await asyncio.sleep(0.1)
                    os.kill(pid, signal.SIGKILL)
                    marks["killed"] = time.monotonic()
                    await asyncio.sleep(2.0)
                    await asyncio.to_thread(stack.start_broker, cfg, False)  # the same log, a new process
                    marks["restarted"] = time.monotonic()
                    deadline = time.monotonic() + 60  # the producer reconnects with its backoff, on a loaded machine
                    while time.monotonic() < deadline and not any(t > marks["restarted"] for t in acked.values()):
                        await asyncio.sleep(0.2)
                    await asyncio.sleep(1.0)
                    stop.set()
                    await asyncio.gather(*senders)

        asyncio.run(scenario())
        before = [eid for eid, t in acked.items() if t < marks["killed"]]
        after = [eid for eid, t in acked.items() if t > marks["restarted"]]
        assert before, "nothing was accepted before the kill"
        assert after, "the collector accepted nothing once the broker was back"

        reader = TopicReader(cfg.bootstrap, schema_registry_url, topic)
        try:
            records = reader.read(until=len(acked), timeout=60, idle=5)
        finally:
            reader.close()
        on_topic = {value["event_id"] for _, value in records}
        lost = sorted(set(acked) - on_topic)
        assert not lost, f"{len(lost)} of {len(acked)} acknowledged events lost, e.g. {lost[:5]}"
    finally:
        stack.down(cfg, purge=True)
