"""The CRM in and out through real Kafka Connect: PostgreSQL -> Debezium -> crm-normalizer -> enrichment, and back.

Runs the shipped connector files and the real ``passerelle`` processes on the
catalog's topic names (this module is the only one using them on the session
broker); every test uses customer ids of its own.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from passerelle.connectors.connect import configs
from passerelle.connectors.connect.rest import ConnectClient
from passerelle.deploy.local import connect, postgres, stack
from passerelle.schemas import connect_json
from passerelle.schemas.catalog import load_catalog
from passerelle.schemas.models import age_band
from tests.conftest import ROOT, stop_process
from tests.integration.connect_helpers import execute, psql_rows
from tests.integration.kafka_helpers import TopicReader, produce_avro
from tests.integration.test_enrichment import hit

pytestmark = pytest.mark.integration
CATALOG = load_catalog()
SLOT = "passerelle_crm"


def env_for(bootstrap: str, registry: str, state: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PASSERELLE_")}
    env.update(
        PASSERELLE_BOOTSTRAP_SERVERS=bootstrap,
        PASSERELLE_SCHEMA_REGISTRY_URL=registry,
        PASSERELLE_STATE_DIR=str(state),
    )
    return env


def cli(env: dict[str, str], *argv: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "passerelle", *argv], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


class Flow:
    """The shipped connectors applied, and the processors running as real ``passerelle`` processes."""

    def __init__(self, bootstrap: str, registry: str, state: Path, worker: connect.Worker, pg: postgres.Postgres):
        self.bootstrap, self.registry, self.state, self.worker, self.pg = bootstrap, registry, state, worker, pg
        self.env = env_for(bootstrap, registry, state)
        self.client = ConnectClient(worker.url)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, command: str) -> None:
        log = open(self.state / f"{command}.log", "ab")  # noqa: SIM115 - closed with the process
        self.procs[command] = subprocess.Popen(
            [sys.executable, "-m", "passerelle", command], env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
        )

    def log(self, command: str) -> str:
        return (self.state / f"{command}.log").read_text(errors="replace")[-3000:]

    def restart_worker(self, sig: int) -> None:
        connect.stop(self.worker, sig=sig)
        connect.start(self.worker, stack.java_command(), stack.CONNECT_LOG4J2)
        for name in ("crm-source", "crm-sink"):
            assert configs.wait_running(self.client, name, 90).running, self.client.status(name)

    def stop(self) -> None:
        for proc in self.procs.values():
            stop_process(proc, timeout=30)


@pytest.fixture(scope="module")
def flow(
    kafka_bootstrap: str,
    schema_registry_url: str,
    connect_worker: connect.Worker,
    crm_postgres: postgres.Postgres,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Flow]:
    f = Flow(kafka_bootstrap, schema_registry_url, tmp_path_factory.mktemp("crm-flow"), connect_worker, crm_postgres)
    cli(f.env, "topics", "create")
    cli(f.env, "schemas", "register")
    configs.apply(f.client, configs.load(names=("crm-source", "crm-sink")), wait=90)  # the two this flow tests
    f.start("crm-normalizer")
    f.start("enrich")
    try:
        yield f
    finally:
        f.stop()
        for name in ("crm-source", "crm-sink"):
            if f.client.config(name) is not None:
                f.client.delete(name)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            rows = psql_rows(crm_postgres, "SELECT active FROM pg_replication_slots WHERE slot_name = %s", (SLOT,))
            if not rows or not rows[0][0]:
                break
            time.sleep(0.5)
        if rows:
            postgres.psql(crm_postgres, f"SELECT pg_drop_replication_slot('{SLOT}')")


class Profiles:
    """The latest ``crm.profiles`` value per customer (None: a tombstone), read as it grows."""

    def __init__(self, flow: Flow) -> None:
        self.reader = TopicReader(flow.bootstrap, flow.registry, "crm.profiles")
        self.latest: dict[str, dict[str, Any] | None] = {}

    def poll(self) -> dict[str, dict[str, Any] | None]:
        before = len(self.reader.records)
        self.reader.read(until=before + 1_000_000, timeout=1.0, idle=0.5)
        for msg, value in self.reader.records[before:]:
            self.latest[self.reader.decoder.decode(msg.key())] = value
        return self.latest

    def wait(self, check: Callable[[dict[str, dict[str, Any] | None]], bool], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check(self.poll()):
                return
        raise AssertionError(f"crm.profiles did not reach the expected state in {timeout:.0f}s")


def expected_profiles(flow: Flow, prefix: str) -> dict[str, dict[str, Any]]:
    """What ``crm.profiles`` must say for the customers whose id starts with ``prefix``, from the tables."""
    rows = psql_rows(
        flow.pg,
        "SELECT c.customer_id, c.email, c.gender, extract(year FROM c.birth_date)::int, c.csp, c.loyalty_tier, "
        "coalesce(e.granted, false), floor(extract(epoch FROM greatest(c.updated_at, e.updated_at)) * 1000)::bigint "
        "FROM customers c LEFT JOIN consents e ON e.customer_id = c.customer_id AND e.channel = 'email' "
        "WHERE c.customer_id LIKE %s",
        (prefix + "%",),
    )
    out = {}
    for cid, email, gender, birth_year, csp, tier, consent, updated in rows:
        out[cid] = {
            "email": email, "gender": gender, "birth_year": birth_year, "csp": csp, "loyalty_tier": tier,
            "marketing_consent": consent, "updated_at": int(updated),
        }  # fmt: skip
    return out


def comparable(profile: dict[str, Any]) -> dict[str, Any]:
    keys = ("email", "gender", "birth_year", "csp", "loyalty_tier", "marketing_consent")
    out = {k: profile[k] for k in keys}
    updated = profile["updated_at"]
    out["updated_at"] = updated if isinstance(updated, int) else int(updated.timestamp() * 1000)
    return out


def insert_customer(flow: Flow, cid: str, csp: str = "executive", consent: bool | None = True) -> None:
    execute(
        flow.pg,
        "INSERT INTO customers (customer_id, email, first_name, last_name, gender, birth_date, csp, loyalty_tier, "
        "postal_code, lifetime_value) VALUES (%s, %s, 'Ada', 'Lovelace', 'F', '1990-05-01', %s, 'gold', '75011', "
        "1234.50)",
        (cid, f"{cid.lower()}@mail.example", csp),
    )
    if consent is not None:
        execute(flow.pg, "INSERT INTO consents (customer_id, channel, granted, source) VALUES (%s, 'email', %s, "
                "'web form')", (cid, consent))  # fmt: skip


def test_crm_changes_reach_profiles_and_enriched_hits_and_a_delete_erases(flow: Flow) -> None:
    tag = f"E{random.randrange(10**6):06d}"
    cid, visitor = f"{tag}-1", f"{tag}-v"
    profiles = Profiles(flow)
    started = time.monotonic()
    insert_customer(flow, cid)
    profiles.wait(lambda p: (p.get(cid) or {}).get("marketing_consent") is True)
    first_seconds = time.monotonic() - started
    p = profiles.latest[cid]
    assert p is not None
    assert (p["gender"], p["birth_year"], p["age_band"], p["csp"]) == (
        "F", 1990, age_band(1990, time.gmtime(comparable(p)["updated_at"] / 1000).tm_year), "executive",
    )  # fmt: skip
    assert comparable(p) == expected_profiles(flow, cid)[cid]

    # A hit identifying the visitor: enrichment joins the profile the CDC produced.
    enriched = TopicReader(flow.bootstrap, flow.registry, "hits.enriched")
    schema = CATALOG.schema_text("Hit")
    produce_avro(flow.bootstrap, flow.registry, "hits.raw", schema, [(visitor, {**hit(1, visitor, customer=cid,
                 type_="identify"), "event_id": f"{tag}-e1"})])  # fmt: skip

    def mine(n: int) -> list[dict[str, Any]]:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = [v for _, v in enriched.read(until=10**9, timeout=1, idle=0.5) if v["visitor_id"] == visitor]
            if len(found) >= n:
                return found
        raise AssertionError(f"{n} enriched hits of {visitor} not seen; enrich log:\n{flow.log('enrich')}")

    assert mine(1)[0]["crm"]["csp"] == "executive"

    # An update and a consent withdrawal in the CRM: the profile and the next hit follow.
    execute(flow.pg, "UPDATE customers SET csp = 'retired' WHERE customer_id = %s", (cid,))
    execute(flow.pg, "UPDATE consents SET granted = false WHERE customer_id = %s AND channel = 'email'", (cid,))
    profiles.wait(lambda p: (p.get(cid) or {}).get("csp") == "retired" and p[cid]["marketing_consent"] is False)  # type: ignore[index]
    assert comparable(profiles.latest[cid] or {}) == expected_profiles(flow, cid)[cid]
    time.sleep(1.5)  # the enrichment's lookup table takes the new profile while it runs
    produce_avro(flow.bootstrap, flow.registry, "hits.raw", schema, [(visitor, {**hit(2, visitor),
                 "event_id": f"{tag}-e2"})])  # fmt: skip
    second = mine(2)[-1]
    assert second["customer_id"] == cid and second["crm"]["csp"] == "retired"
    assert second["crm"]["marketing_consent"] is False

    # Delete the customer in the CRM: a tombstone on crm.profiles, and the enrichment forgets the person.
    execute(flow.pg, "DELETE FROM customers WHERE customer_id = %s", (cid,))
    profiles.wait(lambda p: cid in p and p[cid] is None)
    time.sleep(1.5)
    produce_avro(flow.bootstrap, flow.registry, "hits.raw", schema, [(visitor, {**hit(3, visitor),
                 "event_id": f"{tag}-e3"})])  # fmt: skip
    after = mine(3)[-1]
    assert after["customer_id"] is None and after["crm"] is None
    assert after["visit_number"] == 1  # the visitor's history is gone with the link
    print(f"CRM insert -> crm.profiles in {first_seconds:.1f}s")


def test_a_worker_killed_mid_stream_leaves_profiles_equal_to_the_tables(flow: Flow) -> None:
    tag = f"K{random.randrange(10**6):06d}"
    customers = [f"{tag}-{i:03d}" for i in range(40)]
    for cid in customers:
        insert_customer(flow, cid, consent=bool(int(cid[-1]) % 2))
    rng = random.Random(tag)
    stop = threading.Event()
    changes = [0]

    def churn() -> None:
        csps = ("executive", "employee", "worker", "retired", "student")
        while not stop.is_set():
            cid = rng.choice(customers)
            kind = rng.random()
            if kind < 0.6:
                execute(flow.pg, "UPDATE customers SET csp = %s WHERE customer_id = %s", (rng.choice(csps), cid))
            elif kind < 0.9:
                execute(flow.pg, "INSERT INTO consents (customer_id, channel, granted, source) VALUES (%s, 'email', "
                        "%s, 'churn') ON CONFLICT (customer_id, channel) DO UPDATE SET granted = EXCLUDED.granted",
                        (cid, rng.random() < 0.5))  # fmt: skip
            else:
                execute(flow.pg, "DELETE FROM consents WHERE customer_id = %s AND channel = 'email'", (cid,))
            changes[0] += 1
            time.sleep(0.01)

    thread = threading.Thread(target=churn, daemon=True)
    thread.start()
    time.sleep(3)
    flow.restart_worker(signal.SIGKILL)  # a crash, mid-stream: no task stops cleanly, no offset flushed at exit
    time.sleep(3)
    stop.set()
    thread.join(10)
    # Two customers deleted after the crash: their last word is a tombstone.
    for cid in customers[:2]:
        execute(flow.pg, "DELETE FROM customers WHERE customer_id = %s", (cid,))
    want = expected_profiles(flow, tag)
    assert len(want) == len(customers) - 2 and changes[0] > 50

    profiles = Profiles(flow)

    def fields(profile: dict[str, Any]) -> dict[str, Any]:
        # A consent row deleted changes the profile at a time no table keeps: updated_at may be later than the rows'.
        return {k: v for k, v in comparable(profile).items() if k != "updated_at"}

    def equal(latest: dict[str, dict[str, Any] | None]) -> bool:
        mine = {k: v for k, v in latest.items() if k.startswith(tag)}
        live = {k: v for k, v in mine.items() if v is not None}
        return (
            all(mine.get(c, 0) is None for c in customers[:2])
            and {k: fields(v) for k, v in live.items()} == {k: fields(v) for k, v in want.items()}
            and all(comparable(live[k])["updated_at"] >= want[k]["updated_at"] for k in want)
        )

    try:
        profiles.wait(equal, timeout=90)
    except AssertionError:
        mine = {k: (comparable(v) if v else None) for k, v in profiles.latest.items() if k.startswith(tag)}
        diff = {k: (mine.get(k), want.get(k)) for k in sorted(set(mine) | set(want)) if mine.get(k) != want.get(k)}
        raise AssertionError(f"profiles differ from the tables after the crash: {json.dumps(diff)[:2000]}") from None


def _connect_json_records(n_customers: int, rounds: int, tag: str) -> tuple[list[tuple[str, bytes | None]], dict]:
    schema = CATALOG.schema_text("WebActivity")
    rng = random.Random(tag)
    records: list[tuple[str, bytes | None]] = []
    final: dict[str, dict[str, Any] | None] = {}
    now = int(time.time() * 1000)
    for r in range(rounds):
        for i in range(n_customers):
            cid = f"{tag}-{i:05d}"
            if r == rounds - 1 and i % 10 == 0:
                records.append((cid, None))  # erased: the sink deletes the row
                final[cid] = None
                continue
            value = {
                "customer_id": cid, "last_visit_at": now - rng.randrange(10**8),
                "last_campaign": rng.choice([None, "EREC-1"]), "visits_30d": r + i % 7, "orders_30d": r,
                "revenue_30d": round(rng.random() * 500, 2), "abandoned_carts_30d": i % 3,
                "remarketing_messages": r, "recovered_orders": r // 2, "updated_at": now + r,
            }  # fmt: skip
            records.append((cid, connect_json.encode(value, schema)))
            final[cid] = value
    return records, final


def test_the_sink_killed_mid_batch_leaves_web_activity_equal_to_the_topic(flow: Flow) -> None:
    from confluent_kafka import Producer

    tag = f"S{random.randrange(10**6):06d}"
    records, final = _connect_json_records(n_customers=1500, rounds=4, tag=tag)
    producer = Producer({"bootstrap.servers": flow.bootstrap, "enable.idempotence": True, "linger.ms": 20})
    half = len(records) // 2
    for key, value in records[:half]:
        producer.produce("crm.web_activity", value, key.encode())
        producer.poll(0)
    producer.flush(60)
    # Kill the worker while the sink is writing the first half.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not psql_rows(
        flow.pg, "SELECT 1 FROM web_activity WHERE customer_id LIKE %s LIMIT 1", (tag + "%",)
    ):
        time.sleep(0.05)
    written = psql_rows(flow.pg, "SELECT count(*) FROM web_activity WHERE customer_id LIKE %s", (tag + "%",))[0][0]
    connect.stop(flow.worker, sig=signal.SIGKILL)
    for key, value in records[half:]:
        producer.produce("crm.web_activity", value, key.encode())
        producer.poll(0)
    producer.flush(60)
    flow.restart_worker(signal.SIGTERM)  # already dead: this starts it again

    cols = ("customer_id", "last_visit_at", "last_campaign", "visits_30d", "orders_30d", "revenue_30d",
            "abandoned_carts_30d", "remarketing_messages", "recovered_orders", "updated_at")  # fmt: skip
    want = {cid: v for cid, v in final.items() if v is not None}

    def table() -> dict[str, dict[str, Any]]:
        rows = psql_rows(
            flow.pg,
            f"SELECT {cols[0]}, (extract(epoch FROM last_visit_at) * 1000)::bigint, {', '.join(cols[2:5])}, "
            f"revenue_30d::float8, {', '.join(cols[6:9])}, (extract(epoch FROM updated_at) * 1000)::bigint "
            "FROM web_activity WHERE customer_id LIKE %s",
            (tag + "%",),
        )
        return {row[0]: dict(zip(cols, row, strict=True)) for row in rows}

    deadline = time.monotonic() + 120
    got = table()
    while time.monotonic() < deadline and got != want:
        time.sleep(1)
        got = table()
    missing = sorted(set(want) - set(got))[:5]
    extra = sorted(set(got) - set(want))[:5]
    wrong = [k for k in want if k in got and got[k] != want[k]][:3]
    assert got == want, f"missing {missing}, extra {extra}, wrong {[(got[k], want[k]) for k in wrong]}"
    print(f"sink killed after {written} rows of {len(final)}; table equal to the topic after restart")
