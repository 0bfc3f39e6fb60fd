"""``passerelle up`` / ``down`` / ``status``: drive the local stack from settings."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from passerelle.deploy.local import monitoring, stack
from passerelle.deploy.local.acls import SCHEMAS_TOPIC
from passerelle.errors import PasserelleError
from passerelle.settings import PasserelleSettings, load

MIGRATIONS = Path(__file__).resolve().parent.parent / "connectors" / "crm" / "migrations"


def stack_config(
    settings: PasserelleSettings, secure: bool | None = None, with_components: str = ""
) -> stack.StackConfig:
    """Map process settings onto the launcher's plain config (``deploy`` imports nothing of ours).

    ``secure`` None: the mode the state folder was made with (``down``, ``status``).
    ``with_components``: ``up --with``, added to ``PASSERELLE_STACK_WITH``.
    """
    state_dir = settings.state_dir.resolve()
    if secure is None:
        secure = stack.is_secure(state_dir)
    components = stack.parse_components(f"{settings.stack_with},{with_components}")
    return stack.StackConfig(
        state_dir=state_dir,
        cache_dir=settings.cache_dir.expanduser().resolve(),
        kafka_port=settings.kafka_port,
        controller_port=settings.controller_port,
        registry_port=settings.registry_port,
        registry_command=[sys.executable, "-m", "passerelle", "registry"],
        registry_env={
            "PASSERELLE_BOOTSTRAP_SERVERS": f"127.0.0.1:{settings.kafka_port}",
            "PASSERELLE_REGISTRY_PORT": str(settings.registry_port),
            "PASSERELLE_REGISTRY_HOST": "127.0.0.1",
            "PASSERELLE_SCHEMAS_TOPIC": settings.schemas_topic,
        },
        secure=secure,
        postgres_port=settings.postgres_port,
        connect_port=settings.connect_port,
        components=components,
        migrations=MIGRATIONS,
        monitoring=monitoring_config(settings, state_dir, probe_connect="connect" in components),
    )


def monitoring_config(settings: PasserelleSettings, state_dir: Path, probe_connect: bool) -> monitoring.Monitoring:
    """Prometheus, Alertmanager and the lag exporter (``passerelle lag --serve``) of the stack in ``state_dir``.

    ``probe_connect``: the stack runs a Connect worker, so the exporter watches its connectors' tasks.
    """
    root = state_dir / "monitoring"
    exporter = [sys.executable, "-m", "passerelle", "lag", "--serve", "--targets-dir", str(root / "targets")]
    return monitoring.Monitoring(
        root=root,
        prometheus_port=settings.prometheus_port,
        alertmanager_port=settings.alertmanager_port,
        exporter_port=settings.lag_port,
        scrape_interval_s=settings.monitoring_scrape_interval_s,
        alert_for=settings.monitoring_alert_for,
        webhook_url=settings.alert_webhook_url,
        exporter_command=exporter if probe_connect else [*exporter, "--no-connect"],
        broker_jmx_port=settings.broker_jmx_port,
        exporter_env={
            "PASSERELLE_BOOTSTRAP_SERVERS": f"127.0.0.1:{settings.kafka_port}",
            "PASSERELLE_SCHEMA_REGISTRY_URL": f"http://127.0.0.1:{settings.registry_port}",
            "PASSERELLE_CONNECT_URL": f"http://127.0.0.1:{settings.connect_port}",
            "PASSERELLE_LAG_PORT": str(settings.lag_port),
        },
    )


def _up(args: argparse.Namespace) -> int:
    settings = load()
    if args.secure and settings.schemas_topic != SCHEMAS_TOPIC:
        raise PasserelleError(
            f"the secure stack's ACLs let the registry use the topic {SCHEMAS_TOPIC} only; "
            f"unset PASSERELLE_SCHEMAS_TOPIC (it is {settings.schemas_topic})"
        )
    cfg = stack_config(settings, secure=args.secure, with_components=args.with_components or "")
    for line in stack.up(cfg):
        print(line)
    if cfg.secure:
        m = cfg.material
        print(f"credentials in {m.root} (owner-only files; passwords are never printed):")
        print(f"  <component>.env         PASSERELLE_* variables of a process: set -a; . {m.env_file('enrich')}")
        print(f"  <component>.properties  librdkafka / kcat -F config, e.g. kcat -F {m.properties('admin')} -L")
        print("  ca.pem                  the CA that signed the broker's and the registry's certificates")
        print(f"  components: {', '.join(stack.SECURE_COMPONENTS)} (admin is the super user)")
    return 0


def _down(args: argparse.Namespace) -> int:
    cfg = stack_config(load())
    for line in stack.down(cfg, purge=args.purge):
        print(line)
    return 0


def _status(args: argparse.Namespace) -> int:
    cfg = stack_config(load())
    components = stack.status(cfg)
    for comp in components:
        print(comp.line())
    prometheus = next((c for c in components if c.name == "prometheus"), None)
    if cfg.monitoring is not None and prometheus is not None and prometheus.answering:
        try:
            firing = monitoring.firing_alerts(cfg.monitoring)
        except Exception as exc:
            print(f"alerts    cannot read them from {cfg.monitoring.prometheus_url}: {exc}")
        else:
            print(f"alerts    {len(firing)} firing" + (":" if firing else ""))
            for alert in firing:
                print(f"  {monitoring.describe_alert(alert)}")
    return 0 if all(c.running and c.answering for c in components) else 3


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register up, down and status."""
    p = sub.add_parser(
        "up",
        help="start the local stack (Kafka KRaft broker + schema registry; --with postgres,connect)",
        description="Fetch the Kafka jars with Maven (cached), format storage on first start, start a "
        "single-node KRaft broker and the embedded schema registry as background processes on 127.0.0.1, "
        "and wait until both answer. Running it again while the stack runs does nothing.",
        epilog="State (data, logs, pid files) goes to PASSERELLE_STATE_DIR (default ./.passerelle); "
        "ports: PASSERELLE_KAFKA_PORT, PASSERELLE_CONTROLLER_PORT, PASSERELLE_REGISTRY_PORT. "
        "With --secure: clients log in on the Kafka port over SASL_SSL (SCRAM-SHA-512, a throwaway CA), "
        "one user per component (admin, deploy, registry, collector, enrich, carts, remarketing, emailing, "
        "generator) allowed only its own topics, groups and transactional ids (deploy/local/acls.py); the "
        "registry serves HTTPS with basic auth (deploy and admin may write, the others read). Passwords are "
        "random, made once, and written with each component's settings to $PASSERELLE_STATE_DIR/secure/"
        "<component>.env and .properties. A state folder keeps its mode: switching needs `down --purge`.",
    )
    p.add_argument(
        "--with",
        dest="with_components",
        metavar="COMPONENTS",
        help="also start optional components, comma-separated: postgres (the sample CRM database, migrations "
        "applied), connect (a Kafka Connect worker with the Debezium PostgreSQL source and JDBC sink; implies "
        "postgres), monitoring (Prometheus, Alertmanager and the lag exporter on 127.0.0.1, scraping every "
        "passerelle process found serving /metrics; rules from deploy/monitoring/). Adds to PASSERELLE_STACK_WITH",
    )
    p.add_argument(
        "--secure",
        action="store_true",
        help="TLS, SCRAM users and ACLs per component, HTTPS registry with users (credentials in STATE_DIR/secure)",
    )
    p.set_defaults(func=_up)
    p = sub.add_parser(
        "down",
        help="stop the local stack",
        description="Stop the monitoring (lag exporter, Prometheus, Alertmanager), Kafka Connect, the schema "
        "registry, the Kafka broker (SIGTERM, then SIGKILL after 30 s) "
        "and PostgreSQL, whichever run; "
        "a secure stack as well (its mode comes from the state folder).",
    )
    p.add_argument("--purge", action="store_true", help="also delete the state folder (all topics, logs)")
    p.set_defaults(func=_down)
    p = sub.add_parser(
        "status",
        help="show whether the local stack runs and answers",
        description="Print each component's pid, endpoint and whether it answers; exit 3 if any is down. "
        "With monitoring, also the alerts Prometheus reports as firing. "
        "On a secure stack (made with `up --secure`) the broker is probed as the admin user and the "
        "registry over HTTPS.",
    )
    p.set_defaults(func=_status)
