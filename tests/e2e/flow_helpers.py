"""Helpers of the end-to-end flows: CLI processes with their logs, topic tails, the partner stand-in's records."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from passerelle.deploy.local.stack import free_port
from passerelle.schemas import clients
from passerelle.schemas.clients import Connection
from passerelle.schemas.serde import AvroDecoder, SchemaCache, registry_fetcher
from passerelle.streams.consent import marketing_allowed
from tests.conftest import component_connection

ROOT = Path(__file__).resolve().parents[2]


def private_stack_env(state_dir: Path) -> dict[str, str]:
    """The caller's environment without its ``PASSERELLE_*`` settings, pointed at a private stack on free ports."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PASSERELLE_")}
    env.update(
        PASSERELLE_STATE_DIR=str(state_dir),
        PASSERELLE_KAFKA_PORT=str(free_port()),
        PASSERELLE_CONTROLLER_PORT=str(free_port()),
        PASSERELLE_REGISTRY_PORT=str(free_port()),
    )
    return env


def cli(env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """``python -m passerelle ARGS`` to completion."""
    return subprocess.run([sys.executable, "-m", "passerelle", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, check=False)  # fmt: skip


@dataclass(frozen=True)
class FlowStack:
    """A private stack started through the CLI; on a secured one each component has its own credentials."""

    env: dict[str, str]
    secure: bool = False

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.env['PASSERELLE_KAFKA_PORT']}"

    def env_for(self, component: str) -> dict[str, str]:
        """The environment a component's process runs with: on a secured stack, its credentials file's lines."""
        if not self.secure:
            return dict(self.env)
        lines = (Path(self.env["PASSERELLE_STATE_DIR"]) / "secure" / f"{component}.env").read_text().splitlines()
        return {**self.env, **dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))}

    def conn(self, component: str = "admin") -> Connection:
        """The component's connection, as its settings would build it."""
        env = self.env_for(component)
        registry_url = env.get("PASSERELLE_SCHEMA_REGISTRY_URL", f"http://127.0.0.1:{env['PASSERELLE_REGISTRY_PORT']}")
        if not self.secure:
            return Connection.plain(self.bootstrap, registry_url)
        return component_connection(env, self.bootstrap)


def start_stack(env: dict[str, str], secure: bool = False) -> FlowStack:
    """``up`` (``--secure``), ``topics create``, ``schemas register`` through the CLI, as the deployment would."""
    stack = FlowStack(env, secure)
    for component, args in ((None, ("up", "--secure") if secure else ("up",)), ("deploy", ("topics", "create")),
                            ("deploy", ("schemas", "register"))):  # fmt: skip
        done = cli(stack.env_for(component) if component else env, *args)  # credentials exist once `up` ran
        assert done.returncode == 0, f"passerelle {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return stack


def may_be_emailed(profile: dict[str, Any] | None, site_consent: bool | None) -> bool:
    """The sequencer's rule for who may receive a remarketing email: the site's and the CRM's consent, an address."""
    crm = profile["marketing_consent"] if profile else None
    return bool(profile and marketing_allowed(site_consent, crm) and profile["email"])


def latest_by_key(conn: Connection, topic: str, timeout: float = 10) -> dict[bytes, bytes | None]:
    """The last value of each key of a whole topic (``read_committed``), raw: a changelog as a restore sees it."""
    consumer = clients.consumer(conn, f"e2e-latest-{topic}-{time.monotonic_ns()}",
                                {"isolation.level": "read_committed", "enable.partition.eof": True})  # fmt: skip
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(partitions)])
        latest: dict[bytes, bytes | None] = {}
        ended: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(ended) < len(partitions) and time.monotonic() < deadline:
            for msg in consumer.consume(1000, timeout=0.5):
                if msg.error() is not None:
                    ended.add(msg.partition())
                elif msg.key() is not None:
                    latest[msg.key()] = msg.value()
        assert len(ended) == len(partitions), f"{topic} not read to its end within {timeout:.0f}s"
        return latest
    finally:
        consumer.close()


