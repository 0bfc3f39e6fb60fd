"""The embedded registry behind basic auth and HTTPS, against confluent-kafka's own ``SchemaRegistryClient``.

The registry runs as a real process (``python -m passerelle registry``) over
the session's broker, with an auth file written by ``write_users_file`` and the
certificate a throwaway CA issues (``passerelle.deploy.local.secure.ensure_material``);
clients verify it with that CA as ``ssl.ca.location`` and authenticate with
``basic.auth.user.info``, as a deployment would.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

from passerelle.deploy.local import stack
from passerelle.deploy.local.secure import ensure_material
from passerelle.schemas.clients import Connection, registry_client
from passerelle.schemas.registry.auth import write_users_file
from passerelle.schemas.registry.server import wait_ready
from tests.conftest import ROOT, registry_env, stop_process
from tests.integration.test_registry_conformance import ID, V1, V2, avro
from tests.integration.test_registry_conformance import error_of as refused

pytestmark = pytest.mark.integration

WRITER = ("schema-admin", "wr1te-Secret")
READER = ("app-reader", "re4d-Secret")


def start_secured_registry(
    bootstrap: str, port: int, topic: str, log: Path, extra_env: dict[str, str], cafile: Path | None
) -> subprocess.Popen[bytes]:
    """Like ``start_registry_process`` in conftest, with the auth/TLS variables, waiting over HTTPS."""
    scheme = "https" if cafile is not None else "http"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "passerelle", "registry"],
            env={**registry_env(bootstrap, port, topic), **extra_env},
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    try:
        wait_ready(f"{scheme}://127.0.0.1:{port}", 60, cafile=cafile)
    except Exception:
        proc.kill()
        proc.wait(10)
        raise AssertionError(f"secured registry did not start: {log.read_text()[-3000:]}") from None
    return proc


def drop_topic(bootstrap: str, topic: str) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})  # kept alive until the deletion answers
    admin.delete_topics([topic], operation_timeout=10)[topic].result(15)


@dataclass
class Secured:
    url: str
    ca: str
    topic: str
    bootstrap: str
    log: Path

    def client(self, user: tuple[str, str] | None = None, **conf: str) -> SchemaRegistryClient:
        """A fresh confluent-kafka client (no cache shared between tests), verifying the certificate."""
        config = {"url": self.url, "ssl.ca.location": self.ca, **conf}
        if user is not None:
            config["basic.auth.user.info"] = f"{user[0]}:{user[1]}"
        return SchemaRegistryClient(config)


@pytest.fixture(scope="module")
def secured(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    folder = tmp_path_factory.mktemp("secured-registry")
    users = write_users_file(folder / "users.json", {WRITER[0]: (WRITER[1], "write"), READER[0]: (READER[1], "read")})
    tls = ensure_material(folder)  # the registry's certificate and key, and the CA that issued them
    port = stack.free_port()
    topic = f"_schemas-auth-{uuid.uuid4().hex[:8]}"
    log = folder / "registry.log"
    env = {
        "PASSERELLE_REGISTRY_AUTH_FILE": str(users),
        "PASSERELLE_REGISTRY_SSL_CERTFILE": str(tls.registry_cert),
        "PASSERELLE_REGISTRY_SSL_KEYFILE": str(tls.registry_key),
    }
    proc = start_secured_registry(kafka_bootstrap, port, topic, log, env, cafile=tls.ca)
    try:
        yield Secured(f"https://127.0.0.1:{port}", str(tls.ca), topic, kafka_bootstrap, log)
    finally:
        stop_process(proc)
        drop_topic(kafka_bootstrap, topic)


@pytest.fixture
def subject(request: pytest.FixtureRequest) -> Callable[[str], str]:
    run = uuid.uuid4().hex[:6]
    return lambda suffix: f"{request.node.name[:30]}.{run}-{suffix}"


def test_health_probe_is_anonymous_over_https(secured: Secured) -> None:
    with httpx.Client(verify=ssl.create_default_context(cafile=secured.ca)) as http:
        resp = http.get(secured.url + "/")
        assert (resp.status_code, resp.json()) == (200, {})
        anonymous = http.get(secured.url + "/subjects")
        assert anonymous.status_code == 401
        assert anonymous.headers["www-authenticate"] == 'Basic realm="passerelle-registry"'
        assert anonymous.json()["error_code"] == 40101
    assert "https://127.0.0.1" in secured.log.read_text()


def test_anonymous_clients_are_refused(secured: Secured, subject: Callable[[str], str]) -> None:
    anonymous = secured.client()
    err = refused(lambda: anonymous.register_schema(subject("value"), V1))
    assert (err.http_status_code, err.error_code) == (401, 40101)
    err = refused(lambda: anonymous.get_subjects())
    assert (err.http_status_code, err.error_code) == (401, 40101)


def test_wrong_password_is_refused(secured: Secured, subject: Callable[[str], str]) -> None:
    err = refused(lambda: secured.client((WRITER[0], "not-it")).register_schema(subject("value"), V1))
    assert (err.http_status_code, err.error_code) == (401, 40101)


def test_reader_cannot_register_writer_can_and_reader_reads(secured: Secured, subject: Callable[[str], str]) -> None:
    s = subject("value")
    reader = secured.client(READER)
    err = refused(lambda: reader.register_schema(s, V1))
    assert (err.http_status_code, err.error_code) == (403, 40301)
    err = refused(lambda: reader.set_compatibility(s, "NONE"))
    assert (err.http_status_code, err.error_code) == (403, 40301)

    writer = secured.client(WRITER)
    id1 = writer.register_schema(s, V1)
    id2 = writer.register_schema(s, V2)

    reader = secured.client(READER)  # nothing cached
    assert s in reader.get_subjects()
    assert reader.get_versions(s) == [1, 2]
    assert json.loads(reader.get_schema(id1).schema_str or "") == json.loads(V1.schema_str or "")
    latest = reader.get_latest_version(s)
    assert (latest.version, latest.schema_id) == (2, id2)
    assert reader.lookup_schema(s, V1).schema_id == id1  # a POST that reads
    assert reader.test_compatibility(s, avro(ID, {"name": "n", "type": "int", "default": 0})) is True
    err = refused(lambda: reader.delete_subject(s))
    assert (err.http_status_code, err.error_code) == (403, 40301)
    assert writer.delete_version(s, 2) == 2
    assert secured.client(READER).get_versions(s) == [1]


def test_serdes_write_with_the_writer_and_read_with_the_reader(secured: Secured, subject: Callable[[str], str]) -> None:
    topic = subject("topic")
    ctx = SerializationContext(topic, MessageField.VALUE)
    payload = AvroSerializer(secured.client(WRITER), V2.schema_str)({"id": "hit-1", "page": "/cart"}, ctx)
    assert payload is not None
    assert AvroDeserializer(secured.client(READER))(payload, ctx) == {"id": "hit-1", "page": "/cart"}
    # a reader cannot auto-register the schema of a new subject
    err = refused(lambda: AvroSerializer(secured.client(READER), V1.schema_str)({"id": "x"}, ctx))
    assert (err.http_status_code, err.error_code) == (403, 40301)


def test_client_layer_connects_with_credentials_and_ca(secured: Secured, subject: Callable[[str], str]) -> None:
    s = subject("value")
    conn = Connection(
        secured.bootstrap,
        secured.url,
        registry={"basic.auth.user.info": f"{WRITER[0]}:{WRITER[1]}", "ssl.ca.location": secured.ca},
    )
    schema_id = registry_client(conn).register_schema(s, V1)
    assert secured.client(READER).get_latest_version(s).schema_id == schema_id


def test_a_client_that_does_not_trust_the_certificate_cannot_connect(secured: Secured) -> None:
    untrusting = SchemaRegistryClient({"url": secured.url, "basic.auth.user.info": f"{READER[0]}:{READER[1]}"})
    with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED") as caught:  # httpx2's ConnectError
        untrusting.get_subjects()
    assert not isinstance(caught.value, SchemaRegistryError)


def test_auth_without_tls_over_plain_http(kafka_bootstrap: str, tmp_path: Path, subject: Callable[[str], str]) -> None:
    users = write_users_file(tmp_path / "users.json", {WRITER[0]: (WRITER[1], "write"), READER[0]: (READER[1], "read")})
    port = stack.free_port()
    topic = f"_schemas-auth-http-{uuid.uuid4().hex[:8]}"
    proc = start_secured_registry(
        kafka_bootstrap,
        port,
        topic,
        tmp_path / "registry.log",
        {"PASSERELLE_REGISTRY_AUTH_FILE": str(users)},
        cafile=None,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        s = subject("value")
        err = refused(lambda: SchemaRegistryClient({"url": url}).register_schema(s, V1))
        assert err.http_status_code == 401
        user_info = {"basic.auth.user.info": f"{WRITER[0]}:{WRITER[1]}"}
        schema_id = SchemaRegistryClient({"url": url, **user_info}).register_schema(s, V1)
        reader = SchemaRegistryClient({"url": url, "basic.auth.user.info": f"{READER[0]}:{READER[1]}"})
        assert reader.get_latest_version(s).schema_id == schema_id
    finally:
        proc.terminate()
        proc.wait(10)
        drop_topic(kafka_bootstrap, topic)
