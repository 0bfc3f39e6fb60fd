"""The cart tracker as a subprocess (so the tests can kill -9 it), with a compressed delay.

    python -m tests.integration.carts_app --bootstrap B --registry R --app A --hits T --out O \
        --crm C --dlq D --abandon-after-ms 4000 [--instance I]
"""

from __future__ import annotations

import argparse
import logging

from passerelle.schemas.catalog import load_catalog
from passerelle.streams.carts.processor import CartTopics, CartTrackerProcessor
from passerelle.streams.carts.tracker import CartConfig
from passerelle.streams.runtime import Runner, RunnerConfig


def build(args: argparse.Namespace) -> Runner:
    topics = CartTopics(hits_enriched=args.hits, carts_abandoned=args.out, crm_profiles=args.crm,
                        privacy_requests=None)  # privacy requests: test_cart_tracker.py's in-process runs  # fmt: skip
    processor = CartTrackerProcessor(topics, CartConfig(abandon_after_ms=args.abandon_after_ms))
    return Runner(
        processor,
        RunnerConfig(
            app_id=args.app,
            bootstrap_servers=args.bootstrap,
            schema_registry_url=args.registry,
            output_schemas={topics.carts_abandoned: load_catalog().schema_text("CartAbandoned")},
            instance_id=args.instance,
            dead_letter_topic=args.dlq,
            static_membership=True,
        ),
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("--bootstrap", "--registry", "--app", "--hits", "--out", "--crm", "--dlq"):
        parser.add_argument(name, required=True)
    parser.add_argument("--instance", default="0")
    parser.add_argument("--abandon-after-ms", type=int, default=4000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    runner = build(args)
    runner.install_signal_handlers()
    runner.run()


if __name__ == "__main__":
    main()
