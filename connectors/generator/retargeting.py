"""A retargeting partner stand-in (Criteo-like): its campaigns, the visitors it retargets, what it reports.

A retargeting partner shows banners of a shop's products to people who
visited the shop without ordering, on other sites. Here it does what such a
partner does with the platform, through the partner API only:

1. declares its display campaigns (``PUT /v1/campaigns/{key}``: a re-run
   replaces them, never fails on "already declared");
2. asks the API for the tagged landing URLs of the products it will show
   (``POST /v1/campaigns/urls``, ``utm_*`` tags), so the visits its banners
   bring are attributed to the declared campaign, never flagged undeclared;
3. retargets some of the shop's visitors: after a first visit with product
   views and no order, it serves them 1-4 impressions; some click one (a
   visit on the tagged URL a few seconds later), some come back later by
   typing the address (the post-view case: a direct visit after
   impressions), the others do not come back;
4. reports those impressions (``POST /v1/impressions``), before the visits
   are sent, so a post-view processor sees each impression before the visit
   it precedes;
5. uploads its daily figures per campaign (``POST /v1/metrics``):
   impressions = the impressions it reported, clicks = the visits its
   banners brought, cost = clicks x its cost per click, in EUR.

Pure and deterministic (the decisions, the impressions, the figures) apart
from :class:`PartnerClient`, the HTTP side. The audience is decided over the
whole set of first visits (as a partner's budget is): with two retargeted
visitors or more, at least one clicks and at least one comes back directly.
Visitors it does not retarget keep exactly the journey the shop gives them.
"""

from __future__ import annotations

import math
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import httpx

from passerelle.connectors.generator.send import GeneratorError
from passerelle.connectors.generator.shop import (
    CURRENCY,
    DAY,
    HOUR,
    MINUTE,
    SECOND,
    FirstVisit,
    Journey,
    Revisit,
    Shop,
    merge_events,
)

PARTNER: Final = "retarget"
"""Partner id of the stand-in (its API key's partner, the ``utm_source`` of its tags)."""
SCOPES: Final = ("campaigns:write", "campaigns:read", "impressions:write", "metrics:write")

CLICK: Final = "click"
POSTVIEW: Final = "postview"
NONE: Final = "none"

SHARE: Final = 0.6
"""Share of the eligible visitors (product views, no order, room left in the window) the partner retargets."""
CLICK_SHARE: Final = 0.4
POSTVIEW_SHARE: Final = 0.35
MIN_ROOM_MS: Final = 4 * HOUR
"""Room a visitor needs after the first visit: impressions in its first half, the visit that follows after."""


@dataclass(frozen=True)
class RetargetingCampaign:
    """One of the partner's campaigns: whom it retargets (``viewed`` products or an abandoned ``cart``)."""

    key: str
    name: str
    audience: str
    cpc: float
    """Cost per click, EUR (what the partner bills)."""
    formats: tuple[str, ...]


CAMPAIGNS: Final[tuple[RetargetingCampaign, ...]] = (
    RetargetingCampaign("rt_viewed", "Retargeting: viewed", "viewed", 0.45, ("dyn_300x250", "dyn_728x90")),
    RetargetingCampaign("rt_carts", "Retargeting: carts", "cart", 0.65, ("cart_300x600", "cart_320x50")),
)
BY_AUDIENCE: Final = {c.audience: c for c in CAMPAIGNS}
BY_KEY: Final = {c.key: c for c in CAMPAIGNS}

