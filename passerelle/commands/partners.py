"""``passerelle partners add | list | revoke``: the partner API's keys, on the compacted ``partners.keys`` topic.

A key is shown once, by ``add``; the topic keeps only its scrypt hash. A
running ``passerelle api`` follows the topic: a key added works, a key
revoked is refused (401), within about a second, without a restart.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from passerelle.errors import PasserelleError
from passerelle.settings import PasserelleSettings, load

if TYPE_CHECKING:
    from passerelle.schemas.clients import Connection

DEFAULT_TOPIC = "partners.keys"


def _conn() -> tuple[Connection, Any]:
    settings = load(PasserelleSettings)
    return settings.connection(), settings.catalog


def read_keys(conn: Connection, topic: str) -> dict[str, dict[str, Any]]:
    """The current table of ``topic``, by key id."""
    from passerelle.connectors.partner_api.tables import TableFollower

    table = TableFollower(conn, topic)
    table.start(timeout_s=30)
    try:
        return table.snapshot()
    finally:
        table.close()


def write_key(conn: Connection, topic: str, catalog: Any, record: dict[str, Any]) -> None:
    from passerelle.connectors.partner_api.tables import TopicWriter

    writer = TopicWriter(conn, topic, "PartnerKey", catalog_path=catalog)
    writer.start()
    try:
        writer.write(record["key_id"], record)
    except RuntimeError as exc:
        raise PasserelleError(str(exc)) from None
    finally:
        writer.close()


def _when(ms: int | None) -> str:
    return "-" if ms is None else datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _add(args: argparse.Namespace) -> int:
    from passerelle.connectors.partner_api.campaign_rules import PARTNER_ID
    from passerelle.connectors.partner_api.keys import new_key

    if not PARTNER_ID.fullmatch(args.partner):
        raise PasserelleError(f"partner id {args.partner!r}: 1-64 characters a-z 0-9 _ . - starting with a-z or 0-9")
    try:
        made = new_key(args.partner, args.scope or [], int(time.time() * 1000), label=args.label)
    except ValueError as exc:
        raise PasserelleError(str(exc)) from None
    conn, catalog = _conn()
    write_key(conn, args.topic, catalog, made.record)
    print(made.api_key)
    print(
        f"key {made.key_id} for partner {args.partner} ({', '.join(made.record['scopes'])}) published on "
        f"{args.topic}; the key above is shown only once: give it to the partner now",
        file=sys.stderr,
    )
    return 0


def _list(args: argparse.Namespace) -> int:
    conn, _ = _conn()
    rows = sorted(read_keys(conn, args.topic).values(), key=lambda r: (r["partner"], r["created_at"]))
    if args.partner:
        rows = [r for r in rows if r["partner"] == args.partner]
    if not rows:
        print(f"no key on {args.topic}", file=sys.stderr)
        return 0
    header = ("KEY ID", "PARTNER", "SCOPES", "CREATED", "REVOKED", "LABEL")
    lines = [
        (r["key_id"], r["partner"], ",".join(r["scopes"]), _when(r["created_at"]), _when(r.get("revoked_at")),
         r.get("label") or "")
        for r in rows
    ]  # fmt: skip
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *lines, strict=False)]
    for line in (header, *lines):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
    return 0


def _revoke(args: argparse.Namespace) -> int:
    conn, catalog = _conn()
    record = read_keys(conn, args.topic).get(args.key_id)
    if record is None:
        raise PasserelleError(f"no key {args.key_id!r} on {args.topic} (see `passerelle partners list`)")
    if record.get("revoked_at") is not None:
        print(f"key {args.key_id} was already revoked at {_when(record['revoked_at'])}", file=sys.stderr)
        return 0
    write_key(conn, args.topic, catalog, {**record, "revoked_at": int(time.time() * 1000)})
    print(f"key {args.key_id} of partner {record['partner']} revoked", file=sys.stderr)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``partners``."""
    from passerelle.connectors.partner_api.keys import SCOPES

    p = sub.add_parser(
        "partners",
        help="partner API keys: add, list, revoke",
        description="Manage the partner API's keys. They live hashed on the compacted topic partners.keys; a "
        "running `passerelle api` follows it, so changes apply within seconds without a restart.",
    )
    group = p.add_subparsers(dest="partners_command", metavar="ACTION")
    group.required = True
    topic = argparse.ArgumentParser(add_help=False)
    topic.add_argument("--topic", default=DEFAULT_TOPIC, help=f"keys topic (default: {DEFAULT_TOPIC})")

    add = group.add_parser(
        "add",
        parents=[topic],
        help="make a key for a partner (printed once)",
        description="Make an API key <key_id>.<secret> for PARTNER with the given scopes, publish its hash and "
        "print the key on stdout, once: it cannot be shown again.",
        epilog=f"Scopes: {', '.join(SCOPES)}.",
    )
    add.add_argument("partner", metavar="PARTNER", help="partner id (a-z 0-9 _ . -)")
    add.add_argument("--scope", action="append", choices=SCOPES, help="a scope the key grants (repeat it)")
    add.add_argument("--label", help="what the key is for (shown by list)")
    add.set_defaults(func=_add)

    lst = group.add_parser(
        "list", parents=[topic], help="the keys (never their secrets)", description="Print every key: id, partner, "
        "scopes, creation and revocation times, label. Secrets are not stored, so never shown."
    )  # fmt: skip
    lst.add_argument("--partner", help="only this partner's keys")
    lst.set_defaults(func=_list)

    rev = group.add_parser(
        "revoke",
        parents=[topic],
        help="revoke a key (refused by the API within seconds)",
        description="Mark KEY_ID revoked on the keys topic; a running API refuses it (401) within seconds.",
    )
    rev.add_argument("key_id", metavar="KEY_ID", help="the key id (the part before the dot)")
    rev.set_defaults(func=_revoke)
