"""The local stack: a single-node Apache Kafka (KRaft) and the embedded registry as plain processes.

No Docker engine runs on our machines, so the broker comes from Maven Central
jars and runs as a ``java`` process on 127.0.0.1. Everything the stack writes
(data, logs, pid files) lives under one state folder, so ``down --purge`` is a
single ``rmtree``; the jars live in a cache folder that survives purges.

This module imports nothing else of ours (design rule for ``deploy/``): the
registry is started through the command line the caller hands in.

``StackConfig(secure=True)`` (``passerelle up --secure``) runs the same stack
with TLS, SCRAM users and ACLs: see ``deploy/local/secure.py`` and
``deploy/local/acls.py``. A state folder keeps the mode it was made with.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from passerelle.deploy.local import acls, postgres
from passerelle.deploy.local import connect as connect_worker
from passerelle.deploy.local import monitoring as monitor
from passerelle.deploy.local import secure as security

HERE = Path(__file__).resolve().parent
POM = HERE / "pom.xml"
LOG4J2 = HERE / "log4j2.yaml"
BROKER_MARKER = "kafka.Kafka"
REGISTRY_MARKER = "registry"
OPTIONAL_COMPONENTS = ("postgres", "connect", "monitoring")
"""What ``up --with`` may add; connect implies postgres (its connectors read and write the CRM database);
monitoring is Prometheus, Alertmanager and the lag exporter (deploy/local/monitoring.py)."""
CONNECT_LOG4J2 = connect_worker.HERE / "log4j2.properties"
SECURE_COMPONENTS = acls.COMPONENTS


def is_secure(state_dir: Path) -> bool:
    """Whether the stack in ``state_dir`` was made with ``up --secure``."""
    return security.is_secure(state_dir)


class StackError(Exception):
    """A local-stack failure with a cause the user can fix (printed as one line)."""

    user_error = True
    exit_code = 1


@dataclass(frozen=True)
class StackConfig:
    """Where the stack lives and listens; the CLI fills it from settings."""

    state_dir: Path
    cache_dir: Path
    kafka_port: int = 9092
    controller_port: int = 9093
    host: str = "127.0.0.1"
    registry_port: int = 8081
    registry_command: Sequence[str] | None = None
    registry_env: dict[str, str] = field(default_factory=dict)
    broker_heap: str = "768m"
    start_timeout: float = 90.0
    secure: bool = False  # SASL_SSL + SCRAM-SHA-512 + ACLs, registry over HTTPS (deploy/local/secure.py)
    postgres_port: int = 5433
    connect_port: int = 8083
    components: frozenset[str] = frozenset()
    """Optional components to start: ``postgres``, ``connect`` (see OPTIONAL_COMPONENTS)."""
    migrations: Path | None = None
    """Folder of the CRM database's migration files, applied on every ``up`` with postgres."""
    monitoring: monitor.Monitoring | None = None
    """Prometheus, Alertmanager and the lag exporter (``up --with monitoring``); None: not configured."""

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.kafka_port}"

    @property
    def registry_url(self) -> str:
        return f"{'https' if self.secure else 'http'}://{self.host}:{self.registry_port}"

    @property
    def secure_dir(self) -> Path:
        return security.secure_dir(self.state_dir)

    @property
    def material(self) -> security.Material:
        return security.material(self.state_dir)

    @property
    def ca_file(self) -> Path | None:
        """The CA of a secure stack's certificates (None: plaintext)."""
        return self.material.ca if self.secure else None

    def admin_config(self) -> dict[str, str]:
        """librdkafka config of an admin client: plain bootstrap, or the ``admin`` principal when secure."""
        if not self.secure:
            return {"bootstrap.servers": self.bootstrap}
        return security.client_config(self.material, acls.ADMIN, self.bootstrap)

    def component_env(self, component: str) -> dict[str, str]:
        """A secure stack's ``PASSERELLE_*`` variables for a process of ``component`` (see secure.py)."""
        return security.component_env(self.state_dir, component)

    def component_kafka_config(self, component: str) -> dict[str, str]:
        """A secure stack's librdkafka config logging in as ``component``."""
        return security.component_kafka_config(self.state_dir, component)

    @property
    def kafka_dir(self) -> Path:
        return self.state_dir / "kafka"

    @property
    def registry_dir(self) -> Path:
        return self.state_dir / "registry"

    @property
    def postgres(self) -> postgres.Postgres:
        return postgres.Postgres(self.state_dir / "postgres", self.postgres_port, self.host)

    @property
    def connect(self) -> connect_worker.Worker:
        pg = self.postgres
        return connect_worker.Worker(
            root=self.state_dir / "connect",
            cache_dir=self.cache_dir,
            bootstrap=self.bootstrap,
            port=self.connect_port,
            host=self.host,
            env=pg.environment() if pg.secrets_file.exists() else {},
        )

    def wants(self, component: str) -> bool:
        """Whether ``up`` starts an optional component (connect brings postgres along)."""
        return component in self.components or (component == "postgres" and "connect" in self.components)


