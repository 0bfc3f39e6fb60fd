"""The generator against a real collector process, a real broker and the real registry."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from passerelle.connectors.generator.send import EventSender, SendOptions, publish_campaigns, publish_profiles
from passerelle.connectors.generator.shop import HOUR, Shop
from passerelle.schemas.clients import Connection
from tests.integration.kafka_helpers import TopicReader, create_topics

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SITE, KEY = "shop.example", "key-shop-generator-0123"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(bootstrap: str, registry: str, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PASSERELLE_")}
    env.update(
        PASSERELLE_BOOTSTRAP_SERVERS=bootstrap,
        PASSERELLE_SCHEMA_REGISTRY_URL=registry,
        PASSERELLE_COLLECTOR_PORT=str(port),
        PASSERELLE_COLLECTOR_SITES=json.dumps({SITE: KEY}),
    )
    return env


class Stack:
    """Names and endpoints of one test: a collector process writing to its own hits topic."""

    def __init__(self, bootstrap: str, registry: str, port: int, hits: str, campaigns: str, crm: str) -> None:
        self.bootstrap, self.registry, self.port = bootstrap, registry, port
        self.hits, self.campaigns, self.crm = hits, campaigns, crm
        self.url = f"http://127.0.0.1:{port}"
        self.env = _env(bootstrap, registry, port)


@pytest.fixture
def stack(
    kafka_bootstrap: str, schema_registry_url: str, unique: Callable[[str], str], tmp_path: Path
) -> Iterator[Stack]:
    s = Stack(
        kafka_bootstrap, schema_registry_url, _free_port(), unique("hits.raw"), unique("campaigns"), unique("crm")
    )
    create_topics(kafka_bootstrap, {s.hits: 3})
    create_topics(kafka_bootstrap, {s.campaigns: 1, s.crm: 3}, config={"cleanup.policy": "compact"})
    log = tmp_path / "collector.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "passerelle", "collector", "--topic", s.hits],
            env=s.env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while "collector listening" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield s
    finally:
        proc.terminate()
        proc.wait(30)


def _read(s: Stack, topic: str, until: int, idle: float = 3.0) -> list[tuple[str, dict]]:
    reader = TopicReader(s.bootstrap, s.registry, topic)
    try:
        records = reader.read(until=until, timeout=60)
        records = reader.read(until=until + 1, timeout=idle, idle=idle)  # anything beyond what we expect?
        return [(reader.decoder.decode(msg.key()), value) for msg, value in records]
    finally:
        reader.close()


def test_every_accepted_event_and_the_reference_data_land_on_their_topics(stack: Stack) -> None:
    span = 22 * HOUR
    shop = Shop(2026, int(time.time() * 1000) - span, span_ms=span, customers=25)
    events = shop.events(30)
    conn = Connection.plain(stack.bootstrap, stack.registry)
    assert publish_campaigns(shop.campaigns(), conn, topic=stack.campaigns) == 5
    assert publish_profiles(shop.crm_profiles(), conn, topic=stack.crm) == 25
    with EventSender(stack.url, KEY, SendOptions(batch_size=40), progress=None) as sender:
        sender.probe()
        report = sender.send(events)
    assert (report.events, report.rejected, report.failed) == (len(events), 0, 0), report.first_rejection
    assert report.accepted == len(events) and report.visitors == 30

    hits = _read(stack, stack.hits, report.accepted)
    assert len(hits) == report.accepted
    assert {value["event_id"] for _, value in hits} == {e["event_id"] for e in events}
    assert all(key == value["visitor_id"] for key, value in hits)
    sent_times = {e["event_id"]: e["event_time"] for e in events}
    for _, value in hits:  # the collector kept every client time: the simulated timeline survives
        assert int(value["event_time"].timestamp() * 1000) == sent_times[value["event_id"]]

    campaigns = _read(stack, stack.campaigns, 5)
    assert sorted(key for key, _ in campaigns) == sorted(c["key"] for c in shop.campaigns())
    assert all(value["key"] == key for key, value in campaigns)
    profiles = _read(stack, stack.crm, 25)
    assert sorted(key for key, _ in profiles) == sorted(p["customer_id"] for p in shop.crm_profiles())
    identified = {e["customer_id"] for e in events if e.get("customer_id")}
    assert identified and identified <= {key for key, _ in profiles}


def _cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "passerelle", "generate", *args]
    return subprocess.run(command, env=stack.env, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)


def _one_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    return errors[0]


def test_cli_sends_with_the_collector_settings_and_says_what_is_wrong(stack: Stack) -> None:
    topics = ("--campaigns-topic", stack.campaigns, "--crm-topic", stack.crm)
    ok = _cli(stack, "--visitors", "6", "--seed", "9", "--customers", "20", *topics)
    assert ok.returncode == 0, ok.stderr
    summary = dict(re.findall(r"^\s*(\S.*?)\s{2,}(\S.*)$", ok.stdout, re.MULTILINE))
    assert summary["seed"] == "9" and summary["visitors"] == "6"
    assert summary["campaigns"] == "5" and summary["crm profiles"] == "20"
    sent, accepted = int(summary["events sent"].split()[0]), int(summary["accepted"])
    assert accepted == sent > 0 and summary["rejected"] == "0"
    assert len(_read(stack, stack.hits, accepted)) == accepted

    wrong_key = _one_error(_cli(stack, "--api-key", "not-the-key", "--no-crm", "--no-campaigns"))
    assert "HTTP 403" in wrong_key and "--api-key" in wrong_key
    unknown_site = _one_error(_cli(stack, "--site", "elsewhere.example"))
    assert "unknown site 'elsewhere.example'" in unknown_site
    nobody = _one_error(_cli(stack, "--collector", f"http://127.0.0.1:{_free_port()}"))
    assert "cannot reach the collector" in nobody
