"""The embedded registry against confluent-kafka's own client and serdes, over a real broker.

The registry runs as a real subprocess (``python -m passerelle registry``) on a
free port with its own ``_schemas`` topic, so these tests see exactly what a
producer, a consumer or Kafka Connect would see, including after a restart.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

from passerelle.schemas.registry.server import wait_ready

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MEDIA_TYPE = "application/vnd.schemaregistry.v1+json"

# Until every module the CLI lists exists, start the same command function without the CLI wrapper.
_FALLBACK = """
import argparse, logging, sys
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
from passerelle.commands import registry
parser = argparse.ArgumentParser(prog="passerelle")
registry.add_parser(parser.add_subparsers())
args = parser.parse_args(["registry", *sys.argv[1:]])
try:
    sys.exit(args.func(args))
except Exception as exc:
    if getattr(exc, "user_error", False):
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    raise
"""


def registry_command() -> list[str]:
    from passerelle import cli

    if all(importlib.util.find_spec(name) is not None for name in cli.COMMAND_MODULES):
        return [sys.executable, "-m", "passerelle", "registry"]
    return [sys.executable, "-c", _FALLBACK]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def env_for(bootstrap: str, port: int, topic: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PASSERELLE_")}
    env.update(
        PASSERELLE_BOOTSTRAP_SERVERS=bootstrap,
        PASSERELLE_REGISTRY_HOST="127.0.0.1",
        PASSERELLE_REGISTRY_PORT=str(port),
        PASSERELLE_SCHEMAS_TOPIC=topic,
    )
    return env


class RegistryProcess:
    """One registry subprocess that can be killed and started again on the same port and topic."""

    def __init__(self, bootstrap: str, topic: str, log: Path) -> None:
        self.bootstrap, self.topic, self.log = bootstrap, topic, log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                registry_command(),
                env=env_for(self.bootstrap, self.port, self.topic),
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        try:
            wait_ready(self.url, 60)
        except Exception:
            self.stop()
            raise AssertionError(f"registry did not start: {self.log.read_text()[-3000:]}") from None

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def drop_topic(self) -> None:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        admin.delete_topics([self.topic], operation_timeout=10)[self.topic].result(15)


@pytest.fixture(scope="module")
def registry(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    topic = f"_schemas-conformance-{uuid.uuid4().hex[:8]}"
    reg = RegistryProcess(kafka_bootstrap, topic, tmp_path_factory.mktemp("registry") / "registry.log")
    reg.start()
    try:
        yield reg
    finally:
        reg.stop()
        reg.drop_topic()


@pytest.fixture
def client(registry: RegistryProcess) -> SchemaRegistryClient:
    """A fresh client per test so its cache never answers in place of the registry."""
    return SchemaRegistryClient({"url": registry.url})


@pytest.fixture
def subject(request: pytest.FixtureRequest) -> Callable[[str], str]:
    run = uuid.uuid4().hex[:6]

    def make(suffix: str) -> str:
        return f"{request.node.name[:30]}.{run}-{suffix}"

    return make


def avro(*fields: dict[str, Any], name: str = "Hit") -> Schema:
    return Schema(
        json.dumps({"type": "record", "name": name, "namespace": "passerelle.test", "fields": list(fields)}), "AVRO"
    )


ID = {"name": "id", "type": "string"}
V1 = avro(ID)
V2 = avro(ID, {"name": "page", "type": ["null", "string"], "default": None})
BREAKING = avro(ID, {"name": "count", "type": "int"})  # new field without default: cannot read v1 data


def parsed(text: str | None) -> Any:
    assert text is not None
    return json.loads(text)


def error_of(call: Callable[[], object]) -> SchemaRegistryError:
    with pytest.raises(SchemaRegistryError) as caught:
        call()
    return caught.value


# --- registering -----------------------------------------------------------------------------


def test_register_gives_an_id_and_the_same_id_again(
    client: SchemaRegistryClient, subject: Callable[[str], str]
) -> None:
    s = subject("value")
    first = client.register_schema(s, V1)
    again = SchemaRegistryClient({"url": client.config()["url"]}).register_schema(s, V1)
    assert first == again
    assert client.get_versions(s) == [1]


def test_same_schema_under_another_subject_reuses_the_id(
    client: SchemaRegistryClient, subject: Callable[[str], str]
) -> None:
    one = client.register_schema(subject("a"), V2)
    two = client.register_schema(subject("b"), V2)
    assert one == two
    assert sorted(client.get_subjects_by_schema_id(one)) == sorted([subject("a"), subject("b")])
    versions = client.get_schema_versions(one)
    assert {(v.subject, v.version) for v in versions} == {(subject("a"), 1), (subject("b"), 1)}


def test_incompatible_change_is_409(client: SchemaRegistryClient, subject: Callable[[str], str]) -> None:
    s = subject("value")
    client.register_schema(s, V1)
    err = error_of(lambda: client.register_schema(s, BREAKING))
    assert (err.http_status_code, err.error_code) == (409, 409)
    assert "incompatible" in err.error_message
    assert client.register_schema(s, V2) > 0  # an optional field with a default is fine under BACKWARD


def test_invalid_schema_is_422(client: SchemaRegistryClient, subject: Callable[[str], str]) -> None:
    err = error_of(lambda: client.register_schema(subject("value"), Schema('{"type": "record", "name": "X"}', "AVRO")))
    assert (err.http_status_code, err.error_code) == (422, 42201)
    err = error_of(lambda: client.register_schema(subject("value"), Schema("{not json", "AVRO")))
    assert err.error_code == 42201


def test_unknown_subject_is_404(client: SchemaRegistryClient) -> None:
    for call in (
        lambda: client.get_versions("no-such-subject"),
        lambda: client.get_latest_version("no-such-subject"),
        lambda: client.lookup_schema("no-such-subject", V1),
    ):
        err = error_of(call)
        assert (err.http_status_code, err.error_code) == (404, 40401)


# --- reading -------------------------------------------------------------------------------------


def test_reads_by_id_version_and_latest(client: SchemaRegistryClient, subject: Callable[[str], str]) -> None:
    s = subject("value")
    id1 = client.register_schema(s, V1)
    id2 = client.register_schema(s, V2)
    assert id2 != id1
    assert parsed(client.get_schema(id1).schema_str) == parsed(V1.schema_str)
    assert client.get_versions(s) == [1, 2]
    latest = client.get_latest_version(s)
    assert (latest.version, latest.schema_id, latest.subject) == (2, id2, s)
    v1 = client.get_version(s, 1)
    assert v1.schema_id == id1
    assert parsed(v1.schema.schema_str) == parsed(V1.schema_str)
    found = client.lookup_schema(s, V1)
    assert (found.version, found.schema_id) == (1, id1)
    assert s in client.get_subjects()
    assert client.get_schema_types() == ["AVRO"]
    err = error_of(lambda: client.get_version(s, 9))
    assert (err.http_status_code, err.error_code) == (404, 40402)
    err = error_of(lambda: SchemaRegistryClient({"url": client.config()["url"]}).get_schema(987654))
    assert (err.http_status_code, err.error_code) == (404, 40403)
    err = error_of(lambda: client.lookup_schema(s, BREAKING))
    assert (err.http_status_code, err.error_code) == (404, 40403)


def test_raw_http_shape(registry: RegistryProcess, client: SchemaRegistryClient, subject: Callable[[str], str]) -> None:
    s = subject("value")
    schema_id = client.register_schema(s, V1)
    with httpx.Client(base_url=registry.url, headers={"Accept": MEDIA_TYPE}) as http:
        root = http.get("/")
        assert (root.status_code, root.json()) == (200, {})
        assert root.headers["content-type"].startswith(MEDIA_TYPE)
        assert json.loads(http.get(f"/subjects/{s}/versions/1/schema").text) == parsed(V1.schema_str)
        assert json.loads(http.get(f"/schemas/ids/{schema_id}/schema").text) == parsed(V1.schema_str)
        bad = http.get(f"/subjects/{s}/versions/first")
        assert (bad.status_code, bad.json()["error_code"]) == (422, 42202)
        missing = http.get("/no/such/route")
        assert missing.status_code == 404 and set(missing.json()) == {"error_code", "message"}
        posted = http.post(
            f"/subjects/{s}/versions",
            content=json.dumps({"schema": V1.schema_str}),
            headers={"Content-Type": "application/json"},
        )
        assert posted.json() == {"id": schema_id}


# --- configuration and compatibility --------------------------------------------------------------


def test_global_and_subject_config(client: SchemaRegistryClient, subject: Callable[[str], str]) -> None:
    s = subject("value")
    assert client.get_compatibility() == "BACKWARD"
    err = error_of(lambda: client.get_compatibility(s))
    assert (err.http_status_code, err.error_code) == (404, 40408)
    try:
        assert client.set_compatibility(level="FULL") == {"compatibility": "FULL"}
        assert client.get_compatibility() == "FULL"
    finally:
        client.set_compatibility(level="BACKWARD")
    assert client.set_compatibility(s, "none") == {"compatibility": "NONE"}
    assert client.get_compatibility(s) == "NONE"
    client.register_schema(s, V1)
    client.register_schema(s, BREAKING)  # NONE lets anything through
    assert client.get_versions(s) == [1, 2]
    client.delete_config(s)
    assert error_of(lambda: client.get_compatibility(s)).error_code == 40408
    err = error_of(lambda: client.set_compatibility(s, "SIDEWAYS"))
    assert (err.http_status_code, err.error_code) == (422, 42203)


def test_compatibility_endpoints(
    registry: RegistryProcess, client: SchemaRegistryClient, subject: Callable[[str], str]
) -> None:
    s = subject("value")
    client.register_schema(s, V1)
    assert client.test_compatibility(s, V2) is True
    assert client.test_compatibility(s, BREAKING, version=1) is False
    assert client.test_compatibility_all_versions(s, V2) is True
    assert client.test_compatibility_all_versions(s, BREAKING) is False
    with httpx.Client(base_url=registry.url) as http:
        verbose = http.post(
            f"/compatibility/subjects/{s}/versions/latest?verbose=true", json={"schema": BREAKING.schema_str}
        ).json()
        assert verbose["is_compatible"] is False
        assert any("count" in m for m in verbose["messages"])
    err = error_of(lambda: client.test_compatibility(s, V2, version=7))
    assert (err.http_status_code, err.error_code) == (404, 40402)
    err = error_of(lambda: client.test_compatibility(s, V2, version="nope"))
    assert (err.http_status_code, err.error_code) == (422, 42202)
    err = error_of(lambda: client.test_compatibility("no-such-subject", V2))
    assert (err.http_status_code, err.error_code) == (404, 40401)


# --- deleting ------------------------------------------------------------------------------------------


def test_delete_subject_soft_then_permanent(client: SchemaRegistryClient, subject: Callable[[str], str]) -> None:
    s = subject("value")
    schema_id = client.register_schema(s, V1)
    client.register_schema(s, V2)
    err = error_of(lambda: client.delete_subject(s, permanent=True))
    assert (err.http_status_code, err.error_code) == (404, 40405)
    assert client.delete_subject(s) == [1, 2]
    assert s not in client.get_subjects()
    assert s in client.get_subjects(deleted=True)
    assert client.get_versions(s, deleted=True) == [1, 2]
    assert SchemaRegistryClient({"url": client.config()["url"]}).get_schema(schema_id).schema_str
    assert client.delete_subject(s, permanent=True) == [1, 2]
    assert s not in client.get_subjects(deleted=True)
    err = error_of(lambda: client.get_versions(s))
    assert err.error_code == 40401


def test_delete_single_version(client: SchemaRegistryClient, subject: Callable[[str], str]) -> None:
    s = subject("value")
    client.register_schema(s, V1)
    client.register_schema(s, V2)
    assert client.delete_version(s, 2) == 2
    assert client.get_versions(s) == [1]
    assert client.delete_version(s, 2, permanent=True) == 2
    assert client.get_versions(s, deleted=True) == [1]


# --- serdes ----------------------------------------------------------------------------------------------


def test_avro_serializer_and_deserializer_round_trip(
    client: SchemaRegistryClient, subject: Callable[[str], str]
) -> None:
    topic = subject("topic")
    serializer = AvroSerializer(client, V2.schema_str)
    deserializer = AvroDeserializer(SchemaRegistryClient({"url": client.config()["url"]}))
    ctx = SerializationContext(topic, MessageField.VALUE)
    value = {"id": "hit-1", "page": "/cart"}
    payload = serializer(value, ctx)
    assert payload is not None and payload[0] == 0
    registered = client.get_latest_version(f"{topic}-value")
    assert int.from_bytes(payload[1:5], "big") == registered.schema_id
    assert deserializer(payload, ctx) == value


def test_concurrent_registrations_get_distinct_ids(client: SchemaRegistryClient, subject: Callable[[str], str]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    url = client.config()["url"]
    schemas = [avro(ID, name=f"Concurrent{i}") for i in range(12)]

    def register(i: int) -> int:
        return SchemaRegistryClient({"url": url}).register_schema(subject(f"c{i}"), schemas[i % 6])

    with ThreadPoolExecutor(12) as pool:
        ids = list(pool.map(register, range(12)))
    assert len(set(ids)) == 6  # twelve subjects, six distinct schemas
    assert all(ids[i] == ids[i + 6] for i in range(6))
    assert sorted(set(ids)) == list(range(min(ids), min(ids) + 6))


def test_topic_is_compacted_with_one_partition(registry: RegistryProcess) -> None:
    from confluent_kafka.admin import AdminClient, ConfigResource

    admin = AdminClient({"bootstrap.servers": registry.bootstrap})
    metadata = admin.list_topics(registry.topic, timeout=10)
    assert len(metadata.topics[registry.topic].partitions) == 1
    resource = ConfigResource(ConfigResource.Type.TOPIC, registry.topic)
    config = admin.describe_configs([resource])[resource].result(10)
    assert config["cleanup.policy"].value == "compact"


# --- restart and start-up failures --------------------------------------------------------------------


def test_restart_keeps_every_id_and_version(kafka_bootstrap: str, tmp_path: Path) -> None:
    reg = RegistryProcess(kafka_bootstrap, f"_schemas-restart-{uuid.uuid4().hex[:8]}", tmp_path / "registry.log")
    reg.start()
    try:
        client = SchemaRegistryClient({"url": reg.url})
        ids = {
            ("a-value", 1): client.register_schema("a-value", V1),
            ("a-value", 2): client.register_schema("a-value", V2),
            ("b-value", 1): client.register_schema("b-value", V2),
            ("c-value", 1): client.register_schema("c-value", avro(ID, name="Other")),
        }
        client.set_compatibility("c-value", "FULL")
        client.delete_subject("c-value")
        schemas = {schema_id: parsed(client.get_schema(schema_id).schema_str) for schema_id in ids.values()}
        reg.kill()
        reg.start()
        after = SchemaRegistryClient({"url": reg.url})
        for schema_id, schema in schemas.items():
            assert parsed(after.get_schema(schema_id).schema_str) == schema
        for (s, version), schema_id in ids.items():
            assert after.get_version(s, version, deleted=True).schema_id == schema_id
        assert after.get_versions("a-value") == [1, 2]
        assert after.get_subjects() == ["a-value", "b-value"]
        assert after.get_subjects(deleted=True) == ["a-value", "b-value", "c-value"]
        assert after.register_schema("a-value", V2) == ids[("a-value", 2)]
        new_id = after.register_schema("d-value", avro(ID, name="Fresh"))
        assert new_id == max(ids.values()) + 1
    finally:
        reg.stop()
        reg.drop_topic()


def test_port_already_taken_exits_with_one_line(kafka_bootstrap: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        started = time.monotonic()
        proc = subprocess.run(
            registry_command(),
            env=env_for(kafka_bootstrap, port, "_schemas-unused"),
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
            check=False,
        )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    assert f"port {port}" in errors[0] and "already in use" in errors[0]
    assert time.monotonic() - started < 30


def test_unreachable_broker_exits_with_one_line_naming_it() -> None:
    dead = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    proc = subprocess.run(
        registry_command(),
        env=env_for(dead, free_port(), "_schemas-unused"),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    assert dead in errors[0]
    assert time.monotonic() - started < 20