def parse_components(text: str) -> frozenset[str]:
    """``"connect,postgres"`` -> the set, refusing names that are not optional components."""
    names = {part.strip().lower() for part in text.split(",") if part.strip()}
    unknown = sorted(names - set(OPTIONAL_COMPONENTS))
    if unknown:
        raise StackError(
            f"unknown component(s) {', '.join(unknown)}: choose among {', '.join(OPTIONAL_COMPONENTS)}"
        )
    return frozenset(names)


@dataclass
class ComponentStatus:
    """What ``status`` reports for one process."""

    name: str
    pid: int | None
    running: bool
    answering: bool
    endpoint: str
    log: Path

    def line(self) -> str:
        if self.running and self.answering:
            state = f"running (pid {self.pid}), answering on {self.endpoint}"
        elif self.running:
            state = f"running (pid {self.pid}) but NOT answering on {self.endpoint}"
        else:
            state = "stopped"
        return f"{self.name:<9} {state}  log: {self.log}"


# --- small process helpers -------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still "exists"; treat it as dead.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def _read_pid(path: Path, marker: str = "") -> int | None:
    """The pid in ``path`` if that process lives and (pid reuse guard) its command line holds ``marker``."""
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    if not _pid_alive(pid):
        return None
    if marker:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return pid
        if marker not in cmdline:
            return None
    return pid


def port_in_use(host: str, port: int) -> bool:
    """True when something already listens on host:port (so we must not start there)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (for tests that run a private stack)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop_pid(pid: int, timeout: float = 30.0) -> None:
    """SIGTERM then wait, SIGKILL if it will not go: the broker flushes on SIGTERM."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


# --- prerequisites and jars --------------------------------------------------


def java_command() -> str:
    """The ``java`` to run the broker with: JAVA_HOME first, then PATH; Kafka 4 needs 17+."""
    java_home = os.environ.get("JAVA_HOME")
    candidates = [str(Path(java_home) / "bin" / "java")] if java_home else []
    found = shutil.which("java")
    if found:
        candidates.append(found)
    for candidate in candidates:
        if Path(candidate).exists():
            out = subprocess.run([candidate, "-version"], capture_output=True, text=True, check=False).stderr
            match = re.search(r'version "(\d+)', out)
            if match and int(match.group(1)) >= 17:
                return candidate
            raise StackError(f"{candidate} is Java {match.group(1) if match else '?'}; Kafka 4 needs JDK 17+")
    raise StackError("java not found: install a JDK 17+ (e.g. apt-get install openjdk-17-jdk-headless)")


def _pom_digest() -> str:
    return hashlib.sha256(POM.read_bytes()).hexdigest()[:12]


def jars_dir(cache_dir: Path) -> Path:
    """Cached jars are keyed by the pom's hash, so a version bump fetches anew."""
    return cache_dir / f"kafka-jars-{_pom_digest()}"


