"""Shared fixtures: a real Kafka broker and the real embedded registry, never a mock.

Broker, in order of preference: ``KAFKA_BOOTSTRAP_SERVERS`` when set; else a
testcontainers Kafka when a Docker engine answers; else the project's own
local stack (Maven jars, plain ``java`` process) in a private state folder on
free ports, stopped and purged when the session ends.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from passerelle.deploy.local import connect, postgres, stack
from passerelle.schemas.clients import Connection, read_properties_file

ROOT = Path(__file__).resolve().parent.parent


def _docker_engine_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """host:port of a real broker for this test session."""
    env = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if env:
        yield env
        return
    if _docker_engine_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as kafka:
            yield kafka.get_bootstrap_server()
        return
    state = ROOT / f".passerelle-test-{os.getpid()}"
    cfg = stack.StackConfig(
        state_dir=state,
        cache_dir=Path(os.environ.get("PASSERELLE_CACHE_DIR", Path.home() / ".cache" / "passerelle")),
        kafka_port=stack.free_port(),
        controller_port=stack.free_port(),
        broker_heap="1g",
    )
    try:
        stack.up(cfg, progress=False)
        yield cfg.bootstrap
    finally:
        stack.down(cfg, purge=True)


def registry_env(bootstrap: str, port: int, topic: str) -> dict[str, str]:
    """Environment for ``python -m passerelle registry`` pointed at ``bootstrap``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PASSERELLE_")}
    env.update(
        PASSERELLE_BOOTSTRAP_SERVERS=bootstrap,
        PASSERELLE_REGISTRY_HOST="127.0.0.1",
        PASSERELLE_REGISTRY_PORT=str(port),
        PASSERELLE_SCHEMAS_TOPIC=topic,
    )
    return env


def start_registry_process(bootstrap: str, port: int, topic: str, log: Path) -> subprocess.Popen[bytes]:
    """Start the embedded registry as a real subprocess and wait until it answers."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "passerelle", "registry"],
            env=registry_env(bootstrap, port, topic),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"registry exited with {proc.returncode}: {log.read_text()[-2000:]}")
        if stack.registry_answers(url):
            return proc
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"registry did not answer on {url}: {log.read_text()[-2000:]}")


@pytest.fixture(scope="session")
def schema_registry_url(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of the embedded registry, running as its own process over the session's broker."""
    env = os.environ.get("SCHEMA_REGISTRY_URL")
    if env:
        yield env
        return
    port = stack.free_port()
    log = tmp_path_factory.mktemp("registry") / "registry.log"
    proc = start_registry_process(kafka_bootstrap, port, f"_schemas-test-{uuid.uuid4().hex[:8]}", log)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


@dataclasses.dataclass
class SecureStack:
    """A private secured stack (``up --secure``): its config, and each component's credentials."""

    config: stack.StackConfig

    @property
    def bootstrap(self) -> str:
        return self.config.bootstrap

    def env(self, component: str) -> dict[str, str]:
        """The ``PASSERELLE_*`` variables of ``component`` (its ``<component>.env`` file)."""
        return self.config.component_env(component)

    def kafka_config(self, component: str) -> dict[str, str]:
        """librdkafka properties logging in as ``component`` (bootstrap.servers included)."""
        return self.config.component_kafka_config(component)


def component_connection(env: dict[str, str], bootstrap: str) -> Connection:
    """The connection a process started with a secure stack's ``<component>.env`` builds from those lines."""
    kafka = read_properties_file(Path(env["PASSERELLE_KAFKA_CONFIG_FILE"]))
    kafka.pop("bootstrap.servers", None)
    registry = {"basic.auth.user.info": env["PASSERELLE_SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO"],
                "ssl.ca.location": env["PASSERELLE_SCHEMA_REGISTRY_SSL_CA_LOCATION"]}  # fmt: skip
    return Connection(bootstrap, env["PASSERELLE_SCHEMA_REGISTRY_URL"], kafka, registry)


def secure_stack_config(state_dir: Path) -> stack.StackConfig:
    """A secure stack on free ports in ``state_dir``, with the real registry as the CLI starts it."""
    kafka_port, registry_port = stack.free_port(), stack.free_port()
    return stack.StackConfig(
        state_dir=state_dir,
        cache_dir=Path(os.environ.get("PASSERELLE_CACHE_DIR", Path.home() / ".cache" / "passerelle")),
        kafka_port=kafka_port,
        controller_port=stack.free_port(),
        registry_port=registry_port,
        registry_command=[sys.executable, "-m", "passerelle", "registry"],
        registry_env={
            "PASSERELLE_BOOTSTRAP_SERVERS": f"127.0.0.1:{kafka_port}",
            "PASSERELLE_REGISTRY_PORT": str(registry_port),
            "PASSERELLE_REGISTRY_HOST": "127.0.0.1",
            "PASSERELLE_SCHEMAS_TOPIC": "_schemas",
        },
        broker_heap="512m",
        secure=True,
    )


@pytest.fixture(scope="session")
def secure_stack() -> Iterator[SecureStack]:
    """A secured local stack (SASL_SSL + SCRAM + ACLs, HTTPS registry) for this session, purged at the end."""
    cfg = secure_stack_config(ROOT / f".passerelle-secure-test-{os.getpid()}")
    try:
        stack.up(cfg, progress=False)
        yield SecureStack(cfg)
    finally:
        stack.down(cfg, purge=True)


@pytest.fixture
def unique(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Unique topic/group names per test so tests never see each other's records."""
    test = re.sub(r"[^a-zA-Z0-9]+", "-", request.node.name)[:40].strip("-")
    run = uuid.uuid4().hex[:8]

    def make(prefix: str) -> str:
        return f"{prefix}.{test}.{run}"

    return make


# --- the CRM database and Kafka Connect (real PostgreSQL, real Connect worker) -------------------------------


@pytest.fixture(scope="session")
def crm_postgres() -> Iterator[postgres.Postgres]:
    """A private PostgreSQL cluster with the sample CRM database migrated, on a free port.

    Its folder is under the checkout, not pytest's tmp (mode 700, which the
    ``postgres`` user running the server cannot enter).
    """
    pg = postgres.Postgres(ROOT / f".passerelle-crm-test-{os.getpid()}" / "postgres", port=stack.free_port())
    try:
        postgres.start(pg)
        postgres.migrate(pg, ROOT / "connectors" / "crm" / "migrations")
        yield pg
    finally:
        postgres.stop(pg)
        shutil.rmtree(pg.root.parent, ignore_errors=True)


@pytest.fixture(scope="session")
def connect_worker(kafka_bootstrap: str, crm_postgres: postgres.Postgres) -> Iterator[connect.Worker]:
    """A real Kafka Connect worker (distributed mode) with the Debezium plugins, on the session's broker."""
    suffix = uuid.uuid4().hex[:8]
    worker = connect.Worker(
        root=crm_postgres.root.parent / "connect",
        cache_dir=Path(os.environ.get("PASSERELLE_CACHE_DIR", Path.home() / ".cache" / "passerelle")),
        bootstrap=kafka_bootstrap,
        port=stack.free_port(),
        group_id=f"connect-test-{suffix}",
        config_topic=f"connect.configs-{suffix}",
        offset_topic=f"connect.offsets-{suffix}",
        status_topic=f"connect.status-{suffix}",
        env=crm_postgres.environment(),
    )
    try:
        connect.start(worker, stack.java_command(), stack.CONNECT_LOG4J2)
        yield worker
    finally:
        connect.stop(worker)
