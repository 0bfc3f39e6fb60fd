"""``passerelle topics create|list``: the broker's topics follow the catalog.

``create`` runs on every deploy: it creates what is missing and reports,
never fixes, topics that drifted from the catalog (repartitioning or a new
cleanup policy can break ordering or delete data, so a human decides).
``--fail-on-drift`` turns drift into exit status 3 for CI.
"""

from __future__ import annotations

import argparse

from passerelle.schemas.catalog import Catalog, TopicSpec, load_catalog
from passerelle.settings import load

EXIT_DRIFT = 3


def _retention(spec: TopicSpec) -> str:
    ms = spec.retention_ms
    if ms < 0:
        return "infinite"
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("min", 60_000), ("s", 1000)):
        if ms and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def _value(spec: TopicSpec) -> str:
    """The value's contract, and the wire format when it is not registered Avro (nothing in the registry)."""
    value = spec.value_schema or "-"
    return value if spec.registered else f"{value} ({spec.wire_format})"


def catalog_table(catalog: Catalog) -> list[str]:
    """The catalog as aligned text columns, one topic a line, for humans reading a terminal."""
    header = ("TOPIC", "PARTITIONS", "CLEANUP", "RETENTION", "KEY", "VALUE", "COMPATIBILITY")
    rows = [header] + [
        (
            s.name,
            str(s.partitions),
            s.cleanup_policy,
            _retention(s),
            s.key_schema,
            _value(s),
            s.compatibility,
        )
        for s in catalog.topics
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]


def _create(args: argparse.Namespace) -> int:
    from passerelle.schemas.topics_admin import KafkaAdmin, ensure_topics

    settings = load()
    catalog = load_catalog(settings.catalog)
    catalog.select(args.topics)  # an unknown name fails before any connection attempt
    admin = KafkaAdmin(settings.connection(), timeout_s=args.timeout)
    report = ensure_topics(admin, catalog, args.topics or None, replication=args.replication_factor)
    for line in report.lines():
        print(line)
    if report.has_drift and args.fail_on_drift:
        return EXIT_DRIFT
    return 0


def _list(args: argparse.Namespace) -> int:
    settings = load()
    for line in catalog_table(load_catalog(settings.catalog)):
        print(line)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``topics`` and its ``create`` / ``list`` sub-commands."""
    topics = sub.add_parser(
        "topics",
        help="create the catalog's topics or list the catalog",
        description="Keep the broker's topics in step with the topic catalog (schemas/catalog.toml, "
        "or PASSERELLE_CATALOG).",
    )
    actions = topics.add_subparsers(dest="topics_command", metavar="ACTION")
    actions.required = True

    create = actions.add_parser(
        "create",
        help="create missing topics and report drift (idempotent)",
        description="Create the catalog's missing topics on the broker (PASSERELLE_BOOTSTRAP_SERVERS) with "
        "their partitions, cleanup policy and retention. Existing topics are left alone; one that differs "
        "from the catalog is reported as DRIFT, never changed. Prints one line per topic: created, exists "
        "or DRIFT with the differences.",
    )
    create.add_argument("topics", nargs="*", metavar="TOPIC", help="only these catalog topics (default: all)")
    create.add_argument(
        "--fail-on-drift",
        action="store_true",
        help=f"exit with status {EXIT_DRIFT} when an existing topic differs from the catalog",
    )
    create.add_argument(
        "--replication-factor",
        type=int,
        default=None,
        metavar="N",
        help="replicas of new topics (default: number of brokers, at most 3)",
    )
    create.add_argument(
        "--timeout", type=float, default=10.0, metavar="SECONDS", help="broker request timeout (default: 10)"
    )
    create.set_defaults(func=_create)

    lst = actions.add_parser(
        "list",
        help="print the topic catalog",
        description="Print every catalog topic with its partitions, cleanup policy, retention, key and value "
        "schemas and compatibility level. Reads no broker; checks that every schema file parses.",
    )
    lst.set_defaults(func=_list)
