"""The monitoring end to end: `passerelle up --with monitoring`, real Prometheus, Alertmanager, broker JMX.

One module-scoped private stack (its own state folder and free ports, like a
user's `up` with PASSERELLE_* overrides): broker with the JMX exporter agent,
registry, Prometheus and Alertmanager with a 1 s scrape and every alert's
``for`` at 2 s, the lag exporter. A runtime processor, the emailing bridge and
the collector run as real subprocesses serving ``/metrics``; nothing tells
Prometheus about them but the exporter's discovery. The last test stops the
processor and waits for ``ProcessorDown`` in Alertmanager, then reads
``passerelle status``.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from passerelle.connectors.monitoring.flows import FLOWS
from passerelle.connectors.monitoring.panels import PANELS, by_id
from passerelle.deploy.local import monitoring
from passerelle.deploy.local.stack import free_port
from tests.conftest import stop_process
from tests.integration.kafka_helpers import create_topics, json_schema, produce_avro
from tests.integration.runtime_app import IN_SCHEMA

pytestmark = pytest.mark.integration
SCRAPE_S = 1.0
ALERT_FOR_S = 2
ENRICHED = "hits.enriched"  # the exporter's default flow topics: this broker is private
FLOW_RECORDS: dict[str, str] = {
    ENRICHED: json_schema("EnrichedProbe", [("event_id", "string"), ("event_time", "long"), ("enriched_at", "long")]),
    "carts.abandoned": json_schema("AbandonedProbe", [("event_id", "string"), ("last_activity_at", "long"),
                                                       ("detected_at", "long")]),
    "remarketing.messages": json_schema("MessageProbe", [("message_id", "string"), ("step", "int"),
                                                          ("created_at", "long")]),
    "remarketing.deliveries": json_schema("DeliveryProbe", [("message_id", "string"), ("step", "int"),
                                                             ("outcome", "string"), ("decided_at", "long")]),
}  # fmt: skip


def get(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        body = resp.read().decode()
    return json.loads(body) if body.startswith(("{", "[")) else body


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60.0) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` with its last answer."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as exc:  # not up yet
            last = exc
        else:
            if last:
                return last
        time.sleep(0.25)
    raise AssertionError(f"{what}: not within {timeout:.0f}s (last: {last!r})")


def query(mon: monitoring.Monitoring, promql: str) -> list[dict[str, Any]]:
    data = get(f"{mon.prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
    assert data["status"] == "success", data
    return list(data["data"]["result"])


@dataclass
class Setup:
    mon: monitoring.Monitoring
    state: Path
    bootstrap: str
    registry: str
    topics: dict[str, str]
    env: dict[str, str]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)


def _spawn(setup: Setup, name: str, cmd: list[str], env: dict[str, str]) -> None:
    log = open(setup.state / f"{name}.log", "ab")  # noqa: SIM115 - the child writes it until it stops
    setup.procs[name] = subprocess.Popen(cmd, env={**setup.env, **env}, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)  # fmt: skip


def passerelle(env: dict[str, str], *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "passerelle", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, check=False)  # fmt: skip


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    state = tmp_path_factory.mktemp("monitoring-state")
    ports = {name: free_port() for name in ("KAFKA", "CONTROLLER", "REGISTRY", "PROMETHEUS", "ALERTMANAGER", "LAG",
                                            "BROKER_JMX")}  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("PASSERELLE_") or k == "PASSERELLE_CACHE_DIR"}
    env.update({f"PASSERELLE_{name}_PORT": str(port) for name, port in ports.items()})
    env.update(PASSERELLE_STATE_DIR=str(state), PASSERELLE_MONITORING_SCRAPE_INTERVAL_S=str(SCRAPE_S),
               PASSERELLE_MONITORING_ALERT_FOR=f"{ALERT_FOR_S}s", PASSERELLE_LAG_INTERVAL_S="1")  # fmt: skip
    mon = monitoring.Monitoring(root=state / "monitoring", prometheus_port=ports["PROMETHEUS"],
                                alertmanager_port=ports["ALERTMANAGER"], exporter_port=ports["LAG"])  # fmt: skip
    bootstrap, registry = f"127.0.0.1:{ports['KAFKA']}", f"http://127.0.0.1:{ports['REGISTRY']}"
    topics = {k: f"mon.{k}" for k in ("input", "output", "dlq", "messages", "deliveries", "emailing-dlq", "hits")}
    s = Setup(mon, state, bootstrap, registry, topics, env)
    try:
        up = passerelle(env, "up", "--with", "monitoring")
        assert up.returncode == 0, up.stdout + up.stderr
        partitions = {t: 2 if k == "input" else 1 for k, t in topics.items()}
        create_topics(bootstrap, partitions | dict.fromkeys(FLOW_RECORDS, 1))
        _spawn(s, "processor", [sys.executable, "-m", "tests.integration.monitoring_app", "--bootstrap", bootstrap,
                                "--registry", registry, "--app", "mon-app", "--input", topics["input"],
                                "--output", topics["output"], "--dlq", topics["dlq"]],
               {"PASSERELLE_METRICS_PORT": str(free_port())})  # fmt: skip
        bridge_port = free_port()
        bridge = {
            "bootstrap_servers": bootstrap, "schema_registry_url": registry,
            "partner_url": f"http://127.0.0.1:{free_port()}/v1/messages", "partner_name": "standin",
            "auth": {"kind": "none"}, "topic": topics["messages"], "deliveries_topic": topics["deliveries"],
            "dead_letter_topic": topics["emailing-dlq"], "group_id": "mon-emailing", "poll_timeout_s": 0.2,
            "metrics_port": bridge_port,
        }  # fmt: skip
        (state / "bridge.json").write_text(json.dumps(bridge))
        _spawn(s, "emailing", [sys.executable, "-m", "passerelle.connectors.emailing", "bridge", "--config",
                               str(state / "bridge.json")], {"PASSERELLE_METRICS_PORT": str(bridge_port)})  # fmt: skip
        _spawn(s, "collector", [sys.executable, "-m", "passerelle", "collector", "--topic", topics["hits"]],
               {"PASSERELLE_COLLECTOR_PORT": str(free_port()),
                "PASSERELLE_COLLECTOR_SITES": '{"shop.example": "a-key"}'})  # fmt: skip
        yield s
    finally:
        running = [proc for proc in s.procs.values() if proc.poll() is None]
        for proc in running:  # all at once: each takes a moment to leave its group
            proc.terminate()
        for proc in running:
            stop_process(proc)
        down = passerelle(env, "down", "--purge")
        assert down.returncode == 0, down.stdout + down.stderr


@pytest.fixture(scope="module")
def traffic(setup: Setup) -> Setup:
    """Records through the processor (one poison: a dead letter), flow records, a collector request."""
    good = [(f"v{i % 5}", {"event_id": f"e{i}", "visitor_id": f"v{i % 5}", "n": i}) for i in range(50)]
    produce_avro(setup.bootstrap, setup.registry, setup.topics["input"], IN_SCHEMA, good,
                 raw=[(b"v0", b"not avro at all")])  # fmt: skip
    collector = wait_for("the collector's port in a discovery file", lambda: [
        t for t in _target_files(setup) if t["labels"]["command"] == "collector"])  # fmt: skip
    address = collector[0]["targets"][0]
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(f"http://{address}/hit", timeout=5)  # no parameters: 400, counted by status

    def flows_seen() -> bool:
        more_traffic(setup)
        text = get(f"{setup.mon.exporter_url}/metrics")
        return all(f'passerelle_flow_latency_seconds_count{{flow="{flow}"}} 0.0' not in text for flow in FLOWS)

    wait_for("an observation of every flow in the exporter", flows_seen, timeout=30)
    return setup


def more_traffic(setup: Setup) -> None:
    """A few input records and one flow record, so every rate has an increase inside its window."""
    now = int(time.time() * 1000)
    records = [(f"v{i}", {"event_id": uuid.uuid4().hex, "visitor_id": f"v{i}", "n": i}) for i in range(5)]
    produce_avro(setup.bootstrap, setup.registry, setup.topics["input"], IN_SCHEMA, records)
    key, message = "v1", uuid.uuid4().hex
    values = {
        ENRICHED: {"event_id": message, "event_time": now, "enriched_at": now + 250},
        "carts.abandoned": {"event_id": message, "last_activity_at": now - 1_800_000, "detected_at": now},
        "remarketing.messages": {"message_id": message, "step": 1, "created_at": now},
        "remarketing.deliveries": {"message_id": message, "step": 1, "outcome": "delivered", "decided_at": now + 2_000},
    }
    for topic, schema in FLOW_RECORDS.items():
        produce_avro(setup.bootstrap, setup.registry, topic, schema, [(key, values[topic])])


def _target_files(setup: Setup) -> list[dict[str, Any]]:
    return [group for path in sorted((setup.mon.targets_dir).glob("*.json"))
            for group in json.loads(path.read_text())]  # fmt: skip


def test_every_configured_target_is_up(traffic: Setup) -> None:
    mon = traffic.mon

    def all_up() -> list[dict[str, Any]] | None:
        active = get(f"{mon.prometheus_url}/api/v1/targets")["data"]["activeTargets"]
        commands = {t["labels"].get("command") for t in active if t["labels"]["job"] == "passerelle"}
        if not {"monitoring_app", "emailing", "collector"} <= commands:
            return None
        return active if all(t["health"] == "up" for t in active) else None

    active = wait_for("every target up", all_up, timeout=60)
    assert {t["labels"]["job"] for t in active} == {"passerelle", "passerelle-lag", "prometheus", "alertmanager",
                                                    "kafka"}  # fmt: skip


def finite(result: list[dict[str, Any]]) -> bool:
    return any(series["value"][1] not in ("NaN", "+Inf", "-Inf") for series in result)


def test_every_panel_query_returns_data(traffic: Setup) -> None:
    """Each panel's PromQL, as a page or Grafana would send it, answers at least one series with a number."""
    last_push = [0.0]

    def answered(promql: str) -> list[dict[str, Any]] | None:
        if time.monotonic() - last_push[0] > 2:
            more_traffic(traffic)
            last_push[0] = time.monotonic()
        result = query(traffic.mon, promql)
        return result if finite(result) else None

    for panel in PANELS:
        wait_for(f"panel {panel.id} ({panel.query})", functools.partial(answered, panel.query), timeout=60)

    def p95() -> dict[str, float] | None:
        result = query(traffic.mon, by_id("flow_latency_p95").query)
        values = {s["metric"]["flow"]: float(s["value"][1]) for s in result if s["value"][1] != "NaN"}
        return values if set(values) == set(FLOWS) else None

    flows = wait_for("every flow's p95", p95)
    # What the records said, in the histogram's buckets: 250 ms, 30 min, 2 s.
    assert 0.1 < flows["hit_to_enriched"] <= 0.25
    assert 900 < flows["hit_to_abandoned_cart"] <= 1800
    assert 1 < flows["abandonment_to_partner"] <= 2.5
    dead = query(traffic.mon, 'passerelle_dead_letters_total{stage="deserialize"}')
    assert [float(s["value"][1]) for s in dead] == [1.0]  # the poison record