PLACEMENTS: Final[tuple[tuple[str, str], ...]] = (
    ("news.example/home/top", "https://news.example/"),
    ("weather.example/forecast/side", "https://weather.example/forecast"),
    ("recipes.example/article/inline", "https://recipes.example/tarte-tatin"),
    ("sport.example/live/banner", "https://sport.example/live"),
)
"""Publisher slots the banners are served in, and the page a click comes from (its referrer)."""


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _date(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d")


def declarations(shop: Shop) -> list[dict[str, Any]]:
    """The partner's campaigns as ``PUT /v1/campaigns/{key}`` bodies (``CampaignIn``), valid over the shop's window."""
    valid_from = shop.start_ms - DAY
    valid_to = shop.start_ms + shop.span_ms + 30 * DAY
    return [
        {
            "key": c.key,
            "name": c.name,
            "landing_url": f"{shop.base_url}/",
            "family": "utm",
            "medium": "display",
            "channel": "display",
            "source": PARTNER,
            "valid_from": _iso(valid_from),
            "valid_to": _iso(valid_to),
            "cost_model": "CPC",
            "cost_amount": c.cpc,
            "currency": CURRENCY,
        }
        for c in CAMPAIGNS
    ]


# --- who is retargeted, and how ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One retargeted visitor: the campaign, the impressions (times from the journey's start), what follows."""

    index: int
    visitor_id: str
    campaign: str
    outcome: str
    landing: str
    """Product page the banners show and a click lands on (untagged)."""
    impression_times: tuple[int, ...]
    slots: tuple[int, ...]
    """Index in :data:`PLACEMENTS` of each impression."""
    creatives: tuple[str, ...]
    visit_at: int | None
    """Start of the visit that follows (click or direct return), None for ``none``."""

    @property
    def last_impression(self) -> int:
        return self.impression_times[-1]


def eligible(first: FirstVisit) -> bool:
    """Whether a partner would retarget this visitor: products seen, nothing ordered, time left to do it."""
    return bool(first.viewed) and not first.ordered and first.room_ms >= MIN_ROOM_MS


def plan_audience(firsts: Iterable[FirstVisit], seed: int, share: float = SHARE) -> dict[int, Target]:
    """The visitors retargeted (by visitor index), from every visitor's first visit.

    ``share`` of the eligible visitors (at least one), in a seeded order;
    the first ``CLICK_SHARE`` of them click (at least one), the next
    ``POSTVIEW_SHARE`` come back directly (at least one when there are two),
    the rest do not come back.
    """
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], got {share}")
    pool = sorted((f for f in firsts if eligible(f)), key=lambda f: f.index)
    if not pool:
        return {}
    random.Random(f"{seed}:retarget:audience").shuffle(pool)
    audience = pool[: max(1, math.ceil(share * len(pool)))]
    clicks = max(1, round(CLICK_SHARE * len(audience)))
    postviews = min(len(audience) - clicks, max(1, round(POSTVIEW_SHARE * len(audience))))
    targets = {}
    for rank, first in enumerate(audience):
        outcome = CLICK if rank < clicks else POSTVIEW if rank < clicks + postviews else NONE
        targets[first.index] = _target(first, outcome, seed)
    return targets


