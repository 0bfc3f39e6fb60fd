"""The runtime against a real broker and registry: joins, state, tables, timers, poison, crashes."""

from __future__ import annotations

import collections
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient

from passerelle.deploy.local.stack import free_port
from passerelle.schemas.serde import AvroEncoder
from passerelle.streams.runtime import Runner, header_dict
from tests.integration.kafka_helpers import TopicReader, create_topics, produce_avro
from tests.integration.runtime_app import IN_SCHEMA, LABEL_SCHEMA, build, config

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


class Names:
    def __init__(self, unique: Callable[[str], str]) -> None:
        self.input = unique("rt.in")
        self.output = unique("rt.out")
        self.dlq = unique("rt.dlq")
        self.labels = unique("rt.labels")
        self.app = unique("rt-app")


@pytest.fixture
def names(unique: Callable[[str], str], kafka_bootstrap: str) -> Names:
    n = Names(unique)
    create_topics(kafka_bootstrap, {n.input: 3, n.output: 3, n.dlq: 1})
    create_topics(kafka_bootstrap, {n.labels: 1}, {"cleanup.policy": "compact"})
    return n


def hits(count: int, visitors: int = 20, start: int = 0) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"v{i % visitors}", {"event_id": f"e{i}", "visitor_id": f"v{i % visitors}", "n": i})
        for i in range(start, start + count)
    ]


def args_for(names: Names, bootstrap: str, registry: str, alo: bool = False, instance: str = "0") -> Any:
    import argparse

    return argparse.Namespace(
        app=names.app, bootstrap=bootstrap, registry=registry, output=names.output, instance=instance,
        alo=alo, dlq=names.dlq, input=names.input, commit_ms=100,
    )  # fmt: skip


@pytest.fixture
def in_thread() -> Iterator[Callable[[Runner], threading.Thread]]:
    runners: list[tuple[Runner, threading.Thread]] = []

    def start(runner: Runner) -> threading.Thread:
        thread = threading.Thread(target=runner.run, daemon=True)
        thread.start()
        runners.append((runner, thread))
        return thread

    yield start
    for runner, thread in runners:
        runner.stop()
        thread.join(30)


