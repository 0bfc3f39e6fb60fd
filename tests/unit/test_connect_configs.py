"""Connector files: parsing, secrets refused in clear, one-line traces, Strimzi resources (pure logic)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from passerelle.connectors.connect import configs, strimzi
from passerelle.schemas.catalog import load_catalog

pytestmark = pytest.mark.unit
MIGRATIONS = Path(configs.__file__).resolve().parents[1] / "crm" / "migrations"


def test_the_shipped_files_load_and_name_their_secrets() -> None:
    items = {item.name: item for item in configs.load()}
    assert set(items) == {"crm-source", "crm-sink", "crm-paths-sink", "crm-channels-sink"}
    assert items["crm-source"].config["database.password"] == "${env:PASSERELLE_CRM_DB_CDC_PASSWORD}"
    for sink in ("crm-sink", "crm-paths-sink", "crm-channels-sink"):
        assert items[sink].config["connection.password"] == "${env:PASSERELLE_CRM_DB_SINK_PASSWORD}"


def _migration_tables() -> dict[str, list[str]]:
    """Column names of each ``CREATE TABLE`` of the CRM migrations."""
    sql = "\n".join(p.read_text() for p in sorted(MIGRATIONS.glob("*.sql")))
    tables = {}
    for name, body in re.findall(r"CREATE TABLE (\w+) \((.*?)\n\);", sql, re.DOTALL):
        lines = [line.split("--")[0].strip() for line in body.splitlines()]
        tables[name] = [line.split()[0] for line in lines if line and not line.startswith(("PRIMARY", "UNIQUE"))]
    return tables


@pytest.mark.parametrize("name", ["crm-sink", "crm-paths-sink", "crm-channels-sink"])
def test_each_jdbc_sink_reads_a_connect_json_topic_into_a_table_with_every_field(name: str) -> None:
    config = {item.name: item for item in configs.load()}[name].config
    spec = load_catalog().topic(config["topics"])
    assert spec.wire_format == "connect-json" and spec.cleanup_policy == "compact"
    fields = [f["name"] for f in json.loads(load_catalog().schema_text(spec.value_schema))["fields"]]
    # schema.evolution=none: the table must have every field, the key field first and as primary key.
    assert config["schema.evolution"] == "none" and config["insert.mode"] == "upsert"
    assert config["delete.enabled"] == "true" and config["primary.key.mode"] == "record_key"
    assert config["primary.key.fields"] == config["transforms.key.field"] == fields[0]
    assert config["consumer.override.isolation.level"] == "read_committed"
    assert config["errors.deadletterqueue.topic.name"] == "errors.connect"
    assert _migration_tables()[config["collection.name.format"]] == fields


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not JSON"),
        ('{"name": "x"}', 'expected {"name"'),
        ('{"name": "x", "config": {"connection.password": "hunter2"}}', "holds a secret in clear"),
        ('{"name": "x", "config": {"aws.secret": "abc"}}', "holds a secret in clear"),
    ],
)
def test_bad_files_are_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(configs.ConnectorConfigError, match=message):
        configs.parse(text, "f.json")


def test_values_become_strings_as_connect_stores_them() -> None:
    item = configs.parse('{"name": "x", "config": {"tasks.max": 2, "a": true, "p": "${file:/s:p}"}}', "f.json")
    assert item.config == {"tasks.max": "2", "a": "true", "p": "${file:/s:p}"}


def test_an_unknown_name_is_an_error_listing_the_files(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text('{"name": "a", "config": {}}')
    with pytest.raises(configs.ConnectorConfigError, match=r"no connector file names b .*found: a"):
        configs.load(tmp_path, ["b"])


def test_a_trace_is_summarised_on_one_line() -> None:
    trace = (
        "org.apache.kafka.connect.errors.ConnectException: Exiting WorkerSinkTask\n\tat a.b(C.java:1)\n"
        "Caused by: java.lang.IllegalStateException: middle\n\tat x\n"
        "Caused by: org.postgresql.util.PSQLException: FATAL: password authentication failed\n\tat y"
    )
    line = configs.summarize_trace(trace)
    assert "\n" not in line
    assert line.startswith("org.apache.kafka.connect.errors.ConnectException: Exiting WorkerSinkTask")
    assert line.endswith("caused by org.postgresql.util.PSQLException: FATAL: password authentication failed")
    assert configs.summarize_trace(None) == "no trace"


def test_strimzi_resources_lift_class_and_tasks_and_keep_the_rest() -> None:
    items = configs.load()
    docs = list(yaml.safe_load_all(strimzi.manifests(items, "crm-connect", "analytics")))
    assert [d["metadata"]["name"] for d in docs] == [i.name for i in items]
    for doc, item in zip(docs, items, strict=True):
        assert doc["kind"] == "KafkaConnector" and doc["apiVersion"] == "kafka.strimzi.io/v1beta2"
        assert doc["metadata"]["labels"] == {"strimzi.io/cluster": "crm-connect"}
        assert doc["metadata"]["namespace"] == "analytics"
        assert doc["spec"]["class"] == item.config["connector.class"]
        assert doc["spec"]["tasksMax"] == int(item.config["tasks.max"])
        rest = {k: v for k, v in item.config.items() if k not in ("connector.class", "tasks.max")}
        assert doc["spec"]["config"] == rest  # backslashes, ${env:...} and $1 survive the YAML round trip
