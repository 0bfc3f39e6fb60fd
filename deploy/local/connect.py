"""The local Kafka Connect worker: Apache Kafka Connect in distributed mode, as a plain ``java`` process.

Jars come from Maven Central (``connect/pom.xml`` for the worker, one pom per
plugin under ``connect/plugins/``), copied once into the cache folder keyed by
the poms' hash. Each plugin gets its own folder on ``plugin.path`` without
Kafka, SLF4J or Jackson jars: the worker provides those, and a second Jackson
inside a plugin folder breaks Debezium's converters.

The worker keeps its configs, offsets and statuses in three compacted topics
(the catalog's ``connect.*``), serves its REST API on 127.0.0.1, and resolves
``${env:NAME}`` in connector configs from its environment (Kafka's
``EnvVarConfigProvider``): connector files name secrets, never hold them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent / "connect"
WORKER_POM = HERE / "pom.xml"
PLUGINS = HERE / "plugins"
MARKER = "ConnectDistributed"
PLUGIN_EXCLUDES = [
    "-DincludeScope=runtime",
    "-DexcludeGroupIds=org.apache.kafka,org.slf4j",
    "-DexcludeArtifactIds=jackson-core,jackson-databind,jackson-annotations",
]


class ConnectError(Exception):
    """A Connect start-up failure with a cause the user can fix."""

    user_error = True
    exit_code = 1


@dataclass(frozen=True)
class Worker:
    """One local distributed worker."""

    root: Path
    cache_dir: Path
    bootstrap: str
    port: int = 8083
    host: str = "127.0.0.1"
    group_id: str = "passerelle-connect"
    config_topic: str = "connect.configs"
    offset_topic: str = "connect.offsets"
    status_topic: str = "connect.status"
    heap: str = "512m"
    env: Mapping[str, str] = field(default_factory=dict)
    """Variables the worker's config provider resolves (the CRM database's address and passwords)."""

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def log(self) -> Path:
        return self.root / "connect.log"

    @property
    def pid_file(self) -> Path:
        return self.root / "connect.pid"


def _digest() -> str:
    poms = [WORKER_POM, *sorted(PLUGINS.glob("*/pom.xml"))]
    h = hashlib.sha256()
    for pom in poms:
        h.update(pom.relative_to(HERE).as_posix().encode() + b"\0" + pom.read_bytes())
    return h.hexdigest()[:12]


def jars_dir(cache_dir: Path) -> Path:
    """``<cache>/connect-<hash>/``: ``worker/`` and ``plugins/<name>/``; a pom change fetches anew."""
    return cache_dir / f"connect-{_digest()}"


def _copy(pom: Path, target: Path, extra: list[str], log: Path | None) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ConnectError("Maven (mvn) not found: install it (e.g. apt-get install maven) to fetch Kafka Connect")
    cmd = [mvn, "-B", "-q", "-f", str(pom), "dependency:copy-dependencies", f"-DoutputDirectory={target}", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if log is not None:
        with open(log, "a") as out:
            out.write(f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")
    if proc.returncode != 0:
        errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "ERROR" in line][:2]
        raise ConnectError(f"Maven could not fetch {pom.parent.name} (exit {proc.returncode}): {' '.join(errors)}")


def ensure_jars(cache_dir: Path, log: Path | None = None) -> Path:
    """Fetch the worker and every plugin with Maven once; later calls reuse the cache."""
    target = jars_dir(cache_dir)
    if (target / ".complete").exists():
        return target
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _copy(WORKER_POM, tmp / "worker", [], log)
    for pom in sorted(PLUGINS.glob("*/pom.xml")):
        _copy(pom, tmp / "plugins" / pom.parent.name, PLUGIN_EXCLUDES, log)
    (tmp / ".complete").write_text("ok\n")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def worker_properties(worker: Worker, plugin_path: Path) -> str:
    """A single distributed worker: JSON converters, internal topics at replication 1, env config provider."""
    return "\n".join(
        [
            f"bootstrap.servers={worker.bootstrap}",
            f"group.id={worker.group_id}",
            f"listeners=http://{worker.host}:{worker.port}",
            f"rest.advertised.host.name={worker.host}",
            f"rest.advertised.port={worker.port}",
            "key.converter=org.apache.kafka.connect.json.JsonConverter",
            "value.converter=org.apache.kafka.connect.json.JsonConverter",
            f"config.storage.topic={worker.config_topic}",
            f"offset.storage.topic={worker.offset_topic}",
            f"status.storage.topic={worker.status_topic}",
            "config.storage.replication.factor=1",
            "offset.storage.replication.factor=1",
            "offset.storage.partitions=5",
            "status.storage.replication.factor=1",
            "status.storage.partitions=5",
            # Source offsets (the WAL position) are flushed every second: a killed worker re-reads little.
            "offset.flush.interval.ms=1000",
            f"plugin.path={plugin_path}",
            # Plugins declare themselves in META-INF/services: no classpath scan, the REST API answers in seconds.
            "plugin.discovery=service_load",
            "config.providers=env",
            "config.providers.env.class=org.apache.kafka.common.config.provider.EnvVarConfigProvider",
            "config.providers.env.param.allowlist.pattern=^PASSERELLE_.*",
            # Exactly-once for source connectors (KIP-618): the WAL position commits with the records.
            "exactly.once.source.support=enabled",
            "scheduled.rebalance.max.delay.ms=0",
            # A sink task's consumer of a worker killed without leaving its group holds the group's next join
            # for the session timeout (45 s by default): 10 s lets a restarted worker's sink resume sooner.
            "consumer.session.timeout.ms=10000",
            "",
        ]
    )


def get(url: str, timeout: float = 5.0) -> object:
    """GET a Connect REST resource as JSON."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read() or b"null")


