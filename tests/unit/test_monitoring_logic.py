"""The monitoring's pure parts: lag arithmetic, flow latencies, Connect states, scrape targets, panels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from passerelle.connectors.monitoring import flows, panels, targets
from passerelle.connectors.monitoring.exporter import connect_states
from passerelle.connectors.monitoring.lag import lag_records, lag_seconds

pytestmark = pytest.mark.unit


def test_lag_in_records_counts_from_the_committed_offset_or_the_start() -> None:
    assert lag_records(committed=40, low=0, high=100) == 60
    assert lag_records(committed=100, low=0, high=100) == 0
    assert lag_records(committed=-1001, low=30, high=100) == 70  # never committed: from the oldest kept record
    assert lag_records(committed=10, low=30, high=100) == 70  # committed offset deleted by retention


def test_lag_in_seconds_is_the_age_of_the_oldest_unread_record() -> None:
    assert lag_seconds(now_ms=10_000, oldest_unread_ms=4_000) == 6.0
    assert lag_seconds(now_ms=10_000, oldest_unread_ms=None) == 0.0  # nothing readable: only a marker left
    assert lag_seconds(now_ms=10_000, oldest_unread_ms=12_000) == 0.0  # a producer's clock ahead


def test_flow_latencies_come_from_the_times_the_records_carry() -> None:
    clock = flows.FlowClock(flows.FlowTopics())
    assert clock.observe("hits.enriched", {"event_time": 1_000, "enriched_at": 1_250}) == ("hit_to_enriched", 0.25)
    assert clock.observe("carts.abandoned", {"last_activity_at": 0, "detected_at": 1_800_000}) == (
        "hit_to_abandoned_cart", 1800.0,
    )  # fmt: skip
    assert clock.observe("remarketing.messages", {"message_id": "m1", "step": 1, "created_at": 5_000}) is None
    assert clock.observe("remarketing.messages", {"message_id": "m2", "step": 2, "created_at": 5_000}) is None
    delivered = {"message_id": "m1", "step": 1, "outcome": "delivered", "decided_at": 7_500}
    assert clock.observe("remarketing.deliveries", delivered) == ("abandonment_to_partner", 2.5)
    assert clock.observe("remarketing.deliveries", delivered) is None  # counted once
    step2 = {"message_id": "m2", "step": 2, "outcome": "delivered", "decided_at": 9_000}
    assert clock.observe("remarketing.deliveries", step2) is None  # step 2 is not the abandonment's first email
    early = {"message_id": "m3", "outcome": "delivered", "decided_at": 4_000}
    assert clock.observe("remarketing.deliveries", early) is None  # read before its message: waits for it
    message = {"message_id": "m3", "step": 1, "created_at": 3_000}
    assert clock.observe("remarketing.messages", message) == ("abandonment_to_partner", 1.0)
    assert clock.observe("hits.enriched", None) is None
    assert clock.observe("hits.enriched", {"event_time": None, "enriched_at": 5}) is None


def test_flow_clock_forgets_the_oldest_messages_past_its_bound() -> None:
    clock = flows.FlowClock(flows.FlowTopics(), remembered=2)
    for i in range(3):
        clock.observe("remarketing.messages", {"message_id": f"m{i}", "step": 1, "created_at": i})
    first = {"message_id": "m0", "outcome": "delivered", "decided_at": 10}
    assert clock.observe("remarketing.deliveries", first) is None
    assert clock.observe("remarketing.deliveries", {**first, "message_id": "m2"}) == ("abandonment_to_partner", 0.008)


def test_connect_states_list_connectors_and_tasks() -> None:
    body = {
        "crm-source": {"status": {"connector": {"state": "RUNNING"},
                                  "tasks": [{"id": 0, "state": "FAILED", "trace": "boom"}]}},
        "crm-sink": {"status": {"connector": {"state": "PAUSED"}, "tasks": []}},
    }  # fmt: skip
    assert connect_states(body) == [
        ("crm-sink", "connector", "PAUSED"), ("crm-source", "connector", "RUNNING"), ("crm-source", "0", "FAILED"),
    ]  # fmt: skip
    assert connect_states({}) == []


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["/venv/bin/python", "-m", "passerelle", "enrich"], "enrich"),
        (["/venv/bin/python", "-m", "passerelle", "--debug", "carts"], "carts"),
        (["/venv/bin/python", "/venv/bin/passerelle", "collector"], "collector"),
        (["/venv/bin/passerelle", "emailing", "bridge"], "emailing"),
        (["python", "-m", "tests.integration.monitoring_app"], "monitoring_app"),
        (["bash"], None),
    ],
)
def test_the_command_of_a_process(argv: list[str], command: str | None) -> None:
    assert targets.passerelle_command(argv) == command


def test_a_target_is_a_process_of_this_stack_serving_metrics() -> None:
    argv = ["python", "-m", "passerelle", "enrich"]
    mine = {"PASSERELLE_METRICS_PORT": "9100", "PASSERELLE_BOOTSTRAP_SERVERS": "127.0.0.1:9092"}
    assert targets.target_of(argv, mine, "127.0.0.1:9092") == targets.Target("enrich", "127.0.0.1", 9100)
    assert targets.target_of(argv, {"PASSERELLE_METRICS_PORT": "9100"}, "127.0.0.1:9092") is not None  # default
    assert targets.target_of(argv, mine, "127.0.0.1:19092") is None  # another stack's
    assert targets.target_of(argv, {"PASSERELLE_KAFKA_PORT": "9092"}, "127.0.0.1:9092") is None  # no /metrics
    collector = targets.target_of(["passerelle", "collector"], {"PASSERELLE_COLLECTOR_PORT": "8099"}, "127.0.0.1:9092")
    assert collector == targets.Target("collector", "127.0.0.1", 8099)  # serves /metrics on its own port
    api = targets.target_of(["passerelle", "api"], {"PASSERELLE_API_HOST": "0.0.0.0"}, "127.0.0.1:9092")
    assert api == targets.Target("api", "127.0.0.1", 8090)  # its own port too; 0.0.0.0 is scraped on loopback


def test_target_files_are_written_once_and_never_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(targets, "serves_metrics", lambda target: target.port != 9999)
    wanted = [targets.Target("enrich", "127.0.0.1", 9100), targets.Target("status", "127.0.0.1", 9999)]
    assert targets.write_targets(tmp_path, wanted) == wanted[:1]  # the one not answering is left out
    assert targets.write_targets(tmp_path, wanted) == []
    assert json.loads((tmp_path / "enrich-9100.json").read_text()) == [
        {"targets": ["127.0.0.1:9100"], "labels": {"command": "enrich"}}
    ]
    assert targets.write_targets(tmp_path, []) == []
    assert targets.known_targets(tmp_path) == wanted[:1]


def test_panels_have_unique_ids_units_and_queries() -> None:
    ids = [p.id for p in panels.PANELS]
    assert len(ids) == len(set(ids))
    for panel in panels.PANELS:
        assert panel.title and panel.query and panel.legend
        assert panel.unit in ("reqps", "Bps", "s", "short", "percentunit")
    assert panels.by_id("lag_seconds").unit == "s"
    with pytest.raises(KeyError, match="known: throughput_in"):
        panels.by_id("nope")
