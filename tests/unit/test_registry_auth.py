"""The embedded registry's basic auth and roles, its auth file, its TLS settings and its Kafka start-up errors.

The HTTP app is driven in process over an in-memory state (``MemoryWriter``):
the rules are the app's, no broker is needed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from passerelle.deploy.local.secure import ensure_material
from passerelle.schemas.clients import Connection, KafkaUnreachableError
from passerelle.schemas.registry import auth
from passerelle.schemas.registry.app import create_app, require_write
from passerelle.schemas.registry.auth import Authenticator, AuthFileError, load_users, write_users_file
from passerelle.schemas.registry.errors import RegistryError, RegistryStartupError
from passerelle.schemas.registry.server import TlsConfigError, check_tls
from passerelle.schemas.registry.service import MemoryWriter, SchemaRegistry
from passerelle.schemas.registry.state import RegistryState
from passerelle.schemas.registry.store import KafkaStore, KafkaUnavailableError

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
MEDIA_TYPE = "application/vnd.schemaregistry.v1+json"
USERS = {"writer": ("w-secret", "write"), "reader": ("r-secret", "read")}
SCHEMA = json.dumps({"type": "record", "name": "Hit", "fields": [{"name": "id", "type": "string"}]})
SCHEMA_2 = json.dumps(
    {
        "type": "record",
        "name": "Hit",
        "fields": [{"name": "id", "type": "string"}, {"name": "page", "type": ["null", "string"], "default": None}],
    }
)


def basic(name: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


WRITER = basic("writer", "w-secret")
READER = basic("reader", "r-secret")


@pytest.fixture
def users_file(tmp_path: Path) -> Path:
    return write_users_file(tmp_path / "users.json", USERS)


@pytest.fixture
def http(users_file: Path) -> Iterator[TestClient]:
    writer = MemoryWriter(RegistryState())
    app = create_app(SchemaRegistry(writer.state, writer), Authenticator.from_file(users_file))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def assert_401(resp: Any) -> None:
    assert resp.status_code == 401, resp.text
    assert resp.headers["www-authenticate"] == 'Basic realm="passerelle-registry"'
    assert resp.headers["content-type"].startswith(MEDIA_TYPE)
    body = resp.json()
    assert body["error_code"] == 40101 and body["message"]


def assert_403(resp: Any) -> None:
    assert resp.status_code == 403, resp.text
    body = resp.json()
    assert body["error_code"] == 40301 and "reader" in body["message"]


# --- who may do what -----------------------------------------------------------------------------------


def test_health_probe_stays_anonymous(http: TestClient) -> None:
    resp = http.get("/")
    assert (resp.status_code, resp.json()) == (200, {})


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/subjects"),
        ("GET", "/schemas/ids/1"),
        ("GET", "/config"),
        ("POST", "/subjects/s-value/versions"),
        ("POST", "/subjects/s-value"),
        ("PUT", "/config"),
        ("DELETE", "/subjects/s-value"),
        ("GET", "/no/such/route"),
        ("POST", "/"),
    ],
)
def test_anonymous_requests_are_401(http: TestClient, method: str, path: str) -> None:
    assert_401(http.request(method, path, json={"schema": SCHEMA}))


@pytest.mark.parametrize(
    "headers",
    [
        basic("writer", "wrong"),
        basic("reader", "w-secret"),  # another user's password
        basic("nobody", "w-secret"),
        basic("writer", ""),
        {"Authorization": "Bearer w-secret"},
        {"Authorization": "Basic not-base64!"},
        {"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()},
        {"Authorization": "Basic " + base64.b64encode(b"writer:\xff").decode()},
        {"Authorization": "Basic"},
    ],
    ids=[
        "bad-password",
        "other-users-password",
        "unknown-user",
        "empty-password",
        "bearer",
        "not-base64",
        "no-colon",
        "not-utf8",
        "no-token",
    ],
)
def test_invalid_credentials_are_401(http: TestClient, headers: dict[str, str]) -> None:
    assert_401(http.get("/subjects", headers=headers))
    assert_401(http.post("/subjects/s-value/versions", json={"schema": SCHEMA}, headers=headers))


def test_writer_registers_reads_and_configures(http: TestClient) -> None:
    resp = http.post("/subjects/s-value/versions", json={"schema": SCHEMA}, headers=WRITER)
    assert resp.status_code == 200, resp.text
    schema_id = resp.json()["id"]
    assert http.get("/subjects", headers=WRITER).json() == ["s-value"]
    assert http.put("/config/s-value", json={"compatibility": "FULL"}, headers=WRITER).json() == {
        "compatibility": "FULL"
    }
    assert http.delete("/config/s-value", headers=WRITER).status_code == 200
    assert http.post("/subjects/s-value/versions", json={"schema": SCHEMA}, headers=WRITER).json() == {"id": schema_id}
    assert http.delete("/subjects/s-value/versions/1", headers=WRITER).json() == 1


def test_reader_reads_looks_up_and_tests_compatibility(http: TestClient) -> None:
    schema_id = http.post("/subjects/s-value/versions", json={"schema": SCHEMA}, headers=WRITER).json()["id"]
    assert http.get("/subjects", headers=READER).json() == ["s-value"]
    assert http.get("/subjects/s-value/versions", headers=READER).json() == [1]
    latest = http.get("/subjects/s-value/versions/latest", headers=READER).json()
    assert (latest["id"], latest["version"]) == (schema_id, 1)
    assert json.loads(http.get(f"/schemas/ids/{schema_id}", headers=READER).json()["schema"]) == json.loads(SCHEMA)
    assert http.get("/config", headers=READER).json() == {"compatibilityLevel": "BACKWARD"}
    found = http.post("/subjects/s-value", json={"schema": SCHEMA}, headers=READER)
    assert (found.status_code, found.json()["id"]) == (200, schema_id)
    missing = http.post("/subjects/s-value", json={"schema": SCHEMA_2}, headers=READER)
    assert (missing.status_code, missing.json()["error_code"]) == (404, 40403)  # a lookup, not a refusal
    for path in ("/compatibility/subjects/s-value/versions/latest", "/compatibility/subjects/s-value/versions"):
        resp = http.post(path, json={"schema": SCHEMA_2}, headers=READER)
        assert resp.json() == {"is_compatible": True}, path


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/subjects/s-value/versions", {"schema": SCHEMA_2}),
        ("DELETE", "/subjects/s-value", None),
        ("DELETE", "/subjects/s-value/versions/1", None),
        ("PUT", "/config", {"compatibility": "NONE"}),
        ("DELETE", "/config", None),
        ("PUT", "/config/s-value", {"compatibility": "NONE"}),
        ("DELETE", "/config/s-value", None),
    ],
)
def test_reader_cannot_write(http: TestClient, method: str, path: str, body: Any) -> None:
    http.post("/subjects/s-value/versions", json={"schema": SCHEMA}, headers=WRITER)
    assert_403(http.request(method, path, json=body, headers=READER))
    assert http.get("/subjects/s-value/versions", headers=READER).json() == [1]
    assert http.get("/config", headers=READER).json() == {"compatibilityLevel": "BACKWARD"}
    assert http.get("/config/s-value", headers=READER).json()["error_code"] == 40408


def test_every_route_that_writes_requires_role_write() -> None:
    """A new route that changes something must say so; the read-only POSTs are the lookup and the checks."""
    writer = MemoryWriter(RegistryState())
    app = create_app(SchemaRegistry(writer.state, writer))
    read_only_posts = {
        ("POST", "/subjects/{subject}"),
        ("POST", "/compatibility/subjects/{subject}/versions/{version}"),
        ("POST", "/compatibility/subjects/{subject}/versions"),
    }
    seen = 0
    for route in app.routes:
        if not isinstance(route, APIRoute):
            continue
        guarded = any(dep.call is require_write for dep in route.dependant.dependencies)
        changing = {(method, route.path) for method in (route.methods or set()) - {"GET", "HEAD"}}
        writes = bool(changing - read_only_posts)
        assert guarded == writes, (route.path, route.methods)
        seen += guarded
    assert seen == 7


def test_without_an_authenticator_anyone_reads_and_writes() -> None:
    writer = MemoryWriter(RegistryState())
    with TestClient(create_app(SchemaRegistry(writer.state, writer))) as client:
        assert client.post("/subjects/s-value/versions", json={"schema": SCHEMA}).json() == {"id": 1}
        assert client.put("/config", json={"compatibility": "FULL"}).status_code == 200
        assert client.get("/subjects").json() == ["s-value"]


def test_verified_credentials_are_not_hashed_again(users_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    authenticator = Authenticator.from_file(users_file)
    calls: list[str] = []
    real = auth.password_digest

    def counting(salt: bytes, password: str) -> bytes:
        calls.append(password)
        return real(salt, password)

    monkeypatch.setattr(auth, "password_digest", counting)
    header = WRITER["Authorization"].encode()
    for _ in range(5):
        assert authenticator.authenticate(header).name == "writer"
    assert calls == ["w-secret"]
    for _ in range(2):  # failures are not remembered: each one costs a hash, like a first attempt
        with pytest.raises(RegistryError) as caught:
            authenticator.authenticate(basic("writer", "nope")["Authorization"])
        assert caught.value.error_code == 40101
    assert calls == ["w-secret", "nope", "nope"]


def test_the_cache_is_bounded(users_file: Path) -> None:
    authenticator = Authenticator(load_users(users_file), cache_size=1)
    authenticator.authenticate(WRITER["Authorization"])
    authenticator.authenticate(READER["Authorization"])
    assert len(authenticator._verified) == 1


# --- the auth file ---------------------------------------------------------------------------------------


def test_written_file_has_the_documented_format(users_file: Path) -> None:
    data = json.loads(users_file.read_text())
    assert set(data) == {"users"} and set(data["users"]) == {"writer", "reader"}
    for name, (password, role) in USERS.items():
        entry = data["users"][name]
        assert set(entry) == {"salt", "sha256", "role"} and entry["role"] == role
        assert entry["sha256"] == hashlib.sha256(bytes.fromhex(entry["salt"]) + password.encode()).hexdigest()
        assert password not in users_file.read_text()
    assert data["users"]["writer"]["salt"] != data["users"]["reader"]["salt"]
    assert stat.S_IMODE(users_file.stat().st_mode) == 0o600
    assert [p.name for p in users_file.parent.iterdir()] == ["users.json"]  # no temporary file left


def test_a_file_written_by_hand_is_read(tmp_path: Path) -> None:
    salt = "00ff10"
    digest = hashlib.sha256(bytes.fromhex(salt) + "pässword".encode()).hexdigest()
    path = tmp_path / "users.json"
    path.write_text(json.dumps({"users": {"ops": {"salt": salt, "sha256": digest.upper(), "role": "read"}}}))
    user = Authenticator.from_file(path).authenticate(b"Basic " + base64.b64encode("ops:pässword".encode()))
    assert (user.name, user.role, user.can_write) == ("ops", "read", False)
    assert "sha" not in repr(user) and digest not in repr(user).lower()


def test_write_users_file_refuses_an_unknown_role(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="admin"):
        write_users_file(tmp_path / "users.json", {"x": ("pw", "admin")})
    with pytest.raises(ValueError, match="contains ':'"):
        write_users_file(tmp_path / "users.json", {"a:b": ("pw", "read")})
    assert not (tmp_path / "users.json").exists()


GOOD = {"salt": "0a0b", "sha256": "ab" * 32, "role": "write"}


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("{not json", "not valid JSON"),
        ("[]", '"users" object'),
        ('{"user": {}}', '"users" object'),
        ('{"users": []}', '"users" object'),
        ('{"users": {}}', "no user"),
        (json.dumps({"users": {"a": "pw"}}), "'a' must be an object"),
        (json.dumps({"users": {"a": {"salt": "00", "role": "read"}}}), "'a' has no sha256"),
        (json.dumps({"users": {"a": {**GOOD, "role": "admin"}}}), "role 'admin'"),
        (json.dumps({"users": {"a": {**GOOD, "salt": "xyz"}}}), "hexadecimal"),
        (json.dumps({"users": {"a": {**GOOD, "salt": 12}}}), "hexadecimal"),
        (json.dumps({"users": {"a": {**GOOD, "salt": ""}}}), "empty salt"),
        (json.dumps({"users": {"a": {**GOOD, "sha256": "abcd"}}}), "64 hexadecimal digits"),
        (json.dumps({"users": {"a:b": GOOD}}), "contains ':'"),
    ],
)
def test_malformed_file_is_one_clear_error(tmp_path: Path, content: str, needle: str) -> None:
    path = tmp_path / "users.json"
    path.write_text(content)
    with pytest.raises(AuthFileError) as caught:
        load_users(path)
    message = str(caught.value)
    assert needle in message and str(path) in message
    assert '"salt": "<hex>"' in message  # says what the format is
    assert isinstance(caught.value, RegistryStartupError) and caught.value.user_error
    assert "\n" not in message


def test_missing_file_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(AuthFileError, match=r"cannot read the registry auth file .*nope\.json"):
        load_users(tmp_path / "nope.json")


# --- TLS settings -----------------------------------------------------------------------------------------


def registry_tls(folder: Path) -> tuple[Path, Path]:
    """The registry's certificate (issued by a throwaway CA) and its key, as ``up --secure`` makes them."""
    m = ensure_material(folder)
    return m.registry_cert, m.registry_key


