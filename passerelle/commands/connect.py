"""``passerelle connect``: apply connector files to a Kafka Connect cluster and watch them."""

from __future__ import annotations

import argparse
from pathlib import Path

from passerelle.errors import PasserelleError
from passerelle.settings import load


def _client(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from passerelle.connectors.connect.rest import ConnectClient

    return ConnectClient(args.url or load().connect_url, timeout=args.timeout)


def _apply(args: argparse.Namespace) -> int:
    from passerelle.connectors.connect import configs

    items = configs.load(args.dir, args.names)
    client = _client(args)
    changes = configs.apply(client, items, wait=args.wait, progress=lambda line: print(line, flush=True))
    for change in changes:
        print(f"{change.name:<24} {change.action}")
    return 0


def _status(args: argparse.Namespace) -> int:
    from passerelle.connectors.connect.configs import failure

    client = _client(args)
    states = client.statuses()
    if args.names:
        states = [s for s in states if s.name in args.names]
        missing = sorted(set(args.names) - {s.name for s in states})
        if missing:
            raise PasserelleError(f"no connector named {', '.join(missing)} on {client.url}")
    if not states:
        print(f"no connectors on {client.url} (create them with `passerelle connect apply`)")
        return 0
    for state in states:
        print(f"{state.name:<24} {state.type:<7} {state.state:<10} on {state.worker}")
        for task in state.tasks:
            print(f"  task {task.id:<3} {task.state:<10} on {task.worker}")
    failed = [s for s in states if s.failed]
    for state in failed:
        print(f"error: {failure(state)}")
    if args.trace:
        for state in failed:
            for trace in [state.trace, *(t.trace for t in state.tasks)]:
                if trace:
                    print(trace)
    return 4 if failed else 0


def _manifest(args: argparse.Namespace) -> int:
    from passerelle.connectors.connect import configs, strimzi

    print(strimzi.manifests(configs.load(args.dir, args.names), args.cluster, args.namespace), end="")
    return 0


def _simple(action: str):  # type: ignore[no-untyped-def]
    def run(args: argparse.Namespace) -> int:
        client = _client(args)
        for name in args.names:
            if action == "restart":
                client.restart(name, only_failed=args.only_failed)
            else:
                getattr(client, action)(name)
            print(f"{name:<24} {action}{'d' if action.endswith('e') else 'ed'}")
        return 0

    return run


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``connect`` and its sub-commands."""
    from passerelle.connectors.connect.configs import CONFIG_DIR

    p = sub.add_parser(
        "connect",
        help="apply connector configs to Kafka Connect and show their state (apply, status, restart, ...)",
        description="Drive a Kafka Connect cluster through its REST API: the local worker (`passerelle up --with "
        "connect`) or a production one (PASSERELLE_CONNECT_URL or --url). Connector configs are JSON files "
        f"({CONFIG_DIR}): the CRM's Debezium PostgreSQL source and its JDBC sink.",
        epilog="Secrets are never in a file: a password field names a variable of the worker's environment, "
        "${env:PASSERELLE_CRM_DB_CDC_PASSWORD}, resolved by its EnvVarConfigProvider. See docs/connect.md.",
    )
    p.add_argument("--url", help="Connect REST URL (default PASSERELLE_CONNECT_URL, else the local worker)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per REST call (default 30)")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    a = actions.add_parser(
        "apply",
        help="validate, then create or update connectors from their files (idempotent)",
        description="Validate every named config with the worker (PUT /connector-plugins/{class}/config/validate: "
        "a wrong class, a missing field or, for the Debezium source, a wrong database password fail here), then "
        "create or update each one and wait until it and its tasks run. All or nothing: if one fails, the "
        "connectors created are deleted and the updated ones get their previous config back. Applying the same "
        "files twice changes nothing.",
        epilog="Exit status: 0 applied (or unchanged), 1 nothing applied (the error line says why).",
    )
    a.add_argument("names", nargs="*", metavar="NAME", help="connector names (default: every file)")
    a.add_argument("--dir", type=Path, default=CONFIG_DIR, help=f"folder of connector files (default {CONFIG_DIR})")
    a.add_argument("--wait", type=float, default=60.0, help="seconds a connector has to start running (default 60)")
    a.set_defaults(func=_apply)
    s = actions.add_parser(
        "status",
        help="connectors and tasks with their state; a failed one's error in one line",
        description="List every connector (or those named) with its tasks, their state and worker.",
        epilog="Exit status: 0 none failed, 4 a connector or task failed (its trace summarised on an error: line; "
        "--trace prints it whole).",
    )
    s.add_argument("names", nargs="*", metavar="NAME")
    s.add_argument("--trace", action="store_true", help="print the full Java trace of failed tasks")
    s.set_defaults(func=_status)
    m = actions.add_parser(
        "manifest",
        help="print the connector files as Strimzi KafkaConnector resources (YAML)",
        description="Print each connector file as a Strimzi KafkaConnector custom resource, for a Connect cluster "
        "managed by the Strimzi operator (kubectl apply -f -). The KafkaConnect resource must set "
        "config.providers=env and give its pods the PASSERELLE_CRM_DB_* variables from a secret.",
    )
    m.add_argument("names", nargs="*", metavar="NAME", help="connector names (default: every file)")
    m.add_argument("--dir", type=Path, default=CONFIG_DIR, help=f"folder of connector files (default {CONFIG_DIR})")
    m.add_argument("--cluster", required=True, help="name of the KafkaConnect resource (strimzi.io/cluster label)")
    m.add_argument("--namespace", help="metadata.namespace of the resources (default: kubectl's)")
    m.set_defaults(func=_manifest)
    for action, text in (
        ("restart", "restart a connector and its tasks"),
        ("pause", "pause a connector (its tasks stop consuming or producing)"),
        ("resume", "resume a paused connector"),
        ("delete", "delete a connector (a source's WAL slot stays in PostgreSQL until dropped there)"),
    ):
        c = actions.add_parser(action, help=text, description=text[0].upper() + text[1:] + ".")
        c.add_argument("names", nargs="+", metavar="NAME")
        if action == "restart":
            c.add_argument("--only-failed", action="store_true", help="restart only failed instances")
        c.set_defaults(func=_simple(action))
