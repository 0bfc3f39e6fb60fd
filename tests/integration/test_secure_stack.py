"""The secured local stack (``passerelle up --secure``) against a real broker and registry.

One private secure stack per session (the ``secure_stack`` fixture): SASL_SSL
with SCRAM-SHA-512 users per component, StandardAuthorizer ACLs from
``deploy/local/acls.py``, the registry over HTTPS with basic auth. Topic and
group names are the real ones (the ACLs name them): the stack is private.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ConfigResource,
    NewTopic,
    ResourcePatternType,
    ResourceType,
    ScramMechanism,
    UserScramCredentialDeletion,
)

from passerelle.deploy.local import acls, secure, stack
from passerelle.schemas.catalog import load_catalog
from tests.conftest import ROOT, SecureStack

pytestmark = pytest.mark.integration

QUIET = {"log_level": 0}


def admin(s: SecureStack, component: str) -> AdminClient:
    return AdminClient({**s.kafka_config(component), **QUIET})


def create(s: SecureStack, component: str, topics: list[str], partitions: int = 1) -> dict[str, KafkaException | None]:
    """Create ``topics`` as ``component``: per topic None, or the broker's refusal (already-exists is success).

    A catalog topic gets the catalog's partitions and configs, as ``passerelle topics create`` would make it: the
    stack is shared with other modules, whose ``topics create --fail-on-drift`` must find no drift."""
    catalog = load_catalog()
    out: dict[str, KafkaException | None] = {}
    client = admin(s, component)  # kept alive until the futures are done
    new = [
        NewTopic(t, catalog.topic(t).partitions, 1, config=catalog.topic(t).configs())
        if t in catalog
        else NewTopic(t, partitions, 1)
        for t in topics
    ]
    for topic, fut in client.create_topics(new).items():
        try:
            fut.result(30)
            out[topic] = None
        except KafkaException as exc:
            out[topic] = None if exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS else exc
    return out


def code(exc: KafkaException | None) -> Any:
    return None if exc is None else exc.args[0].code()


@pytest.fixture(scope="module")
def topics(secure_stack: SecureStack) -> list[str]:
    """The topics these tests use, created by the deployment pipeline's principal."""
    names = ["hits.raw", "hits.enriched", "remarketing.messages", "carts.abandoned", acls.DEAD_LETTERS]
    assert create(secure_stack, "deploy", names) == dict.fromkeys(names)
    return names


def consume_one(conf: dict[str, Any], topic: str, timeout: float = 30.0) -> Any:
    """The first message (or error event) a fresh consumer with ``conf`` gets from ``topic``."""
    consumer = Consumer({**conf, "auto.offset.reset": "earliest", "enable.auto.commit": False, **QUIET})
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None:
                if msg.error() is None:
                    consumer.commit(message=msg, asynchronous=False)  # READ on the group: committing works too
                return msg
        raise AssertionError(f"nothing from {topic} within {timeout}s")
    finally:
        consumer.close()


def errors_until(conf: dict[str, Any], action: Callable[[Any], object], seconds: float = 20.0) -> list[KafkaError]:
    """Run ``action`` on an AdminClient with an error callback; the errors reported within ``seconds``."""
    seen: list[KafkaError] = []
    full: dict[str, Any] = {**conf, "error_cb": seen.append, **QUIET}
    client = AdminClient(full)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not seen:
        with contextlib.suppress(KafkaException):
            action(client)
        client.poll(0.2)
    return seen


def delivered_to(results: list[Any]) -> Callable[[Any, Any], None]:
    return lambda err, msg: results.append(err)


# --- authentication -------------------------------------------------------------------------------------


def test_admin_lists_topics(secure_stack: SecureStack, topics: list[str]) -> None:
    meta = admin(secure_stack, "admin").list_topics(timeout=15)
    assert meta.brokers
    assert set(topics) <= set(meta.topics)


