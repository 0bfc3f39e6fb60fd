"""``passerelle metrics import FILE --partner P``: a partner's daily figures from a CSV file onto partners.metrics.

The command's wiring and output only: the file and its lines are
``passerelle.connectors.partner_api.metrics_csv``, the rules of a figure
``metric_rules`` (the same as ``POST /v1/metrics``), the tables read and the
records written with the partner API's ``TableFollower`` and ``TopicWriter``
(the client layer's idempotent ``acks=all`` producer).
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from passerelle.connectors.partner_api.metric_names import AMOUNTS, COUNTS, HEADER

if TYPE_CHECKING:
    from passerelle.schemas.clients import Connection

DEFAULT_TOPIC = "partners.metrics"
GROUP_ID = "passerelle-metrics-import"
"""The group the table readers name (assign only, never joined nor committed): the ACL table grants it."""
CHUNK = 1000
MAX_SHOWN = 50


def read_table(conn: Connection, topic: str) -> dict[str, dict[str, Any]]:
    """The current table of a compacted topic, by key."""
    from passerelle.connectors.partner_api.tables import TableFollower

    table = TableFollower(conn, topic, group_id=GROUP_ID)
    table.start(timeout_s=30)
    try:
        return table.snapshot()
    finally:
        table.close()


def _check_topic(conn: Connection, topic: str) -> None:
    """The topic to publish to exists and may be written, or one clear error before anything is read."""
    from passerelle.connectors.partner_api.metrics_csv import MetricsImportError
    from passerelle.schemas import clients

    meta = clients.ensure_reachable(conn)
    if topic in meta.topics and meta.topics[topic].error is None:
        return
    denied = clients.kafka.topic_error(meta, topic, conn, clients.admin_client(conn))
    if denied is not None:
        raise denied
    raise MetricsImportError(
        f"topic {topic!r} does not exist on {conn.describe()}: create it first (`passerelle topics create "
        f"{DEFAULT_TOPIC}`), or name another with --topic"
    )


def _say(text: str) -> None:
    print(f"metrics import: {text}", file=sys.stderr, flush=True)


def _import(args: argparse.Namespace) -> int:
    from passerelle.connectors.partner_api.campaign_rules import PARTNER_ID
    from passerelle.connectors.partner_api.metrics_csv import (
        EXIT_OK,
        EXIT_REJECTED,
        EXIT_UNDELIVERED,
        MetricsImportError,
        judge_file,
        open_file,
    )
    from passerelle.connectors.partner_api.tables import TopicWriter
    from passerelle.settings import load

    started = time.monotonic()
    partner = args.partner
    if not PARTNER_ID.fullmatch(partner):
        raise MetricsImportError(f"partner id {partner!r}: 1-64 characters a-z 0-9 _ . - starting with a-z or 0-9")
    source = open_file(args.file, args.encoding)  # the file's problems before any Kafka work
    settings = load()
    conn = settings.connection()
    _check_topic(conn, args.topic)

    keys = read_table(conn, args.keys_topic)
    if not any(record.get("partner") == partner for record in keys.values()):
        raise MetricsImportError(
            f"unknown partner {partner!r}: no API key of it on {args.keys_topic} (see `passerelle partners list`; "
            f"`passerelle partners add {partner} --scope metrics:write` makes one)"
        )
    campaigns = read_table(conn, args.campaigns_topic)
    _say(f"{len(campaigns)} campaign(s) read from {args.campaigns_topic}")
    today, now_ms = datetime.now(UTC).date(), time.time_ns() // 1_000_000
    judged = judge_file(source, partner, campaigns, today, now_ms)
    _say(f"{judged.lines} line(s) read, {len(judged.records)} valid, {judged.rejected_lines} rejected")

    problems = sorted(judged.problems, key=lambda p: p.line)
    for problem in problems[:MAX_SHOWN]:
        print(problem, file=sys.stderr)
    if len(problems) > MAX_SHOWN:
        print(f"... and {len(problems) - MAX_SHOWN} more problem(s)", file=sys.stderr)

    undelivered = 0
    published = 0
    if judged.records:
        writer = TopicWriter(conn, args.topic, "PartnerMetric", catalog_path=settings.catalog, timeout_s=60,
                             linger_ms=20)  # fmt: skip
        writer.start()
        try:
            total, next_pct = len(judged.records), 10
            for start in range(0, total, CHUNK):
                chunk = judged.records[start : start + CHUNK]
                results = writer.write_many([(r["metric_id"], r, None) for _, r in chunk])
                failed = [(line, why) for (line, _), why in zip(chunk, results, strict=True) if why]
                for line, why in failed[:MAX_SHOWN]:
                    print(f"line {line}: not published: {why}", file=sys.stderr)
                undelivered += len(failed)
                published += len(chunk) - len(failed)
                pct = (start + len(chunk)) * 100 // total
                if pct >= next_pct or start + len(chunk) == total:
                    _say(f"{start + len(chunk)}/{total} record(s) sent ({pct}%), {published} acknowledged")
                    next_pct = (pct // 10 + 1) * 10
        finally:
            writer.close()

    summary = [
        f"file           {args.file}",
        f"partner        {partner}",
        f"topic          {args.topic}",
        f"lines read     {judged.lines}",
        f"published      {published}",
        f"rejected       {judged.rejected_lines}",
    ]
    if judged.undeclared:
        summary.append(f"undeclared     {', '.join(sorted(judged.undeclared))} (accepted; declare them to join them)")
    if undelivered:
        summary.append(f"not delivered  {undelivered} (run the same command again: it replaces, never duplicates)")
    summary.append(f"elapsed        {time.monotonic() - started:.1f} s")
    print("\n".join(summary), flush=True)
    if undelivered:
        return EXIT_UNDELIVERED
    if judged.problems:
        _say(f"{judged.rejected_lines} line(s) rejected, the other lines published (exit {EXIT_REJECTED})")
        return EXIT_REJECTED
    return EXIT_OK


IMPORT_EPILOG = f"""\
file:
  UTF-8 CSV (a BOM is fine), delimiter , (or ; or tab, detected from the header), with the header

    {HEADER}

  columns in any order, names in any case, none missing and no other. One line per figure:
  date          the day it covers, yyyy-mm-dd, at most tomorrow
  campaign_key  a campaign this partner declared, a key nobody declared (accepted, listed as undeclared), or
                empty for an account-level figure; a campaign of another partner is rejected
  metric        amounts {", ".join(AMOUNTS)}; counts {", ".join(COUNTS)}
  value         a number >= 0 (decimal point '.')
  currency      ISO 4217 code (EUR, USD…) for an amount, empty for a count

  2026-11-29,RT-1,cost,12.5,EUR
  2026-11-29,RT-1,clicks,340,
  2026-11-29,,impressions,120000,

