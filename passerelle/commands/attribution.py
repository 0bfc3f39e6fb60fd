"""``passerelle attribution markov``: data-driven attribution of a period, computed once, printed and published.

Not per event: the Markov removal effect needs every journey of the period,
converted or not, so it runs as a command (or a scheduled job: cron, a
Kubernetes CronJob) over ``hits.enriched`` and ``ads.postview``. The method
and its limits are in docs/attribution.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from typing import Any

from passerelle.errors import PasserelleError
from passerelle.settings import PasserelleSettings, load

DAY_MS = 86_400_000


def _instant(text: str) -> int:
    """Epoch ms of an ISO 8601 date or time (no offset: UTC)."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        example = "e.g. 2026-11-01 or 2026-11-01T12:00Z"
        raise PasserelleError(f"not an ISO 8601 date or time: {text!r} ({example})") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp() * 1000)


def period_of(args: argparse.Namespace, now_ms: int) -> tuple[str, int, int]:
    """(label, start, end) of the period the options name: ``--since``/``--until``, or the last ``--days``."""
    if args.since is None and args.until is None:
        if args.days <= 0:
            raise PasserelleError(f"--days must be at least 1, got {args.days}")
        return args.label or f"last-{args.days}-days", now_ms - args.days * DAY_MS, now_ms
    if args.since is None:
        raise PasserelleError("--until needs --since")
    start = _instant(args.since)
    end = _instant(args.until) if args.until is not None else now_ms
    if start >= end:
        raise PasserelleError(f"the period is empty: --since {args.since} is not before its end")
    label = args.label or f"{args.since}..{args.until or 'now'}"
    return label, start, end


def compute(journeys: list[tuple[list[str], bool]], label: str, start: int, end: int, now_ms: int) -> dict[str, Any]:
    """The ``MarkovAttribution`` record of these journeys."""
    from passerelle.streams.conversion_paths.markov import markov_credits, removal_effects

    counted = [j for j in journeys if j[0]]
    conversions = sum(1 for _, converted in counted if converted)
    effects = removal_effects(counted)
    credited = markov_credits(counted, float(conversions)) if effects else {}
    total = sum(credited.values())
    channels = [
        {"channel": c, "removal_effect": effects[c], "credit": credited[c] / total if total else 0.0,
         "conversions": credited[c]}
        for c in sorted(effects, key=lambda c: (-credited.get(c, 0.0), c))
    ]  # fmt: skip
    return {"period": label, "period_start": start, "period_end": end, "computed_at": now_ms,
            "journeys": len(counted), "conversions": conversions, "channels": channels}  # fmt: skip


def _markov(args: argparse.Namespace) -> int:
    from passerelle.schemas.clients.period import read_period
    from passerelle.streams.conversion_paths.journeys import journeys

    settings = load(PasserelleSettings)
    conn = settings.connection()
    now_ms = int(time.time() * 1000)
    label, start, end = period_of(args, now_ms)

    def progress(what: str) -> Any:
        return lambda n: print(f"{what}: {n:,} records read", file=sys.stderr, flush=True)

    shown = f"{_day(start)} to {_day(end)}"
    print(f"reading {args.hits_topic} and {args.postview_topic} from {shown} ...", file=sys.stderr, flush=True)
    hits = [h for h in read_period(conn, args.hits_topic, start, end, progress(args.hits_topic))]
    postviews = [] if args.postview_channel == "" else list(
        read_period(conn, args.postview_topic, start, end, progress(args.postview_topic))
    )
    paths = journeys(hits, postviews, args.postview_channel)
    record = compute(paths, label, start, end, now_ms)
    print(f"{len(hits):,} hits, {len(postviews):,} post-view exposures: {record['journeys']:,} journeys, "
          f"{record['conversions']:,} ending in an order", file=sys.stderr)  # fmt: skip
    if args.json:
        print(json.dumps(record, sort_keys=True))
    else:
        _table(record)
    if not args.no_publish:
        _publish(conn, args.topic, record)
        print(f"published on {args.topic} under the key {label!r}", file=sys.stderr)
    return 0


def _day(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _table(record: dict[str, Any]) -> None:
    if not record["channels"]:
        print("no journey ended in an order in this period: nothing to attribute")
        return
    header = ("CHANNEL", "REMOVAL EFFECT", "CREDIT", "ORDERS")
    rows = [(c["channel"], f"{c['removal_effect']:.3f}", f"{c['credit']:.1%}", f"{c['conversions']:.1f}")
            for c in record["channels"]]  # fmt: skip
    widths = [max(len(str(v)) for v in column) for column in zip(header, *rows, strict=False)]
    for row in (header, *rows):
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def _publish(conn: Any, topic: str, record: dict[str, Any]) -> None:
    from passerelle.connectors.partner_api.config import ApiStartupError
    from passerelle.connectors.partner_api.tables import TopicWriter

    writer = TopicWriter(conn, topic, "MarkovAttribution")
    try:
        writer.start()
        writer.write(record["period"], record)
    except (ApiStartupError, RuntimeError) as exc:
        raise PasserelleError(f"the result was computed but not published: {exc}") from exc
    finally:
        writer.close()


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``attribution``."""
    p = sub.add_parser(
        "attribution",
        help="data-driven attribution: the Markov removal-effect model over a period",
        description="Batch attribution models computed over a period, not per event (the per-conversion models "
        "are in every ConversionPath of conversions.paths).",
    )
    s = p.add_subparsers(dest="attribution_command", metavar="COMMAND", required=True)
    q = s.add_parser(
        "markov",
        help="Markov removal effect of each channel over a period; printed and published on attribution.markov",
        description="Rebuild every person's journeys of the period from hits.enriched (one touchpoint per visit, "
        "its medium as channel) and ads.postview (one per exposure), stitched by the customer id the hits carry, "
        "each cut at its orders: converting and non-converting journeys. Fit a first-order Markov chain "
        "(start -> channels -> order | nothing) and give each channel its removal effect (how much less often "
        "journeys end in an order without it), normalised into a credit and a share of the orders. The result "
        "is printed and published on attribution.markov, keyed by the period's label (the latest run per "
        "label is kept). See docs/attribution.md for the formula and its limits. Reads every record of the "
        "period: schedule it (daily) rather than run it per request.",
        epilog="Settings: PASSERELLE_BOOTSTRAP_SERVERS, PASSERELLE_SCHEMA_REGISTRY_URL (and the connection "
        "settings). Examples: `passerelle attribution markov --days 30`; `passerelle attribution markov "
        "--since 2026-11-01 --until 2026-12-01 --label 2026-11`.",
    )
    q.add_argument("--days", type=int, default=30, help="the last DAYS days up to now (default 30)")
    q.add_argument("--since", help="start of the period, ISO 8601 (UTC without offset); instead of --days")
    q.add_argument("--until", help="end of the period, exclusive (default: now)")
    q.add_argument("--label", help="the key the result is published under (default: the period as given)")
    q.add_argument("--hits-topic", default="hits.enriched", help="enriched hits (default: hits.enriched)")
    q.add_argument("--postview-topic", default="ads.postview", help="post-view exposures (default: ads.postview)")
    q.add_argument("--postview-channel", default="display (post-view)",
                   help="channel name of exposures, as conversion-paths names them; '' leaves them out")  # fmt: skip
    q.add_argument("--topic", default="attribution.markov", help="where to publish (default: attribution.markov)")
    q.add_argument("--no-publish", action="store_true", help="print only")
    q.add_argument("--json", action="store_true", help="print the record as JSON instead of a table")
    q.set_defaults(func=_markov)

