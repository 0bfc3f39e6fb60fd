"""Monitoring of the local stack: Prometheus, Alertmanager and the lag exporter as plain processes.

``passerelle up --with monitoring`` starts Debian's ``prometheus`` and
``prometheus-alertmanager`` on 127.0.0.1 with their data under
``<state>/monitoring``, and the lag exporter (``passerelle lag``) through the
command line the caller hands in (``deploy/`` imports nothing else of ours).

What Prometheus scrapes is generated from what runs:

- ``passerelle`` job: file-based discovery over ``<state>/monitoring/targets/*.json``.
  The lag exporter (and every ``up``/``status``) writes one file per passerelle
  process it finds serving ``/metrics`` (see ``connectors/monitoring/targets.py``).
  A file is never removed when its process stops: a processor that vanished
  must show as ``up == 0`` and fire ``ProcessorDown``. Delete the file to retire it.
- ``passerelle-lag``: the exporter, which also probes what has no ``/metrics``
  of its own (the registry, the Connect worker's REST API).
- ``prometheus`` and ``alertmanager`` themselves.
- ``kafka``: the broker's JMX MBeans through the Prometheus JMX exporter java
  agent (Maven Central, cached), attached when the broker starts with
  monitoring wanted (``broker_jmx_port``); a broker started before is left
  alone and not scraped until its next start.

The rules come from ``deploy/monitoring/rules.yml``; a test configuration may
shorten every alert's ``for`` (``alert_for``) so an alert fires in seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

RULES = Path(__file__).resolve().parent.parent / "monitoring" / "rules.yml"
KAFKA_JMX_CONFIG = RULES.parent / "kafka-jmx.yml"
JMX_AGENT_VERSION = "1.0.1"
JMX_AGENT = f"io.prometheus.jmx:jmx_prometheus_javaagent:{JMX_AGENT_VERSION}"
JMX_AGENT_MARKER = "jmx_prometheus_javaagent"
PROMETHEUS_MARKER = "prometheus"
ALERTMANAGER_MARKER = "alertmanager"
EXPORTER_MARKER = "lag --serve"
TARGETS_JOB = "passerelle"
EXPORTER_JOB = "passerelle-lag"


class MonitoringError(Exception):
    """A monitoring start-up failure with a cause the user can fix (printed as one line)."""

    user_error = True
    exit_code = 1


@dataclass(frozen=True)
class Monitoring:
    """Where the monitoring processes live and listen; the CLI fills it from settings."""

    root: Path
    host: str = "127.0.0.1"
    prometheus_port: int = 9090
    alertmanager_port: int = 9094
    exporter_port: int = 9308
    scrape_interval_s: float = 15.0
    alert_for: str = ""
    """Replaces every alert's ``for`` when set (``"2s"`` in tests); empty: the rule files' own."""
    webhook_url: str = ""
    """Where Alertmanager posts notifications; empty: alerts are only listed (API, ``passerelle status``)."""
    exporter_command: Sequence[str] | None = None
    exporter_env: dict[str, str] = field(default_factory=dict)
    broker_jmx_port: int | None = None
    """Where the broker's JMX exporter agent serves ``/metrics`` (None: the broker is not scraped)."""
    rules: Path = RULES

    @property
    def prometheus_url(self) -> str:
        return f"http://{self.host}:{self.prometheus_port}"

    @property
    def alertmanager_url(self) -> str:
        return f"http://{self.host}:{self.alertmanager_port}"

    @property
    def exporter_url(self) -> str:
        return f"http://{self.host}:{self.exporter_port}"

    @property
    def targets_dir(self) -> Path:
        return self.root / "targets"

    def pid_file(self, name: str) -> Path:
        return self.root / f"{name}.pid"

    def log(self, name: str) -> Path:
        return self.root / f"{name}.log"


# --- configuration files ---------------------------------------------------------------------------


