"""``passerelle carts``: run the abandoned-cart tracker (hits.enriched -> carts.abandoned)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from passerelle.commands.processor import add_processor_parser
from passerelle.settings import CartSettings

if TYPE_CHECKING:  # the runtime (confluent-kafka) loads only when a processor runs, not for --help
    from passerelle.streams.runtime import Processor


def build(settings: CartSettings) -> Processor:
    """The cart tracker with the abandonment delay of ``settings``."""
    from passerelle.streams.carts.processor import CartTopics, CartTrackerProcessor

    return CartTrackerProcessor(CartTopics(), settings.to_config())


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``carts``."""
    add_processor_parser(
        sub,
        "carts",
        help="run the abandoned-cart tracker: hits.enriched -> carts.abandoned",
        description="Track each visitor's cart and last 6 viewed products from hits.enriched; when a non-empty "
        "cart sees no activity for PASSERELLE_CART_ABANDON_MINUTES (default 30), emit one CartAbandoned per cart "
        "episode to carts.abandoned. Exactly-once by default; stops cleanly on SIGTERM/SIGINT.",
        settings_cls=CartSettings,
        default_app_id="passerelle-carts",
        build=build,
        what="cart tracker",
    )
