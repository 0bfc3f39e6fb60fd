"""One instance of the rebalance benchmark's processor (see ``bench.rebalance``), run as its own process.

    python -m bench.rebalance_worker STRATEGY INSTANCE --bootstrap B --registry R \
        --input T --output O --dlq D --app-id APP

The bench job (decode a hit, join CRM attributes, encode) as a passerelle
processor, exactly-once, with ``RunnerConfig(assignment_strategy=STRATEGY)``.
It prints one JSON line per membership event on stdout (``subscribed``,
``assign``, ``revoke``, ``lost``, each with the wall-clock time in ms and
how long the runtime's callback took) and a last ``exit`` line with its
counts. It stops on SIGTERM (finish the batch, commit, leave the group) or
after ``--max-seconds``.

``--state`` makes the job stateful: per visitor, a hit count and the last six
URLs (~200 bytes, like the cart tracker's viewed products) in a store with a
changelog, so a partition that moves must be restored. ``--no-keep`` turns
off the runner's keeping of state across an eager rebalance (every partition
is then read back from its changelog after each rebalance), to measure it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from bench.job import ENRICHED_SCHEMA, crm_table
from bench.runner import Join
from passerelle.streams.runtime import Context, InRecord, OutRecord, Runner, RunnerConfig, StoreSpec

VISITS: StoreSpec[Any] = StoreSpec("visits")


class StatefulJoin(Join):
    """The bench job, keeping per visitor a hit count and the last six URLs."""

    stores = (VISITS,)

    def process(self, records: Sequence[InRecord], ctx: Context) -> Iterable[OutRecord]:
        visits = ctx.store(VISITS)
        for r in records:
            visitor = r.value["visitor_id"]
            seen = visits.get(visitor) or {"hits": 0, "urls": []}
            visits.put(visitor, {"hits": seen["hits"] + 1, "urls": [*seen["urls"][-5:], r.value["url"]]})
        return super().process(records, ctx)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _event(kind: str, **fields: Any) -> None:
    print(json.dumps({"event": kind, "t": _now_ms(), **fields}), flush=True)


class ObservedRunner(Runner):
    """The runtime's runner, reporting when the group changes its assignment (behaviour unchanged)."""

    def _setup(self) -> None:
        super()._setup()
        _event("subscribed")

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        started = time.perf_counter()
        super()._on_assign(consumer, partitions)
        _event("assign", partitions=sorted(tp.partition for tp in partitions),
               callback_ms=(time.perf_counter() - started) * 1000)  # fmt: skip

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        started = time.perf_counter()
        super()._on_revoke(consumer, partitions)
        _event("revoke", partitions=sorted(tp.partition for tp in partitions),
               callback_ms=(time.perf_counter() - started) * 1000)  # fmt: skip

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        started = time.perf_counter()
        super()._on_lost(consumer, partitions)
        _event("lost", partitions=sorted(tp.partition for tp in partitions),
               callback_ms=(time.perf_counter() - started) * 1000)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rebalance_worker")
    parser.add_argument("strategy", choices=["range", "roundrobin", "cooperative-sticky"])
    parser.add_argument("instance", help="instance id (names the transactional producer)")
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--registry", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--dlq", required=True)
    parser.add_argument("--app-id", required=True)
    parser.add_argument("--commit-ms", type=int, default=100)
    parser.add_argument("--heartbeat-ms", type=int, default=None, help="heartbeat.interval.ms (librdkafka's default)")
    parser.add_argument("--max-seconds", type=float, default=300, help="stop by itself after this long")
    parser.add_argument("--state", action="store_true", help="keep per-visitor state (a store with a changelog)")
    parser.add_argument("--no-keep", action="store_true", help="restore every partition after an eager rebalance")
    args = parser.parse_args(argv)
    log_format = "%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format=log_format, datefmt="%H:%M:%S")

    runner_class = ObservedRunner
    if args.no_keep:

        class NoKeepRunner(ObservedRunner):
            def _park(self, contexts: dict[int, Context]) -> None:
                return None

        runner_class = NoKeepRunner
    runner = runner_class(
        (StatefulJoin if args.state else Join)("bench-rebalance", args.input, args.output, crm_table()),
        RunnerConfig(
            app_id=args.app_id,
            bootstrap_servers=args.bootstrap,
            schema_registry_url=args.registry,
            output_schemas={args.output: ENRICHED_SCHEMA},
            instance_id=args.instance,
            exactly_once=True,
            commit_interval_ms=args.commit_ms,
            dead_letter_topic=args.dlq,
            assignment_strategy=args.strategy,
            consumer_overrides={} if args.heartbeat_ms is None else {"heartbeat.interval.ms": args.heartbeat_ms},
        ),
    )
    runner.install_signal_handlers()
    runner.run(max_seconds=args.max_seconds)
    _event("exit", records_in=runner.records_in, records_out=runner.records_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
