"""Each process on the secured stack, as an operator meets it: its own credentials work, anything else is refused.

The processes run through the real CLI (``python -m passerelle ...``) with the
``.env`` file ``passerelle up --secure`` wrote for their component. A refusal
must be one ``error:`` line that says what to fix, print no secret, and leave
nothing half-written behind.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from passerelle.connectors.generator.send import publish_profiles
from passerelle.connectors.generator.shop import Shop
from passerelle.schemas.clients import KafkaAccessError, registry_client
from passerelle.schemas.serde import AvroDecoder, SchemaCache, registry_fetcher
from tests.conftest import ROOT, SecureStack, component_connection, stop_process
from tests.unit.test_crm_normalizer import created, customer, wire

pytestmark = pytest.mark.integration


def run(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PASSERELLE_")}
    return subprocess.run([sys.executable, "-m", "passerelle", *args], env={**base, **env}, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False)  # fmt: skip


def one_error(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def secrets_of(s: SecureStack, component: str) -> list[str]:
    env = s.env(component)
    return [s.kafka_config(component)["sasl.password"],
            env["PASSERELLE_SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO"].split(":", 1)[1]]  # fmt: skip


def topics_on(s: SecureStack) -> set[str]:
    return set(AdminClient({**s.kafka_config("admin"), "log_level": 0}).list_topics(timeout=15).topics)


@pytest.fixture(scope="module")
def deployed(secure_stack: SecureStack) -> SecureStack:
    """The catalog's topics and schemas, put there by the deployment pipeline's own user."""
    for args in (("topics", "create"), ("schemas", "register")):
        done = run(secure_stack.env("deploy"), *args)
        assert done.returncode == 0, done.stdout + done.stderr
    return secure_stack


def test_the_deployment_pipeline_runs_with_its_own_credentials(deployed: SecureStack) -> None:
    again = run(deployed.env("deploy"), "topics", "create", "--fail-on-drift")
    assert again.returncode == 0, again.stderr
    assert "hits.raw" in again.stdout and "exists" in again.stdout
    checked = run(deployed.env("deploy"), "schemas", "check")
    assert checked.returncode == 0 and "ok" in checked.stdout, checked.stderr


def test_a_wrong_kafka_password_is_one_line_naming_the_user(deployed: SecureStack) -> None:
    env = {**deployed.env("enrich"), "PASSERELLE_KAFKA_SASL_PASSWORD": "not-the-password"}
    proc = run(env, "enrich")
    line = one_error(proc, "refused the credentials", "'enrich'", deployed.bootstrap)
    assert "not-the-password" not in proc.stdout + proc.stderr, line


def test_no_credentials_at_all_is_one_line_naming_the_servers(deployed: SecureStack) -> None:
    proc = run({"PASSERELLE_BOOTSTRAP_SERVERS": deployed.bootstrap}, "topics", "create", "--timeout", "5")
    one_error(proc, deployed.bootstrap)


def test_a_processor_under_another_principal_is_refused_and_writes_nothing(deployed: SecureStack) -> None:
    """``carts`` run with enrich's credentials: its changelogs, group and transactional id are not enrich's."""
    before = topics_on(deployed)
    proc = run({**deployed.env("enrich"), "PASSERELLE_INSTANCE_ID": "intruder"}, "carts")
    one_error(proc, "does not allow", "(an ACL must grant it to this principal)")
    output = proc.stdout + proc.stderr
    assert not any(secret in output for secret in secrets_of(deployed, "enrich"))
    assert {t for t in topics_on(deployed) - before if t.startswith("passerelle-carts")} == set()


def test_publishing_to_a_topic_not_granted_is_refused_and_nothing_lands(deployed: SecureStack) -> None:
    """The collector's user may write hits.raw, not the CRM table: a CRM publish under it fails whole."""
    conn = component_connection(deployed.env("collector"), deployed.bootstrap)
    before = end_offsets(deployed, "crm.profiles")
    with pytest.raises(KafkaAccessError, match=r"crm\.profiles"):
        publish_profiles(Shop(7, 0, customers=3).crm_profiles(), conn)
    assert end_offsets(deployed, "crm.profiles") == before


def profiles_of(s: SecureStack, ids: set[str], timeout: float = 60) -> dict[str, Any]:
    """The latest committed crm.profiles record of each customer in ``ids`` (read as admin), once all are there."""
    registry = registry_client(component_connection(s.env("admin"), s.bootstrap))
    decoder = AvroDecoder(SchemaCache(registry_fetcher(registry)))
    consumer = Consumer({**s.kafka_config("admin"), "group.id": f"probe-{uuid.uuid4().hex[:8]}", "log_level": 0,
                         "auto.offset.reset": "earliest", "isolation.level": "read_committed"})  # fmt: skip
    found: dict[str, Any] = {}
    try:
        consumer.subscribe(["crm.profiles"])
        deadline = time.monotonic() + timeout
        while not ids <= set(found) and time.monotonic() < deadline:
            for msg in consumer.consume(500, timeout=0.5):
                if msg.error() is None and (key := decoder.decode(msg.key())) in ids:
                    found[key] = None if msg.value() is None else decoder.decode(msg.value())
    finally:
        consumer.close()
    return found


