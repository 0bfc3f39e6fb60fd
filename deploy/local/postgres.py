"""The local PostgreSQL: Debian's server binaries, a private cluster in the state folder.

It holds the sample CRM database (``crm``) that Debezium captures and the JDBC
sink writes back to. ``initdb`` refuses root, so when we run as root the
cluster belongs to the ``postgres`` user and every server command runs through
``runuser``; otherwise it belongs to whoever runs ``passerelle up``.

Three roles, passwords random and made once (``postgres/secrets.env``, owner
only): ``postgres`` (superuser, migrations), ``debezium`` (REPLICATION, reads
the CRM tables) and ``crm_sink`` (writes ``web_activity``, ``conversion_paths``
and ``customer_channels`` only, granted by the migrations). The Connect worker
gets them as environment variables, which connector configs name as
``${env:...}``: no password is ever in a connector file.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

DATABASE = "crm"
ROLES = ("postgres", "debezium", "crm_sink")
SECRET_VARIABLES = {
    "postgres": "PASSERELLE_CRM_DB_ADMIN_PASSWORD",
    "debezium": "PASSERELLE_CRM_DB_CDC_PASSWORD",
    "crm_sink": "PASSERELLE_CRM_DB_SINK_PASSWORD",
}
"""The variable carrying each role's password, in secrets.env and in the Connect worker's environment."""


class PostgresError(Exception):
    """A PostgreSQL start-up or migration failure with a cause the user can fix."""

    user_error = True
    exit_code = 1


@dataclass(frozen=True)
class Postgres:
    """One local cluster: where it lives and listens."""

    root: Path
    port: int = 5433
    host: str = "127.0.0.1"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    @property
    def secrets_file(self) -> Path:
        return self.root / "secrets.env"

    def passwords(self) -> dict[str, str]:
        """Each role's password (made by :func:`start` on first start)."""
        found = read_env_file(self.secrets_file)
        return {role: found[var] for role, var in SECRET_VARIABLES.items() if var in found}

    def environment(self) -> dict[str, str]:
        """What the Connect worker needs to resolve the connector configs' ``${env:...}``."""
        env = {var: pw for role, pw in self.passwords().items() for var in [SECRET_VARIABLES[role]]}
        env.update(
            PASSERELLE_CRM_DB_HOST=self.host,
            PASSERELLE_CRM_DB_PORT=str(self.port),
            PASSERELLE_CRM_DB_NAME=DATABASE,
        )
        return env

    def dsn(self, role: str = "postgres", database: str = DATABASE) -> str:
        """A libpq connection string for ``role`` over TCP (what a client outside the machine would use)."""
        password = self.passwords()[role]
        return f"host={self.host} port={self.port} dbname={database} user={role} password={password}"


def read_env_file(path: Path) -> dict[str, str]:
    """``NAME=value`` lines (the format ``set -a; . file`` reads), comments and blanks skipped."""
    out: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                name, value = line.split("=", 1)
                out[name.strip()] = value.strip().strip("'\"")
    return out


