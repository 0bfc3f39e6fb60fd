"""Development entry point: ``python -m passerelle.connectors.emailing bridge|export|standin``.

The ``passerelle`` command builds the same configs from ``PASSERELLE_*``
settings; this one reads a JSON file (keys of ``EmailingConfig`` or
``ExportConfig``), which is what the integration tests use to run a bridge as
a real subprocess they can kill. Put secrets in the environment and name them
with ``"auth": {"kind": "bearer", "secret_env": "VAR"}``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from passerelle.connectors.emailing.config import EmailingStartupError, config_from_mapping


def _load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EmailingStartupError(f"cannot read config {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise EmailingStartupError(f"config {path} must hold a JSON object")
    return data


def _millis(text: str | None) -> int | None:
    if text is None:
        return None
    if text.isdigit():
        return int(text)
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise EmailingStartupError(f"{text!r}: give a UTC offset (e.g. 2024-11-28T13:00:00Z)")
    return int(moment.timestamp() * 1000)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m passerelle.connectors.emailing")
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)
    bridge = sub.add_parser("bridge", help="push remarketing messages to the partner until SIGTERM")
    bridge.add_argument("--config", type=Path, required=True, help="JSON file of EmailingConfig fields")
    export = sub.add_parser("export", help="write one CSV + one JSON-lines file for a window")
    export.add_argument("--config", type=Path, required=True, help="JSON file of ExportConfig fields")
    export.add_argument("--from", dest="start", help="window start (ISO 8601 UTC or epoch ms); default: committed")
    export.add_argument("--to", dest="end", help="window end, exclusive (default: now)")
    export.add_argument(
        "--commit",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="commit the export group's offsets (default: only without --from)",
    )
    standin = sub.add_parser("standin", help="run the partner stand-in")
    standin.add_argument("standin_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for chatty in ("httpx", "httpx2"):  # one INFO line per request, URLs included: not for production logs
        logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        if args.command == "bridge":
            from passerelle.connectors.emailing.bridge import run_bridge

            run_bridge(config_from_mapping(_load(args.config)))
        elif args.command == "export":
            from passerelle.connectors.emailing.export import export_config_from_mapping, export_window

            result = export_window(
                export_config_from_mapping(_load(args.config)),
                start_ms=_millis(args.start),
                end_ms=_millis(args.end),
                commit=args.commit,
            )
            print(
                json.dumps(
                    {
                        "count": result.count,
                        "csv": str(result.csv_path),
                        "jsonl": str(result.jsonl_path),
                        "committed": result.committed,
                        "dead_letters": result.dead_letters,
                        "unsafe_urls": result.unsafe_urls,
                    }
                )
            )
        else:
            from passerelle.connectors.emailing.standin import main as standin_main

            standin_main(args.standin_args)
    except Exception as exc:
        if getattr(exc, "user_error", False):
            print(f"error: {exc}", file=sys.stderr)
            return int(getattr(exc, "exit_code", 2))
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
