"""The ``passerelle`` command: one entry point, one sub-command module per job.

Errors a user can fix (``PasserelleError``) print as one line and exit
non-zero; ``--debug`` shows the traceback for everything else too.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Sequence

from passerelle.schemas.clients.redact import RedactingFilter, redact

# Sub-command modules, each exposing ``add_parser(subparsers)`` that sets
# ``func(args) -> int`` on its parser. Order is the order of ``--help``.
COMMAND_MODULES = (
    "passerelle.commands.stack",
    "passerelle.commands.registry",
    "passerelle.commands.schemas",
    "passerelle.commands.topics",
    "passerelle.commands.lag",
    "passerelle.commands.enrich",
    "passerelle.commands.carts",
    "passerelle.commands.campaign_counts",
    "passerelle.commands.crm_normalizer",
    "passerelle.commands.crm_activity",
    "passerelle.commands.postview",
    "passerelle.commands.conversion_paths",
    "passerelle.commands.warehouse",
    "passerelle.commands.attribution",
    "passerelle.commands.campaign_declarations",
    "passerelle.commands.crm",
    "passerelle.commands.metrics",
    "passerelle.commands.remarketing",
    "passerelle.commands.emailing",
    "passerelle.commands.connect",
    "passerelle.commands.demo",
    "passerelle.commands.demo_crm",
    "passerelle.commands.collector",
    "passerelle.commands.api",
    "passerelle.commands.partners",
    "passerelle.commands.query",
    "passerelle.commands.campaigns",
    "passerelle.commands.generate",
    "passerelle.commands.bench",
)


def build_parser() -> argparse.ArgumentParser:
    """Assemble the parser from every sub-command module."""
    import importlib

    parser = argparse.ArgumentParser(
        prog="passerelle",
        description="passerelle: typed, replayable data flows for digital analytics on Apache Kafka.",
        epilog="Settings come from PASSERELLE_* environment variables (see README). "
        "Run `passerelle COMMAND --help` for one command.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


def _print_traceback() -> None:
    print(redact(traceback.format_exc()), end="", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one sub-command; the return value is the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for handler in logging.getLogger().handlers:  # secrets are masked in every log line, --debug included
        handler.addFilter(RedactingFilter())
    if not args.debug:
        # HTTP clients log every request at INFO; only our own INFO lines help a user.
        for noisy in ("httpx", "httpx2", "httpcore", "uvicorn.access", "aiokafka", "faust", "mode"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        # librdkafka logs every failed connection attempt; what matters reaches us as an error of our own.
        logging.getLogger("librdkafka").setLevel(logging.CRITICAL)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if getattr(exc, "user_error", False):
            if args.debug:
                _print_traceback()
            print(f"error: {redact(str(exc))}", file=sys.stderr)
            return int(getattr(exc, "exit_code", 1))
        if args.debug:
            _print_traceback()
        else:
            first = redact(str(exc).splitlines()[0] if str(exc) else "")
            print(f"error: {type(exc).__name__}: {first} (run with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