def _duration(seconds: float) -> str:
    """Prometheus durations are integers of a unit: 0.5 s is ``500ms``."""
    return f"{round(seconds * 1000)}ms" if seconds < 1 or seconds != int(seconds) else f"{int(seconds)}s"


def prometheus_config(mon: Monitoring) -> dict[str, Any]:
    """The scrape, rule and alerting configuration (see the module's docstring for the jobs)."""
    interval = _duration(mon.scrape_interval_s)
    jobs: list[dict[str, Any]] = [
        {
            "job_name": TARGETS_JOB,
            "file_sd_configs": [{"files": [str(mon.targets_dir / "*.json")], "refresh_interval": "5s"}],
        },
        {"job_name": "prometheus", "static_configs": [{"targets": [f"{mon.host}:{mon.prometheus_port}"]}]},
        {"job_name": "alertmanager", "static_configs": [{"targets": [f"{mon.host}:{mon.alertmanager_port}"]}]},
    ]
    if mon.exporter_command is not None:
        jobs.insert(1, {"job_name": EXPORTER_JOB, "static_configs": [{"targets": [f"{mon.host}:{mon.exporter_port}"]}]})
    if mon.broker_jmx_port is not None:
        jobs.append({"job_name": "kafka", "static_configs": [{"targets": [f"{mon.host}:{mon.broker_jmx_port}"]}]})
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval, "scrape_timeout": interval},
        "rule_files": [str(mon.root / "rules" / "*.yml")],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"{mon.host}:{mon.alertmanager_port}"]}]}]},
        "scrape_configs": jobs,
    }


def alertmanager_config(mon: Monitoring) -> dict[str, Any]:
    """One route to one receiver: a webhook when configured, else alerts are only kept and listed."""
    receiver: dict[str, Any] = {"name": "operators"}
    if mon.webhook_url:
        receiver["webhook_configs"] = [{"url": mon.webhook_url, "send_resolved": True}]
    return {
        "route": {"receiver": "operators", "group_by": ["alertname"], "group_wait": "10s",
                  "group_interval": "1m", "repeat_interval": "4h"},
        "receivers": [receiver],
    }  # fmt: skip


