"""Running a processor on the runtime from a bench worker's parsed arguments (``bench.workers``,
``bench.enrich_workers``, ``bench.postview``, ``bench.paths``, ``bench.rebalance_worker``).

A worker's arguments carry ``group``, ``bootstrap``, ``registry``, ``records``, ``commit_ms``,
``min_commit_ms``, ``batch_size`` and ``dlq``; the clock starts at the first record consumed and
stops once ``records`` are counted (after the runner's final commit), as in the raw loop.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

from bench.job import join
from bench.loops import report
from passerelle.streams.runtime import Context, InRecord, OutRecord, Processor, Runner, RunnerConfig

Count = Literal["in", "out", "in+out"]
"""When a run is done: ``records`` consumed, produced, or both (the result counts the outputs only for "out")."""


class Join(Processor):
    """The bench job (``bench.job.join``) as a processor: one enriched output per hit."""

    def __init__(self, name: str, input_topic: str, output: str, crm: dict[str, dict[str, str]]) -> None:
        self.name = name
        self.inputs = (input_topic,)
        self.outputs = (output,)
        self.output, self.crm = output, crm

    def process(self, records: Sequence[InRecord], ctx: Context) -> Iterable[OutRecord]:
        output, crm = self.output, self.crm
        return [OutRecord(output, r.key, join(r.value, crm)) for r in records]


def runner_config(
    args: argparse.Namespace,
    output_schemas: Mapping[str, str],
    exactly_once: bool,
    input_schemas: Mapping[str, str] | None = None,
    wire_formats: Mapping[str, str] | None = None,
) -> RunnerConfig:
    """The worker's ``RunnerConfig``: its group as the application id, its connection, commit and batch settings
    (``wire_formats``: the topics that are not Confluent Avro, e.g. ``connect-json`` CRM rows)."""
    return RunnerConfig(
        app_id=args.group,
        bootstrap_servers=args.bootstrap,
        schema_registry_url=args.registry,
        input_schemas=dict(input_schemas or {}),
        output_schemas=output_schemas,
        wire_formats=dict(wire_formats or {}),
        exactly_once=exactly_once,
        batch_size=args.batch_size,
        commit_interval_ms=args.commit_ms,
        min_commit_interval_ms=args.min_commit_ms,
        dead_letter_topic=args.dlq,
    )


def run_timed(
    runner: Runner,
    records: int,
    count: Count = "in",
    then: Callable[[], Any] | None = None,
    internal: str | None = None,
) -> None:
    """Run until ``records`` are counted, call ``then`` (if any), print the result line.

    ``internal``: a topic the processor writes and reads back (a repartition topic, e.g. conversion paths'
    events): its records are not counted as input, the run goes on until every record written to it has been
    read back, and the result line adds the records produced per output topic (``outputs``).
    """
    started = 0.0

    def internal_count(metric: Any) -> float:
        return float(metric.labels(runner.processor.name, internal)._value.get())

    def consumed() -> float:
        return runner.records_in if internal is None else runner.records_in - internal_count(runner.metrics.records_in)

    def settled() -> bool:
        return internal is None or internal_count(runner.metrics.records_in) >= internal_count(
            runner.metrics.records_out
        )

    def done() -> bool:
        nonlocal started
        if not started and runner.records_in:
            started = time.perf_counter()
        if count == "out":
            return runner.records_out >= records
        return consumed() >= records and settled() and (count == "in" or runner.records_out >= records)

    runner.run(until=done)  # returns after the final commit (flush + offsets or transaction)
    if then is not None:
        then()
    extra = None
    if internal is not None:
        outputs = {t: runner.metrics.records_out.labels(runner.processor.name, t)._value.get()
                   for t in runner.processor.outputs}  # fmt: skip
        extra = {"outputs": outputs}
    report(started or time.perf_counter(), runner.records_out if count == "out" else consumed(), extra)


def run_processor(
    processor: Processor,
    args: argparse.Namespace,
    output_schemas: Mapping[str, str],
    exactly_once: bool,
    input_schemas: Mapping[str, str] | None = None,
    count: Count = "in",
) -> None:
    """Run ``processor`` as the worker's arguments say until ``args.records`` are counted; print the result line."""
    runner = Runner(processor, runner_config(args, output_schemas, exactly_once, input_schemas))
    run_timed(runner, args.records, count)