def test_a_component_produces_and_consumes_its_own_topics(secure_stack: SecureStack, topics: list[str]) -> None:
    value = uuid.uuid4().hex.encode()
    delivered: list[Any] = []
    # The collector's producer is idempotent with acks=all: on Kafka 4 that needs no cluster ACL (KIP-679).
    collector = Producer({**secure_stack.kafka_config("collector"), "enable.idempotence": True, "acks": "all"})
    collector.produce("hits.raw", value, b"v1", on_delivery=lambda err, msg: delivered.append(err))
    assert collector.flush(30) == 0
    assert delivered == [None]

    msg = consume_one({**secure_stack.kafka_config("enrich"), "group.id": "passerelle-enrichment"}, "hits.raw")
    assert msg.error() is None
    assert msg.topic() == "hits.raw"


def test_a_wrong_password_is_an_authentication_error(secure_stack: SecureStack) -> None:
    conf = {**secure_stack.kafka_config("enrich"), "sasl.password": "not-" + uuid.uuid4().hex}
    seen = errors_until(conf, lambda c: c.list_topics(timeout=2))
    assert seen, "no error reported for a wrong password"
    assert seen[0].code() == KafkaError._AUTHENTICATION, seen[0]
    assert "authentication failed" in seen[0].str().lower()


def test_an_unknown_user_is_an_authentication_error(secure_stack: SecureStack) -> None:
    conf = {**secure_stack.kafka_config("enrich"), "sasl.username": "nobody"}
    seen = errors_until(conf, lambda c: c.list_topics(timeout=2))
    assert [e.code() for e in seen[:1]] == [KafkaError._AUTHENTICATION]


@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SSL"])
def test_a_client_without_credentials_gets_nothing(secure_stack: SecureStack, protocol: str) -> None:
    conf: dict[str, Any] = {"bootstrap.servers": secure_stack.bootstrap, "security.protocol": protocol}
    if protocol == "SSL":  # TLS right, but no SASL: the broker still wants a SASL handshake
        conf["ssl.ca.location"] = str(secure_stack.config.material.ca)
    client = AdminClient({**conf, **QUIET})
    with pytest.raises(KafkaException):
        client.list_topics(timeout=5)


# --- authorization ---------------------------------------------------------------------------------------


def test_producing_to_a_topic_not_granted_is_refused(secure_stack: SecureStack, topics: list[str]) -> None:
    delivered: list[Any] = []
    collector = Producer({**secure_stack.kafka_config("collector"), "enable.idempotence": True, **QUIET})
    collector.produce("hits.enriched", b"x", b"k", on_delivery=lambda err, msg: delivered.append(err))
    collector.flush(30)
    assert [e.code() for e in delivered] == [KafkaError.TOPIC_AUTHORIZATION_FAILED]


def test_reading_a_topic_not_granted_is_refused(secure_stack: SecureStack, topics: list[str]) -> None:
    conf = {**secure_stack.kafka_config("enrich"), "group.id": "passerelle-enrichment"}
    msg = consume_one(conf, "remarketing.messages")
    assert msg.error() is not None
    assert msg.error().code() == KafkaError.TOPIC_AUTHORIZATION_FAILED


def test_a_group_not_granted_is_refused(secure_stack: SecureStack, topics: list[str]) -> None:
    conf = {**secure_stack.kafka_config("enrich"), "group.id": "passerelle-carts"}
    msg = consume_one(conf, "hits.raw")
    assert msg.error() is not None
    assert msg.error().code() == KafkaError.GROUP_AUTHORIZATION_FAILED


def test_the_dead_letter_topic_is_writable_by_processors(secure_stack: SecureStack, topics: list[str]) -> None:
    for component in ("enrich", "carts", "remarketing", "emailing", "crm-normalizer", "crm-activity",
                      "crm-activity-messages"):  # fmt: skip
        producer = Producer({**secure_stack.kafka_config(component), "enable.idempotence": True})
        delivered: list[Any] = []
        producer.produce(acls.DEAD_LETTERS, b"poison", b"k", on_delivery=delivered_to(delivered))
        producer.flush(30)
        assert delivered == [None], component


def test_transactions_only_under_the_app_id(secure_stack: SecureStack, topics: list[str]) -> None:
    conf = secure_stack.kafka_config("enrich")
    own = Producer({**conf, "transactional.id": "passerelle-enrichment-0"})
    own.init_transactions(30)
    own.begin_transaction()
    own.produce("hits.enriched", b"enriched", b"v1")
    own.commit_transaction(30)

    other = Producer({**conf, "transactional.id": "passerelle-carts-0", **QUIET})
    with pytest.raises(KafkaException) as info:
        other.init_transactions(30)
    assert info.value.args[0].code() == KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED


