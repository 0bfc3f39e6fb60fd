"""Which passerelle processes serve ``/metrics``: found in ``/proc``, written as Prometheus file-discovery files.

Processes are started by hand, by ``passerelle demo``, by systemd or by tests:
no registry of them exists, so the scrape targets come from what actually
runs. A process is a target when it is a passerelle process (``passerelle
CMD`` or ``python -m passerelle CMD``, or any process carrying
``PASSERELLE_METRICS_PORT``) talking to *this* stack's broker, and serving
``/metrics``: on ``PASSERELLE_METRICS_PORT``, or, for the collector and the
partner API, on their HTTP port. Reading another user's environment is refused by the kernel:
those processes are simply not seen.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
COLLECTOR_DEFAULT_PORT = 8088
API_DEFAULT_PORT = 8090
OWN_PORT: dict[str, tuple[str, str, int]] = {
    "collector": ("PASSERELLE_COLLECTOR_HOST", "PASSERELLE_COLLECTOR_PORT", COLLECTOR_DEFAULT_PORT),
    "api": ("PASSERELLE_API_HOST", "PASSERELLE_API_PORT", API_DEFAULT_PORT),
}
"""Commands serving ``/metrics`` on their own HTTP address: (host setting, port setting, default port)."""


@dataclass(frozen=True)
class Target:
    """One ``/metrics`` endpoint and the command that serves it."""

    command: str
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def file_name(self) -> str:
        return f"{self.command}-{self.port}.json"


def passerelle_command(argv: Sequence[str]) -> str | None:
    """``passerelle enrich`` / ``python -m passerelle enrich`` -> ``enrich``; ``python -m a.b.c`` -> ``c``."""
    args = list(argv)
    for i, arg in enumerate(args):
        if arg == "-m" and i + 1 < len(args):
            module = args[i + 1]
            rest = args[i + 2 :]
            if module == "passerelle":
                return next((a for a in rest if not a.startswith("-")), None)
            return module.rsplit(".", 1)[-1]
        if Path(arg).name == "passerelle" and i <= 1:
            return next((a for a in args[i + 1 :] if not a.startswith("-")), None)
    return None


def target_of(argv: Sequence[str], env: Mapping[str, str], bootstrap: str) -> Target | None:
    """The endpoint a process serves if it is one of ours on ``bootstrap``; None otherwise (pure)."""
    command = passerelle_command(argv)
    if command is None:
        return None
    kafka_port = env.get("PASSERELLE_KAFKA_PORT", "9092")
    its_bootstrap = env.get("PASSERELLE_BOOTSTRAP_SERVERS") or f"127.0.0.1:{kafka_port}"
    if set(its_bootstrap.split(",")).isdisjoint(bootstrap.split(",")):
        return None
    port = env.get("PASSERELLE_METRICS_PORT")
    host = "127.0.0.1"
    if not port and command in OWN_PORT:
        host_setting, port_setting, default = OWN_PORT[command]
        port, host = env.get(port_setting, str(default)), env.get(host_setting, "127.0.0.1")
    if not port or not port.isdigit():
        return None
    return Target(command, "127.0.0.1" if host in ("0.0.0.0", "") else host, int(port))


def _processes() -> Iterator[tuple[list[str], dict[str, str]]]:
    for entry in PROC.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = [a.decode(errors="replace") for a in (entry / "cmdline").read_bytes().split(b"\0") if a]
            raw = (entry / "environ").read_bytes()
        except OSError:  # gone, or another user's
            continue
        env = {}
        for item in raw.split(b"\0"):
            key, sep, value = item.decode(errors="replace").partition("=")
            if sep and key.startswith("PASSERELLE_"):
                env[key] = value
        yield argv, env


def serves_metrics(target: Target, timeout: float = 1.0) -> bool:
    """Whether ``/metrics`` answers (a shell that exported PASSERELLE_METRICS_PORT runs commands that do not)."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{target.address}/metrics", timeout=timeout) as resp:
            return bool(resp.status == 200)
    except Exception:
        return False


def discover(bootstrap: str) -> list[Target]:
    """Every passerelle process on this machine serving ``/metrics`` for the broker at ``bootstrap``."""
    found = {t for argv, env in _processes() if (t := target_of(argv, env, bootstrap)) is not None}
    return sorted(found, key=lambda t: (t.command, t.port))


def write_targets(targets_dir: Path, targets: Sequence[Target]) -> list[Target]:
    """Write one file-discovery file per target not yet known; returns the new ones.

    Files are never removed here: a stopped processor must stay a target so
    that ``up == 0`` fires its alert.
    """
    targets_dir.mkdir(parents=True, exist_ok=True)
    new = []
    for target in targets:
        path = targets_dir / target.file_name
        if path.exists() or not serves_metrics(target):
            continue
        body = [{"targets": [target.address], "labels": {"command": target.command}}]
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(body))
        tmp.rename(path)  # Prometheus must never read half a file
        new.append(target)
    return new


def known_targets(targets_dir: Path) -> list[Target]:
    """The targets the discovery files hold."""
    out = []
    for path in sorted(targets_dir.glob("*.json")):
        try:
            for group in json.loads(path.read_text()):
                for address in group["targets"]:
                    host, _, port = address.rpartition(":")
                    out.append(Target(group.get("labels", {}).get("command", "?"), host, int(port)))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out