def test_join_state_table_and_poison_pills(
    kafka_bootstrap: str, schema_registry_url: str, names: Names, in_thread: Callable[[Runner], threading.Thread]
) -> None:
    produce_avro(
        kafka_bootstrap, schema_registry_url, names.labels, LABEL_SCHEMA,
        [(f"v{i}", {"label": f"L{i}"}) for i in range(10)] + [("v3", None)],  # v3 erased by a tombstone
    )  # fmt: skip
    good = hits(3000)
    bad_process = [("v1", {"event_id": f"neg{i}", "visitor_id": "v1", "n": -1}) for i in range(5)]
    client = SchemaRegistryClient({"url": schema_registry_url})
    schema_id = AvroEncoder.for_subject(client, f"{names.input}-value", IN_SCHEMA).schema_id
    valid = AvroEncoder(schema_id, IN_SCHEMA).encode({"event_id": "x", "visitor_id": "v0", "n": 12345})
    poison = (
        [(b"k", b"plain text, no magic byte") for _ in range(10)]
        + [(b"k", b"\x00\x00\x0f\x42\x3f" + valid[5:]) for _ in range(10)]  # unknown schema id 999999
        + [(b"k", valid[:-2]) for _ in range(10)]  # truncated Avro
    )
    produce_avro(kafka_bootstrap, schema_registry_url, names.input, IN_SCHEMA, good + bad_process, raw=poison)
    cfg = config(args_for(names, kafka_bootstrap, schema_registry_url))
    cfg.metrics_port = free_port()
    runner = Runner(build("count", [names.input], names.output, table=names.labels), cfg)
    in_thread(runner)
    out = TopicReader(kafka_bootstrap, schema_registry_url, names.output).read(until=3000, timeout=90)
    dlq = TopicReader(kafka_bootstrap, schema_registry_url, names.dlq, decode=False).read(until=35, timeout=30)
    values = [v for _, v in out]
    assert len(values) == 3000
    assert sorted(v["event_id"] for v in values) == sorted(v["event_id"] for _, v in good)
    by_visitor = collections.defaultdict(list)
    for value in values:
        by_visitor[value["visitor_id"]].append(value["count"])
    assert all(counts == list(range(1, 151)) for counts in by_visitor.values())  # 3000 / 20 visitors, in order
    labels = {v["visitor_id"]: v["label"] for v in values}
    assert labels["v0"] == "L0" and labels["v9"] == "L9"
    assert labels["v3"] is None and labels["v15"] is None
    assert len(dlq) == 35
    stages = collections.Counter(header_dict(m.headers())["stage"] for m, _ in dlq)
    assert stages == {"deserialize": 30, "process": 5}
    raw_values = {m.value() for m, _ in dlq if header_dict(m.headers())["stage"] == "deserialize"}
    assert raw_values == {p[1] for p in poison}
    some = header_dict(dlq[0][0].headers())
    assert some["topic"] == names.input and some["processor"] == "counting-join"
    assert int(some["offset"]) >= 0 and some["exception.message"]
    deadline = time.monotonic() + 10
    while True:  # counters are updated per batch and offsets per commit: give the last commit a moment
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{cfg.metrics_port}/metrics", timeout=5).read().decode()
        if 'passerelle_records_out_total{processor="counting-join",topic="' + names.output + '"} 3000.0' in metrics:
            break
        assert time.monotonic() < deadline, metrics
        time.sleep(0.2)
    assert 'passerelle_dead_letters_total{processor="counting-join",stage="deserialize"} 30.0' in metrics
    assert 'passerelle_dead_letters_total{processor="counting-join",stage="process"} 5.0' in metrics
    assert 'passerelle_lookup_table_keys{processor="counting-join",table="labels"} 9.0' in metrics
    assert "passerelle_state_restore_seconds_count" in metrics and "passerelle_commits_total" in metrics
    assert 'passerelle_commit_seconds_bucket{le="+Inf",processor="counting-join"}' in metrics


def spawn(kind: str, names: Names, bootstrap: str, registry: str, alo: bool = False, instance: str = "0",
          log: Path | None = None, extra: Sequence[str] = ()) -> subprocess.Popen[bytes]:  # fmt: skip
    cmd = [
        sys.executable, "-m", "tests.integration.runtime_app", kind, "--bootstrap", bootstrap,
        "--registry", registry, "--app", names.app, "--input", names.input, "--output", names.output,
        "--dlq", names.dlq, "--instance", instance, *extra,
    ]  # fmt: skip
    if alo:
        cmd.append("--alo")
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    return subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


def test_state_is_restored_by_another_process(
    kafka_bootstrap: str, schema_registry_url: str, names: Names, tmp_path: Path
) -> None:
    produce_avro(kafka_bootstrap, schema_registry_url, names.input, IN_SCHEMA, hits(1000))
    first = spawn("count", names, kafka_bootstrap, schema_registry_url, instance="a", log=tmp_path / "a.log")
    reader = TopicReader(kafka_bootstrap, schema_registry_url, names.output)
    assert len(reader.read(until=1000, timeout=90)) == 1000
    first.send_signal(signal.SIGTERM)  # graceful: finish the batch, commit, leave the group
    assert first.wait(30) == 0, (tmp_path / "a.log").read_text()[-3000:]
    produce_avro(kafka_bootstrap, schema_registry_url, names.input, IN_SCHEMA, hits(1000, start=1000))
    second = spawn("count", names, kafka_bootstrap, schema_registry_url, instance="b", log=tmp_path / "b.log")
    try:
        values = [v for _, v in reader.read(until=2000, timeout=90)]
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(30)
    assert len(values) == 2000
    by_visitor = collections.defaultdict(list)
    for value in values:
        by_visitor[value["visitor_id"]].append(value["count"])
    # The second process went on counting from the restored state instead of starting again at 1.
    assert all(counts == list(range(1, 101)) for counts in by_visitor.values())
    assert "restored" in (tmp_path / "b.log").read_text()