def ensure_jars(cache_dir: Path, log: Path | None = None) -> Path:
    """Fetch the broker jars with Maven once; later calls reuse the cache."""
    target = jars_dir(cache_dir)
    marker = target / ".complete"
    if marker.exists():
        return target
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError("Maven (mvn) not found: install it (e.g. apt-get install maven) to fetch the Kafka jars")
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    cmd = [mvn, "-B", "-q", "-f", str(POM), "dependency:copy-dependencies", f"-DoutputDirectory={tmp}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        last = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or ["(no output)"]
        raise StackError(f"Maven could not fetch the Kafka jars (exit {proc.returncode}): {last[0]}")
    (tmp / ".complete").write_text("ok\n")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


# --- broker ------------------------------------------------------------------


def server_properties(cfg: StackConfig) -> str:
    """A single-node KRaft config; replication 1 for internal topics or groups and transactions hang."""
    if cfg.secure:
        listeners = security.broker_properties(cfg.material, cfg.host, cfg.kafka_port, cfg.controller_port)
    else:
        listeners = [
            f"listeners=PLAINTEXT://{cfg.host}:{cfg.kafka_port},CONTROLLER://{cfg.host}:{cfg.controller_port}",
            f"advertised.listeners=PLAINTEXT://{cfg.host}:{cfg.kafka_port}",
            "controller.listener.names=CONTROLLER",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name=PLAINTEXT",
        ]
    return "\n".join(
        [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.bootstrap.servers={cfg.host}:{cfg.controller_port}",
            *listeners,
            f"log.dirs={cfg.kafka_dir / 'data'}",
            "num.partitions=1",
            "default.replication.factor=1",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=10",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "transaction.state.log.num.partitions=10",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=false",
            "log.cleaner.backoff.ms=1000",
            "",
        ]
    )


def broker_answers(bootstrap: str, timeout: float = 3.0, config: dict[str, str] | None = None) -> bool:
    """True when the broker answers a metadata request (the only proof it is usable).

    ``config``: the client's librdkafka properties (a secure broker answers
    only a client that authenticates: the stack passes the admin's).
    """
    from confluent_kafka.admin import AdminClient  # imported late: status works without a broker

    # log_level 0: a probe of a broker that is not up yet must not spam "Connection refused".
    conf: dict[str, Any] = {**(config or {}), "bootstrap.servers": bootstrap}
    conf.update({"socket.timeout.ms": int(timeout * 1000), "log_level": 0})
    admin = AdminClient(conf)
    try:
        meta = admin.list_topics(timeout=timeout)
    except Exception:
        return False
    return bool(meta.brokers)


def new_cluster_id() -> str:
    """16 random bytes, base64url without padding, never starting with "-".

    One id in 64 would start with "-" and StorageTool would read it as an
    option ("-t" then has no value: the format fails). Kafka's own
    ``Uuid.randomUuid`` draws again in that case; so do we.
    """
    import base64

    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _format_storage(cfg: StackConfig, classpath: str, java: str) -> None:
    data = cfg.kafka_dir / "data"
    if (data / "meta.properties").exists():
        return
    data.mkdir(parents=True, exist_ok=True)
    cluster_id_file = cfg.kafka_dir / "cluster.id"
    if not cluster_id_file.exists():
        cluster_id_file.write_text(new_cluster_id())
    cmd = [
        java, "-cp", classpath, f"-Dlog4j2.configurationFile={LOG4J2}",
        "kafka.tools.StorageTool", "format",
        "-t", cluster_id_file.read_text().strip(),
        "-c", str(cfg.kafka_dir / "server.properties"),
        "--standalone",
        *(security.format_arguments(cfg.material) if cfg.secure else []),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        out = (proc.stdout + proc.stderr).strip()[-300:]
        if cfg.secure:  # never echo the admin's password, should the tool quote its arguments
            out = out.replace(cfg.material.passwords()[acls.ADMIN], "***")
        raise StackError(f"formatting Kafka storage failed: {out}")


def _check_ports(cfg: StackConfig, ports: Sequence[tuple[str, int]]) -> None:
    for what, port in ports:
        if port_in_use(cfg.host, port):
            raise StackError(
                f"port {port} on {cfg.host} ({what}) is already in use by another program; "
                f"stop it or choose another port (PASSERELLE_{what.upper().replace(' ', '_')}_PORT)"
            )


def start_broker(cfg: StackConfig, progress: bool = True) -> tuple[int, bool]:
    """Start the broker unless it already runs; returns (pid, started_now)."""
    pid_file = cfg.kafka_dir / "broker.pid"
    pid = _read_pid(pid_file, BROKER_MARKER)
    if pid is not None:
        if broker_answers(cfg.bootstrap, config=cfg.admin_config()):
            return pid, False
        _wait_broker(cfg, pid)
        return pid, False
    _check_ports(cfg, [("kafka", cfg.kafka_port), ("controller", cfg.controller_port)])
    java = java_command()
    cfg.kafka_dir.mkdir(parents=True, exist_ok=True)
    if progress:
        print(f"fetching Kafka jars (cached in {cfg.cache_dir}) ...", flush=True)
    jars = ensure_jars(cfg.cache_dir, cfg.kafka_dir / "maven.log")
    classpath = f"{jars}/*"
    if cfg.secure:
        security.ensure_material(cfg.state_dir, cfg.host)
        # It holds the admin's and the controller's passwords: owner only.
        security.write_private(cfg.kafka_dir / "server.properties", server_properties(cfg))
    else:
        (cfg.kafka_dir / "server.properties").write_text(server_properties(cfg))
    _format_storage(cfg, classpath, java)
    log = cfg.kafka_dir / "broker.log"
    cmd = [
        java, f"-Xmx{cfg.broker_heap}", "-Xms128m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={LOG4J2}", f"-Dkafka.logs.dir={cfg.kafka_dir}",
        *_broker_agent(cfg),
        "-cp", classpath, "kafka.Kafka", str(cfg.kafka_dir / "server.properties"),
    ]  # fmt: skip
    if progress:
        print(f"starting Kafka broker on {cfg.bootstrap} ...", flush=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    pid_file.write_text(str(proc.pid))
    _wait_broker(cfg, proc.pid)
    return proc.pid, True


def _broker_agent(cfg: StackConfig) -> list[str]:
    """``-javaagent`` of the JMX exporter when monitoring is wanted (its MBeans scraped by Prometheus)."""
    mon = cfg.monitoring
    if not cfg.wants("monitoring") or mon is None or mon.broker_jmx_port is None:
        return []
    _check_ports(cfg, [("broker jmx", mon.broker_jmx_port)])
    try:
        jar = monitor.ensure_jmx_agent(cfg.cache_dir)
    except monitor.MonitoringError as exc:
        raise StackError(str(exc)) from None
    return [monitor.jmx_agent_argument(jar, cfg.host, mon.broker_jmx_port)]


def _wait_broker(cfg: StackConfig, pid: int) -> None:
    deadline = time.monotonic() + cfg.start_timeout
    log = cfg.kafka_dir / "broker.log"
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            raise StackError(f"the Kafka broker exited during start-up; last log lines:\n{_tail(log)}")
        if broker_answers(cfg.bootstrap, timeout=2.0, config=cfg.admin_config()):
            return
        time.sleep(0.5)
    raise StackError(f"the Kafka broker did not answer on {cfg.bootstrap} within {cfg.start_timeout:.0f}s; see {log}")


# --- registry ----------------------------------------------------------------


def registry_answers(url: str, timeout: float = 2.0, ca_file: Path | None = None) -> bool:
    """True when the registry answers ``GET /`` (anonymous); over HTTPS, verified with ``ca_file``."""
    import ssl
    import urllib.request

    context = ssl.create_default_context(cafile=str(ca_file)) if ca_file is not None else None
    try:
        with urllib.request.urlopen(url + "/", timeout=timeout, context=context) as resp:
            return bool(resp.status == 200)
    except Exception:
        return False


def start_registry(cfg: StackConfig, progress: bool = True) -> tuple[int, bool] | None:
    """Start the embedded registry unless it already runs; None when no command was given."""
    if cfg.registry_command is None:
        return None
    pid_file = cfg.registry_dir / "registry.pid"
    ca = cfg.ca_file
    pid = _read_pid(pid_file, REGISTRY_MARKER)
    if pid is not None and registry_answers(cfg.registry_url, ca_file=ca):
        return pid, False
    if pid is None:
        _check_ports(cfg, [("registry", cfg.registry_port)])
        cfg.registry_dir.mkdir(parents=True, exist_ok=True)
        log = cfg.registry_dir / "registry.log"
        env = {**os.environ, **cfg.registry_env}
        if cfg.secure:  # its users, its HTTPS certificate, and Kafka as the `registry` principal
            for key in [k for k in env if k.upper().startswith("PASSERELLE_KAFKA_") and k not in cfg.registry_env]:
                del env[key]  # a shell that sourced another component's .env must not change who the registry is
            env.update(security.registry_env(cfg.material))
        if progress:
            print(f"starting schema registry on {cfg.registry_url} ...", flush=True)
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                list(cfg.registry_command),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        pid = proc.pid
        pid_file.write_text(str(pid))
    log = cfg.registry_dir / "registry.log"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            raise StackError(f"the schema registry exited during start-up; last log lines:\n{_tail(log)}")
        if registry_answers(cfg.registry_url, ca_file=ca):
            return pid, True
        time.sleep(0.3)
    raise StackError(f"the schema registry did not answer on {cfg.registry_url} within 60s; see {log}")


# --- the stack as a whole -------------------------------------------------------


def check_mode(cfg: StackConfig) -> None:
    """A state folder keeps the mode it was made with: refuse to mix plaintext and secure."""
    made_secure = security.is_secure(cfg.state_dir)
    formatted = (cfg.kafka_dir / "data" / "meta.properties").exists()
    if cfg.secure and not made_secure and formatted:
        raise StackError(
            f"the stack in {cfg.state_dir} was made without --secure; "
            "run `passerelle down --purge` first (it deletes its data) to make a secure one"
        )
    if not cfg.secure and made_secure:
        raise StackError(
            f"the stack in {cfg.state_dir} was made with --secure; run `passerelle up --secure`, "
            "or `passerelle down --purge` first (it deletes its data) to make a plaintext one"
        )


def up(cfg: StackConfig, progress: bool = True) -> list[str]:
    """Start what is not running; a second ``up`` is a no-op. Returns one line per component."""
    check_mode(cfg)
    lines = []
    pid, started = start_broker(cfg, progress)
    lines.append(f"kafka     {'started' if started else 'already running'} (pid {pid}) on {cfg.bootstrap}")
    if cfg.secure:
        try:
            changes = security.provision(cfg.material, cfg.admin_config())
        except Exception as exc:
            raise StackError(f"could not create the components' users and ACLs: {exc}") from exc
        security.write_client_files(cfg.material, cfg.bootstrap, cfg.registry_url)
        lines.append(f"security  {'; '.join(changes) if changes else 'users and ACLs up to date'}")
    reg = start_registry(cfg, progress)
    if reg is not None:
        rpid, rstarted = reg
        lines.append(f"registry  {'started' if rstarted else 'already running'} (pid {rpid}) on {cfg.registry_url}")
    if cfg.wants("postgres"):
        lines.extend(start_postgres(cfg, progress))
    if cfg.wants("connect"):
        lines.append(start_connect(cfg, progress))
    if cfg.wants("monitoring"):
        lines.extend(start_monitoring(cfg, progress))
    return lines


def start_monitoring(cfg: StackConfig, progress: bool = True) -> list[str]:
    """Start Prometheus, Alertmanager and the lag exporter, scraping what runs (deploy/local/monitoring.py)."""
    if cfg.monitoring is None:
        raise StackError("monitoring is not configured (the CLI builds it from settings)")
    if cfg.secure:
        raise StackError(
            "the local monitoring runs on the plaintext stack only for now (its exporter reads "
            "every group's offsets, which needs an admin login on a secure stack)"
        )
    if progress:
        print(
            f"starting Prometheus on {cfg.monitoring.prometheus_url} and Alertmanager on "
            f"{cfg.monitoring.alertmanager_url} ...",
            flush=True,
        )
    mon, lines = cfg.monitoring, []
    if mon.broker_jmx_port is not None and _read_pid(cfg.kafka_dir / "broker.pid", monitor.JMX_AGENT_MARKER) is None:
        mon = dataclasses.replace(mon, broker_jmx_port=None)  # a broker started before: not scraped
        lines.append("kafka     JMX metrics off: the broker was started without monitoring "
                     "(`passerelle down` then `up --with monitoring` adds them)")  # fmt: skip
    try:
        lines[:0] = monitor.start(mon, check_port=lambda name, port: _check_ports(cfg, [(name, port)]))
    except monitor.MonitoringError as exc:
        raise StackError(str(exc)) from None
    return lines


def start_postgres(cfg: StackConfig, progress: bool = True) -> list[str]:
    """Start the CRM database's cluster and apply its migrations (idempotent)."""
    pg = cfg.postgres
    if postgres.pid(pg) is None:
        _check_ports(cfg, [("postgres", cfg.postgres_port)])
        if progress:
            print(f"starting PostgreSQL on {cfg.host}:{cfg.postgres_port} ...", flush=True)
    try:
        pid, started = postgres.start(pg)
        applied = postgres.migrate(pg, cfg.migrations) if cfg.migrations is not None else []
    except postgres.PostgresError as exc:
        raise StackError(str(exc)) from None
    lines = [f"postgres  {'started' if started else 'already running'} (pid {pid}) on {cfg.host}:{cfg.postgres_port}"]
    if applied:
        lines.append(f"crm db    migrations applied: {', '.join(applied)} (passwords in {pg.secrets_file})")
    return lines


def start_connect(cfg: StackConfig, progress: bool = True) -> str:
    """Start the Kafka Connect worker (jars fetched with Maven on first use)."""
    if cfg.secure:
        raise StackError(
            "the local Kafka Connect worker runs on the plaintext stack only for now; "
            "see docs/connect.md for pointing connectors at a secured cluster"
        )
    worker = cfg.connect
    if connect_worker.read_pid(worker) is None:
        _check_ports(cfg, [("connect", cfg.connect_port)])
        if progress:
            print(f"fetching Kafka Connect and its plugins (cached in {cfg.cache_dir}) ...", flush=True)
            print(f"starting Kafka Connect on {worker.url} ...", flush=True)
    try:
        pid, started = connect_worker.start(worker, java_command(), CONNECT_LOG4J2)
    except connect_worker.ConnectError as exc:
        raise StackError(str(exc)) from None
    return f"connect   {'started' if started else 'already running'} (pid {pid}) on {worker.url}"


def down(cfg: StackConfig, purge: bool = False) -> list[str]:
    """Stop the registry then the broker (clients first); ``purge`` also deletes the state folder."""
    lines = []
    mon = cfg.monitoring or monitor.Monitoring(cfg.state_dir / "monitoring")
    if mon.root.exists():  # first: no alert fires about the components stopping next
        lines.extend(monitor.stop(mon))
    worker = cfg.connect
    cpid = connect_worker.stop(worker)
    if cpid is not None:
        lines.append(f"connect   stopped (pid {cpid})")
    elif worker.root.exists():
        lines.append("connect   not running")
    worker.pid_file.unlink(missing_ok=True)
    for name, pid_file, marker in (
        ("registry", cfg.registry_dir / "registry.pid", REGISTRY_MARKER),
        ("kafka", cfg.kafka_dir / "broker.pid", BROKER_MARKER),
    ):
        pid = _read_pid(pid_file, marker)
        if pid is None:
            lines.append(f"{name:<9} not running")
        else:
            _stop_pid(pid)
            lines.append(f"{name:<9} stopped (pid {pid})")
        pid_file.unlink(missing_ok=True)
    pg = cfg.postgres
    if pg.data.exists():
        ppid = postgres.stop(pg)
        lines.append(f"postgres  stopped (pid {ppid})" if ppid is not None else "postgres  not running")
    if purge and cfg.state_dir.exists():
        shutil.rmtree(cfg.state_dir)
        lines.append(f"purged    {cfg.state_dir}")
    return lines


def status(cfg: StackConfig) -> list[ComponentStatus]:
    """Report each component: process alive and actually answering (as admin, on a secure stack)."""
    out = []
    bpid = _read_pid(cfg.kafka_dir / "broker.pid", BROKER_MARKER)
    out.append(
        ComponentStatus(
            "kafka",
            bpid,
            bpid is not None,
            bpid is not None and broker_answers(cfg.bootstrap, config=cfg.admin_config()),
            cfg.bootstrap,
            cfg.kafka_dir / "broker.log",
        )
    )
    if cfg.registry_command is not None:
        rpid = _read_pid(cfg.registry_dir / "registry.pid", REGISTRY_MARKER)
        out.append(
            ComponentStatus(
                "registry",
                rpid,
                rpid is not None,
                rpid is not None and registry_answers(cfg.registry_url, ca_file=cfg.ca_file),
                cfg.registry_url,
                cfg.registry_dir / "registry.log",
            )
        )
    pg = cfg.postgres
    if cfg.wants("postgres") or pg.data.exists():
        ppid = postgres.pid(pg)
        out.append(
            ComponentStatus(
                "postgres", ppid, ppid is not None, ppid is not None and postgres.answers(pg),
                f"{cfg.host}:{cfg.postgres_port}", pg.log,
            )
        )  # fmt: skip
    worker = cfg.connect
    if cfg.wants("connect") or worker.root.exists():
        cpid = connect_worker.read_pid(worker)
        out.append(
            ComponentStatus(
                "connect", cpid, cpid is not None, cpid is not None and connect_worker.answers(worker),
                worker.url, worker.log,
            )
        )  # fmt: skip
    mon = cfg.monitoring or monitor.Monitoring(cfg.state_dir / "monitoring")
    if cfg.wants("monitoring") or mon.root.exists():
        for proc in monitor.status(mon):
            out.append(ComponentStatus(proc.name, proc.pid, proc.pid is not None, proc.answering, proc.endpoint,
                                       proc.log))  # fmt: skip
    return out
