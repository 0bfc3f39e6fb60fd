"""Processors used by the runtime's integration tests, runnable as a subprocess (to kill -9 it).

    python -m tests.integration.runtime_app count|timer|join|flaky-timer|crash-count --bootstrap B --registry R \
        --app A --input T [--input T2] --output O --dlq D [--alo] [--instance I] [--state rocksdb --state-dir D]

Errors a user can fix print as one ``error:`` line and set the exit status, as the ``passerelle`` CLI does.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from passerelle.streams.runtime import (
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
from passerelle.streams.runtime.stores import StateConfig
from tests.integration.kafka_helpers import json_schema

COUNTS: StoreSpec[Any] = StoreSpec("counts")

IN_SCHEMA = json_schema("Probe", [("event_id", "string"), ("visitor_id", "string"), ("n", "long")])
OUT_SCHEMA = json_schema(
    "Counted",
    [("event_id", "string"), ("visitor_id", "string"), ("count", "long"), ("label", ["null", "string"])],
)
LABEL_SCHEMA = json_schema("Label", [("label", "string")])


class CountingJoin(Processor):
    """Counts events per visitor (keyed state) and joins a label from a lookup table."""

    name = "counting-join"
    stores = (COUNTS,)

    def process_one(self, record: InRecord, ctx: Context) -> Iterable[OutRecord]:
        value = record.value
        if value["n"] < 0:
            raise ValueError(f"negative n {value['n']}")
        counts = ctx.store(COUNTS)
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


class TwoInputCount(Processor):
    """Counts events per visitor over several co-partitioned inputs; says which instance counted."""

    name = "two-input-count"
    stores = (COUNTS,)
    instance: ClassVar[str] = "?"

    def process_one(self, record: InRecord, ctx: Context) -> Iterable[OutRecord]:
        value = record.value
        counts = ctx.store(COUNTS)
        count = counts.get(value["visitor_id"], 0) + 1
        counts.put(value["visitor_id"], count)
        out = {"event_id": value["event_id"], "visitor_id": value["visitor_id"], "count": count,
               "label": f"{self.instance}:{record.topic}:{record.partition}"}  # fmt: skip
        return [OutRecord(self.outputs[0], record.key, out)]


class FlakyTimer(Processor):
    """Arms a wall-clock timer per record whose handler raises ``n % 3`` times: 0, 2, or always (``n % 3 == 2``).

    What fires is emitted with ``count`` = the failed attempts before it.
    """

    name = "flaky-timer"
    delay_ms: ClassVar[int] = 300

    def process_one(self, record: InRecord, ctx: Context) -> None:
        value = record.value
        fails = {0: 0, 1: 2, 2: 1_000_000}[value["n"] % 3]
        ctx.timers.schedule(value["event_id"], ctx.now() + self.delay_ms, kind="wall",
                            payload={"visitor": value["visitor_id"], "fails": fails})  # fmt: skip

    def on_timer(self, timers: Sequence[Timer], ctx: Context) -> Iterable[OutRecord]:
        out = []
        for t in timers:
            if t.attempts < t.payload["fails"]:
                raise RuntimeError(f"flaky handler for {t.key} (attempt {t.attempts + 1})")
            visitor = t.payload["visitor"]
            value = {"event_id": t.key, "visitor_id": visitor, "count": t.attempts, "label": "fired"}
            out.append(OutRecord(self.outputs[0], visitor, value))
        return out


class CrashingCount(CountingJoin):
    """Counts, and kills its own process (SIGKILL) right after a store write, before that write's commit.

    Once: the record whose ``n`` is ``CRASH_AT`` crashes the process unless ``CRASH_MARKER`` exists (it is
    created first), so the restarted process goes on.
    """

    crash_at: ClassVar[int] = -1
    crash_marker: ClassVar[str] = ""

    def process_one(self, record: InRecord, ctx: Context) -> Iterable[OutRecord]:
        out = super().process_one(record, ctx)  # the store holds the new count now; nothing is committed
        if record.value["n"] == self.crash_at and self.crash_marker and not os.path.exists(self.crash_marker):
            open(self.crash_marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return out


KINDS: dict[str, type[Processor]] = {"count": CountingJoin, "timer": WallTimer, "join": TwoInputCount,
                                     "flaky-timer": FlakyTimer, "crash-count": CrashingCount}  # fmt: skip


def build(kind: str, inputs: list[str], output: str, table: str | None = None, instance: str = "?") -> Processor:
    base = KINDS[kind]
    attrs: dict[str, object] = {"inputs": tuple(inputs), "outputs": (output,), "instance": instance}
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
        timer_max_attempts=getattr(args, "timer_attempts", 5),
        timer_backoff_ms=getattr(args, "timer_backoff_ms", 1000),
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=sorted(KINDS))
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--registry", required=True)
    parser.add_argument("--app", required=True)
    parser.add_argument("--input", required=True, action="append")
    parser.add_argument("--output", required=True)
    parser.add_argument("--dlq", required=True)
    parser.add_argument("--instance", default="0")
    parser.add_argument("--commit-ms", type=int, default=100)
    parser.add_argument("--alo", action="store_true")
    parser.add_argument("--timer-attempts", type=int, default=5)
    parser.add_argument("--timer-backoff-ms", type=int, default=1000)
    parser.add_argument("--state", default="memory", help="StateConfig backend: memory | rocksdb")
    parser.add_argument("--state-dir", default="state")
    parser.add_argument("--crash-at", type=int, default=-1)
    parser.add_argument("--crash-marker", default="")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    CrashingCount.crash_at, CrashingCount.crash_marker = args.crash_at, args.crash_marker
    processor = build(args.kind, args.input, args.output, instance=args.instance)
    runner = Runner(processor, config(args), state=StateConfig(args.state, Path(args.state_dir)))
    runner.install_signal_handlers()
    try:
        runner.run()
    except Exception as exc:
        if not getattr(exc, "user_error", False):
            raise
        print(f"error: {exc}", file=sys.stderr)  # as passerelle.cli prints it
        return int(getattr(exc, "exit_code", 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
