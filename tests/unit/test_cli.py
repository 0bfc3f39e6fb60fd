"""The command line as a user meets it: help everywhere, one-line errors, no tracebacks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PASSERELLE_")}
    return subprocess.run(
        [sys.executable, "-m", "passerelle", *args],
        capture_output=True,
        text=True,
        env={**base, **(env or {})},
        cwd=ROOT,
        timeout=timeout,
        check=False,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


COMMANDS = [
    ["up"], ["down"], ["status"], ["registry"], ["schemas"], ["schemas", "register"], ["schemas", "check"],
    ["topics"], ["topics", "create"], ["topics", "list"], ["demo"], ["collector"], ["enrich"], ["carts"],
    ["remarketing"], ["generate"], ["bench"], ["bench", "runtime"], ["bench", "enrich"], ["emailing"],
    ["emailing", "bridge"], ["emailing", "export"], ["emailing", "standin"], ["campaign-counts"],
    ["crm-normalizer"], ["crm-activity"], ["crm-activity-messages"], ["crm"], ["crm", "import"], ["connect"],
    ["connect", "apply"], ["connect", "status"], ["connect", "manifest"], ["connect", "restart"],
    ["connect", "pause"], ["connect", "resume"], ["connect", "delete"], ["demo-crm"], ["api"], ["partners"],
    ["partners", "add"], ["partners", "list"], ["partners", "revoke"], ["query"], ["query", "run"],
    ["query", "templates"], ["campaigns"], ["campaigns", "undeclared"],
    ["postview"], ["bench", "postview"],
    ["metrics"], ["metrics", "import"],
    ["campaign-declarations"],
    ["attribution"], ["attribution", "markov"],
    ["bench", "paths"],
    ["bench", "state"],
    ["bench", "query"],
    ["conversion-paths"],
    ["warehouse"],
    ["lag"],
]  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c))
def test_every_command_has_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """In-process (the parser is the same); ``test_help_runs_as_a_program`` covers the process itself."""
    from passerelle.cli import main

    with pytest.raises(SystemExit) as stopped:
        main([*command, "--help"])
    assert stopped.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: passerelle")
    assert len(out.splitlines()) > 3


def test_help_runs_as_a_program() -> None:
    proc = run("crm", "import", "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: passerelle crm import")


def test_top_level_help_lists_the_commands() -> None:
    out = run("--help").stdout
    for name in ("up", "down", "status", "registry", "schemas", "topics", "demo", "collector", "enrich", "carts",
                 "remarketing", "generate", "bench", "campaign-counts", "crm-normalizer", "crm-activity",
                 "crm-activity-messages", "crm", "connect", "demo-crm", "api", "partners", "campaigns",
                 "postview"):  # fmt: skip
        assert f"    {name}" in out


def test_unknown_setting_is_rejected_by_name() -> None:
    proc = run("status", env={"PASSERELLE_KAFAK_PORT": "1"})
    assert_one_line_error(proc, "PASSERELLE_KAFAK_PORT")


def test_broker_not_reachable_is_one_line(tmp_path: Path) -> None:
    proc = run("topics", "create", env={"PASSERELLE_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    assert_one_line_error(proc, "127.0.0.1:1")


def test_registry_not_reachable_is_one_line() -> None:
    proc = run("schemas", "check", env={"PASSERELLE_SCHEMA_REGISTRY_URL": "http://127.0.0.1:1"})
    assert_one_line_error(proc, "http://127.0.0.1:1")


def test_unknown_topic_is_one_line() -> None:
    proc = run("topics", "create", "no.such.topic", env={"PASSERELLE_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    assert_one_line_error(proc, "no.such.topic")


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_port_already_taken_is_one_line(tmp_path: Path, busy_port: int) -> None:
    proc = run(
        "up",
        env={"PASSERELLE_STATE_DIR": str(tmp_path / "state"), "PASSERELLE_KAFKA_PORT": str(busy_port)},
    )
    assert_one_line_error(proc, f"port {busy_port}", "already in use")
    assert not (tmp_path / "state" / "kafka" / "broker.pid").exists()


def test_malformed_avsc_is_one_line_naming_the_file(tmp_path: Path) -> None:
    import shutil

    shutil.copytree(ROOT / "schemas", tmp_path / "schemas", ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    (tmp_path / "schemas" / "avro" / "Hit.avsc").write_text('{"type": "record", "name": "Hit", "fields": [')
    proc = run("topics", "list", env={"PASSERELLE_CATALOG": str(tmp_path / "schemas" / "catalog.toml")})
    assert_one_line_error(proc, "Hit.avsc")


def test_debug_shows_the_traceback() -> None:
    proc = run("--debug", "topics", "create", "no.such.topic")
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr


def test_bench_collector_passes_its_options_through(monkeypatch: pytest.MonkeyPatch) -> None:
    import bench.collector
    from passerelle.cli import build_parser

    seen: list[list[str]] = []
    monkeypatch.setattr(bench.collector, "main", lambda argv, bootstrap, registry: seen.append(argv) or 0)
    args = build_parser().parse_args(["bench", "collector", "--", "--seconds", "3", "--clients", "4"])
    assert args.func(args) == 0
    assert seen == [["--seconds", "3", "--clients", "4"]]


def test_bench_collector_wrk_is_registered_and_bounded() -> None:
    """Issue 18: ``passerelle bench collector-wrk`` parses its options; its help says it stops by itself."""
    import bench.collector_wrk
    from passerelle.cli import build_parser

    args = build_parser().parse_args(["bench", "collector-wrk", "--rounds", "1", "--seconds", "2", "--workers", "2"])
    assert (args.rounds, args.seconds, args.workers, args.connections) == (1, 2.0, 2, [32, 256])
    assert bench.collector_wrk.planned_seconds(args) == 2 * 2 + 1 * 3 * 2 * 2 * 2
    proc = run("bench", "collector-wrk", "--help")
    assert proc.returncode == 0 and "stops by itself" in proc.stdout and "ratios:" in proc.stdout


def test_collector_workers_must_be_at_least_one() -> None:
    proc = run("collector", "--workers", "0")
    assert proc.returncode == 2 and "--workers must be within 1..64" in proc.stderr


def test_cluster_ids_never_start_with_a_dash() -> None:
    """A leading "-" made StorageTool read the id as an option: one `up` in 64 failed to format storage."""
    from passerelle.deploy.local.stack import new_cluster_id

    ids = [new_cluster_id() for _ in range(5000)]
    assert not [i for i in ids if i.startswith("-")]
    assert all(len(i) == 22 for i in ids)


def test_bench_is_found_from_any_directory_in_a_checkout(tmp_path: Path) -> None:
    """The console script and ``python -m`` run elsewhere than the checkout still find bench/ beside the code."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("PASSERELLE_")}
    proc = subprocess.run([sys.executable, "-m", "passerelle", "bench", "--help"], capture_output=True, text=True,
                          env=base, cwd=tmp_path, timeout=60, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "postview" in proc.stdout and "collector" in proc.stdout
