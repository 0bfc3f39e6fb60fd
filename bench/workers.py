"""One benchmark worker per implementation, each run as its own process.

    python -m bench.workers raw|alo|eos|faust --bootstrap B --registry R --input T --output O --records N

A worker processes until it has produced ``N`` outputs, then prints one JSON
line: elapsed seconds from the first record consumed to the last output
acknowledged, and peak RSS. Separate processes keep RSS and GC honest.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from bench.job import ENRICHED_SCHEMA, HIT_SCHEMA, crm_table, join
from bench.loops import RawLoop, report
from passerelle.schemas import clients
from passerelle.schemas.clients import DEAD_LETTER_TOPIC, Connection


def _codec(conn: Connection, output: str) -> tuple[Any, Any, bytes]:
    """The hit's reader schema, the output's writer schema (registered) and its Confluent header."""
    import fastavro

    from passerelle.schemas.serde import AvroEncoder

    client = clients.registry_client(conn)
    value_enc = AvroEncoder.for_subject(client, f"{output}-value", ENRICHED_SCHEMA)
    AvroEncoder.for_subject(client, f"{output}-key", '"string"')
    return fastavro.parse_schema(json.loads(HIT_SCHEMA)), value_enc.schema, value_enc.header


def run_raw(args: argparse.Namespace) -> None:
    """(a) The plain confluent-kafka batch loop, fastavro schemaless, no framework."""
    import fastavro

    conn = Connection.plain(args.bootstrap, args.registry)
    reader, writer, header = _codec(conn, args.output)
    crm = crm_table()
    loop = RawLoop(conn, args.group, [args.input])
    producer, done = loop.producer, 0
    schemaless_reader, schemaless_writer = fastavro.schemaless_reader, fastavro.schemaless_writer
    while done < args.records:
        msgs = loop.batch()  # what is queued, else wait for one record (as the runtime)
        if not msgs:
            continue
        for msg in msgs:
            if msg.error():
                continue
            value: Any = schemaless_reader(io.BytesIO(msg.value()[5:]), reader, None)  # type: ignore[index]
            out = io.BytesIO()
            out.write(header)
            schemaless_writer(out, writer, join(value, crm))
            try:
                producer.produce(args.output, out.getvalue(), msg.key())
            except BufferError:  # queue full: wait for delivery reports (off the measured fast path)
                clients.produce(producer, args.output, out.getvalue(), msg.key())
            done += 1
        loop.end_batch()
    loop.finish(done)


def run_runtime(args: argparse.Namespace, exactly_once: bool) -> None:
    """(b)/(c) The same job as a passerelle processor on the runtime."""
    from bench.runner import Join, run_processor

    processor = Join("bench-enrich", args.input, args.output, crm_table())
    run_processor(processor, args, {args.output: ENRICHED_SCHEMA}, exactly_once, count="out")


def run_faust(args: argparse.Namespace) -> None:
    """(d) The same job as a plain faust-streaming agent, one ``await send`` per event."""
    import logging
    import os

    import fastavro
    import faust

    logging.disable(logging.INFO)
    reader, writer, header = _codec(Connection.plain(args.bootstrap, args.registry), args.output)
    crm = crm_table()
    app = faust.App(
        args.group,
        broker=f"kafka://{args.bootstrap}",
        value_serializer="raw",
        key_serializer="raw",
        topic_disable_leader=True,
        web_enabled=False,
        store="memory://",
        producer_acks=-1,
        datadir=tempfile.mkdtemp(prefix="passerelle-bench-faust-"),  # not <app id>-data in the caller's directory
    )
    source = app.topic(args.input, value_type=bytes, key_type=bytes)
    sink = app.topic(args.output, value_type=bytes, key_type=bytes)
    state = {"done": 0, "started": 0.0}

    @app.agent(source)
    async def enrich(stream: Any) -> None:
        async for key, value in stream.items():
            if not state["started"]:
                state["started"] = time.perf_counter()
            record: Any = fastavro.schemaless_reader(io.BytesIO(value[5:]), reader, None)
            out = io.BytesIO()
            out.write(header)
            fastavro.schemaless_writer(out, writer, join(record, crm))
            await sink.send(key=key, value=out.getvalue())
            state["done"] += 1
            if state["done"] >= args.records:
                await app.producer.flush()
                report(state["started"], state["done"])
                os._exit(0)

    worker = faust.Worker(app, loglevel="WARNING", redirect_stdouts=False)
    worker.execute_from_commandline()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.workers")
    parser.add_argument("impl", choices=["raw", "alo", "eos", "faust"])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--registry", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--dlq", default=DEAD_LETTER_TOPIC)
    parser.add_argument("--group", required=True)
    parser.add_argument("--records", type=int, required=True)
    parser.add_argument("--commit-ms", type=int, default=100)
    parser.set_defaults(batch_size=5000, min_commit_ms=30)  # the processors' (not options here)
    args = parser.parse_args(argv)
    if args.impl == "raw":
        run_raw(args)
    elif args.impl == "faust":
        run_faust(args)
    else:
        run_runtime(args, exactly_once=args.impl == "eos")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