def test_a_prefix_does_not_reach_a_longer_app_id(secure_stack: SecureStack, topics: list[str]) -> None:
    """`passerelle-crm-activity-` would match crm-activity-messages' names too: the DENY takes them back."""
    mine, theirs = "passerelle-crm-activity-timers-changelog", "passerelle-crm-activity-messages-timers-changelog"
    result = create(secure_stack, "crm-activity", [mine, theirs])
    assert result[mine] is None
    assert code(result[theirs]) == KafkaError.TOPIC_AUTHORIZATION_FAILED
    assert create(secure_stack, "crm-activity-messages", [theirs]) == {theirs: None}

    conf = secure_stack.kafka_config("crm-activity")
    Producer({**conf, "transactional.id": "passerelle-crm-activity-0"}).init_transactions(30)
    other = Producer({**conf, "transactional.id": "passerelle-crm-activity-messages-0", **QUIET})
    with pytest.raises(KafkaException) as info:
        other.init_transactions(30)
    assert info.value.args[0].code() == KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED
    messages = secure_stack.kafka_config("crm-activity-messages")
    Producer({**messages, "transactional.id": "passerelle-crm-activity-messages-0"}).init_transactions(30)


def test_processors_create_only_their_own_changelogs(secure_stack: SecureStack, topics: list[str]) -> None:
    own, other = "passerelle-enrichment-visitors-changelog", "passerelle-carts-carts-changelog"
    result = create(secure_stack, "enrich", [own, other])
    assert result[own] is None
    assert code(result[other]) == KafkaError.TOPIC_AUTHORIZATION_FAILED


def test_deploy_creates_and_describes_catalog_topics_only(secure_stack: SecureStack, topics: list[str]) -> None:
    result = create(secure_stack, "deploy", ["partners.metrics", "not.in.catalog"])
    assert result["partners.metrics"] is None
    assert code(result["not.in.catalog"]) == KafkaError.TOPIC_AUTHORIZATION_FAILED
    deploy = admin(secure_stack, "deploy")
    futures = deploy.describe_configs([ConfigResource(ResourceType.TOPIC, "hits.raw")])
    configs = next(iter(futures.values())).result(30)
    assert "cleanup.policy" in configs
    # and a component without CREATE cannot make topics at all
    assert code(create(secure_stack, "collector", ["hits.raw.copy"])["hits.raw.copy"]) == (
        KafkaError.TOPIC_AUTHORIZATION_FAILED
    )


# --- the stack itself -----------------------------------------------------------------------------------------


def cli_env(s: SecureStack) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PASSERELLE_")}
    env.update(
        PASSERELLE_STATE_DIR=str(s.config.state_dir),
        PASSERELLE_CACHE_DIR=str(s.config.cache_dir),
        PASSERELLE_KAFKA_PORT=str(s.config.kafka_port),
        PASSERELLE_CONTROLLER_PORT=str(s.config.controller_port),
        PASSERELLE_REGISTRY_PORT=str(s.config.registry_port),
    )
    return env


def cli(s: SecureStack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "passerelle", *args],
        env=cli_env(s),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def snapshot(directory: Path) -> dict[str, tuple[int, bytes]]:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(directory.iterdir()) if p.is_file()}


def test_up_again_is_a_no_op(secure_stack: SecureStack, topics: list[str]) -> None:
    cfg = secure_stack.config
    before = snapshot(cfg.secure_dir), (cfg.kafka_dir / "server.properties").stat().st_mtime_ns
    lines = stack.up(dataclasses.replace(cfg, registry_command=None), progress=False)
    assert lines[0].startswith("kafka     already running")
    assert lines[1] == "security  users and ACLs up to date"
    assert (snapshot(cfg.secure_dir), (cfg.kafka_dir / "server.properties").stat().st_mtime_ns) == before