def test_timer_set_before_a_crash_fires_once_after_restart(
    kafka_bootstrap: str, schema_registry_url: str, names: Names, tmp_path: Path
) -> None:
    produce_avro(kafka_bootstrap, schema_registry_url, names.input, IN_SCHEMA, hits(30))
    proc = spawn("timer", names, kafka_bootstrap, schema_registry_url, log=tmp_path / "t1.log")
    reader = TopicReader(kafka_bootstrap, schema_registry_url, names.output)
    time.sleep(1.0)  # consumed and committed (100 ms interval), timers pending (1.5 s)
    proc.kill()
    proc.wait(10)
    assert reader.read(until=1, timeout=3) == []  # nothing fired before the crash
    proc = spawn("timer", names, kafka_bootstrap, schema_registry_url, log=tmp_path / "t2.log")
    try:
        values = [v for _, v in reader.read(until=60, timeout=30, idle=8)]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert sorted(v["event_id"] for v in values) == sorted(f"e{i}" for i in range(30))


def crash_run(
    kafka_bootstrap: str, schema_registry_url: str, names: Names, tmp_path: Path, alo: bool, total: int,
    extra: Sequence[str] = (),
) -> list[dict[str, Any]]:  # fmt: skip
    produce_avro(kafka_bootstrap, schema_registry_url, names.input, IN_SCHEMA, hits(total, visitors=500))
    log = tmp_path / "crash.log"
    reader = TopicReader(kafka_bootstrap, schema_registry_url, names.output)
    progress = TopicReader(kafka_bootstrap, schema_registry_url, names.output, decode=False)
    rng = random.Random(7)
    proc = spawn("count", names, kafka_bootstrap, schema_registry_url, alo=alo, log=log, extra=extra)
    try:
        for kill in range(3):
            target = int(total * (0.15 + 0.25 * kill + rng.random() * 0.1))
            progress.read(until=target, timeout=120)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            proc = spawn("count", names, kafka_bootstrap, schema_registry_url, alo=alo, log=log, extra=extra)
        values = [v for _, v in reader.read(until=total * 10 if alo else total + 1, timeout=180, idle=10)]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        progress.close()
        reader.close()
    return values


@pytest.mark.parametrize("store", ["memory", "rocksdb"])
def test_exactly_once_survives_three_kill_9(
    kafka_bootstrap: str, schema_registry_url: str, names: Names, tmp_path: Path, store: str
) -> None:
    total = 200_000
    extra = ("--state", store, "--state-dir", str(tmp_path / "state"))  # the same disk across the restarts
    values = crash_run(kafka_bootstrap, schema_registry_url, names, tmp_path, alo=False, total=total, extra=extra)
    ids = [v["event_id"] for v in values]
    assert len(ids) == total, f"{len(ids)} outputs for {total} inputs"
    assert len(set(ids)) == total
    assert set(ids) == {f"e{i}" for i in range(total)}
    # State committed with the outputs: every visitor's running count is 1..N with no gap or repeat.
    by_visitor = collections.defaultdict(list)
    for value in values:
        by_visitor[value["visitor_id"]].append(value["count"])
    assert all(counts == list(range(1, len(counts) + 1)) for counts in by_visitor.values())


def test_at_least_once_loses_nothing_across_three_kill_9(
    kafka_bootstrap: str, schema_registry_url: str, names: Names, tmp_path: Path
) -> None:
    total = 200_000
    values = crash_run(kafka_bootstrap, schema_registry_url, names, tmp_path, alo=True, total=total)
    assert {v["event_id"] for v in values} == {f"e{i}" for i in range(total)}
