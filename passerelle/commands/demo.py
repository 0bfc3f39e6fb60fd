"""``passerelle demo``: the whole local flow in one command, for a newcomer's first five minutes.

Stack up, topics created, schemas registered, campaigns and CRM profiles
published, then generated shop traffic posted to the real HTTP collector and
read back from ``hits.enriched`` after the real enrichment processor attributed
and enriched it: every piece a newcomer will meet, running for real. A
retargeting partner stand-in (``connectors/generator/retargeting.py``) works
through the real partner API meanwhile: its campaigns declared, the visits
its banners bring attributed to them, its impressions credited by the real
post-view processor, its daily metrics accepted; each read back or counted
from the API's answers.
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


def wait_consumed(settings: PasserelleSettings, group: str, topic: str, timeout: float = 30.0) -> bool:
    """Wait until consumer group ``group`` committed offsets at the end of ``topic`` (what it read is processed)."""
    from confluent_kafka import TopicPartition

    from passerelle.schemas import clients

    consumer = clients.consumer(settings.connection(), group, {"enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        wanted = [TopicPartition(topic, p) for p in partitions]
        ends = {tp.partition: consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in wanted}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = consumer.committed(wanted, timeout=10)
            if all(tp.offset >= ends[tp.partition] for tp in done if ends[tp.partition] > 0):
                return True
            time.sleep(0.2)
        return False
    finally:
        consumer.close()


def read_postviews(
    settings: PasserelleSettings, visitors: set[str], campaigns: set[str], expected: int, timeout: float = 10.0
) -> list[dict[str, Any]]:
    """ads.postview records of ``visitors`` for ``campaigns``, read until ``expected`` visits came out (or timeout)."""
    from passerelle.schemas import clients
    from passerelle.schemas.serde import AvroDecoder, SchemaCache, registry_fetcher

    conn = settings.connection()
    decoder = AvroDecoder(SchemaCache(registry_fetcher(clients.registry_client(conn))))
    consumer = clients.consumer(
        conn, f"passerelle-demo-{uuid.uuid4().hex[:8]}",
        {"auto.offset.reset": "earliest", "isolation.level": "read_committed"},
    )  # fmt: skip
    consumer.subscribe(["ads.postview"])
    found: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    visits = 0
    while time.monotonic() < deadline and visits < expected:
        for msg in consumer.consume(500, timeout=0.5):
            if msg.error() or msg.value() is None:
                continue
            value = decoder.decode(msg.value())
            if value["visitor_id"] in visitors and value["campaign_key"] in campaigns:
                found[value["postview_id"]] = value
        visits = sum(1 for v in found.values() if v["kind"] == "visit")
    if visits >= expected:  # the orders of those visits come right after them: one more short read
        for msg in consumer.consume(500, timeout=1.0):
            if not msg.error() and msg.value() is not None:
                value = decoder.decode(msg.value())
                if value["visitor_id"] in visitors and value["campaign_key"] in campaigns:
                    found[value["postview_id"]] = value
    consumer.close()
    return sorted(found.values(), key=lambda v: (v["visitor_id"], v["postview_id"]))


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
    from passerelle.commands.partners import DEFAULT_TOPIC as KEYS_TOPIC
    from passerelle.commands.partners import write_key
    from passerelle.connectors.generator import retargeting as rt
    from passerelle.connectors.partner_api.keys import new_key

    made = new_key(rt.PARTNER, rt.SCOPES, int(time.time() * 1000), label="passerelle demo")
    write_key(settings.connection(), KEYS_TOPIC, settings.catalog, made.record)
    print(f"partner API key {made.key_id} for the retargeting stand-in (partner {rt.PARTNER}) -> {KEYS_TOPIC}")

    logs = settings.state_dir.resolve() / "demo"
    logs.mkdir(parents=True, exist_ok=True)
    from passerelle.deploy.local.stack import free_port

    port, api_port = free_port(), free_port()
    env = {**os.environ, "PASSERELLE_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
           "PASSERELLE_SCHEMA_REGISTRY_URL": settings.schema_registry_url,
           "PASSERELLE_COLLECTOR_SITES": json.dumps({"shop.example": "demo-key"}),
           "PASSERELLE_COLLECTOR_PORT": str(port), "PASSERELLE_API_PORT": str(api_port),
           "PASSERELLE_INSTANCE_ID": "demo"}  # fmt: skip
    procs: list[tuple[str, subprocess.Popen[bytes], Any]] = []
    problems: list[str] = []
    try:
        print("== enrichment, post-view, collector and partner API (background processes)")
        for what, cmd in (("enrichment", ["enrich"]), ("postview", ["postview"]), ("collector", ["collector"]),
                          ("api", ["api"])):  # fmt: skip
            log = logs / f"{what}.log"
            with open(log, "ab") as out:
                proc = subprocess.Popen([sys.executable, "-m", "passerelle", *cmd], env=env, stdout=out,
                                        stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
            procs.append((what, proc, log))
            print(f"{what:<10} pid {proc.pid}, log {log}")
        running = {what: (proc, log) for what, proc, log in procs}
        wait_http(f"http://127.0.0.1:{port}/healthz", running["collector"][0], "collector", running["collector"][1])
        api = f"http://127.0.0.1:{api_port}"
        wait_http(f"{api}/healthz", running["api"][0], "partner API", running["api"][1])
        print(f"== retargeting partner stand-in (partner {rt.PARTNER}) -> partner API {api}")
        with rt.PartnerClient(api, made.api_key) as partner:
            partner.declare(rt.declarations(shop))
            traffic = rt.simulate(shop, args.visitors, partner.tagged_urls)
            try:
                partner.report_impressions(traffic.impressions)
            except rt.PartnerApiError as exc:
                problems.append(str(exc))
            outcomes = traffic.outcomes()
            print(partner.report.lines()[0])
            print(f"retargeted visitors   {len(traffic.targets)}: {outcomes[rt.CLICK]} clicked a banner, "
                  f"{outcomes[rt.POSTVIEW]} came back later directly, {outcomes[rt.NONE]} not back")  # fmt: skip
            print(partner.report.lines()[1])
            problems += partner.report.errors[:3]
            imps_accepted = partner.report.impressions_accepted
            if partner.report.impressions_accepted and not wait_consumed(settings, "passerelle-postview",
                                                                         "ads.impressions"):  # fmt: skip
                print("post-view processor still behind on ads.impressions: some post-views may be missed")
            events = traffic.events()
            print(f"== traffic: {len(events)} events of {args.visitors} visitors -> POST "
                  f"http://127.0.0.1:{port}/v1/events")  # fmt: skip
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
        print("== retargeting, read back")
        hits = rt.attributed(enriched)
        ours = {t.visitor_id for t in traffic.targets.values()}
        tagged_undeclared = sum(1 for h in enriched if h["campaign_undeclared"] and h["visitor_id"] in ours
                                and h["traffic_source"]["campaign"] in rt.BY_KEY)  # fmt: skip
        print(
            f"hits attributed to the retargeting campaigns: {sum(hits.values())} ("
            + ", ".join(f"{k}={hits[k]}" for k in rt.BY_KEY)
            + f"), {tagged_undeclared} undeclared"
        )
        if not traffic.impressions or not imps_accepted:
            print("post-view records: none expected (no impression accepted)")
        elif running["postview"][0].poll() is None:
            expected = outcomes[rt.CLICK] + outcomes[rt.POSTVIEW]
            views = read_postviews(settings, ours, set(rt.BY_KEY), expected)
            kinds = {kind: sum(1 for v in views if v["kind"] == kind) for kind in ("visit", "order")}
            direct = sum(1 for v in views if v["kind"] == "visit" and v["visit_campaign"] not in rt.BY_KEY)
            print(f"post-view records: {len(views)} on ads.postview ({kinds['visit']} visits, {direct} of them "
                  f"without a click; {kinds['order']} orders)")  # fmt: skip
        else:
            problems.append(f"post-view processor exited: {running['postview'][1].read_text()[-300:].strip()}")
        with rt.PartnerClient(api, made.api_key) as partner:
            try:
                partner.upload_metrics(traffic.metrics())
            except rt.PartnerApiError as exc:
                problems.append(str(exc))
            uploaded = partner.report
        print(f"metrics uploaded      {uploaded.metrics_accepted} accepted of {uploaded.metrics_sent} (impressions, "
              f"clicks, cost in EUR per campaign and day)" + (f"; undeclared: {', '.join(uploaded.undeclared)}"
                                                              if uploaded.undeclared else ""))  # fmt: skip
        problems += uploaded.errors[:3]
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
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``demo``."""
    p = sub.add_parser(
        "demo",
        help="run the demo: stack, topics, schemas, collector, enrichment, partner API, generated shop traffic",
        description="Start the local stack (if needed), create the catalog's topics and register their schemas, "
        "publish declared campaigns and CRM profiles, start the enrichment and post-view processors, the HTTP "
        "collector and the partner API, run a retargeting partner stand-in through the API (an API key made for "
        "partner 'retarget'; its campaigns declared, tagged URLs, impressions reported), post generated shop "
        "traffic to the collector and print the hits as they come out of hits.enriched, attributed and enriched, "
        "then the hits attributed to the partner's campaigns, the post-view records on ads.postview and the daily "
        "metrics the partner uploaded. The processes started stop at the end; the stack keeps running.",
    )
    p.add_argument("--visitors", type=int, default=12, help="simulated visitors (default 12)")
    p.add_argument("--show", type=int, default=25, help="enriched hits to print (default 25)")
    p.add_argument("--seed", type=int, default=None, help="random seed for a reproducible run")
    p.set_defaults(func=_demo)
