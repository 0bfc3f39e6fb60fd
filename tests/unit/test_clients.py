"""The client layer: properties from files and variables, secrets masked, errors that say what to fix."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
from confluent_kafka import KafkaError

from passerelle.schemas.clients import (
    Connection,
    KafkaAccessError,
    KafkaAuthenticationError,
    KafkaConfigError,
    KafkaUnreachableError,
    ensure_reachable,
    parse_properties,
    redact,
    registry_client,
)
from passerelle.schemas.clients.kafka import classify
from passerelle.schemas.clients.redact import RedactingFilter
from passerelle.schemas.clients.registry import registry_config
from passerelle.settings import PasserelleSettings, check_environment, kafka_env_properties

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


def test_properties_file_in_kcat_format() -> None:
    text = "# a comment\n\nsecurity.protocol=SASL_SSL\n sasl.username = alice \nsasl.password=p=ss\n! also a comment\n"
    expected = {"security.protocol": "SASL_SSL", "sasl.username": "alice", "sasl.password": "p=ss"}
    assert parse_properties(text) == expected


def test_a_malformed_properties_line_names_file_and_line() -> None:
    with pytest.raises(KafkaConfigError, match=r"f\.properties:2: expected `property=value`"):
        parse_properties("a=b\nnot a property\n", "f.properties")


def test_env_variables_become_librdkafka_properties_and_override_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "client.properties"
    conf.write_text("bootstrap.servers=broker:9094\nsecurity.protocol=SSL\nssl.ca.location=/ca.pem\n")
    for key in [k for k in __import__("os").environ if k.startswith("PASSERELLE_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("PASSERELLE_KAFKA_CONFIG_FILE", str(conf))
    monkeypatch.setenv("PASSERELLE_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("PASSERELLE_KAFKA_SASL_PASSWORD", "s3cret-pass")
    monkeypatch.setenv("PASSERELLE_KAFKA_PORT", "9999")  # a settings field, not a property
    check_environment()
    settings = PasserelleSettings()
    conn = settings.connection()
    assert conn.bootstrap_servers == "broker:9094"  # from the file, since no variable names one
    assert dict(conn.kafka) == {
        "security.protocol": "SASL_SSL",
        "ssl.ca.location": "/ca.pem",
        "sasl.password": "s3cret-pass",
    }
    assert "s3cret-pass" not in repr(conn) and "s3cret-pass" not in str(conn.redacted())


def test_field_variables_are_not_passed_to_librdkafka() -> None:
    env = {"PASSERELLE_KAFKA_PORT": "1", "PASSERELLE_KAFKA_CONFIG_FILE": "x", "PASSERELLE_KAFKA_SASL_USERNAME": "u"}
    assert kafka_env_properties(env) == {"sasl.username": "u"}


def test_unknown_passerelle_variables_still_fail_but_kafka_properties_pass() -> None:
    check_environment({"PASSERELLE_KAFKA_SASL_MECHANISM": "PLAIN"})
    with pytest.raises(Exception, match="PASSERELLE_BOOTSTRAP_SERVER"):
        check_environment({"PASSERELLE_BOOTSTRAP_SERVER": "typo"})


def test_registry_credentials_as_the_confluent_client_takes_them() -> None:
    basic = Connection("b:9092", "https://reg", registry={"basic.auth.user.info": "u:pw-123"})
    assert registry_client(basic)._rest_client.auth == ("u", "pw-123")
    token = Connection("b:9092", "https://reg", registry={"bearer.auth.token": "tok-123"})
    bearer = registry_config(token)
    assert bearer["bearer.auth.credentials.source"] == "STATIC_TOKEN"
    assert "bearer.auth.logical.cluster" in bearer  # the client refuses a static token without it
    headers: dict[str, str] = {}
    registry_client(token)._rest_client.handle_bearer_auth(headers)
    assert headers["Authorization"] == "Bearer tok-123"
    with pytest.raises(KafkaConfigError, match="Unrecognized properties"):
        registry_client(Connection("b:9092", "https://reg", registry={"bogus": "1"}))


def test_secrets_are_masked_wherever_they_appear() -> None:
    Connection("b:9092", "http://r", {"sasl.password": "pa55-word-x"}, {"basic.auth.user.info": "reader:reg-pw-9"})
    assert redact("auth failed for pa55-word-x") == "auth failed for ***"
    assert "reg-pw-9" not in redact("http://reader:reg-pw-9@r/") and "***" in redact("reader:reg-pw-9")
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "login %s", ("pa55-word-x",), None)
    RedactingFilter().filter(record)
    assert record.getMessage() == "login ***"


def test_errors_that_no_retry_fixes_are_classified() -> None:
    conn = Connection("b:9092", "", {"security.protocol": "SASL_SSL", "sasl.username": "carts"})
    auth = classify(KafkaError(KafkaError._AUTHENTICATION, "invalid credentials"), conn)
    assert isinstance(auth, KafkaAuthenticationError) and "as 'carts'" in str(auth)
    denied = classify(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED), conn, "'hits.raw'")
    assert isinstance(denied, KafkaAccessError) and "'hits.raw'" in str(denied)
    assert classify(KafkaError(KafkaError._TRANSPORT), conn) is None  # retried by librdkafka


def test_an_unknown_property_is_a_configuration_error() -> None:
    with pytest.raises(KafkaConfigError, match=r'No such configuration property: "sasl\.usernam"'):
        ensure_reachable(Connection("127.0.0.1:1", "", {"sasl.usernam": "x"}), 1)


def test_an_unreachable_cluster_is_one_error_naming_it() -> None:
    with pytest.raises(KafkaUnreachableError, match=r"127\.0\.0\.1:1 \(PLAINTEXT\)"):
        ensure_reachable(Connection("127.0.0.1:1"), 1.5)


def test_faust_gets_the_same_credentials() -> None:
    pytest.importorskip("faust")
    from passerelle.streams.remarketing.credentials import faust_credentials

    assert faust_credentials(Connection("b:1")) is None
    props = {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "rm",
             "sasl.password": "pw-rm-1"}  # fmt: skip
    creds = faust_credentials(Connection("b:1", "", props))
    assert creds.username == "rm" and creds.mechanism.value == "SCRAM-SHA-512"
    assert creds.protocol.value == "SASL_SSL" and creds.ssl_context is not None
    with pytest.raises(KafkaConfigError, match="OAUTHBEARER"):
        faust_credentials(Connection("b:1", "", {"security.protocol": "SASL_SSL", "sasl.mechanism": "OAUTHBEARER"}))


def test_the_cli_never_prints_a_password_even_with_debug() -> None:
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("PASSERELLE_")}
    env.update(
        PASSERELLE_BOOTSTRAP_SERVERS="127.0.0.1:1",
        PASSERELLE_KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT",
        PASSERELLE_KAFKA_SASL_MECHANISM="SCRAM-SHA-512",
        PASSERELLE_KAFKA_SASL_USERNAME="enrich",
        PASSERELLE_KAFKA_SASL_PASSWORD="do-not-print-me",
        PASSERELLE_SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO="enrich:nor-this-one",
        PASSERELLE_KAFKA_SOCKET_CONNECTION_SETUP_TIMEOUT_MS="1000",
    )
    for args in (["--debug", "topics", "create", "--timeout", "2"], ["enrich"]):
        proc = subprocess.run([sys.executable, "-m", "passerelle", *args], capture_output=True, text=True,
                              env=env, cwd=ROOT, timeout=90, check=False)  # fmt: skip
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0
        assert "do-not-print-me" not in out and "nor-this-one" not in out, out
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and "127.0.0.1:1" in errors[0] and "'enrich'" in errors[0], proc.stderr
        if "--debug" not in args:  # librdkafka's connection attempts stay out of the terminal
            assert len(proc.stderr.splitlines()) <= 2, proc.stderr
