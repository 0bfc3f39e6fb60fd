"""``passerelle carts``: run the abandoned-cart tracker (hits.enriched -> carts.abandoned)."""

from __future__ import annotations

import argparse
import logging

from passerelle.commands.enrich import output_schemas, runner_config
from passerelle.settings import ProcessorSettings, load
from schemas.catalog import load_catalog

log = logging.getLogger(__name__)


def _carts(args: argparse.Namespace) -> int:
    from streams.carts.processor import CartTopics, CartTrackerProcessor
    from streams.carts.tracker import CartConfig
    from streams.runtime import Runner

    settings = load(ProcessorSettings)
    assert isinstance(settings, ProcessorSettings)
    catalog = load_catalog(settings.catalog)
    processor = CartTrackerProcessor(
        CartTopics(), CartConfig(abandon_after_ms=int(settings.cart_abandon_minutes * 60_000))
    )
    runner = Runner(processor, runner_config(settings, args.app_id, output_schemas(catalog, list(processor.outputs)),
                                             output_schemas(catalog, list(processor.inputs))))  # fmt: skip
    runner.install_signal_handlers()
    log.info("cart tracker running as %s/%s (%s)", args.app_id, settings.instance_id, settings.processing_guarantee)
    runner.run()
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``carts``."""
    p = sub.add_parser(
        "carts",
        help="run the abandoned-cart tracker: hits.enriched -> carts.abandoned",
        description="Track each visitor's cart and last 6 viewed products from hits.enriched; when a non-empty "
        "cart sees no activity for PASSERELLE_CART_ABANDON_MINUTES (default 30), emit one CartAbandoned per cart "
        "episode to carts.abandoned. Exactly-once by default; stops cleanly on SIGTERM/SIGINT.",
        epilog="Settings: as `passerelle enrich` (PASSERELLE_INSTANCE_ID, PASSERELLE_PROCESSING_GUARANTEE, ...) and "
        "PASSERELLE_CART_ABANDON_MINUTES.",
    )
    p.add_argument("--app-id", default="passerelle-carts", help="consumer group and changelog prefix")
    p.set_defaults(func=_carts)
