"""``passerelle demo``: the whole local flow in one command, for a newcomer's first five minutes.

Stack up, topics created, schemas registered, campaigns and CRM profiles
published, then generated shop traffic posted to the real HTTP collector and
read back from ``hits.enriched`` after the real enrichment processor attributed
and enriched it: every piece a newcomer will meet, running for real.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import uuid
from typing import Any

from passerelle.commands.schemas import register, subject_plans
from passerelle.commands.stack import stack_config
from passerelle.errors import PasserelleError
from passerelle.schemas.catalog import load_catalog
from passerelle.settings import PasserelleSettings, load


def wait_http(url: str, proc: Any, what: str, log: Any, timeout: float = 60.0) -> None:
    """Wait until ``url`` answers 200, failing fast (with the log's tail) if the process died."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise PasserelleError(f"{what} exited during start-up: {log.read_text()[-500:].strip()}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise PasserelleError(f"{what} did not answer on {url} within {timeout:.0f}s (log: {log})")


def read_enriched(settings: PasserelleSettings, event_ids: set[str], timeout: float = 60.0) -> list[dict[str, Any]]:
    """Read hits.enriched until every event id we sent came out (read_committed: exactly-once output)."""
    from passerelle.schemas import clients
    from passerelle.schemas.serde import AvroDecoder, SchemaCache, registry_fetcher

    conn = settings.connection()
    decoder = AvroDecoder(SchemaCache(registry_fetcher(clients.registry_client(conn))))
    consumer = clients.consumer(
        conn, f"passerelle-demo-{uuid.uuid4().hex[:8]}",
        {"auto.offset.reset": "earliest", "isolation.level": "read_committed"},
    )  # fmt: skip
    consumer.subscribe(["hits.enriched"])
    wanted, found = set(event_ids), []
    deadline = time.monotonic() + timeout
    while wanted and time.monotonic() < deadline:
        for msg in consumer.consume(500, timeout=0.5):
            if msg.error() or msg.value() is None:
                continue
            value = decoder.decode(msg.value())
            if value["event_id"] in wanted:
                wanted.discard(value["event_id"])
                found.append(value)
    consumer.close()
    if wanted:
        missing = f"{len(wanted)} of {len(event_ids)} hits"
        raise PasserelleError(f"{missing} did not reach hits.enriched within {timeout:.0f}s (see the demo logs)")
    return sorted(found, key=lambda v: (v["visitor_id"], v["event_time"]))


def telling(hits: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The hits that show something: each visit's landing, identifications, cart adds and orders."""
    seen_visits: set[str] = set()
    picked = []
    for hit in hits:
        first_of_visit = hit["visit_id"] not in seen_visits
        seen_visits.add(hit["visit_id"])
        if first_of_visit or hit["type"] in ("identify", "cart_add", "order"):
            picked.append(hit)
    return picked


def describe_enriched(hit: dict[str, Any]) -> str:
    """One line per enriched hit: who, what, which visit, where from, which campaign, which CRM segment."""
    src = hit["traffic_source"]
    origin = "/".join(x for x in (src["medium"], src["source"], src["campaign"]) if x)
    if hit["declared_campaign"]:
        origin += f" [declared: {hit['declared_campaign']['name']}]"
    elif hit["campaign_undeclared"]:
        origin += " [UNDECLARED]"
    who = hit["customer_id"] or "-"
    if hit["crm"]:
        who += f" ({hit['crm']['gender'] or '?'}, {hit['crm']['age_band'] or '?'}, {hit['crm']['csp'] or '?'})"
    when = hit["event_time"]
    stamp = when.strftime("%m-%d %H:%M") if hasattr(when, "strftime") else str(when)
    return f"{stamp} {hit['visitor_id'][:14]:<14} v{hit['visit_number']} {hit['type']:<12} {origin:<58} {who}"


def _demo(args: argparse.Namespace) -> int:
    import json
    import os
    import signal
    import subprocess

    from passerelle.connectors.generator.send import EventSender, SendOptions, publish_campaigns, publish_profiles
    from passerelle.connectors.generator.shop import HOUR, Shop
    from passerelle.deploy.local import stack
    from passerelle.schemas.topics_admin import KafkaAdmin, ensure_topics

    settings = load()
    catalog = load_catalog(settings.catalog)
    print("== local stack")
    for line in stack.up(stack_config(settings)):
        print(line)
    print("== topics")
    report = ensure_topics(KafkaAdmin(settings.connection()), catalog)
    for line in report.lines():
        print(line)
    print("== schemas")
    for line in register(settings.connection(), subject_plans(catalog)):
        print(line)

    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    shop = Shop(seed, int(time.time() * 1000) - 8 * HOUR, site="shop.example", span_ms=8 * HOUR,
                customers=max(20, args.visitors // 2))  # fmt: skip
    print("== declared campaigns and CRM profiles (Kafka)")
    campaigns = publish_campaigns(shop.campaigns(), settings.connection(),
                                  catalog_path=settings.catalog)  # fmt: skip
    profiles = publish_profiles(shop.crm_profiles(), settings.connection(),
                                catalog_path=settings.catalog)  # fmt: skip
    print(f"{campaigns} campaigns -> campaigns, {profiles} profiles -> crm.profiles")

    logs = settings.state_dir.resolve() / "demo"
    logs.mkdir(parents=True, exist_ok=True)
    from passerelle.deploy.local.stack import free_port

    port = free_port()
    env = {**os.environ, "PASSERELLE_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
           "PASSERELLE_SCHEMA_REGISTRY_URL": settings.schema_registry_url,
           "PASSERELLE_COLLECTOR_SITES": json.dumps({"shop.example": "demo-key"}),
           "PASSERELLE_COLLECTOR_PORT": str(port), "PASSERELLE_INSTANCE_ID": "demo"}  # fmt: skip
    procs: list[tuple[str, subprocess.Popen[bytes], Any]] = []
    try:
        print("== enrichment processor and collector (background processes)")
        for what, cmd in (("enrichment", ["enrich"]), ("collector", ["collector"])):
            log = logs / f"{what}.log"
            with open(log, "ab") as out:
                proc = subprocess.Popen([sys.executable, "-m", "passerelle", *cmd], env=env, stdout=out,
                                        stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
            procs.append((what, proc, log))
            print(f"{what:<10} pid {proc.pid}, log {log}")
        wait_http(f"http://127.0.0.1:{port}/healthz", procs[1][1], "collector", procs[1][2])
        events = shop.events(args.visitors)
        print(f"== traffic: {len(events)} events of {args.visitors} visitors -> POST http://127.0.0.1:{port}/v1/events")
        with EventSender(f"http://127.0.0.1:{port}", "demo-key", SendOptions(batch_size=100)) as sender:
            sent = sender.send(events)
        sent.campaigns, sent.profiles = campaigns, profiles
        for line in sent.lines():
            print(line)
        if procs[0][1].poll() is not None:
            raise PasserelleError(f"enrichment exited: {procs[0][2].read_text()[-500:].strip()}")
        accepted = {e["event_id"] for e in events}
        enriched = read_enriched(settings, accepted)
        print(f"== hits.enriched: {len(enriched)} hits, attributed and enriched; the telling ones:")
        for hit in telling(enriched)[: args.show]:
            print(describe_enriched(hit))
        by_medium: dict[str, int] = {}
        for hit in enriched:
            by_medium[hit["traffic_source"]["medium"]] = by_medium.get(hit["traffic_source"]["medium"], 0) + 1
        print("by medium: " + ", ".join(f"{m}={n}" for m, n in sorted(by_medium.items(), key=lambda kv: -kv[1])))
        identified = sum(1 for h in enriched if h["crm"])
        undeclared = sum(1 for h in enriched if h["campaign_undeclared"])
        print(f"read back {len(enriched)} enriched hits: {identified} with CRM attributes, {undeclared} with an "
              "undeclared campaign tag")  # fmt: skip
    finally:
        for _, proc, _ in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for what, proc, _ in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                print(f"{what} did not stop within 30 s: killed", file=sys.stderr)
    print("The stack keeps running: `passerelle down` stops it.")
    sys.stdout.flush()
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``demo``."""
    p = sub.add_parser(
        "demo",
        help="run the demo: stack, topics, schemas, collector, enrichment, generated shop traffic",
        description="Start the local stack (if needed), create the catalog's topics and register their schemas, "
        "publish declared campaigns and CRM profiles, start the enrichment processor and the HTTP collector, "
        "post generated shop traffic to the collector and print the hits as they come out of hits.enriched, "
        "attributed and enriched. The collector and the processor stop at the end; the stack keeps running.",
    )
    p.add_argument("--visitors", type=int, default=12, help="simulated visitors (default 12)")
    p.add_argument("--show", type=int, default=25, help="enriched hits to print (default 25)")
    p.add_argument("--seed", type=int, default=None, help="random seed for a reproducible run")
    p.set_defaults(func=_demo)