class Proc:
    """A ``python -m passerelle ...`` process running in the background, logging to a file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], logs: Path) -> None:
        self.name = name
        self.log = logs / f"{name}.log"
        with open(self.log, "ab") as out:
            self.popen = subprocess.Popen([sys.executable, "-m", "passerelle", *args], cwd=ROOT, env=env, stdout=out,
                                          stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, chars: int = 2500) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError as exc:
            return f"(no log: {exc})"


def stop_all(procs: Iterable[Proc], timeout: float = 30) -> dict[str, int | None]:
    """SIGTERM every process (in reverse start order), then wait for each; SIGKILL the ones that hang."""
    started = list(procs)
    for proc in reversed(started):
        if proc.alive():
            proc.popen.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    codes: dict[str, int | None] = {}
    for proc in started:
        try:
            codes[proc.name] = proc.popen.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.popen.kill()
            proc.popen.wait(10)
            codes[proc.name] = None  # did not stop in time
    return codes


def tails(procs: Iterable[Proc], chars: int = 2500) -> str:
    return "\n".join(f"----- {p.name} (exit {p.popen.poll()}), {p.log}\n{p.tail(chars)}" for p in procs)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, procs: Iterable[Proc] = (),
               every: float = 0.5) -> float:  # fmt: skip
    """Wait for ``predicate``; fail at once if one of ``procs`` exited. Returns the seconds waited."""
    watched = list(procs)
    start = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - start
        dead = [p for p in watched if not p.alive()]
        if dead:
            raise AssertionError(f"{what}: {', '.join(p.name for p in dead)} exited")
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def metric_total(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` in a Prometheus text exposition."""
    total = 0.0
    for match in re.finditer(rf"^{re.escape(name)}(?:\{{([^}}]*)\}})? (\S+)$", text, re.MULTILINE):
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(2))
    return total


class TopicTail:
    """Reads a whole topic from its beginning (``read_committed``, no consumer group) and keeps reading."""

    def __init__(self, conn: Connection, topic: str) -> None:
        self.topic = topic
        self.consumer = clients.consumer(
            conn, f"e2e-tail-{topic}-{time.monotonic_ns()}", {"isolation.level": "read_committed"}
        )
        partitions = self.consumer.list_topics(topic, timeout=10).topics[topic].partitions
        assert partitions, f"topic {topic} has no partitions"
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(partitions)])
        self.decoder = AvroDecoder(SchemaCache(registry_fetcher(clients.registry_client(conn))))
        self.records: list[tuple[Any, Any]] = []  # (decoded key, decoded value)

    def poll(self, seconds: float = 0.3) -> list[Any]:
        """Read what arrived since the last call; returns every value read so far."""
        deadline = time.monotonic() + seconds
        while True:
            msgs = self.consumer.consume(1000, timeout=max(0.0, min(0.2, deadline - time.monotonic())))
            for msg in msgs:
                if msg.error():
                    continue
                key = None if msg.key() is None else self.decoder.decode(msg.key())
                value = None if msg.value() is None else self.decoder.decode(msg.value())
                self.records.append((key, value))
            if not msgs and time.monotonic() >= deadline:
                return self.values()

    def values(self) -> list[Any]:
        return [value for _, value in self.records if value is not None]

    def close(self) -> None:
        self.consumer.close()


class Partner:
    """A client for the partner stand-in's control and inspection endpoints."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=10)

    def control(self, **changes: Any) -> dict[str, Any]:
        response = self.http.post("/_control", json=changes)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def delivered(self) -> dict[str, int]:
        keys: dict[str, int] = self.http.get("/_delivered").json()["keys"]
        return keys

    def requests(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.http.get("/_requests").json()["requests"]
        return found

    def close(self) -> None:
        self.http.close()
