"""Connector configuration files (``connectors/connect/*.json``) and applying them safely.

A file is what ``POST /connectors`` takes: ``{"name": ..., "config": {...}}``.
Secrets are never written in a file: a field that holds one (a password, a
secret, a key) must be a config-provider reference such as
``${env:PASSERELLE_CRM_DB_CDC_PASSWORD}``, which the worker resolves from its
environment.

``apply`` is all-or-nothing: every config is validated by the worker first;
then each is created or updated and must reach RUNNING; if one fails, the
connectors created are deleted and the updated ones get their previous config
back, so a wrong password leaves the cluster as it was.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from passerelle.connectors.connect.rest import ConnectClient, ConnectorState, ConnectRestError, dumps
from passerelle.errors import PasserelleError

CONFIG_DIR = Path(__file__).resolve().parent
SECRET_FIELD = re.compile(r"(password|secret|token|api\.key|private\.key)$", re.IGNORECASE)
PROVIDER_REFERENCE = re.compile(r"^\$\{[a-zA-Z0-9_.-]+:[^}]*\}$")


class ConnectorConfigError(PasserelleError):
    """A connector file that cannot be applied (bad JSON, a secret in clear, a validation error)."""


@dataclass(frozen=True)
class ConnectorFile:
    """One connector as a file declares it."""

    name: str
    config: dict[str, str]
    path: Path | None = None


def parse(text: str, where: str) -> ConnectorFile:
    """Read one file's text; every value becomes a string, as Connect stores them."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConnectorConfigError(f"{where}: not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("name"), str) or not isinstance(doc.get("config"), dict):
        raise ConnectorConfigError(f'{where}: expected {{"name": "...", "config": {{...}}}}')
    config = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in doc["config"].items()}
    for key, value in config.items():
        if SECRET_FIELD.search(key) and value and not PROVIDER_REFERENCE.match(value):
            raise ConnectorConfigError(
                f"{where}: {key} holds a secret in clear; name it instead, e.g. ${{env:PASSERELLE_...}}, "
                "and give the worker that variable"
            )
    return ConnectorFile(doc["name"], config)


def load(directory: Path = CONFIG_DIR, names: Sequence[str] = ()) -> list[ConnectorFile]:
    """The connector files of ``directory`` (all, or those named), sorted by name."""
    found: dict[str, ConnectorFile] = {}
    for path in sorted(directory.glob("*.json")):
        item = parse(path.read_text(), str(path))
        found[item.name] = ConnectorFile(item.name, item.config, path)
    unknown = [n for n in names if n not in found]
    if unknown:
        raise ConnectorConfigError(
            f"no connector file names {', '.join(unknown)} in {directory} (found: {', '.join(found) or 'none'})"
        )
    return [found[n] for n in (names or sorted(found))]


def summarize_trace(trace: str | None) -> str:
    """A Java stack trace in one line: the first message and the deepest ``Caused by``."""
    if not trace:
        return "no trace"
    lines = [line.strip() for line in trace.splitlines() if line.strip()]
    first = lines[0]
    causes = [line[len("Caused by: ") :] for line in lines if line.startswith("Caused by: ")]
    text = first if not causes or causes[-1] in first else f"{first} ... caused by {causes[-1]}"
    for marker, hint in HINTS:
        if marker in trace:
            text = f"{text[:400]} ({hint})"
            break
    return text[:600]


HINTS = (
    (
        "Unable to determine Dialect without JDBC metadata",
        "the JDBC sink could not connect to its database: check connection.url, connection.username and the "
        "password variable in the worker's environment; the worker's log has the database's own error",
    ),
)
"""Traces whose cause hides in the worker's log, and what to check."""


def failure(state: ConnectorState) -> str:
    """What failed in a connector, in one line."""
    if state.state == "FAILED":
        return f"connector {state.name} failed: {summarize_trace(state.trace)}"
    for task in state.tasks:
        if task.state == "FAILED":
            return f"connector {state.name} task {task.id} failed: {summarize_trace(task.trace)}"
    return f"connector {state.name} is {state.state}"


def wait_running(client: ConnectClient, name: str, timeout: float) -> ConnectorState:
    """Poll until the connector and all its tasks run, or one fails, or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    state = ConnectorState(name, "?", "UNASSIGNED", "?")  # a connector just created has no status for a moment
    while time.monotonic() < deadline:
        try:
            state = client.status(name)
        except ConnectRestError as exc:
            if " 404 " not in str(exc):
                raise
        if state.running or state.failed:
            return state
        time.sleep(0.5)
    return state


@dataclass(frozen=True)
class Change:
    """What ``apply`` did to one connector."""

    name: str
    action: str  # created | updated | unchanged


def apply(
    client: ConnectClient,
    connectors: Iterable[ConnectorFile],
    wait: float = 60.0,
    progress: Callable[[str], None] | None = None,
) -> list[Change]:
    """Validate all, then create or update each and wait for it to run; undo everything on a failure."""
    items = list(connectors)
    problems = []
    for item in items:
        problems += [f"{item.name}: {fld}: {msg}" for fld, msg in client.validate(item.name, item.config)]
    if problems:
        raise ConnectorConfigError("; ".join(problems) + " (nothing applied)")
    changes: list[Change] = []
    previous: dict[str, dict[str, str] | None] = {}
    try:
        for item in items:
            before = client.config(item.name)
            stored = {k: v for k, v in (before or {}).items() if k != "name"}
            if before is not None and dumps(stored) == dumps(item.config):
                changes.append(Change(item.name, "unchanged"))
                continue
            previous[item.name] = before
            client.put_config(item.name, item.config)
            if progress:
                progress(f"{item.name}: {'created' if before is None else 'updated'}, waiting for it to run ...")
            if before is not None:
                client.restart(item.name)  # an update must prove itself too, not keep the old tasks' state
            state = wait_running(client, item.name, wait)
            if not state.running:
                reason = failure(state) if state.failed else f"{item.name} not running after {wait:.0f}s"
                raise ConnectorConfigError(reason)
            changes.append(Change(item.name, "created" if before is None else "updated"))
    except Exception as exc:
        undone = _undo(client, previous)
        raise ConnectorConfigError(f"{exc}; {undone}") from None
    return changes


def _undo(client: ConnectClient, previous: dict[str, dict[str, str] | None]) -> str:
    """Delete what was created, restore what was updated; says what it did."""
    done = []
    for name, before in previous.items():
        try:
            if before is None:
                client.delete(name)
                done.append(f"{name} deleted")
            else:
                client.put_config(name, {k: v for k, v in before.items() if k != "name"})
                done.append(f"{name} restored")
        except PasserelleError as exc:
            done.append(f"{name} could not be undone ({exc})")
    return ("undone: " + ", ".join(done)) if done else "nothing applied"
