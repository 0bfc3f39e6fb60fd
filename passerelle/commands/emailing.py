"""``passerelle emailing``: deliver remarketing messages to the emailing partner (push or batch files)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from passerelle.errors import PasserelleError
from passerelle.settings import EmailingSettings, load


def _settings() -> EmailingSettings:
    settings = load(EmailingSettings)
    assert isinstance(settings, EmailingSettings)
    return settings


def _bridge(args: argparse.Namespace) -> int:
    from passerelle.connectors.emailing.bridge import run_bridge
    from passerelle.connectors.emailing.config import config_from_mapping

    s = _settings()
    if not s.emailing_partner_url:
        raise PasserelleError("PASSERELLE_EMAILING_PARTNER_URL is not set: where should messages go?")
    auth: dict[str, Any] = {"kind": s.emailing_auth_kind, "header": s.emailing_auth_header}
    if s.emailing_auth_secret is not None:
        auth["secret"] = s.emailing_auth_secret.get_secret_value()
    if s.emailing_auth_username:
        auth["username"] = s.emailing_auth_username
    config = config_from_mapping(
        {
            "bootstrap_servers": s.bootstrap_servers,
            "schema_registry_url": s.schema_registry_url,
            "partner_url": s.emailing_partner_url,
            "partner_name": s.emailing_partner_name,
            "auth": auth,
            "retry": {"max_attempts": s.emailing_max_attempts, "max_total_s": s.emailing_retry_budget_s},
            "request_timeout_s": s.emailing_request_timeout_s,
            "concurrency": s.emailing_concurrency,
            "catalog_path": str(s.catalog) if s.catalog else None,
            "auto_register_schemas": False,
            "group_id": args.group_id,
            "instance_id": s.instance_id,
            "metrics_port": s.metrics_port,
            "connection": s.connection(),
        }
    )
    run_bridge(config)
    return 0


def _export(args: argparse.Namespace) -> int:
    from passerelle.connectors.emailing.__main__ import _millis
    from passerelle.connectors.emailing.export import export_config_from_mapping, export_window

    s = _settings()
    config = export_config_from_mapping(
        {
            "bootstrap_servers": s.bootstrap_servers,
            "schema_registry_url": s.schema_registry_url,
            "out_dir": str(args.out_dir or s.emailing_export_dir),
            "catalog_path": str(s.catalog) if s.catalog else None,
            "connection": s.connection(),
        }
    )
    result = export_window(config, start_ms=_millis(args.start), end_ms=_millis(args.end), commit=args.commit)
    print(json.dumps({"count": result.count, "csv": str(result.csv_path), "jsonl": str(result.jsonl_path),
                      "committed": result.committed, "dead_letters": result.dead_letters}))  # fmt: skip
    return 0


def _standin(args: argparse.Namespace) -> int:
    from passerelle.connectors.emailing.standin import main as standin_main

    standin_main(["--port", str(args.port), "--seed", str(args.seed)])
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``emailing bridge|export|standin``."""
    p = sub.add_parser(
        "emailing",
        help="deliver remarketing.messages to the emailing partner (HTTP push, batch files, stand-in)",
        description="Carry remarketing messages to the emailing partner: `bridge` calls its HTTP API once per "
        "message (idempotency key = message id, retries with backoff, dead letter after the budget, outcome on "
        "remarketing.deliveries); `export` writes a CSV and a JSON-lines file per window for partners that pull; "
        "`standin` runs a fake partner that records requests and fails on command, for tests and demos.",
    )
    esub = p.add_subparsers(dest="emailing_command", metavar="ACTION")
    esub.required = True
    q = esub.add_parser(
        "bridge",
        help="push messages to the partner until SIGTERM",
        description="Consume remarketing.messages and call the partner for each, committing offsets only after "
        "the outcome is recorded.",
        epilog="Settings: PASSERELLE_EMAILING_PARTNER_URL (required), PASSERELLE_EMAILING_AUTH_KIND / _SECRET / "
        "_USERNAME / _HEADER, PASSERELLE_EMAILING_MAX_ATTEMPTS, PASSERELLE_EMAILING_RETRY_BUDGET_S, "
        "PASSERELLE_EMAILING_REQUEST_TIMEOUT_S, PASSERELLE_EMAILING_CONCURRENCY.",
    )
    q.add_argument("--group-id", default="passerelle-emailing", help="consumer group")
    q.set_defaults(func=_bridge)
    q = esub.add_parser(
        "export",
        help="write one CSV + one JSON-lines file for a window, atomically",
        description="Without --from: from the committed offsets to now, then commit. With --from: a time window, "
        "no commit unless --commit.",
    )
    q.add_argument("--from", dest="start", help="window start (ISO 8601 UTC or epoch ms)")
    q.add_argument("--to", dest="end", help="window end, exclusive (default: now)")
    q.add_argument("--out-dir", help="folder of the files (default: PASSERELLE_EMAILING_EXPORT_DIR)")
    q.add_argument("--commit", action=argparse.BooleanOptionalAction, default=None, help="commit offsets")
    q.set_defaults(func=_export)
    q = esub.add_parser("standin", help="run the partner stand-in", description="A fake emailing partner.")
    q.add_argument("--port", type=int, default=8099, help="port (default 8099)")
    q.add_argument("--seed", type=int, default=0, help="seed of the failure injection")
    q.set_defaults(func=_standin)