def _target(first: FirstVisit, outcome: str, seed: int) -> Target:
    rng = random.Random(f"{seed}:retarget:{first.index}")
    campaign = BY_AUDIENCE["cart" if first.cart else "viewed"]
    product = first.cart[-1] if first.cart else first.viewed[-1]
    count = rng.randint(1, 4)
    room = first.room_ms
    t = first.end_ms + rng.randint(10 * MINUTE, max(10 * MINUTE, room // 4))
    times = []
    for _ in range(count):
        times.append(t)
        t += rng.randint(1, 20) * MINUTE
    slots = tuple(rng.randrange(len(PLACEMENTS)) for _ in times)
    creatives = tuple(f"{rng.choice(campaign.formats)}:{product}" for _ in times)
    visit_at: int | None = None
    if outcome == CLICK:
        visit_at = times[-1] + rng.randint(5, 40) * SECOND
    elif outcome == POSTVIEW:
        left = first.end_ms + room - times[-1]
        visit_at = times[-1] + rng.randint(30 * MINUTE, max(30 * MINUTE, min(12 * HOUR, left)))
    return Target(
        index=first.index,
        visitor_id=first.visitor_id,
        campaign=campaign.key,
        outcome=outcome,
        landing=product,
        impression_times=tuple(times),
        slots=slots,
        creatives=creatives,
        visit_at=visit_at,
    )


def landings(targets: Mapping[int, Target], shop: Shop) -> list[tuple[str, str]]:
    """(campaign, product URL) of every click, deduplicated: the tagged URLs to ask the API for."""
    urls = {p.id: p.url for p in shop.products}
    return sorted({(t.campaign, urls[t.landing]) for t in targets.values() if t.outcome == CLICK})


# --- the traffic and what the partner reports ----------------------------------------------------------


@dataclass
class Traffic:
    """The shop's journeys with the partner's doing in them, and what the partner reports of it."""

    journeys: list[Journey]
    targets: dict[int, Target]
    impressions: list[dict[str, Any]] = field(default_factory=list)
    clicks: list[dict[str, Any]] = field(default_factory=list)
    """One per click visit: campaign, visitor id, event time and event id of its landing hit."""

    def events(self) -> list[dict[str, Any]]:
        return merge_events(self.journeys)

    def outcomes(self) -> Counter[str]:
        return Counter(t.outcome for t in self.targets.values())

    def metrics(self) -> list[dict[str, Any]]:
        """Daily figures per campaign (``POST /v1/metrics`` rows): impressions, clicks, cost in EUR."""
        shown: Counter[tuple[str, str]] = Counter()
        clicked: Counter[tuple[str, str]] = Counter()
        for imp in self.impressions:
            shown[(_date(imp["event_time"]), imp["campaign_key"])] += 1
        for click in self.clicks:
            clicked[(_date(click["event_time"]), click["campaign_key"])] += 1
        rows = []
        for day, key in sorted(set(shown) | set(clicked)):
            clicks = clicked[(day, key)]
            rows += [
                {"date": day, "campaign_key": key, "metric": "impressions", "value": float(shown[(day, key)]),
                 "currency": None},
                {"date": day, "campaign_key": key, "metric": "clicks", "value": float(clicks), "currency": None},
                {"date": day, "campaign_key": key, "metric": "cost", "value": round(clicks * BY_KEY[key].cpc, 2),
                 "currency": CURRENCY},
            ]  # fmt: skip
        return rows


def simulate(
    shop: Shop,
    visitors: int,
    tag: Callable[[Sequence[tuple[str, str]]], Mapping[tuple[str, str], str]],
    share: float = SHARE,
) -> Traffic:
    """The shop's traffic with the partner retargeting some visitors; ``tag`` gives the tagged URLs (the API).

    Two passes over the visitors: the first only looks at their first visits
    (to choose the audience), the second builds the journeys, the retargeted
    ones with the partner's impressions and the visit that follows.
    """
    firsts: list[FirstVisit] = []

    def look(first: FirstVisit) -> None:
        firsts.append(first)

    for _ in shop.journeys(visitors, look):
        pass
    targets = plan_audience(firsts, shop.seed, share)
    wanted = landings(targets, shop)
    tagged = dict(tag(wanted)) if wanted else {}
    missing = [pair for pair in wanted if pair not in tagged]
    if missing:
        raise GeneratorError(f"no tagged URL for {missing[0][0]} at {missing[0][1]}")
    urls = {p.id: p.url for p in shop.products}

    def revisit(first: FirstVisit) -> Revisit | None:
        target = targets.get(first.index)
        if target is None:
            return None
        tail = target.last_impression - first.end_ms
        if target.outcome == NONE or target.visit_at is None:
            return Revisit(visit=False, tail_ms=tail)
        after = target.visit_at - first.end_ms
        if target.outcome == CLICK:
            referrer = PLACEMENTS[target.slots[-1]][1]
            return Revisit(after, tagged[(target.campaign, urls[target.landing])], referrer, tail_ms=tail)
        return Revisit(after, None, None, tail_ms=tail)

    journeys = list(shop.journeys(visitors, revisit))
    traffic = Traffic(journeys, targets)
    for index, target in sorted(targets.items()):
        journey = journeys[index]
        offset = journey.events[0]["event_time"]  # the first hit is at 0 from the journey's start
        ids = random.Random(f"{shop.seed}:{shop.start_ms}:retarget:ids:{index}")
        for when, slot, creative in zip(target.impression_times, target.slots, target.creatives, strict=True):
            traffic.impressions.append({
                "impression_id": f"{PARTNER}-{uuid.UUID(int=ids.getrandbits(128), version=4)}",
                "visitor_id": journey.visitor_id,
                "site": shop.site,
                "campaign_key": target.campaign,
                "creative": creative,
                "placement": PLACEMENTS[slot][0],
                "event_time": offset + when,
            })  # fmt: skip
        if target.outcome == CLICK and target.visit_at is not None:
            landing = next(e for e in journey.events if e["event_time"] == offset + target.visit_at)
            traffic.clicks.append({"campaign_key": target.campaign, "visitor_id": journey.visitor_id,
                                   "event_time": landing["event_time"], "event_id": landing["event_id"]})  # fmt: skip
    traffic.impressions.sort(key=lambda i: (i["event_time"], i["impression_id"]))
    return traffic


# --- HTTP: the partner API --------------------------------------------------------------------------------


class PartnerApiError(GeneratorError):
    """The partner API refused or failed a request of the stand-in."""


@dataclass
class Report:
    """What the stand-in did through the API, counted from the API's answers."""

    declared: int = 0
    created: int = 0
    tagged_urls: int = 0
    impressions_sent: int = 0
    impressions_accepted: int = 0
    metrics_sent: int = 0
    metrics_accepted: int = 0
    undeclared: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        lines = [
            f"retargeting campaigns {self.declared} declared through the API ({self.created} new), "
            f"{self.tagged_urls} tagged URLs",
            f"impressions reported  {self.impressions_accepted} accepted of {self.impressions_sent}",
            f"metrics uploaded      {self.metrics_accepted} accepted of {self.metrics_sent}",
        ]
        if self.undeclared:
            lines.append(f"undeclared metrics    {', '.join(self.undeclared)}")
        if self.errors:
            lines.append(f"first API error       {self.errors[0]}")
        return lines


class PartnerClient:
    """The stand-in's calls to the partner API (``Authorization: Bearer <key>``); 503s retried a few times."""

    def __init__(
        self,
        api_url: str,
        api_key: str,
        *,
        client: httpx.Client | None = None,
        timeout_s: float = 30.0,
        attempts: int = 4,
        batch: int = 500,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.url = api_url.rstrip("/")
        self.client = client or httpx.Client(timeout=timeout_s)
        self._owns = client is None
        self.headers = {"Authorization": f"Bearer {api_key}"}
        self.attempts = attempts
        self.batch = batch
        self.sleep = sleep
        self.report = Report()

    def close(self) -> None:
        if self._owns:
            self.client.close()

    def __enter__(self) -> PartnerClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, body: Any = None) -> httpx.Response:
        response: httpx.Response | None = None
        for attempt in range(1, self.attempts + 1):
            try:
                response = self.client.request(method, f"{self.url}{path}", json=body, headers=self.headers)
            except httpx.TransportError as exc:
                if attempt == self.attempts:
                    raise PartnerApiError(
                        f"cannot reach the partner API at {self.url} ({type(exc).__name__}); is `passerelle api` "
                        "running there? (--retargeting-api URL)"
                    ) from exc
            else:
                if response.status_code not in (502, 503, 504) or attempt == self.attempts:
                    return response
                hinted = response.headers.get("retry-after", "")
                self.sleep(min(float(hinted) if hinted.isdigit() else 0.5 * 2 ** (attempt - 1), 10.0))
                continue
            self.sleep(0.5 * 2 ** (attempt - 1))
        assert response is not None
        return response

    def _refused(self, what: str, response: httpx.Response) -> PartnerApiError:
        try:
            errors = response.json().get("errors") or []
            detail = "; ".join(f"{e.get('field')}: {e.get('reason')}" for e in errors[:3])
        except (ValueError, AttributeError):
            detail = response.text[:200]
        hint = ""
        if response.status_code == 401:
            hint = " (check --retargeting-key: `passerelle partners add retarget --scope ...`)"
        elif response.status_code == 403:
            hint = f" (the key needs the scopes {', '.join(SCOPES)})"
        elif response.status_code == 404:
            hint = " (is this passerelle's partner API, and recent enough?)"
        return PartnerApiError(f"partner API refused {what}: HTTP {response.status_code} {detail}{hint}")

    def declare(self, bodies: Sequence[Mapping[str, Any]]) -> int:
        """Declare (or replace) each campaign; returns how many were new."""
        created = 0
        for body in bodies:
            key = str(body["key"])
            answer = self._call("PUT", f"/v1/campaigns/{key}", dict(body))
            if answer.status_code not in (200, 201):
                raise self._refused(f"the declaration of {key}", answer)
            created += answer.status_code == 201
            self.report.declared += 1
        self.report.created += created
        return created

    def tagged_urls(self, pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], str]:
        """The tagged URL of each (campaign, landing URL), from ``POST /v1/campaigns/urls``."""
        found: dict[tuple[str, str], str] = {}
        for start in range(0, len(pairs), self.batch):
            chunk = pairs[start : start + self.batch]
            body = {"urls": [{"campaign": c, "landing": landing} for c, landing in chunk]}
            answer = self._call("POST", "/v1/campaigns/urls", body)
            if answer.status_code != 200:
                raise self._refused("the tagged URLs", answer)
            for item in answer.json()["urls"]:
                found[(item["campaign"], item["landing"])] = item["url"]
        self.report.tagged_urls += len(found)
        return found

    def _batches(self, path: str, field_name: str, rows: Sequence[Mapping[str, Any]], what: str) -> int:
        accepted = 0
        for start in range(0, len(rows), self.batch):
            chunk = [dict(r) for r in rows[start : start + self.batch]]
            answer = self._call("POST", path, {field_name: chunk})
            if answer.status_code not in (200, 207):
                raise self._refused(what, answer)
            body = answer.json()
            accepted += int(body.get("accepted", 0))
            for error in body.get("errors") or []:
                self.report.errors.append(f"{what} [{start + int(error.get('index', 0))}] "
                                          f"{error.get('field')}: {error.get('reason')}")  # fmt: skip
            for key in body.get("undeclared") or []:
                if key not in self.report.undeclared:
                    self.report.undeclared.append(key)
        return accepted

    def report_impressions(self, impressions: Sequence[Mapping[str, Any]]) -> int:
        """``POST /v1/impressions`` in batches; returns how many were accepted."""
        self.report.impressions_sent += len(impressions)
        accepted = self._batches("/v1/impressions", "impressions", impressions, "impressions")
        self.report.impressions_accepted += accepted
        return accepted

    def upload_metrics(self, rows: Sequence[Mapping[str, Any]]) -> int:
        """``POST /v1/metrics`` in batches; returns how many were accepted."""
        self.report.metrics_sent += len(rows)
        accepted = self._batches("/v1/metrics", "metrics", rows, "metrics")
        self.report.metrics_accepted += accepted
        return accepted


def attributed(hits: Iterable[Mapping[str, Any]]) -> Counter[str]:
    """Enriched hits per retargeting campaign they were attributed to (``declared_campaign.key``)."""
    counts: Counter[str] = Counter()
    for hit in hits:
        declared = hit.get("declared_campaign")
        if declared and declared.get("key") in BY_KEY:
            counts[declared["key"]] += 1
    return counts