def test_tls_needs_both_files(tmp_path: Path) -> None:
    certfile, keyfile = registry_tls(tmp_path)
    assert check_tls(None, None) is None
    assert check_tls(certfile, keyfile) == (certfile, keyfile)
    with pytest.raises(
        TlsConfigError, match="PASSERELLE_REGISTRY_SSL_CERTFILE is set but PASSERELLE_REGISTRY_SSL_KEYFILE"
    ):
        check_tls(certfile, None)
    with pytest.raises(
        TlsConfigError, match="PASSERELLE_REGISTRY_SSL_KEYFILE is set but PASSERELLE_REGISTRY_SSL_CERTFILE"
    ):
        check_tls(None, keyfile)
    with pytest.raises(TlsConfigError, match="no such file"):
        check_tls(tmp_path / "missing.pem", keyfile)
    other_key = registry_tls(tmp_path / "other")[1]  # another folder: another key
    with pytest.raises(TlsConfigError, match="the key must match"):
        check_tls(certfile, other_key)
    with pytest.raises(TlsConfigError, match="the key must match"):
        check_tls(keyfile, keyfile)


# --- the command: start-up errors are one line, before Kafka is touched --------------------------------------


def run_registry(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PASSERELLE_")}
    return subprocess.run(
        [sys.executable, "-m", "passerelle", "registry", "--port", "1"],
        capture_output=True,
        text=True,
        env={**base, "PASSERELLE_BOOTSTRAP_SERVERS": "127.0.0.1:1", **env},
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def test_command_with_a_malformed_auth_file_fails_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    path.write_text('{"users": {"a": {"salt": "00", "sha256": "00", "role": "write"}}}')
    line = one_error_line(run_registry({"PASSERELLE_REGISTRY_AUTH_FILE": str(path)}))
    assert str(path) in line and "sha256" in line


def test_command_with_a_certificate_but_no_key_fails_in_one_line(tmp_path: Path) -> None:
    certfile, _ = registry_tls(tmp_path)
    line = one_error_line(run_registry({"PASSERELLE_REGISTRY_SSL_CERTFILE": str(certfile)}))
    assert "PASSERELLE_REGISTRY_SSL_KEYFILE" in line


# --- the store's Kafka connection ---------------------------------------------------------------------------


def test_unreachable_kafka_is_one_error_naming_the_servers_never_the_password() -> None:
    conn = Connection(
        "127.0.0.1:1",
        kafka={
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": "registry",
            "sasl.password": "hunter2-very-secret",
        },
    )
    store = KafkaStore(conn, "_schemas-unused", RegistryState(), connect_timeout=2)
    started = time.monotonic()
    with pytest.raises(KafkaUnavailableError) as caught:
        store.start()
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert "127.0.0.1:1" in message and "hunter2-very-secret" not in message
    assert isinstance(caught.value, RegistryStartupError) and isinstance(caught.value, KafkaUnreachableError)
    assert caught.value.user_error
    store.close()
