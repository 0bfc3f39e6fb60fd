"""Processors used by the runtime's integration tests, runnable as a subprocess (to kill -9 it).

    python -m tests.integration.runtime_app count|timer --bootstrap B --registry R --app A \
        --input T --output O --dlq D [--alo] [--instance I]
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterable, Sequence
from typing import ClassVar

from streams.runtime import (
    Context,
    ErrorBudget,
    InRecord,
    OutRecord,
    Processor,
    Runner,
    RunnerConfig,
    StoreSpec,
    TableSpec,
    Timer,
)
from tests.integration.kafka_helpers import json_schema

IN_SCHEMA = json_schema("Probe", [("event_id", "string"), ("visitor_id", "string"), ("n", "long")])
OUT_SCHEMA = json_schema(
    "Counted",
    [("event_id", "string"), ("visitor_id", "string"), ("count", "long"), ("label", ["null", "string"])],
)
LABEL_SCHEMA = json_schema("Label", [("label", "string")])


class CountingJoin(Processor):
    """Counts events per visitor (keyed state) and joins a label from a lookup table."""

    name = "counting-join"
    stores = (StoreSpec("counts"),)

    def process_one(self, record: InRecord, ctx: Context) -> Iterable[OutRecord]:
        value = record.value
        if value["n"] < 0:
            raise ValueError(f"negative n {value['n']}")
        counts = ctx.store("counts")
        count = counts.get(value["visitor_id"], 0) + 1
        counts.put(value["visitor_id"], count)
        label = None
        if self.tables:
            entry = ctx.table("labels").get(value["visitor_id"])
            label = entry["label"] if entry else None
        out = {"event_id": value["event_id"], "visitor_id": value["visitor_id"], "count": count, "label": label}
        return [OutRecord(self.outputs[0], record.key, out)]


class WallTimer(Processor):
    """Arms a wall-clock timer per record; emits once when it fires."""

    name = "wall-timer"
    delay_ms: ClassVar[int] = 1500

    def process_one(self, record: InRecord, ctx: Context) -> None:
        ctx.timers.schedule(record.value["event_id"], ctx.now() + self.delay_ms, kind="wall",
                            payload=record.value["visitor_id"])  # fmt: skip

    def on_timer(self, timers: Sequence[Timer], ctx: Context) -> Iterable[OutRecord]:
        return [
            OutRecord(self.outputs[0], t.payload, {"event_id": t.key, "visitor_id": t.payload, "count": 1,
                                                   "label": "fired"})
            for t in timers
        ]  # fmt: skip


def build(kind: str, inputs: list[str], output: str, table: str | None = None) -> Processor:
    base = {"count": CountingJoin, "timer": WallTimer}[kind]
    attrs: dict[str, object] = {"inputs": tuple(inputs), "outputs": (output,)}
    if table:
        attrs["tables"] = (TableSpec("labels", table),)
    cls = type(base.__name__ + "Configured", (base,), attrs)
    return cls()


def config(args: argparse.Namespace) -> RunnerConfig:
    return RunnerConfig(
        app_id=args.app,
        bootstrap_servers=args.bootstrap,
        schema_registry_url=args.registry,
        output_schemas={args.output: OUT_SCHEMA},
        instance_id=args.instance,
        exactly_once=not args.alo,
        dead_letter_topic=args.dlq,
        static_membership=True,
        error_budget=ErrorBudget(max_ratio=0.5),
        commit_interval_ms=args.commit_ms,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["count", "timer"])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--registry", required=True)
    parser.add_argument("--app", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--dlq", required=True)
    parser.add_argument("--instance", default="0")
    parser.add_argument("--commit-ms", type=int, default=100)
    parser.add_argument("--alo", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    runner = Runner(build(args.kind, [args.input], args.output), config(args))
    runner.install_signal_handlers()
    runner.run()


if __name__ == "__main__":
    main()
