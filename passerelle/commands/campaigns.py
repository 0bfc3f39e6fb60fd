"""``passerelle campaigns undeclared``: campaign tags seen on hits that no partner declared.

Reads the compacted ``campaigns.undeclared`` topic the enrichment reports
tags to, less the keys declared on ``campaigns`` since.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import Any

from passerelle.settings import PasserelleSettings, load


def undeclared(conn: Any, topic: str, campaigns_topic: str) -> list[dict[str, Any]]:
    """The drafts of ``topic`` whose key ``campaigns_topic`` does not hold, by key."""
    from passerelle.connectors.partner_api.tables import TableFollower

    tables = [TableFollower(conn, topic), TableFollower(conn, campaigns_topic)]
    try:
        for table in tables:
            table.start(timeout_s=30)
        drafts, declared = tables[0].snapshot(), tables[1].snapshot()
    finally:
        for table in tables:
            table.close()
    return [draft for key, draft in sorted(drafts.items()) if key not in declared]


def _undeclared(args: argparse.Namespace) -> int:
    conn = load(PasserelleSettings).connection()
    drafts = undeclared(conn, args.topic, args.campaigns_topic)
    if args.json:
        for draft in drafts:
            print(json.dumps(draft, sort_keys=True))
        return 0
    if not drafts:
        print("no undeclared campaign tag", file=sys.stderr)
        return 0
    header = ("KEY", "MEDIUM", "SOURCE", "REPORTED", "SEEN ON")
    rows = [
        (d["key"], d.get("medium") or "", "" if d.get("partner") in (None, "unknown") else d["partner"],
         datetime.fromtimestamp(d["declared_at"] / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
         d.get("tagged_url_template") or "")
        for d in drafts
    ]  # fmt: skip
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=False)]
    for row in (header, *rows):
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``campaigns``."""
    p = sub.add_parser(
        "campaigns",
        help="campaign declarations: the undeclared tags",
        description="Campaign declarations as the platform sees them.",
    )
    group = p.add_subparsers(dest="campaigns_command", metavar="ACTION")
    group.required = True
    und = group.add_parser(
        "undeclared",
        help="campaign tags seen on hits that nobody declared",
        description="Print the campaign tags the enrichment reported on campaigns.undeclared that are still not "
        "declared on campaigns: key, medium, source, when first reported, the URL it was seen on. Partners declare "
        "them with POST /v1/campaigns/undeclared/{key}/declare (`passerelle api`).",
    )
    und.add_argument("--topic", default="campaigns.undeclared", help="undeclared tags topic")
    und.add_argument("--campaigns-topic", default="campaigns", help="declared campaigns topic")
    und.add_argument("--json", action="store_true", help="one JSON object per line (the Campaign draft)")
    und.set_defaults(func=_undeclared)
