"""Partners' impressions and metrics on the real broker and registry: POST /v1/impressions, POST /v1/metrics,
and ``passerelle metrics import`` (the same rules from a CSV file)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, TopicPartition
from fastapi.testclient import TestClient

from passerelle.connectors.partner_api.app import create_app
from passerelle.connectors.partner_api.config import ApiConfig, ApiTopics
from passerelle.schemas.clients import Connection, consumer, registry_client
from passerelle.schemas.serde import AvroDecoder, SchemaCache, registry_fetcher
from tests.integration.api_helpers import cli, isolate_env, make_keys
from tests.integration.kafka_helpers import create_topics

pytestmark = pytest.mark.integration
MAX_IMPRESSIONS = 20
DAY = (datetime.now(UTC).date() - timedelta(days=1)).isoformat()


@dataclass
class Env:
    client: TestClient
    topics: ApiTopics
    bootstrap: str
    registry: str
    keys: dict[str, str]

    def h(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[who]}"}

    def read(self, topic: str) -> list[tuple[str, dict[str, Any], int]]:
        """Every record of ``topic`` (key, value, timestamp), read to the end offsets of now (assign, no group)."""
        conn = Connection.plain(self.bootstrap, self.registry)
        reader = consumer(conn, f"test-imports-{uuid.uuid4().hex[:6]}", {"enable.partition.eof": False})
        decoder = AvroDecoder(SchemaCache(registry_fetcher(registry_client(conn))))
        try:
            partitions = sorted(reader.list_topics(topic, timeout=10).topics[topic].partitions)
            ends = {}
            for p in partitions:
                low, high = reader.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                if high > low:
                    ends[p] = high
            reader.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
            out = []
            deadline = time.monotonic() + 20
            while ends and time.monotonic() < deadline:
                for msg in reader.consume(1000, timeout=0.5):
                    if msg.error():
                        continue
                    out.append((decoder.decode(msg.key()), decoder.decode(msg.value()), msg.timestamp()[1]))
                    if msg.offset() + 1 >= ends.get(msg.partition(), 0):
                        ends.pop(msg.partition(), None)
            assert not ends, f"{topic}: not read to its end"
            return out
        finally:
            reader.close()


@pytest.fixture(scope="module")
def env(kafka_bootstrap: str, schema_registry_url: str) -> Iterator[Env]:
    run = uuid.uuid4().hex[:8]
    topics = ApiTopics(
        campaigns=f"campaigns.imp.{run}", undeclared=f"campaigns.undeclared.imp.{run}", keys=f"partners.keys.imp.{run}",
        impressions=f"ads.impressions.imp.{run}", metrics=f"partners.metrics.imp.{run}",
    )  # fmt: skip
    create_topics(kafka_bootstrap, {topics.impressions: 6, topics.metrics: 3})
    create_topics(kafka_bootstrap, {topics.campaigns: 1, topics.undeclared: 1, topics.keys: 1},
                  {"cleanup.policy": "compact"})  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        isolate_env(mp, kafka_bootstrap, schema_registry_url)
        keys = make_keys(topics.keys, [
            ("retargeter", "retargeter", ["impressions:write", "metrics:write", "campaigns:write"]),
            ("rival", "rival", ["campaigns:write", "metrics:write"]),
            ("reader", "retargeter", ["campaigns:read"]),
        ])  # fmt: skip
        config = ApiConfig(bootstrap_servers=kafka_bootstrap, schema_registry_url=schema_registry_url, topics=topics,
                           max_batch_impressions=MAX_IMPRESSIONS)  # fmt: skip
        with TestClient(create_app(config)) as client:
            e = Env(client, topics, kafka_bootstrap, schema_registry_url, keys)
            for who, key in (("retargeter", "RT-1"), ("rival", "AD-77")):
                body = {
                    "key": key,
                    "name": f"{key} banners",
                    "landing_url": "https://shop.example/",
                    "channel": "display",
                }
                declared = client.post("/v1/campaigns", json=body, headers=e.h(who))
                assert declared.status_code == 201, declared.text
            yield e


def impression(n: int, **changes: Any) -> dict[str, Any]:
    item = {"impression_id": f"imp-{n}", "visitor_id": f"v-{n % 4}", "site": "shop.example", "campaign_key": "RT-1",
            "creative": "b-300x250", "placement": "news/top",
            "event_time": (datetime.now(UTC) - timedelta(minutes=n)).isoformat()}  # fmt: skip
    item.update(changes)
    return item


def metric(**changes: Any) -> dict[str, Any]:
    item = {"date": DAY, "campaign_key": "RT-1", "metric": "cost", "value": 12.5, "currency": "EUR"}
    item.update(changes)
    return item


# --- POST /v1/impressions ------------------------------------------------------------------------------------


def test_impressions_are_published_keyed_by_visitor(env: Env) -> None:
    stamp = int(datetime.now(UTC).timestamp() * 1000) - 60_000
    batch = [impression(1), impression(2, campaign_key=None, creative=None), impression(3, event_time=stamp)]
    answer = env.client.post("/v1/impressions", json={"impressions": batch}, headers=env.h("retargeter"))
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"accepted": 3, "errors": []}
    published = {v["impression_id"]: (k, v, ts) for k, v, ts in env.read(env.topics.impressions)}
    for item in batch:
        key, value, ts = published[item["impression_id"]]
        assert key == item["visitor_id"] == value["visitor_id"] and value["ad_server"] == "retargeter"
        assert int(value["event_time"].timestamp() * 1000) == ts  # the record's time is the impression's
    assert published["imp-3"][2] == stamp and published["imp-2"][1]["campaign_key"] is None


def test_one_bad_impression_never_loses_the_others(env: Env) -> None:
    batch = [impression(10), impression(11, visitor_id=""), "not an object", impression(12, event_time="noon"),
             impression(13, ad_server="other"), impression(14)]  # fmt: skip
    answer = env.client.post("/v1/impressions", json={"impressions": batch}, headers=env.h("retargeter"))
    assert answer.status_code == 207, answer.text
    body = answer.json()
    assert body["accepted"] == 2
    assert [(e["index"], e["field"]) for e in body["errors"]] == [
        (1, "impressions[1].visitor_id"), (2, "impressions[2]"), (3, "impressions[3].event_time"),
        (4, "impressions[4].ad_server"),
    ]  # fmt: skip
    ids = {v["impression_id"] for _, v, _ in env.read(env.topics.impressions)}
    assert {"imp-10", "imp-14"} <= ids and not ids & {"imp-11", "imp-12", "imp-13"}
    none = env.client.post("/v1/impressions", json={"impressions": [impression(15, site="")]},
                           headers=env.h("retargeter"))  # fmt: skip
    assert none.status_code == 422 and none.json()["accepted"] == 0


def test_impressions_refused_whole(env: Env) -> None:
    c, url = env.client, "/v1/impressions"
    too_many = c.post(url, json={"impressions": [impression(n) for n in range(MAX_IMPRESSIONS + 1)]},
                      headers=env.h("retargeter"))  # fmt: skip
    assert too_many.status_code == 413 and too_many.json()["errors"][0]["field"] == "impressions"
    no_key = c.post(url, json={"impressions": [impression(1)]})
    assert no_key.status_code == 401 and no_key.headers["www-authenticate"] == "Bearer"
    wrong_scope = c.post(url, json={"impressions": [impression(1)]}, headers=env.h("rival"))
    assert wrong_scope.status_code == 403 and "impressions:write" in wrong_scope.text
    for body in ({"impressions": "x"}, {"impression": []}, [impression(1)], {"impressions": []}):
        assert c.post(url, json=body, headers=env.h("retargeter")).status_code == 422, body
    not_json = c.post(url, content=b"{nope", headers={**env.h("retargeter"), "Content-Type": "application/json"})
    assert not_json.status_code == 422
    paths = c.get("/openapi.json").json()["paths"]
    assert "post" in paths["/v1/impressions"] and "post" in paths["/v1/metrics"]


# --- POST /v1/metrics ----------------------------------------------------------------------------------------


def test_metrics_are_published_under_stable_ids_and_undeclared_keys_listed(env: Env) -> None:
    batch = [metric(), metric(metric="clicks", value=340, currency=None), metric(campaign_key="NEW-1", value=3),
             metric(campaign_key=None, metric="impressions", value=120000, currency=None)]  # fmt: skip
    first = env.client.post("/v1/metrics", json={"metrics": batch}, headers=env.h("retargeter"))
    assert first.status_code == 200, first.text
    assert first.json() == {"accepted": 4, "errors": [], "undeclared": ["NEW-1"]}
    ids = {f"retargeter|RT-1|{DAY}|cost", f"retargeter|RT-1|{DAY}|clicks", f"retargeter|NEW-1|{DAY}|cost",
           f"retargeter||{DAY}|impressions"}  # fmt: skip
    records = [(k, v) for k, v, _ in env.read(env.topics.metrics) if v["partner"] == "retargeter"]
    assert {k for k, _ in records} >= ids and all(k == v["metric_id"] for k, v in records)

    batch[0] = metric(value=13.0)  # the day corrected: the same key again, consumers keep the last value
    again = env.client.post("/v1/metrics", json={"metrics": batch}, headers=env.h("retargeter"))
    assert again.status_code == 200, again.text
    latest: dict[str, float] = {}
    for key, value, _ in env.read(env.topics.metrics):
        latest[key] = value["value"]
    assert latest[f"retargeter|RT-1|{DAY}|cost"] == 13.0
    assert {k for k in latest if k.startswith("retargeter|")} == {k for k, _ in records}  # no new key


def test_a_metric_of_another_partners_campaign_is_refused(env: Env) -> None:
    mixed = env.client.post("/v1/metrics", json={"metrics": [metric(campaign_key="AD-77"), metric(value=1.5),
                                                             metric(date="2026-02-30")]},
                            headers=env.h("retargeter"))  # fmt: skip
    assert mixed.status_code == 207, mixed.text
    body = mixed.json()
    assert body["accepted"] == 1 and body["undeclared"] == []
    assert [(e["index"], e["field"]) for e in body["errors"]] == [(0, "metrics[0].campaign_key"),
                                                                  (2, "metrics[2].date")]  # fmt: skip
    assert "another partner" in body["errors"][0]["reason"]
    foreign = env.client.post("/v1/metrics", json={"metrics": [metric(campaign_key="AD-77")] * 2},
                              headers=env.h("retargeter"))  # fmt: skip
    assert foreign.status_code == 403 and foreign.json()["accepted"] == 0
    mine = env.client.post("/v1/metrics", json={"metrics": [metric(campaign_key="AD-77")]}, headers=env.h("rival"))
    assert mine.status_code == 200, mine.text
    assert env.client.post("/v1/metrics", json={"metrics": [metric()]}, headers=env.h("reader")).status_code == 403


# --- passerelle metrics import -------------------------------------------------------------------------------


def test_the_csv_import_publishes_the_good_lines_and_names_the_bad_ones(
    env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    isolate_env(monkeypatch, env.bootstrap, env.registry)
    day = "2026-11-28"
    path = tmp_path / "figures.csv"
    path.write_text(
        "\ufeffdate,campaign_key,metric,value,currency\n"
        f"{day},RT-1,cost,99.5,EUR\n"  # 2
        f"{day},RT-1,clicks,12,\n"  # 3
        f"{day},RT-1,clicks,-1,\n"  # 4: value
        f"2026-13-01,RT-1,cost,1,EUR\n"  # 5: date
        f"{day},AD-77,cost,1,EUR\n"  # 6: another partner's campaign
        f"{day},FRESH-9,conversions,2,\n"  # 7: undeclared, accepted
        f"{day},,revenue,1000,eur\n",  # 8: account level
        encoding="utf-8",
    )
    topics = ("--topic", env.topics.metrics, "--keys-topic", env.topics.keys, "--campaigns-topic", env.topics.campaigns)
    started = time.monotonic()
    code, out = cli("metrics", "import", str(path), "--partner", "retargeter", *topics)
    err = capsys.readouterr().err
    print(f"import of 7 lines: {time.monotonic() - started:.1f}s")
    assert code == 2, err
    assert "line 4, column value: negative" in err and "line 5, column date:" in err
    assert "line 6, column campaign_key: campaign 'AD-77' belongs to another partner" in err
    assert "metrics import: 4/4 record(s) sent (100%), 4 acknowledged" in err
    assert "published      4" in out and "rejected       3" in out and "FRESH-9" in out
    expected = {f"retargeter|RT-1|{day}|cost", f"retargeter|RT-1|{day}|clicks", f"retargeter|FRESH-9|{day}|conversions",
                f"retargeter||{day}|revenue"}  # fmt: skip
    keys = [k for k, _, _ in env.read(env.topics.metrics) if day in k]
    assert sorted(keys) == sorted(expected)

    code, _ = cli("metrics", "import", str(path), "--partner", "retargeter", *topics)
    assert code == 2
    again = [k for k, _, _ in env.read(env.topics.metrics) if day in k]
    assert len(again) == 8 and set(again) == expected  # the same keys again: consumers keep the last value

    unknown = cli("metrics", "import", str(path), "--partner", "nobody", *topics)[0]
    assert unknown == 1 and "unknown partner 'nobody'" in capsys.readouterr().err
    bad_header = tmp_path / "bad.csv"
    bad_header.write_text("day,campaign,metric,value,currency\n", encoding="utf-8")
    assert cli("metrics", "import", str(bad_header), "--partner", "retargeter", *topics)[0] == 1
    assert "header (missing date, campaign_key" in capsys.readouterr().err
    missing = ("--topic", f"{env.topics.metrics}.missing", *topics[2:])
    assert cli("metrics", "import", str(path), "--partner", "retargeter", *missing)[0] == 1
    assert "does not exist" in capsys.readouterr().err