def bin_dir() -> Path:
    """The newest Debian PostgreSQL server's bin folder (``initdb`` and ``pg_ctl`` are not on PATH there)."""
    found = sorted(
        (p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "initdb").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if found:
        return found[-1]
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise PostgresError(
        "PostgreSQL server binaries not found: install them (Debian: apt-get install postgresql; ./dev setup "
        "does it when PASSERELLE_STACK_WITH names postgres or connect)"
    )


def _owner() -> str | None:
    """The user the cluster runs as: ``postgres`` when we are root (initdb refuses root), else ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise PostgresError(
            "running as root needs a `postgres` user to own the cluster (apt's postgresql makes it)"
        ) from None
    return "postgres"


def _as_owner(cmd: Sequence[str]) -> list[str]:
    owner = _owner()
    return ["runuser", "-u", owner, "--", *cmd] if owner else list(cmd)


def _give(path: Path) -> None:
    owner = _owner()
    if owner:
        user = pwd.getpwnam(owner)
        os.chown(path, user.pw_uid, user.pw_gid)


def _run(cmd: Sequence[str], what: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, check=False, env=env, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise PostgresError(f"{what} failed (exit {proc.returncode}): {(proc.stdout + proc.stderr).strip()[-600:]}")
    return proc.stdout


def pid(pg: Postgres) -> int | None:
    """The postmaster's pid when it runs (``postmaster.pid``'s first line, checked alive)."""
    try:
        value = int((pg.data / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        os.kill(value, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return value


def answers(pg: Postgres, timeout: float = 3.0) -> bool:
    """True when the server accepts connections on its TCP port (``pg_isready``)."""
    with contextlib.suppress(PostgresError, OSError):
        cmd = [str(bin_dir() / "pg_isready"), "-h", pg.host, "-p", str(pg.port), "-t", str(max(1, int(timeout)))]
        return subprocess.run(cmd, capture_output=True, check=False).returncode == 0
    return False


def _init(pg: Postgres) -> None:
    """initdb once: scram passwords over TCP, trust on the private unix socket only."""
    if (pg.data / "PG_VERSION").exists():
        return
    pg.root.mkdir(parents=True, exist_ok=True)
    passwords = {role: secrets.token_urlsafe(18) for role in ROLES}
    lines = [f"{SECRET_VARIABLES[r]}={p}" for r, p in passwords.items()]
    pg.secrets_file.write_text("# Passwords of the local CRM database's roles (made once by `passerelle up`)\n")
    pg.secrets_file.chmod(0o600)
    pg.secrets_file.write_text(pg.secrets_file.read_text() + "\n".join(lines) + "\n")
    shutil.rmtree(pg.data, ignore_errors=True)
    for folder in (pg.data, pg.run_dir):
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o700)
        _give(folder)
    pwfile = pg.root / ".pwfile"
    pwfile.write_text(passwords["postgres"] + "\n")
    pwfile.chmod(0o600)
    _give(pwfile)
    try:
        _run(
            _as_owner([
                str(bin_dir() / "initdb"), "-D", str(pg.data), "-U", "postgres", f"--pwfile={pwfile}",
                "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8",
            ]),
            "initdb",
        )  # fmt: skip
    finally:
        pwfile.unlink(missing_ok=True)


def start(pg: Postgres, timeout: float = 60.0) -> tuple[int, bool]:
    """Start the cluster unless it runs (initdb on first start); returns (pid, started_now)."""
    running = pid(pg)
    if running is not None and answers(pg):
        return running, False
    if running is None:
        _init(pg)
        pg.log.touch()
        _give(pg.log)
        options = " ".join([
            f"-c port={pg.port}", f"-c listen_addresses={pg.host}", f"-c unix_socket_directories={pg.run_dir}",
            "-c wal_level=logical", "-c max_wal_senders=10", "-c max_replication_slots=10",
            "-c shared_buffers=64MB", "-c fsync=on",
        ])  # fmt: skip
        cmd = [str(bin_dir() / "pg_ctl"), "-D", str(pg.data), "-l", str(pg.log), "-o", options, "-w", "-t", "60"]
        try:
            _run(_as_owner([*cmd, "start"]), "starting PostgreSQL")
        except PostgresError as exc:
            tail = "\n".join(pg.log.read_text(errors="replace").splitlines()[-10:]) if pg.log.exists() else ""
            raise PostgresError(f"{exc}\n{tail}") from None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if answers(pg, timeout=1):
            found = pid(pg)
            if found is not None:
                return found, running is None
        time.sleep(0.2)
    raise PostgresError(f"PostgreSQL did not answer on {pg.host}:{pg.port} within {timeout:.0f}s; see {pg.log}")


def stop(pg: Postgres) -> int | None:
    """Stop the cluster (fast shutdown: clients disconnected, WAL flushed); the pid stopped, or None."""
    running = pid(pg)
    if running is None:
        return None
    with contextlib.suppress(PostgresError):
        _run(_as_owner([str(bin_dir() / "pg_ctl"), "-D", str(pg.data), "-m", "fast", "-w", "-t", "60", "stop"]), "stop")
    return running


def psql(pg: Postgres, sql: str, database: str = DATABASE) -> str:
    """Run SQL as the superuser over the private unix socket (trust), stopping at the first error."""
    cmd = [
        str(bin_dir() / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
        "-h", str(pg.run_dir), "-p", str(pg.port), "-U", "postgres", "-d", database, "-c", sql,
    ]  # fmt: skip
    return _run(_as_owner(cmd), f"psql on {database}")


MIGRATION_NAME = re.compile(r"^(\d{3,})_[a-z0-9_]+\.sql$")


def migrate(pg: Postgres, migrations: Path) -> list[str]:
    """Create the ``crm`` database and roles, then apply each new migration in its own transaction.

    Applied ones are recorded in ``schema_migrations``, so a second run applies
    nothing. Returns the names applied now.
    """
    if psql(pg, f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'", "postgres").strip() != "1":
        psql(pg, f"CREATE DATABASE {DATABASE}", "postgres")
    passwords = pg.passwords()
    for role, attrs in (("debezium", "LOGIN REPLICATION"), ("crm_sink", "LOGIN")):
        password = passwords[role].replace("'", "''")
        psql(
            pg,
            f"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') THEN "
            f"CREATE ROLE {role} {attrs} PASSWORD '{password}'; END IF; END $$",
        )
    psql(
        pg, "CREATE TABLE IF NOT EXISTS schema_migrations (name text PRIMARY KEY, applied_at timestamptz DEFAULT now())"
    )
    done = set(psql(pg, "SELECT name FROM schema_migrations").split())
    applied = []
    for path in sorted(p for p in migrations.glob("*.sql") if MIGRATION_NAME.match(p.name)):
        if path.name in done:
            continue
        sql = path.read_text()
        name = path.name.replace("'", "''")
        psql(pg, f"BEGIN;\n{sql}\nINSERT INTO schema_migrations (name) VALUES ('{name}');\nCOMMIT;")
        applied.append(path.name)
    # Grants after every migration, so a table a later migration adds is covered too.
    psql(
        pg,
        "GRANT CONNECT ON DATABASE crm TO debezium, crm_sink; GRANT USAGE ON SCHEMA public TO debezium, crm_sink; "
        "GRANT SELECT ON customers, consents TO debezium; "
        "GRANT SELECT, INSERT, UPDATE, DELETE ON web_activity TO crm_sink",
    )
    return applied
