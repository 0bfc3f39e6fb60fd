"""``passerelle up`` / ``down`` / ``status``: drive the local stack from settings."""

from __future__ import annotations

import argparse
import sys

from deploy.local import stack
from passerelle.settings import PasserelleSettings, load


def stack_config(settings: PasserelleSettings) -> stack.StackConfig:
    """Map process settings onto the launcher's plain config (``deploy`` imports nothing of ours)."""
    return stack.StackConfig(
        state_dir=settings.state_dir.resolve(),
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
    )


def _up(args: argparse.Namespace) -> int:
    cfg = stack_config(load())
    for line in stack.up(cfg):
        print(line)
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
    return 0 if all(c.running and c.answering for c in components) else 3


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register up, down and status."""
    p = sub.add_parser(
        "up",
        help="start the local stack (Kafka KRaft broker + schema registry)",
        description="Fetch the Kafka jars with Maven (cached), format storage on first start, start a "
        "single-node KRaft broker and the embedded schema registry as background processes on 127.0.0.1, "
        "and wait until both answer. Running it again while the stack runs does nothing.",
        epilog="State (data, logs, pid files) goes to PASSERELLE_STATE_DIR (default ./.passerelle); "
        "ports: PASSERELLE_KAFKA_PORT, PASSERELLE_CONTROLLER_PORT, PASSERELLE_REGISTRY_PORT.",
    )
    p.set_defaults(func=_up)
    p = sub.add_parser(
        "down",
        help="stop the local stack",
        description="Stop the schema registry and the Kafka broker (SIGTERM, then SIGKILL after 30 s).",
    )
    p.add_argument("--purge", action="store_true", help="also delete the state folder (all topics, logs)")
    p.set_defaults(func=_down)
    p = sub.add_parser(
        "status",
        help="show whether the local stack runs and answers",
        description="Print each component's pid, endpoint and whether it answers; exit 3 if any is down.",
    )
    p.set_defaults(func=_status)
