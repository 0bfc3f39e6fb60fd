"""The remarketing sequencer as a subprocess for the tests: `passerelle remarketing` on topics of their own.

    PASSERELLE_...=... python -m tests.integration.remarketing_app --app-id A --topics '{"carts_abandoned": ...}' \
        [--session-timeout-ms 6000]

Settings come from the same ``PASSERELLE_*`` variables through the same
function as the command (``passerelle.commands.remarketing.remarketing_config``);
only the topic names differ (unique per test, so their output subjects are
registered here rather than by ``passerelle schemas register``), and the
session timeout (a killed worker's partitions move sooner).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging

from passerelle.commands.remarketing import remarketing_config
from passerelle.settings import RemarketingSettings, load
from passerelle.streams.remarketing.config import RemarketingTopics
from passerelle.streams.remarketing.worker import run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--app-id", required=True)
    parser.add_argument("--topics", required=True, help="RemarketingTopics fields as JSON")
    parser.add_argument("--session-timeout-ms", type=int, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    settings = load(RemarketingSettings)
    assert isinstance(settings, RemarketingSettings)
    config = remarketing_config(settings, args.app_id, RemarketingTopics(**json.loads(args.topics)))
    config = dataclasses.replace(config, auto_register_schemas=True)
    if args.session_timeout_ms is not None:
        config = dataclasses.replace(config, session_timeout_ms=args.session_timeout_ms)
    run(config)


if __name__ == "__main__":
    main()