def rules_for(mon: Monitoring) -> dict[str, Any]:
    """The rule file as loaded, each alert's ``for`` replaced when ``alert_for`` is set."""
    try:
        doc = yaml.safe_load(mon.rules.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise MonitoringError(f"cannot read the rules {mon.rules}: {exc}") from None
    if mon.alert_for:
        for group in doc.get("groups", []):
            for rule in group.get("rules", []):
                if "alert" in rule:
                    rule["for"] = mon.alert_for
    return dict(doc)


def write_config(mon: Monitoring) -> None:
    """Write prometheus.yml, alertmanager.yml and the rules under ``root``; check them with promtool."""
    (mon.root / "rules").mkdir(parents=True, exist_ok=True)
    mon.targets_dir.mkdir(parents=True, exist_ok=True)
    (mon.root / "rules" / "passerelle.yml").write_text(yaml.safe_dump(rules_for(mon), sort_keys=False))
    (mon.root / "prometheus.yml").write_text(yaml.safe_dump(prometheus_config(mon), sort_keys=False))
    (mon.root / "alertmanager.yml").write_text(yaml.safe_dump(alertmanager_config(mon), sort_keys=False))
    promtool = shutil.which("promtool")
    if promtool is not None:
        proc = subprocess.run([promtool, "check", "config", str(mon.root / "prometheus.yml")],
                              capture_output=True, text=True, check=False)  # fmt: skip
        if proc.returncode != 0:
            raise MonitoringError(f"promtool rejects the generated configuration: {(proc.stdout + proc.stderr)[-400:]}")


# --- the broker's JMX exporter agent ----------------------------------------------------------------


def ensure_jmx_agent(cache_dir: Path) -> Path:
    """The JMX exporter agent jar, fetched from Maven Central once (cached beside the Kafka jars)."""
    folder = cache_dir / f"jmx-exporter-{JMX_AGENT_VERSION}"
    jar = folder / f"jmx_prometheus_javaagent-{JMX_AGENT_VERSION}.jar"
    if jar.exists():
        return jar
    mvn = shutil.which("mvn")
    if mvn is None:
        raise MonitoringError("Maven (mvn) not found: install it to fetch the broker's JMX exporter agent")
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    proc = subprocess.run([mvn, "-B", "-q", "dependency:copy", f"-Dartifact={JMX_AGENT}", f"-DoutputDirectory={tmp}"],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if proc.returncode != 0 or not (tmp / jar.name).exists():
        last = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or ["(no output)"]
        raise MonitoringError(f"Maven could not fetch {JMX_AGENT} (exit {proc.returncode}): {last[0]}")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return jar


def jmx_agent_argument(jar: Path, host: str, port: int) -> str:
    """The broker's ``-javaagent`` option serving its MBeans on ``host:port`` with ``kafka-jmx.yml``."""
    return f"-javaagent:{jar}={host}:{port}:{KAFKA_JMX_CONFIG}"


# --- processes ---------------------------------------------------------------------------------------


def _binary(name: str) -> str:
    found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if found is None:
        package = "prometheus" if name == "prometheus" else "prometheus-alertmanager"
        raise MonitoringError(f"{name} not found: install Debian's {package} (apt-get install {package})")
    return found


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def read_pid(mon: Monitoring, name: str, marker: str) -> int | None:
    """The pid of ``name`` if it lives and (pid reuse guard) its command line holds ``marker``."""
    try:
        pid = int(mon.pid_file(name).read_text().strip())
    except (OSError, ValueError):
        return None
    if not _pid_alive(pid):
        return None
    with contextlib.suppress(OSError):
        if marker not in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
            return None
    return pid


def http_get(url: str, timeout: float = 2.0) -> Any:
    """GET ``url`` and decode JSON (or return the text); raises on errors."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        body = resp.read().decode()
    try:
        return json.loads(body)
    except ValueError:
        return body


def answers(url: str) -> bool:
    try:
        http_get(url)
    except (OSError, urllib.error.URLError, ValueError):
        return False
    return True


def _spawn(mon: Monitoring, name: str, cmd: Sequence[str], env: dict[str, str] | None = None) -> int:
    with open(mon.log(name), "ab") as out:
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)  # fmt: skip
    mon.pid_file(name).write_text(str(proc.pid))
    return proc.pid


def _wait(mon: Monitoring, name: str, pid: int, url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            tail = "\n".join(mon.log(name).read_text(errors="replace").splitlines()[-10:])
            raise MonitoringError(f"{name} exited during start-up; last log lines:\n{tail}")
        if answers(url):
            return
        time.sleep(0.2)
    raise MonitoringError(f"{name} did not answer on {url} within {timeout:.0f}s; see {mon.log(name)}")


def _components(mon: Monitoring) -> list[tuple[str, str, str, list[str]]]:
    """(name, pid marker, readiness URL, command) of each process, in start order."""
    prom = [
        _binary("prometheus"),
        f"--config.file={mon.root / 'prometheus.yml'}",
        f"--storage.tsdb.path={mon.root / 'prometheus-data'}",
        f"--web.listen-address={mon.host}:{mon.prometheus_port}",
        "--web.enable-lifecycle",
        "--storage.tsdb.retention.time=15d",
    ]
    am = [
        _binary("prometheus-alertmanager"),
        f"--config.file={mon.root / 'alertmanager.yml'}",
        f"--storage.path={mon.root / 'alertmanager-data'}",
        f"--web.listen-address={mon.host}:{mon.alertmanager_port}",
        "--cluster.listen-address=",
    ]
    out = [
        ("alertmanager", ALERTMANAGER_MARKER, f"{mon.alertmanager_url}/-/ready", am),
        ("prometheus", PROMETHEUS_MARKER, f"{mon.prometheus_url}/-/ready", prom),
    ]
    if mon.exporter_command is not None:
        out.append(("lag", EXPORTER_MARKER, f"{mon.exporter_url}/metrics", list(mon.exporter_command)))
    return out


def start(mon: Monitoring, check_port: Callable[[str, int], None] | None = None) -> list[str]:
    """Write the configuration and start what is not running; a running Prometheus reloads it.

    ``check_port(name, port)`` raises when a port is taken (the stack's own check, naming the setting).
    """
    mon.root.mkdir(parents=True, exist_ok=True)
    write_config(mon)
    lines = []
    for name, marker, url, cmd in _components(mon):
        endpoint = url.removesuffix("/-/ready").removesuffix("/metrics")
        pid = read_pid(mon, name, marker)
        if pid is not None:
            if name == "prometheus":
                with contextlib.suppress(OSError, urllib.error.URLError):
                    urllib.request.urlopen(urllib.request.Request(f"{mon.prometheus_url}/-/reload", method="POST"),
                                           timeout=5).close()  # fmt: skip
            lines.append(f"{name:<9} already running (pid {pid}) on {endpoint}")
            continue
        if check_port is not None:
            check_port(name, int(endpoint.rsplit(":", 1)[1]))
        env = {**os.environ, **mon.exporter_env} if name == "lag" else None
        pid = _spawn(mon, name, cmd, env)
        _wait(mon, name, pid, url)
        lines.append(f"{name:<9} started (pid {pid}) on {endpoint}")
    return lines


def _stop_pid(pid: int, timeout: float = 15.0) -> None:
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


def stop(mon: Monitoring) -> list[str]:
    """Stop the exporter, Prometheus and Alertmanager (reverse start order); only what the folder names."""
    lines = []
    for name, marker, _, _ in reversed(_components_names(mon)):
        pid = read_pid(mon, name, marker)
        if pid is None:
            if mon.pid_file(name).exists():
                lines.append(f"{name:<9} not running")
        else:
            _stop_pid(pid)
            lines.append(f"{name:<9} stopped (pid {pid})")
        mon.pid_file(name).unlink(missing_ok=True)
    return lines


def _components_names(mon: Monitoring) -> list[tuple[str, str, str, None]]:
    """Names and markers without resolving the binaries (``down`` works where they are not installed)."""
    return [
        ("alertmanager", ALERTMANAGER_MARKER, f"{mon.alertmanager_url}/-/ready", None),
        ("prometheus", PROMETHEUS_MARKER, f"{mon.prometheus_url}/-/ready", None),
        ("lag", EXPORTER_MARKER, f"{mon.exporter_url}/metrics", None),
    ]


@dataclass(frozen=True)
class Process:
    """One monitoring process as ``status`` reports it."""

    name: str
    pid: int | None
    answering: bool
    endpoint: str
    log: Path


def status(mon: Monitoring) -> list[Process]:
    """Each monitoring process: alive, and answering its readiness URL."""
    out = []
    for name, marker, url, _ in _components_names(mon):
        if name == "lag" and mon.exporter_command is None and not mon.pid_file(name).exists():
            continue
        pid = read_pid(mon, name, marker)
        endpoint = url.removesuffix("/-/ready").removesuffix("/metrics")
        out.append(Process(name, pid, pid is not None and answers(url), endpoint, mon.log(name)))
    return out


def firing_alerts(mon: Monitoring) -> list[dict[str, Any]]:
    """The alerts Prometheus reports as firing (its own view; Alertmanager holds the same once sent)."""
    data = http_get(f"{mon.prometheus_url}/api/v1/alerts", timeout=3.0)
    return [a for a in data.get("data", {}).get("alerts", []) if a.get("state") == "firing"]


def describe_alert(alert: dict[str, Any]) -> str:
    """One line: name, severity, summary."""
    labels, notes = alert.get("labels", {}), alert.get("annotations", {})
    return f"{labels.get('alertname', '?')} [{labels.get('severity', '-')}] {notes.get('summary', '')}".rstrip()