def answers(worker: Worker, timeout: float = 2.0) -> bool:
    """True when the REST API answers and the worker has joined its group (``GET /connectors`` works)."""
    try:
        get(worker.url + "/connectors", timeout)
    except (OSError, urllib.error.URLError, ValueError):
        return False
    return True


def read_pid(worker: Worker) -> int | None:
    """The worker's pid if that process lives and is a Connect worker (pid reuse guard)."""
    try:
        value = int(worker.pid_file.read_text().strip())
        cmdline = Path(f"/proc/{value}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    with contextlib.suppress(OSError):
        if Path(f"/proc/{value}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return None
    return value if MARKER.encode() in cmdline else None


def start(worker: Worker, java: str, log4j2: Path, timeout: float = 120.0) -> tuple[int, bool]:
    """Start the worker unless it runs; wait until its REST API answers. Returns (pid, started_now)."""
    running = read_pid(worker)
    proc: subprocess.Popen[bytes] | None = None
    if running is None:
        worker.root.mkdir(parents=True, exist_ok=True)
        jars = ensure_jars(worker.cache_dir, worker.root / "maven.log")
        props = worker.root / "worker.properties"
        props.write_text(worker_properties(worker, jars / "plugins"))
        cmd = [
            java, f"-Xmx{worker.heap}", "-Xms128m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={log4j2}", f"-Dkafka.logs.dir={worker.root}",
            "-cp", f"{jars / 'worker'}/*", "org.apache.kafka.connect.cli.ConnectDistributed", str(props),
        ]  # fmt: skip
        env = {**os.environ, **worker.env}
        with open(worker.log, "ab") as out:
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
            )
        worker.pid_file.write_text(str(proc.pid))
        running = proc.pid
        started = True
    else:
        started = False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # Our own child is watched through its handle: right after the fork its command line is still Python's.
        if (proc.poll() is not None) if proc is not None else read_pid(worker) is None:
            tail = "\n".join(worker.log.read_text(errors="replace").splitlines()[-15:])
            raise ConnectError(f"the Kafka Connect worker exited during start-up; last log lines:\n{tail}")
        if answers(worker):
            return running, started
        time.sleep(0.5)
    raise ConnectError(f"Kafka Connect did not answer on {worker.url} within {timeout:.0f}s; see {worker.log}")


def stop(worker: Worker, timeout: float = 30.0, sig: int = signal.SIGTERM) -> int | None:
    """Stop the worker (SIGTERM: tasks stop and commit; SIGKILL after ``timeout``); the pid stopped, or None.

    ``sig=SIGKILL`` kills it outright, as a crash would (the failure tests do).
    """
    pid = read_pid(worker)
    if pid is None:
        return None
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and read_pid(worker) is not None:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    if read_pid(worker) is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    worker.pid_file.unlink(missing_ok=True)
    return pid
