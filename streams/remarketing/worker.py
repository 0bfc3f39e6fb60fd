"""Running one sequencer worker: metrics, the faust worker, and stopping at once on a fatal error."""

from __future__ import annotations

import logging
import os
import sys

from passerelle.schemas.clients.redact import redact
from passerelle.streams.remarketing.config import RemarketingConfig
from passerelle.streams.remarketing.metrics import RemarketingMetrics

log = logging.getLogger("passerelle.remarketing")


def halt(error: BaseException) -> None:
    """Exit now, as a crash would, without acknowledging the record at hand; the CLI's one-line error first.

    faust acknowledges the record an agent is on when the agent is stopped,
    and commits it on the way out: a record whose dead letter could not be
    written would be lost. Exiting without that keeps it on the input for the
    next start (at least once), as after a SIGKILL, which the sequencer is
    built to survive.
    """
    log.error("remarketing: stopping: %s", error)
    for handler in logging.getLogger().handlers:
        handler.flush()
    print(f"error: {redact(str(error))}", file=sys.stderr, flush=True)
    os._exit(int(getattr(error, "exit_code", 1)))


def run(config: RemarketingConfig, loglevel: str = "INFO") -> None:
    """Run one worker until SIGINT/SIGTERM (faust leaves the group and commits on the way out)."""
    import faust

    from passerelle.streams.remarketing.app import build_app

    metrics = RemarketingMetrics()
    if config.metrics_port:
        metrics.serve(config.metrics_port)
    app = build_app(config, metrics, on_fatal=halt)
    log.info("remarketing running as %s/%s (at_least_once)", config.app_id, config.instance_id)
    worker = faust.Worker(app, loglevel=loglevel, redirect_stdouts=False)
    try:
        worker.execute_from_commandline()
    finally:
        app.remarketing["dead_letters"].close()