def test_lag_command_reports_the_groups_partitions(traffic: Setup) -> None:
    def caught_up() -> str | None:
        proc = passerelle({**traffic.env, "PASSERELLE_LAG_GROUPS": "^mon-app$"}, "lag", timeout=60)
        assert proc.returncode == 0, proc.stderr
        rows = [line.split() for line in proc.stdout.splitlines()[1:]]
        done = len(rows) == 2 and all(r[5] in ("0", "1") and r[6] == "0.0" for r in rows)  # 1: a commit marker
        return proc.stdout if done else None

    out = wait_for("the processor's group caught up in `passerelle lag`", caught_up, timeout=60)
    assert "mon-app" in out and traffic.topics["input"] in out


def test_stopping_a_processor_fires_its_alert_and_status_lists_it(traffic: Setup) -> None:
    mon = traffic.mon
    wait_for("the processor scraped up", lambda: query(mon, 'up{command="monitoring_app"} == 1'))
    traffic.procs["processor"].send_signal(signal.SIGKILL)
    traffic.procs["processor"].wait(10)
    stopped = time.monotonic()
    produce_avro(traffic.bootstrap, traffic.registry, traffic.topics["input"], IN_SCHEMA,
                 [("v9", {"event_id": "late", "visitor_id": "v9", "n": 1})])  # fmt: skip

    def in_alertmanager() -> list[dict[str, Any]]:
        alerts = get(f"{mon.alertmanager_url}/api/v2/alerts")
        return [a for a in alerts if a["labels"].get("alertname") == "ProcessorDown"
                and a["labels"].get("command") == "monitoring_app"]  # fmt: skip

    # `for` + scrape interval, plus the evaluation that notices and Prometheus's send: the margin is for a busy box.
    fired = wait_for("ProcessorDown in Alertmanager", in_alertmanager, timeout=ALERT_FOR_S + SCRAPE_S + 30)
    assert fired[0]["labels"]["severity"] == "critical"
    assert time.monotonic() - stopped >= ALERT_FOR_S  # not before its `for`

    lagging = wait_for(
        "lag seconds of the unread record",
        lambda: [s for s in query(mon, 'passerelle_consumer_group_lag_seconds{group="mon-app"} > 0')],
    )
    assert lagging[0]["metric"]["topic"] == traffic.topics["input"]

    proc = passerelle(traffic.env, "status", timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr  # every component of the stack runs
    lines = proc.stdout.splitlines()
    for name in ("kafka", "registry", "prometheus", "alertmanager", "lag"):
        assert any(line.startswith(name) and "answering" in line and "NOT" not in line for line in lines), proc.stdout
    assert any("firing" in line for line in lines), proc.stdout
    assert any(line.strip().startswith("ProcessorDown [critical] monitoring_app on") for line in lines), proc.stdout