re-running:
  Each figure's Kafka key is partner|campaign_key|date|metric: importing a file again (or a corrected one)
  publishes the same keys, and consumers of partners.metrics keep the last value per key. Nothing is
  duplicated; a run that failed half-way is fixed by running it again.

exit codes:
  0  every line published
  1  nothing imported: unreadable file, wrong header, unknown partner, Kafka/registry/topic problem
  2  some lines rejected (listed on stderr: line, column, reason); the other lines were published
  3  some records not acknowledged by Kafka; run the same command again

example:
  passerelle metrics import retargeter-2026-11-29.csv --partner retargeter
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``metrics`` group and its ``import`` subcommand."""
    p = sub.add_parser(
        "metrics",
        help="partner metrics: import a partner's daily figures (cost, clicks…) from a CSV file",
        description="Partner metrics on partners.metrics. `import` publishes a partner's daily figures from a CSV "
        "file, with the rules of the partner API's POST /v1/metrics.",
    )
    group = p.add_subparsers(dest="metrics_command", metavar="ACTION")
    group.required = True
    q = group.add_parser(
        "import",
        help="import a partner's daily figures from a CSV file into partners.metrics",
        description="Read a CSV of daily figures for PARTNER (who must have an API key on partners.keys), check\n"
        "each line with the API's rules (campaign ownership from the campaigns table), report every bad line by\n"
        "line and column, and publish the good ones on partners.metrics (acks=all, idempotent producer), keyed by\n"
        "partner|campaign_key|date|metric. Progress and problems go to stderr, the summary to stdout.",
        epilog=IMPORT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    q.add_argument("file", type=Path, metavar="FILE", help=f"the CSV file ({HEADER})")
    q.add_argument("--partner", required=True, help="the partner the figures are of (its id, a-z 0-9 _ . -)")
    q.add_argument("--encoding", default="utf-8-sig", help="file encoding (default: UTF-8, with or without BOM)")
    q.add_argument("--topic", default=DEFAULT_TOPIC, help=f"topic to publish to (default {DEFAULT_TOPIC})")
    q.add_argument("--keys-topic", default="partners.keys", help="API keys table (default partners.keys)")
    q.add_argument("--campaigns-topic", default="campaigns", help="declared campaigns table (default campaigns)")
    q.set_defaults(func=_import)
