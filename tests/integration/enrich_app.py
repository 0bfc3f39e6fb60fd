"""The enrichment processor as a subprocess (so the tests can kill -9 it), on topics named from a prefix.

    python -m tests.integration.enrich_app --bootstrap B --registry R --app A --prefix P --dlq D \
        [--instance I] [--metrics-port M] [--registry-retry-max-s S]

Topics: ``P.hits.raw``, ``P.hits.enriched``, ``P.identity.links``, ``P.campaigns``,
``P.campaigns.undeclared``, ``P.crm.profiles`` (see ``topics``). Exactly-once,
static membership, the catalog's ``Hit`` as the reader schema of the input (a
record of another shape is poison), a short registry back-off.
"""

from __future__ import annotations

import argparse
import logging

from passerelle.schemas.catalog import load_catalog
from passerelle.streams.enrichment.processor import EnrichmentProcessor, EnrichmentTopics
from passerelle.streams.runtime import Runner, RunnerConfig


def topics(prefix: str) -> EnrichmentTopics:
    return EnrichmentTopics(
        hits_raw=f"{prefix}.hits.raw",
        hits_enriched=f"{prefix}.hits.enriched",
        identity_links=f"{prefix}.identity.links",
        campaigns=f"{prefix}.campaigns",
        undeclared=f"{prefix}.campaigns.undeclared",
        crm_profiles=f"{prefix}.crm.profiles",
        privacy_requests=None,  # privacy requests: tests/integration/test_enrichment.py
    )


def build(args: argparse.Namespace) -> Runner:
    t = topics(args.prefix)
    schema = load_catalog().schema_text
    return Runner(
        EnrichmentProcessor(t),
        RunnerConfig(
            app_id=args.app,
            bootstrap_servers=args.bootstrap,
            schema_registry_url=args.registry,
            output_schemas={
                t.hits_enriched: schema("EnrichedHit"),
                t.identity_links: schema("IdentityLink"),
                t.undeclared: schema("Campaign"),
            },
            input_schemas={t.hits_raw: schema("Hit")},
            instance_id=args.instance,
            exactly_once=True,
            dead_letter_topic=args.dlq,
            static_membership=True,
            metrics_port=args.metrics_port,
            registry_retry_max_s=args.registry_retry_max_s,
        ),
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("--bootstrap", "--registry", "--app", "--prefix", "--dlq"):
        parser.add_argument(name, required=True)
    parser.add_argument("--instance", default="0")
    parser.add_argument("--metrics-port", type=int, default=None)
    parser.add_argument("--registry-retry-max-s", type=float, default=0.5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    runner = build(args)
    runner.install_signal_handlers()
    runner.run()


if __name__ == "__main__":
    main()
