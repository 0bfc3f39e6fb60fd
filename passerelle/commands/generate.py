"""``passerelle generate``: realistic shop traffic through the real ingestion path.

Processors only show what they do on traffic with campaigns, abandoned carts,
logins and returns; this command makes such traffic on demand, reproducibly
(``--seed``), and sends it the way a site would: campaigns and CRM profiles to
their Kafka tables first, then hits to the collector's HTTP API.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from typing import TYPE_CHECKING

from passerelle.connectors.generator.send import (
    CAMPAIGNS_TOPIC,
    CRM_TOPIC,
    EventSender,
    SendOptions,
    publish_campaigns,
    publish_profiles,
)
from passerelle.connectors.generator.shop import HOUR, MIN_SPAN_MS, Shop, merge_events, mix
from passerelle.errors import PasserelleError
from passerelle.settings import CollectorSettings, load

if TYPE_CHECKING:
    from passerelle.connectors.generator.retargeting import PartnerClient

DEFAULT_SITE = "shop.example"
MAX_LIVE_HOURS = 23.0
"""The collector replaces client times older than 24 hours by its receive time: keep the window inside it."""


def resolve_site(settings: CollectorSettings, site: str | None, api_key: str | None, need_key: bool) -> tuple[str, str]:
    """The site to simulate and the key to post with: explicit options first, else the collector's settings."""
    sites = {name: secret.get_secret_value() for name, secret in settings.collector_sites.items()}
    if site is not None:
        if api_key:
            return site, api_key
        if site in sites:
            return site, sites[site]
        if not need_key:
            return site, ""
        known = ", ".join(sorted(sites)) or "none"
        raise PasserelleError(
            f"unknown site {site!r}: PASSERELLE_COLLECTOR_SITES knows {known}; pass --api-key for another site"
        )
    if sites:
        first = next(iter(sites))
        return first, api_key or sites[first]
    if api_key or not need_key:
        return DEFAULT_SITE, api_key or ""
    raise PasserelleError(
        "no site configured: set PASSERELLE_COLLECTOR_SITES as the collector has it, or pass --site and --api-key"
    )