def test_up_restores_the_table(secure_stack: SecureStack, topics: list[str]) -> None:
    """A grant added by hand to a component is taken back, a deleted user comes back with its password."""
    cfg = secure_stack.config
    root = admin(secure_stack, "admin")
    stray = AclBinding(
        ResourceType.TOPIC, "hits.enriched", ResourcePatternType.LITERAL, "User:collector", "*",
        AclOperation.READ, AclPermissionType.ALLOW,
    )  # fmt: skip
    next(iter(root.create_acls([stray]).values())).result(30)
    gone = UserScramCredentialDeletion("generator", ScramMechanism.SCRAM_SHA_512)
    next(iter(root.alter_user_scram_credentials([gone]).values())).result(30)

    lines = stack.up(dataclasses.replace(cfg, registry_command=None), progress=False)
    assert lines[1] == "security  created SCRAM users generator; removed 1 ACLs no longer granted"
    anything: Any = None
    collector = AclBindingFilter(
        ResourceType.ANY, anything, ResourcePatternType.ANY, "User:collector", anything,
        AclOperation.ANY, AclPermissionType.ANY,
    )  # fmt: skip
    left = root.describe_acls(collector).result(30)
    granted = {("hits.raw", AclOperation.WRITE), ("ads.impressions", AclOperation.WRITE)}  # hits and /imp
    assert {(b.name, b.operation) for b in left} == granted
    meta = admin(secure_stack, "generator").list_topics(timeout=15)  # logs in again, same password
    assert meta.brokers


def test_status_reports_running(secure_stack: SecureStack) -> None:
    components = stack.status(secure_stack.config)
    assert [(c.name, c.running, c.answering) for c in components] == [
        ("kafka", True, True),
        ("registry", True, True),
    ]
    # The command finds the mode in the state folder: no --secure needed.
    done = cli(secure_stack, "status")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"https://127.0.0.1:{secure_stack.config.registry_port}" in done.stdout


def test_cli_up_secure_again_prints_where_credentials_are_never_passwords(secure_stack: SecureStack) -> None:
    done = cli(secure_stack, "up", "--secure")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "already running" in done.stdout
    assert "users and ACLs up to date" in done.stdout
    assert str(secure_stack.config.secure_dir) in done.stdout
    for password in secure_stack.config.material.passwords().values():
        assert password not in done.stdout + done.stderr


def test_up_without_secure_on_a_secure_stack_is_one_line(secure_stack: SecureStack) -> None:
    done = cli(secure_stack, "up")
    assert done.returncode != 0
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), done.stderr
    assert "--secure" in lines[0] and "down --purge" in lines[0]


def test_up_secure_on_a_plaintext_stack_is_refused(tmp_path: Path) -> None:
    # A state folder whose storage was formatted plaintext (nothing needs to run to refuse).
    (tmp_path / "kafka" / "data").mkdir(parents=True)
    (tmp_path / "kafka" / "data" / "meta.properties").write_text("version=1\n")
    cfg = stack.StackConfig(state_dir=tmp_path, cache_dir=tmp_path / "cache", secure=True)
    with pytest.raises(stack.StackError, match=r"without --secure.*down --purge"):
        stack.up(cfg, progress=False)
    assert not (tmp_path / "secure").exists()


def test_secrets_are_private_and_never_logged(secure_stack: SecureStack) -> None:
    cfg = secure_stack.config
    assert stat.S_IMODE(cfg.secure_dir.stat().st_mode) == 0o700
    for path in cfg.secure_dir.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE((cfg.kafka_dir / "server.properties").stat().st_mode) == 0o600
    logs = (cfg.kafka_dir / "broker.log").read_text(errors="replace")
    if (cfg.registry_dir / "registry.log").exists():
        logs += (cfg.registry_dir / "registry.log").read_text(errors="replace")
    for name, password in cfg.material.passwords().items():
        assert password not in logs, f"{name}'s password is in a log"


