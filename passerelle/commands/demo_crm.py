"""``passerelle demo-crm``: the CRM crossing both ways, live, on real PostgreSQL and Kafka Connect.

A customer is written in the CRM database; Debezium captures the row, the
normalizer publishes the profile, the enrichment puts the customer's segment
on their hits; the CRM changes and the next hit follows; the customer's web
activity is written back into the CRM's ``web_activity`` table by the JDBC
sink; a delete in the CRM erases them everywhere, that row included.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from passerelle.commands.demo import describe_enriched, read_enriched
from passerelle.errors import PasserelleError
from passerelle.settings import PasserelleSettings, load

PROCESSES = ("crm-normalizer", "enrich", "crm-activity", "crm-activity-messages")
CAMPAIGN = "EREC-123"
"""The newsletter the demo customer lands from: declared (by the shop generator's campaigns) before the visit."""


def _wait(check: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.3)
    raise PasserelleError(f"{what} did not happen within {timeout:.0f}s (logs in $PASSERELLE_STATE_DIR/demo-crm)")


class Demo:
    """The running pieces: the CRM database, the Kafka side, the processes."""

    def __init__(self, settings: PasserelleSettings, pg: Any) -> None:
        import psycopg

        from passerelle.schemas import clients
        from passerelle.schemas.serde import AvroDecoder, SchemaCache, registry_fetcher

        self.settings = settings
        self.db = psycopg.connect(pg.dsn(), autocommit=True)
        conn = settings.connection()
        self.decoder = AvroDecoder(SchemaCache(registry_fetcher(clients.registry_client(conn))))
        self.profiles = clients.consumer(
            conn, f"passerelle-demo-crm-{uuid.uuid4().hex[:8]}",
            {"auto.offset.reset": "earliest", "isolation.level": "read_committed"},
        )  # fmt: skip
        self.profiles.subscribe(["crm.profiles"])
        self.latest: dict[str, Any] = {}

    def sql(self, statement: str, params: tuple[str, ...] = ()) -> None:
        """Run and show one statement; ``%s`` are parameters, shown as SQL literals."""
        shown = statement.replace("%s", "{}").format(*(f"'{p}'" for p in params))
        print(f"  crm=# {shown};")
        self.db.execute(statement.encode(), params)

    def profile(self, customer: str) -> tuple[bool, Any]:
        """(seen, latest value) of the customer on crm.profiles (None: a tombstone)."""
        for msg in self.profiles.consume(500, timeout=0.3):
            if not msg.error():
                key = self.decoder.decode(msg.key())
                self.latest[key] = None if msg.value() is None else self.decoder.decode(msg.value())
        return customer in self.latest, self.latest.get(customer)

    def row(self, customer: str) -> dict[str, Any] | None:
        cur = self.db.execute("SELECT * FROM web_activity WHERE customer_id = %s", (customer,))
        found = cur.fetchone()
        return None if found is None else dict(zip([c.name for c in cur.description or ()], found, strict=True))

    def hits(self, visitor: str, customer: str | None, types: list[str]) -> list[dict[str, Any]]:
        """Publish hits of the visitor to hits.raw and read them back enriched."""
        from passerelle.connectors.generator.send import publish

        now = int(time.time() * 1000)
        records: list[dict[str, Any]] = []
        for i, kind in enumerate(types):
            order = {"order_id": f"o-{uuid.uuid4().hex[:8]}", "revenue": 89.9, "currency": "EUR", "lines": []}
            records.append({
                "event_id": f"demo-crm-{uuid.uuid4().hex[:12]}", "site": "shop.example", "visitor_id": visitor,
                "customer_id": customer if kind == "identify" else None, "event_time": now + i, "type": kind,
                "url": f"https://shop.example/?xtor={CAMPAIGN}" if i == 0 else "https://shop.example/checkout",
                "referrer": None, "page": None, "campaign_params": {"xtor": CAMPAIGN} if i == 0 else {},
                "product": None, "order": order if kind == "order" else None,
                "consent": {"analytics": True, "marketing": True}, "user_agent": None, "ip_truncated": "203.0.113.0",
            })  # fmt: skip
        publish(records, conn=self.settings.connection(), topic="hits.raw", catalog_topic="hits.raw",
                key_field="visitor_id", time_field="event_time")  # fmt: skip
        return read_enriched(self.settings, {str(r["event_id"]) for r in records})


def _run(demo: Demo, customer: str, visitor: str) -> None:
    print(f"== a new customer in the CRM database ({customer})")
    demo.sql(
        "INSERT INTO customers (customer_id, email, first_name, last_name, gender, birth_date, csp, loyalty_tier) "
        "VALUES (%s, %s, 'Ada', 'Lovelace', 'F', '1988-03-14', 'executive', 'silver')",
        (customer, f"{customer.lower()}@mail.example"),
    )
    demo.sql("INSERT INTO consents (customer_id, channel, granted, source) VALUES (%s, 'email', true, 'web form')",
             (customer,))  # fmt: skip
    started = time.monotonic()
    profile = _wait(lambda: (demo.profile(customer)[1] or {}).get("marketing_consent"), "the profile on crm.profiles")
    seen = demo.latest[customer]
    print(f"  -> crm.profiles after {time.monotonic() - started:.1f}s: {seen['gender']}, {seen['age_band']}, "
          f"{seen['csp']}, {seen['loyalty_tier']}, marketing consent {profile}")  # fmt: skip
    print("== their visit (hits.raw -> enrichment -> hits.enriched)")
    for hit in demo.hits(visitor, customer, ["page_view", "identify", "order"]):
        print("  " + describe_enriched(hit))
    print("== the CRM changes their segment")
    demo.sql("UPDATE customers SET csp = 'retired', loyalty_tier = 'platinum' WHERE customer_id = %s", (customer,))
    _wait(lambda: (demo.profile(customer)[1] or {}).get("csp") == "retired", "the update on crm.profiles")
    time.sleep(1.5)  # the enrichment's CRM table takes the new profile while it runs
    for hit in demo.hits(visitor, None, ["page_view"]):
        print("  " + describe_enriched(hit))
    print("== what the web tells the CRM (crm-activity -> crm.web_activity -> JDBC sink -> web_activity)")
    row = _wait(lambda: demo.row(customer), "the web_activity row", timeout=90)
    print(f"  crm=# SELECT * FROM web_activity WHERE customer_id = '{customer}';")
    print("  " + ", ".join(f"{k}={v.isoformat(' ', 'seconds') if hasattr(v, 'isoformat') else v}"
                           for k, v in row.items()))  # fmt: skip
    print("== the customer is deleted in the CRM: erased everywhere")
    demo.sql("DELETE FROM customers WHERE customer_id = %s", (customer,))
    _wait(lambda: demo.profile(customer) == (True, None), "the tombstone on crm.profiles")
    print("  -> crm.profiles: tombstone (every processor forgets the customer)")
    _wait(lambda: demo.row(customer) is None, "the web_activity row's deletion", timeout=90)
    print("  -> web_activity: row deleted by the JDBC sink")
    time.sleep(1.5)
    for hit in demo.hits(visitor, None, ["page_view"]):
        print("  " + describe_enriched(hit) + "   (visitor no longer linked to anyone)")


def _demo_crm(args: argparse.Namespace) -> int:
    from passerelle.commands.schemas import register, subject_plans
    from passerelle.commands.stack import stack_config
    from passerelle.connectors.connect import configs
    from passerelle.connectors.connect.rest import ConnectClient
    from passerelle.deploy.local import stack
    from passerelle.schemas.catalog import load_catalog
    from passerelle.schemas.topics_admin import KafkaAdmin, ensure_topics

    settings = load()
    cfg = stack_config(settings, with_components="connect")
    print("== local stack with PostgreSQL and Kafka Connect")
    for line in stack.up(cfg):
        print(line)
    catalog = load_catalog(settings.catalog)
    ensure_topics(KafkaAdmin(settings.connection()), catalog)
    for line in register(settings.connection(), subject_plans(catalog)):
        if "registered" in line:
            print(line)
    from passerelle.connectors.generator.send import publish_campaigns
    from passerelle.connectors.generator.shop import Shop

    publish_campaigns(Shop(1, int(time.time() * 1000), site="shop.example").campaigns(), settings.connection())
    print("== connectors (passerelle connect apply)")
    for change in configs.apply(ConnectClient(settings.connect_url), configs.load(), wait=90):
        print(f"{change.name:<12} {change.action}")
    logs = settings.state_dir.resolve() / "demo-crm"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PASSERELLE_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
           "PASSERELLE_SCHEMA_REGISTRY_URL": settings.schema_registry_url, "PASSERELLE_INSTANCE_ID": "demo",
           "PASSERELLE_STATE_DIR": str(settings.state_dir.resolve())}  # fmt: skip
    procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []
    demo = None
    try:
        print("== processors (background): " + ", ".join(PROCESSES))
        for command in PROCESSES:
            log = logs / f"{command}.log"
            with open(log, "ab") as out:
                proc = subprocess.Popen([sys.executable, "-m", "passerelle", command], env=env, stdout=out,
                                        stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
            procs.append((command, proc, log))
        demo = Demo(settings, cfg.postgres)
        suffix = random.SystemRandom().randrange(10**6)
        _run(demo, f"DEMO-{suffix:06d}", f"demo-visitor-{suffix:06d}")
        for command, proc, log in procs:
            if proc.poll() is not None:
                raise PasserelleError(f"{command} exited: {log.read_text()[-500:].strip()}")
    finally:
        if demo is not None:
            demo.profiles.close()
            demo.db.close()
        for _, proc, _ in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for command, proc, _ in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                print(f"{command} did not stop within 30 s: killed", file=sys.stderr)
    print("The stack keeps running (PostgreSQL: `psql` with $PASSERELLE_STATE_DIR/postgres/secrets.env; "
          "`passerelle connect status`); `passerelle down` stops it.")  # fmt: skip
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``demo-crm``."""
    p = sub.add_parser(
        "demo-crm",
        help="run the CRM demo: PostgreSQL + Kafka Connect, a customer changing in the CRM and the hits following",
        description="Start the local stack with PostgreSQL and Kafka Connect, apply the CRM connectors, start the "
        "CRM normalizer, the enrichment and the web activity summary, then write a customer into the CRM database "
        "and show their profile on crm.profiles and their hits enriched with it, change the customer in the CRM "
        "and show the next hit following, show their web activity written back into the CRM's web_activity "
        "table, and delete them: the erasure reaches every processor and deletes that row too. The processes "
        "stop at the end; the stack keeps running.",
    )
    p.set_defaults(func=_demo_crm)