def _run(args: argparse.Namespace) -> int:
    settings = load(CollectorSettings)
    assert isinstance(settings, CollectorSettings)
    if args.visitors < 1:
        raise PasserelleError(f"--visitors must be >= 1, got {args.visitors}")
    if args.rate is not None and args.rate <= 0:
        raise PasserelleError(f"--rate must be > 0 events/s, got {args.rate}")
    if args.batch_size < 1:
        raise PasserelleError(f"--batch-size must be >= 1, got {args.batch_size}")
    span_ms = int(args.hours * HOUR)
    if span_ms < MIN_SPAN_MS:
        raise PasserelleError(f"--hours must be at least {MIN_SPAN_MS // HOUR}, got {args.hours}")
    if not args.dry_run and args.hours > MAX_LIVE_HOURS:
        raise PasserelleError(
            f"--hours {args.hours} is too long for a live run: the collector keeps event times only within 24 hours "
            f"(at most {MAX_LIVE_HOURS:.0f}; --dry-run accepts more)"
        )
    site, key = resolve_site(settings, args.site, args.api_key, need_key=not args.dry_run)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    customers = args.customers or max(20, args.visitors // 2)
    now = int(time.time() * 1000)
    shop = Shop(seed, now - span_ms, site=site, span_ms=span_ms, customers=customers)
    if args.dry_run:
        if args.retargeting_api:
            raise PasserelleError("--dry-run sends nothing: it cannot be combined with --retargeting-api")
        return _dry_run(shop, args.visitors, seed)
    if not 0 < args.retargeting_share <= 1:
        raise PasserelleError(f"--retargeting-share must be in (0, 1], got {args.retargeting_share}")

    url = (args.collector or f"http://127.0.0.1:{settings.collector_port}").rstrip("/")
    options = SendOptions(batch_size=args.batch_size, rate=args.rate)
    partner = None
    if args.retargeting_api:
        from passerelle.connectors.generator import retargeting

        if not args.retargeting_key:
            raise PasserelleError(
                "--retargeting-api needs --retargeting-key (make one with `passerelle partners add "
                f"{retargeting.PARTNER} " + " ".join(f"--scope {s}" for s in retargeting.SCOPES) + "`)"
            )
        partner = retargeting.PartnerClient(args.retargeting_api, args.retargeting_key)
    try:
        return _send(args, settings, shop, seed, site, key, url, options, partner)
    finally:
        if partner is not None:
            partner.close()


def _send(
    args: argparse.Namespace,
    settings: CollectorSettings,
    shop: Shop,
    seed: int,
    site: str,
    key: str,
    url: str,
    options: SendOptions,
    partner: PartnerClient | None,
) -> int:
    """Reference data to Kafka, the retargeting partner's declarations and impressions, then the hits."""
    traffic = None
    with EventSender(url, key, options) as sender:
        sender.probe()
        if partner is not None:
            from passerelle.connectors.generator import retargeting

            partner.declare(retargeting.declarations(shop))
            traffic = retargeting.simulate(shop, args.visitors, partner.tagged_urls, args.retargeting_share)
            events = traffic.events()
            partner.report_impressions(traffic.impressions)  # before the visits they precede
        else:
            events = shop.events(args.visitors)
        campaigns = profiles = 0
        if not args.no_campaigns:
            campaigns = publish_campaigns(
                shop.campaigns(),
                settings.connection(),
                args.campaigns_topic,
                settings.catalog,
            )
        if not args.no_crm:
            profiles = publish_profiles(
                shop.crm_profiles(),
                settings.connection(),
                args.crm_topic,
                settings.catalog,
            )
        print(
            f"generate: seed {seed}, {len(events)} events of {args.visitors} visitors for site {site} to {url}",
            file=sys.stderr,
            flush=True,
        )
        report = sender.send(events)
    report.campaigns, report.profiles = campaigns, profiles
    print(f"seed                 {seed}")
    for line in report.lines():
        print(line)
    if partner is not None and traffic is not None:
        partner.upload_metrics(traffic.metrics())
        outcomes = traffic.outcomes()
        print(f"retargeted visitors  {len(traffic.targets)}: {outcomes['click']} clicked, {outcomes['postview']} came "
              f"back directly, {outcomes['none']} did not come back")  # fmt: skip
        for line in partner.report.lines():
            print(line)
        if partner.report.errors or partner.report.undeclared:
            print("error: the partner API refused some impressions or metrics (see above)", file=sys.stderr)
            return 1
    if report.rejected:
        print(f"error: {report.rejected} event(s) rejected by the collector (see first rejection)", file=sys.stderr)
        return 1
    return 0


def _dry_run(shop: Shop, visitors: int, seed: int) -> int:
    """Events as JSON lines on stdout (pipe them anywhere); the mix on stderr so it does not mix with them."""
    journeys = list(shop.journeys(visitors))
    events = merge_events(journeys)
    try:
        for event in events:
            sys.stdout.write(json.dumps(event, separators=(",", ":")) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:  # `| head`: the reader has had enough, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    count = len(events)
    shares = mix(journeys)
    print(f"generate: seed {seed}, {count} events of {visitors} visitors (dry run, nothing sent)", file=sys.stderr)
    print("generate: " + ", ".join(f"{k} {v:.0%}" for k, v in shares.items()), file=sys.stderr)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``generate``."""
    p = sub.add_parser(
        "generate",
        help="simulate a shop's traffic: campaigns and CRM profiles to Kafka, visitor hits to the collector",
        description="Simulate an online shop: declared campaigns (and some undeclared tags), visitors from "
        "campaigns, search, social, other sites and direct, product views, carts (some abandoned), logins, orders "
        "and return visits. Campaigns go to the campaigns topic and CRM profiles to crm.profiles (Avro, through "
        "the schema registry), then the hits are posted to the collector's POST /v1/events. Event times fill the "
        "last --hours hours. The same --seed gives the same visitors.",
        epilog="Defaults come from the collector's settings: PASSERELLE_COLLECTOR_PORT for the URL, the first site "
        "of PASSERELLE_COLLECTOR_SITES and its key; PASSERELLE_BOOTSTRAP_SERVERS and PASSERELLE_SCHEMA_REGISTRY_URL "
        "for Kafka.",
    )
    p.add_argument("--visitors", type=int, default=200, help="number of visitors (default 200)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: drawn, and printed)")
    p.add_argument("--rate", type=float, default=None, metavar="EVENTS_PER_S", help="send at most this many events/s")
    p.add_argument("--collector", metavar="URL", help="collector base URL (default http://127.0.0.1:<collector port>)")
    p.add_argument("--api-key", metavar="KEY", help="API key (default: the site's key in PASSERELLE_COLLECTOR_SITES)")
    p.add_argument("--site", help="site to simulate (default: the first of PASSERELLE_COLLECTOR_SITES)")
    p.add_argument("--no-crm", action="store_true", help="do not publish CRM profiles")
    p.add_argument("--no-campaigns", action="store_true", help="do not publish campaign declarations")
    p.add_argument("--dry-run", action="store_true", help="print the events as JSON lines instead of sending them")
    p.add_argument("--batch-size", type=int, default=100, help="events per request (default 100)")
    p.add_argument("--customers", type=int, default=None, help="CRM customers (default: half the visitors, >= 20)")
    p.add_argument("--hours", type=float, default=22.0, help="time window the events fill, ending now (default 22)")
    p.add_argument("--campaigns-topic", default=CAMPAIGNS_TOPIC, help=f"topic of campaigns (default {CAMPAIGNS_TOPIC})")
    p.add_argument("--crm-topic", default=CRM_TOPIC, help=f"topic of CRM profiles (default {CRM_TOPIC})")
    rt = p.add_argument_group(
        "retargeting partner",
        "A retargeting partner stand-in (partner id 'retarget', Criteo-like) that works through the partner API "
        "(`passerelle api`): it declares its display campaigns (PUT /v1/campaigns/{key}, utm tags), gets tagged "
        "product URLs (POST /v1/campaigns/urls), retargets some visitors who viewed products without ordering, "
        "reports their impressions (POST /v1/impressions) before the hits are sent, and after them uploads its daily "
        "impressions, clicks and cost in EUR per campaign (POST /v1/metrics). Some retargeted visitors click a "
        "banner (a visit on the tagged URL), some come back later by typing the address (post-view), the others "
        "do not come back; the other visitors are the same as without it.",
    )
    rt.add_argument("--retargeting-api", metavar="URL", help="partner API base URL (e.g. http://127.0.0.1:8090); "
                    "enables the stand-in")  # fmt: skip
    rt.add_argument(
        "--retargeting-key",
        metavar="KEY",
        help="the partner's API key (`passerelle partners add retarget "
        "--scope campaigns:write --scope campaigns:read --scope impressions:write --scope metrics:write`)",
    )
    rt.add_argument(
        "--retargeting-share",
        type=float,
        default=0.6,
        metavar="SHARE",
        help="share of the eligible visitors (products viewed, no order) retargeted (default 0.6)",
    )
    p.set_defaults(func=_run)