def test_the_crm_normalizer_runs_under_its_own_principal(deployed: SecureStack, tmp_path: Path) -> None:
    """Its inputs, lookup table, changelog, groups and transactional id are crm-normalizer's own: a change event
    from the CRM becomes a profile, exactly-once, and SIGTERM ends it cleanly."""
    cid = f"SEC-{uuid.uuid4().hex[:8]}"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PASSERELLE_")}, **deployed.env("crm-normalizer")}
    log = tmp_path / "crm-normalizer.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "passerelle", "crm-normalizer"], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        debezium = Producer({**deployed.kafka_config("admin"), "log_level": 0})  # the Connect worker's stand-in
        debezium.produce("crm.cdc.customers", wire("customers", created(customer(cid))), cid.encode())
        assert debezium.flush(30) == 0
        found = profiles_of(deployed, {cid})
        assert proc.poll() is None, log.read_text()
    finally:
        stop_process(proc, timeout=30)
    output = log.read_text()
    assert cid in found, output
    assert found[cid]["email"] == f"{cid.lower()}@example.com" and found[cid]["marketing_consent"] is False
    assert proc.returncode == 0, output
    assert "error:" not in output and "Traceback" not in output, output
    assert "passerelle-crm-normalizer-customers-changelog" in topics_on(deployed)
    assert not any(secret in output for secret in secrets_of(deployed, "crm-normalizer"))


def test_crm_import_runs_under_its_own_principal(deployed: SecureStack, tmp_path: Path) -> None:
    """It reads crm.profiles to diff (its own group, assign only) and publishes with an idempotent producer."""
    ids = {f"IMP-{uuid.uuid4().hex[:8]}", f"IMP-{uuid.uuid4().hex[:8]}"}
    export = tmp_path / "export.csv"
    export.write_text("customer_id,email,marketing_consent\n" + "".join(f"{c},{c.lower()}@example.com,yes\n"
                                                                        for c in sorted(ids)))  # fmt: skip
    env = deployed.env("crm-import")
    first = run(env, "crm", "import", "--no-progress", str(export))
    assert first.returncode == 0, first.stdout + first.stderr
    found = profiles_of(deployed, ids)
    assert set(found) == ids and all(p["marketing_consent"] is True for p in found.values())
    before = end_offsets(deployed, "crm.profiles")
    again = run(env, "crm", "import", "--no-progress", str(export))
    assert again.returncode == 0, again.stdout + again.stderr
    assert end_offsets(deployed, "crm.profiles") == before  # the table was read back: nothing changed, nothing sent
    assert not any(secret in first.stdout + first.stderr for secret in secrets_of(deployed, "crm-import"))


def end_offsets(s: SecureStack, topic: str) -> int:
    consumer = Consumer({**s.kafka_config("admin"), "group.id": "probe", "log_level": 0})
    try:
        partitions = consumer.list_topics(topic, timeout=15).topics[topic].partitions
        return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=15)[1] for p in partitions)
    finally:
        consumer.close()


def test_a_read_only_registry_user_cannot_register_and_is_told_so(deployed: SecureStack) -> None:
    proc = run(deployed.env("enrich"), "schemas", "register", "hits.raw")
    line = one_error(proc, "does not allow this user to change", "hits.raw-")
    assert not any(secret in proc.stdout + proc.stderr for secret in secrets_of(deployed, "enrich")), line


def test_a_wrong_registry_password_is_one_line(deployed: SecureStack) -> None:
    env = {**deployed.env("deploy"), "PASSERELLE_SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO": "deploy:wrong-one"}
    proc = run(env, "schemas", "check")
    one_error(proc, "refused the credentials", "PASSERELLE_SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO")
    assert "wrong-one" not in proc.stdout + proc.stderr


def test_status_on_the_secure_stack_prints_no_secret(deployed: SecureStack) -> None:
    env = {"PASSERELLE_STATE_DIR": str(deployed.config.state_dir),
           "PASSERELLE_KAFKA_PORT": str(deployed.config.kafka_port),
           "PASSERELLE_CONTROLLER_PORT": str(deployed.config.controller_port),
           "PASSERELLE_REGISTRY_PORT": str(deployed.config.registry_port)}  # fmt: skip
    proc = run(env, "--debug", "status")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    output = proc.stdout + proc.stderr
    for component in ("admin", "deploy", "enrich", "registry"):
        assert deployed.kafka_config(component)["sasl.password"] not in output