def test_component_files(secure_stack: SecureStack) -> None:
    cfg = secure_stack.config
    passwords = cfg.material.passwords()
    assert set(passwords) == {*acls.COMPONENTS, acls.CONTROLLER}
    assert len(set(passwords.values())) == len(passwords)
    for component in acls.COMPONENTS:
        env = secure_stack.env(component)
        assert env == {
            "PASSERELLE_KAFKA_CONFIG_FILE": str(cfg.secure_dir / f"{component}.properties"),
            "PASSERELLE_SCHEMA_REGISTRY_URL": f"https://127.0.0.1:{cfg.registry_port}",
            "PASSERELLE_SCHEMA_REGISTRY_SSL_CA_LOCATION": str(cfg.secure_dir / "ca.pem"),
            "PASSERELLE_SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO": f"{component}:{passwords[component]}",
        }
        assert secure_stack.kafka_config(component) == {
            "bootstrap.servers": cfg.bootstrap,
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": component,
            "sasl.password": passwords[component],
            "ssl.ca.location": str(cfg.secure_dir / "ca.pem"),
        }
    users = json.loads((cfg.secure_dir / "registry-users.json").read_text())["users"]
    assert set(users) == set(acls.COMPONENTS)
    for name, user in users.items():
        assert user["role"] == ("write" if name in ("admin", "deploy") else "read")
        assert user["sha256"] == hashlib.sha256(bytes.fromhex(user["salt"]) + passwords[name].encode()).hexdigest()


# --- the registry over HTTPS -----------------------------------------------------------------------------------


@pytest.fixture
def registry(secure_stack: SecureStack) -> str:
    return secure_stack.config.registry_url


def auth(s: SecureStack, component: str) -> tuple[str, str]:
    user, _, password = s.env(component)["PASSERELLE_SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO"].partition(":")
    return user, password


def test_registry_serves_https_verified_by_the_stack_ca(secure_stack: SecureStack, registry: str) -> None:
    ca = str(secure_stack.config.material.ca)
    assert registry.startswith("https://")
    assert requests.get(registry + "/", verify=ca, timeout=10).status_code == 200  # the anonymous health probe
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(registry + "/", timeout=10)  # not a certificate the system trusts
    assert requests.get(registry + "/subjects", verify=ca, timeout=10).status_code == 401


def test_registry_roles(secure_stack: SecureStack, registry: str) -> None:
    ca = str(secure_stack.config.material.ca)
    subject = f"secure-{uuid.uuid4().hex[:8]}-value"
    body = {"schema": json.dumps({"type": "record", "name": "T", "fields": [{"name": "a", "type": "string"}]})}
    url = f"{registry}/subjects/{subject}/versions"
    refused = requests.post(url, json=body, auth=auth(secure_stack, "enrich"), verify=ca, timeout=10)
    assert refused.status_code == 403
    done = requests.post(url, json=body, auth=auth(secure_stack, "deploy"), verify=ca, timeout=30)
    assert done.status_code == 200, done.text
    listed = requests.get(f"{registry}/subjects", auth=auth(secure_stack, "enrich"), verify=ca, timeout=10)
    assert subject in listed.json()
    wrong = requests.get(f"{registry}/subjects", auth=("enrich", "wrong"), verify=ca, timeout=10)
    assert wrong.status_code == 401


def test_a_component_env_is_all_a_process_needs(
    secure_stack: SecureStack, registry: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The settings and client layer every process uses, fed with nothing but ``<component>.env``."""
    from passerelle.schemas.clients import admin_client, registry_client
    from passerelle.settings import PasserelleSettings

    for key in [k for k in os.environ if k.startswith("PASSERELLE_")]:
        monkeypatch.delenv(key)
    for key, value in secure_stack.env("enrich").items():
        monkeypatch.setenv(key, value)
    conn = PasserelleSettings().connection()
    assert conn.bootstrap_servers == secure_stack.bootstrap
    assert "hits.raw" in admin_client(conn).list_topics(timeout=15).topics
    assert isinstance(registry_client(conn).get_subjects(), list)


@pytest.mark.unit
def test_acl_table_names_the_catalog_topics() -> None:
    """deploy/ cannot import the catalog: its copy of the topic names must agree with it."""
    from passerelle.schemas.catalog import load_catalog

    assert set(load_catalog(None).names) == set(acls.CATALOG_TOPICS)
    for component, grants in acls.GRANTS.items():
        for grant in grants:
            if grant.resource == acls.TOPIC and not grant.prefixed:
                assert set(grant.names) <= {*acls.CATALOG_TOPICS, acls.SCHEMAS_TOPIC}, component
    assert secure.MECHANISM == "SCRAM-SHA-512"
