"""``passerelle connect``: apply, status and their errors, on a real Kafka Connect worker and PostgreSQL."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from passerelle.cli import main
from passerelle.connectors.connect import configs
from passerelle.connectors.connect.rest import ConnectClient
from passerelle.deploy.local import connect, postgres
from tests.integration.connect_helpers import cdc_topics, cleanup, create_topics, crm_connectors, write_files

pytestmark = pytest.mark.integration


@pytest.fixture
def client(connect_worker: connect.Worker) -> ConnectClient:
    return ConnectClient(connect_worker.url)


@pytest.fixture
def pair(
    unique: Callable[[str], str], client: ConnectClient, crm_postgres: postgres.Postgres, kafka_bootstrap: str
) -> Iterator[dict[str, configs.ConnectorFile]]:
    items = crm_connectors(unique)
    create_topics(kafka_bootstrap, [*cdc_topics(items["source"]), items["sink"].config["topics"]])
    create_topics(kafka_bootstrap, [items["sink"].config["errors.deadletterqueue.topic.name"]], partitions=1)
    yield items
    cleanup(client, crm_postgres, *items.values())


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_apply_creates_then_changes_nothing(
    pair: dict[str, configs.ConnectorFile], client: ConnectClient, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = write_files(tmp_path, *pair.values())
    source, sink = pair["source"].name, pair["sink"].name
    code, out, err = run(capsys, "connect", "--url", client.url, "apply", "--dir", str(folder))
    assert code == 0, err
    assert f"{source:<24} created" in out and f"{sink:<24} created" in out
    assert client.status(source).running and client.status(sink).running
    stored = client.config(source)
    code, out, err = run(capsys, "connect", "--url", client.url, "apply", "--dir", str(folder))
    assert code == 0, err
    assert f"{source:<24} unchanged" in out and f"{sink:<24} unchanged" in out
    assert client.config(source) == stored
    code, out, _ = run(capsys, "connect", "--url", client.url, "status", source, sink)
    assert code == 0
    assert out.count("RUNNING") == 4  # two connectors, one task each


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"connector.class": "io.debezium.connector.postgresql.NoSuchConnector"}, "is not installed on the worker"),
        ({"topic.prefix": None}, "topic.prefix"),
        ({"database.password": "${env:PASSERELLE_CRM_DB_SINK_PASSWORD}"}, "password authentication failed"),
    ],
    ids=["wrong-class", "missing-required-field", "wrong-password"],
)
def test_a_bad_source_config_is_one_error_and_nothing_is_applied(
    pair: dict[str, configs.ConnectorFile],
    client: ConnectClient,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    change: dict[str, str | None],
    expected: str,
) -> None:
    config = {k: v for k, v in pair["source"].config.items() if change.get(k, v) is not None}
    config.update({k: v for k, v in change.items() if v is not None})
    bad = dataclasses.replace(pair["source"], config=config)
    folder = write_files(tmp_path, bad, pair["sink"])
    code, _, err = run(capsys, "connect", "--url", client.url, "apply", "--dir", str(folder))
    assert code == 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], err
    assert "nothing applied" in lines[0]
    assert client.config(bad.name) is None and client.config(pair["sink"].name) is None


def test_a_sink_that_cannot_log_in_is_rolled_back_and_status_names_the_failure(
    pair: dict[str, configs.ConnectorFile], client: ConnectClient, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sink = pair["sink"]
    # The other role's password: the JDBC sink's validation does not log in, its task does (and fails).
    wrong = "${env:PASSERELLE_CRM_DB_CDC_PASSWORD}"
    bad = dataclasses.replace(sink, config={**sink.config, "connection.password": wrong})
    folder = write_files(tmp_path, bad)
    code, _, err = run(capsys, "connect", "--url", client.url, "apply", "--dir", str(folder), "--wait", "30")
    assert code == 1
    assert err.startswith("error: ") and "could not connect to its database" in err and f"{sink.name} deleted" in err
    assert client.config(sink.name) is None
    # The same config put directly (not through apply): status shows the failed task in one error line.
    client.put_config(sink.name, bad.config)
    configs.wait_running(client, sink.name, 30)
    code, out, _ = run(capsys, "connect", "--url", client.url, "status", sink.name)
    assert code == 4
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and f"connector {sink.name} task 0 failed" in errors[0]
    assert "could not connect to its database" in errors[0]


def test_a_secret_in_clear_is_refused_before_anything_is_sent(tmp_path: Path) -> None:
    text = '{"name": "x", "config": {"connector.class": "C", "database.password": "hunter2"}}'
    (tmp_path / "x.json").write_text(text)
    with pytest.raises(configs.ConnectorConfigError, match="holds a secret in clear"):
        configs.load(tmp_path)


def test_pause_resume_restart_delete(
    pair: dict[str, configs.ConnectorFile], client: ConnectClient, capsys: pytest.CaptureFixture[str]
) -> None:
    sink = pair["sink"]
    configs.apply(client, [sink], wait=30)
    assert run(capsys, "connect", "--url", client.url, "pause", sink.name)[0] == 0
    state = client.status(sink.name)
    for _ in range(40):
        if state.state == "PAUSED":
            break
        state = client.status(sink.name)
    assert state.state == "PAUSED"
    assert run(capsys, "connect", "--url", client.url, "resume", sink.name)[0] == 0
    assert configs.wait_running(client, sink.name, 30).running
    assert run(capsys, "connect", "--url", client.url, "restart", sink.name)[0] == 0
    assert configs.wait_running(client, sink.name, 30).running
    assert run(capsys, "connect", "--url", client.url, "delete", sink.name)[0] == 0
    assert client.config(sink.name) is None
