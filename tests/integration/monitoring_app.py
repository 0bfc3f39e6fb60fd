"""A runtime processor serving /metrics on ``PASSERELLE_METRICS_PORT``, for the monitoring's integration test.

    PASSERELLE_METRICS_PORT=N python -m tests.integration.monitoring_app --bootstrap B --registry R --app A \
        --input T --output O --dlq D

The runtime app of ``runtime_app`` ("count"), configured the way a passerelle
processor is: metrics from the environment, so the stack's discovery finds it.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os

from passerelle.streams.runtime import Runner
from tests.integration import runtime_app


def main() -> int:
    parser = argparse.ArgumentParser()
    for name in ("--bootstrap", "--registry", "--app", "--output", "--dlq"):
        parser.add_argument(name, required=True)
    parser.add_argument("--input", required=True, action="append")
    args = parser.parse_args()
    for name, default in (("instance", "0"), ("commit_ms", 100), ("alo", False)):
        setattr(args, name, default)
    logging.basicConfig(level=logging.WARNING)
    config = dataclasses.replace(runtime_app.config(args), metrics_port=int(os.environ["PASSERELLE_METRICS_PORT"]))
    runner = Runner(runtime_app.build("count", args.input, args.output, instance="0"), config)
    runner.install_signal_handlers()
    runner.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
