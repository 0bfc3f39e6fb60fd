"""A small client of the Kafka Connect REST API: what ``passerelle connect`` and the tests need.

Errors come back as :class:`ConnectRestError` carrying Connect's own message,
so the CLI can print one line a user understands.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import requests

from passerelle.errors import PasserelleError


class ConnectRestError(PasserelleError):
    """The Connect worker refused a request, or could not be reached."""


@dataclass(frozen=True)
class TaskState:
    """One task of a connector, as ``GET /connectors/{name}/status`` reports it."""

    id: int
    state: str
    worker: str
    trace: str | None = None


@dataclass(frozen=True)
class ConnectorState:
    """A connector and its tasks (state RUNNING, PAUSED, STOPPED, FAILED, UNASSIGNED, RESTARTING)."""

    name: str
    type: str
    state: str
    worker: str
    trace: str | None = None
    tasks: tuple[TaskState, ...] = field(default_factory=tuple)

    @property
    def failed(self) -> bool:
        return self.state == "FAILED" or any(t.state == "FAILED" for t in self.tasks)

    @property
    def running(self) -> bool:
        """Running with every task running (a connector with no task yet is not running)."""
        return self.state == "RUNNING" and bool(self.tasks) and all(t.state == "RUNNING" for t in self.tasks)


def _state(name: str, body: dict[str, Any]) -> ConnectorState:
    conn = body.get("connector", {})
    tasks = tuple(
        TaskState(int(t["id"]), t.get("state", "?"), t.get("worker_id", "?"), t.get("trace"))
        for t in body.get("tasks", [])
    )
    return ConnectorState(
        name, body.get("type", "?"), conn.get("state", "?"), conn.get("worker_id", "?"), conn.get("trace"), tasks
    )


class ConnectClient:
    """Talks to one Connect cluster through any of its workers."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()

    def _call(self, method: str, path: str, body: Any = None, ok: tuple[int, ...] = (200, 201, 202, 204)) -> Any:
        try:
            resp = self.session.request(method, self.url + path, json=body, timeout=self.timeout)
        except requests.RequestException as exc:
            raise ConnectRestError(f"Kafka Connect does not answer at {self.url}: {type(exc).__name__}") from None
        if resp.status_code in ok:
            return resp.json() if resp.content else None
        try:
            message = resp.json().get("message", resp.text)
        except (ValueError, AttributeError):
            message = resp.text
        raise ConnectRestError(f"{method} {path}: {resp.status_code} {message}".strip())

    # --- connectors ---------------------------------------------------------------------

    def names(self) -> list[str]:
        return sorted(self._call("GET", "/connectors"))

    def config(self, name: str) -> dict[str, str] | None:
        """The connector's stored config, or None when it does not exist."""
        try:
            return dict(self._call("GET", f"/connectors/{quote(name)}/config"))
        except ConnectRestError as exc:
            if " 404 " in str(exc):
                return None
            raise

    def put_config(self, name: str, config: dict[str, str]) -> bool:
        """Create or update; True when it was created."""
        created = self.config(name) is None
        self._call("PUT", f"/connectors/{quote(name)}/config", config)
        return created

    def status(self, name: str) -> ConnectorState:
        return _state(name, self._call("GET", f"/connectors/{quote(name)}/status"))

    def statuses(self) -> list[ConnectorState]:
        body = self._call("GET", "/connectors?expand=status")
        return [_state(name, item["status"]) for name, item in sorted(body.items())]

    def restart(self, name: str, only_failed: bool = False) -> None:
        flag = "true" if only_failed else "false"
        self._call("POST", f"/connectors/{quote(name)}/restart?includeTasks=true&onlyFailed={flag}")

    def pause(self, name: str) -> None:
        self._call("PUT", f"/connectors/{quote(name)}/pause")

    def resume(self, name: str) -> None:
        self._call("PUT", f"/connectors/{quote(name)}/resume")

    def delete(self, name: str) -> None:
        self._call("DELETE", f"/connectors/{quote(name)}")

    # --- plugins ------------------------------------------------------------------------

    def plugins(self) -> list[str]:
        return sorted(p["class"] for p in self._call("GET", "/connector-plugins"))

    def validate(self, name: str, config: dict[str, str]) -> list[tuple[str, str]]:
        """Connect's own validation (the plugin's ``validate``): (field, message) per error.

        Debezium's source connects to the database here, so a wrong password
        shows as an error on ``database.hostname``.
        """
        cls = config.get("connector.class", "")
        if not cls:
            return [("connector.class", "missing: name the connector's Java class")]
        plugins = self.plugins()
        if cls not in plugins and not any(p.rsplit(".", 1)[-1] == cls for p in plugins):
            return [("connector.class", f"{cls} is not installed on the worker (installed: {', '.join(plugins)})")]
        body = self._call("PUT", f"/connector-plugins/{quote(cls)}/config/validate", {**config, "name": name})
        errors = []
        for item in body.get("configs", []):
            value = item.get("value") or {}
            for message in value.get("errors") or []:
                errors.append((str(value.get("name")), str(message)))
        return errors


def dumps(config: dict[str, str]) -> str:
    """Stable text of a config, for comparing what is stored with what a file says."""
    return json.dumps(config, sort_keys=True)
