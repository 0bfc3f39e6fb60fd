"""A seeded model of an online shop's traffic: products, campaigns, customers and visitor journeys.

Pure and deterministic: every visitor draws from its own ``random.Random``
seeded by ``(seed, visitor index)``, so visitor 17 of seed 7 is the same
person whatever the number of visitors asked for, and two runs with the same
seed and start time give the same events, event ids included (a replay is
then deduplicated downstream, as a client retry would be).

The traffic is shaped to exercise each processor, not just to look busy:

- campaign tags of every family attribution reads (AT Internet ``xtor`` for
  email, paid search with its ``gclid``, affiliation and display; ``utm_*``),
  plus a share of tags no partner declared, which must be flagged, not lost;
- untagged visits from search engines, social networks, other sites and
  direct, classified by their referrer;
- carts that end in an order and carts that are abandoned (remarketing);
- customers who log in, at the start of a visit or only at checkout, whose
  CRM profiles are published alongside (online/offline crossing);
- visitors who come back later, directly, so that the campaign that first
  brought them is credited again (campaign persistence).
"""

from __future__ import annotations

import heapq
import math
import random
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import quote

from passerelle.schemas.models import Campaign, CrmProfile, age_band

SECOND: Final = 1000
MINUTE: Final = 60 * SECOND
HOUR: Final = 60 * MINUTE
DAY: Final = 24 * HOUR
CURRENCY: Final = "EUR"
DEFAULT_SPAN_MS: Final = 3 * DAY
MIN_SPAN_MS: Final = 6 * HOUR
"""Room for a visit, a return a few hours later and a second visit."""

VISIT_TIMEOUT_MS: Final = 30 * MINUTE
"""Analytics ends a visit after 30 minutes without a hit: pauses inside a visit stay well under it."""

# --- behaviour knobs (probabilities), in one place so that the mix can be read and tuned ----------------

P_ACCOUNT: Final = 0.30  # the visitor already has a customer account
P_LOGIN_ON_ARRIVAL: Final = 0.55  # an account holder logs in at the start of the visit
P_BOUNCE: Final = 0.22  # the visit ends on its landing page
P_CART: Final = 0.45  # a visit that browses adds something to the cart
P_ORDER: Final = 0.45  # a cart is ordered in the same visit
P_RETURN: Final = 0.25  # the visitor comes back later, directly
P_ORDER_ON_RETURN: Final = 0.35  # a returning visitor with a pending cart orders it
P_REMOVE: Final = 0.15  # a cart of several lines loses one
P_MARKETING_CONSENT: Final = 0.62


# --- products -----------------------------------------------------------------------------------------

_PRODUCTS: Final[tuple[tuple[str, str, float], ...]] = (
    ("shoes", "Trail running shoes", 129.0),
    ("shoes", "Road running shoes", 109.0),
    ("shoes", "Hiking boots", 159.0),
    ("shoes", "Approach shoes", 139.0),
    ("shoes", "Recovery sandals", 49.9),
    ("shoes", "Kids trail shoes", 64.9),
    ("outerwear", "Rain jacket", 89.5),
    ("outerwear", "Down jacket", 189.0),
    ("outerwear", "Softshell jacket", 119.0),
    ("outerwear", "Windbreaker", 59.9),
    ("outerwear", "Insulated vest", 79.0),
    ("outerwear", "Hardshell pants", 149.0),
    ("tops", "Merino t-shirt", 54.9),
    ("tops", "Technical tee", 24.9),
    ("tops", "Fleece pullover", 49.9),
    ("tops", "Long-sleeve base layer", 39.9),
    ("tops", "Running singlet", 19.9),
    ("tops", "Hooded sweatshirt", 44.9),
    ("bottoms", "Trail shorts", 34.9),
    ("bottoms", "Running tights", 49.9),
    ("bottoms", "Hiking trousers", 69.9),
    ("bottoms", "Convertible pants", 74.9),
    ("bottoms", "Compression shorts", 29.9),
    ("accessories", "Merino socks", 14.9),
    ("accessories", "Running cap", 19.9),
    ("accessories", "Beanie", 17.9),
    ("accessories", "Touchscreen gloves", 24.9),
    ("accessories", "Buff neck gaiter", 16.9),
    ("accessories", "Sunglasses", 89.0),
    ("equipment", "Trail running vest 12 L", 99.0),
    ("equipment", "Hiking backpack 30 L", 119.0),
    ("equipment", "Trekking poles", 69.9),
    ("equipment", "Headlamp 400 lm", 44.9),
    ("equipment", "Soft flask 500 ml", 22.9),
    ("equipment", "GPS watch", 299.0),
    ("equipment", "Sleeping bag", 179.0),
    ("equipment", "Ultralight tent", 349.0),
    ("nutrition", "Energy gels (12 pack)", 24.9),
    ("nutrition", "Electrolyte tablets", 9.9),
    ("nutrition", "Recovery drink 1 kg", 34.9),
)

_KEYWORDS: Final[dict[str, tuple[str, ...]]] = {
    "shoes": ("trail running shoes", "chaussures trail", "hiking boots waterproof"),
    "outerwear": ("rain jacket", "veste gore-tex", "down jacket men"),
    "tops": ("merino t-shirt", "base layer"),
    "bottoms": ("running tights", "hiking trousers"),
    "accessories": ("merino socks", "running cap"),
    "equipment": ("trekking poles", "gps watch trail", "headlamp"),
    "nutrition": ("energy gels", "electrolytes"),
}


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-").replace("--", "-")


@dataclass(frozen=True)
class ShopProduct:
    """One product of the catalog, with the URLs a tag would report for it."""

    id: str
    name: str
    price: float
    category: str
    url: str
    image_url: str

    def event(self, quantity: int = 1) -> dict[str, Any]:
        """The product as a collector JSON event carries it."""
        return {
            "id": self.id,
            "name": self.name,
            "price": self.price,
            "currency": CURRENCY,
            "quantity": quantity,
            "category": self.category,
            "url": self.url,
            "image_url": self.image_url,
        }


def build_catalog(base_url: str) -> tuple[ShopProduct, ...]:
    """The shop's products; fixed rather than random so that product ids mean the same thing in every run."""
    host = base_url.split("://", 1)[-1].split("/", 1)[0]
    return tuple(
        ShopProduct(
            id=f"SKU-{1001 + i}",
            name=name,
            price=price,
            category=category,
            url=f"{base_url}/p/{_slug(name)}-{1001 + i}",
            image_url=f"https://cdn.{host}/img/SKU-{1001 + i}.jpg",
        )
        for i, (category, name, price) in enumerate(_PRODUCTS)
    )


# --- traffic channels ---------------------------------------------------------------------------------

DIRECT: Final = "direct"
ORGANIC: Final = "organic"
SOCIAL: Final = "social"
REFERRAL: Final = "referral"
CAMPAIGN: Final = "campaign"
UNDECLARED: Final = "undeclared"
KINDS: Final = (DIRECT, ORGANIC, SOCIAL, REFERRAL, CAMPAIGN, UNDECLARED)


@dataclass(frozen=True)
class Channel:
    """One way visitors arrive: the landing page, its tags and the referrer the browser sends.

    ``query`` is the campaign tag template (``{date}``, ``{link}``,
    ``{contact}``, ``{keyword}``, ``{gclid}`` are filled per visitor);
    ``key`` is the campaign key attribution recovers from it.
    """

    kind: str
    name: str
    weight: float
    referrers: tuple[str | None, ...] = (None,)
    landings: tuple[str, ...] = ("home",)
    query: str = ""
    key: str | None = None


@dataclass(frozen=True)
class Declaration:
    """What a partner declares for a campaign (the ``Campaign`` record, minus the dates the shop computes)."""

    key: str
    name: str
    partner: str
    channel: str
    medium: str
    cost_model: str | None
    cost_amount: float | None


_GOOGLE = ("https://www.google.fr/", "https://www.google.com/")

CHANNELS: Final[tuple[Channel, ...]] = (
    Channel(DIRECT, "direct", 0.20, landings=("home", "home", "home", "product")),
    Channel(ORGANIC, "google", 0.17, referrers=_GOOGLE, landings=("home", "category", "product", "product")),
    Channel(ORGANIC, "bing", 0.05, referrers=("https://www.bing.com/search?q={keyword}",), landings=("product",)),
    Channel(SOCIAL, "facebook", 0.06, referrers=("https://www.facebook.com/", "https://m.facebook.com/")),
    Channel(SOCIAL, "instagram", 0.04, referrers=("https://l.instagram.com/",), landings=("product",)),
    Channel(
        REFERRAL,
        "sites",
        0.08,
        referrers=(
            "https://blog-running.example/best-trail-shoes-2026",
            "https://www.comparateur-prix.example/sport/chaussures",
            "https://forum.outdoor.example/t/rain-jackets/12345",
        ),
        landings=("product", "category"),
    ),
    Channel(
        CAMPAIGN,
        "EREC-123",
        0.10,
        referrers=(None, None, "https://mail.google.com/"),
        landings=("category",),
        query="xtor=EREC-123-[black_friday]-{date}-[{link}]-{contact}@newsletter",
        key="EREC-123",
    ),
    Channel(
        CAMPAIGN,
        "SEC-9",
        0.10,
        referrers=_GOOGLE,
        landings=("category", "product"),
        query="xtor=SEC-9-GOO-[{keyword}]&gclid={gclid}",
        key="SEC-9",
    ),
    Channel(
        CAMPAIGN,
        "AL-72",
        0.06,
        referrers=("https://www.cashback-club.example/offres/outdoor",),
        landings=("product",),
        query="xtor=AL-72-[cashback_club]",
        key="AL-72",
    ),
    Channel(
        CAMPAIGN,
        "AD-3001",
        0.04,
        referrers=("https://news.example/", None),
        query="xtor=AD-3001-[winter_sale_300x250]",
        key="AD-3001",
    ),
    Channel(
        CAMPAIGN,
        "weekly_newsletter",
        0.05,
        query="utm_source=newsletter&utm_medium=email&utm_campaign=weekly_newsletter&utm_content={link}",
        key="weekly_newsletter",
    ),
    # Tags partners used without declaring them: attribution must flag them.
    Channel(
        UNDECLARED,
        "EREC-456",
        0.02,
        landings=("product",),
        query="xtor=EREC-456-[cart_reminder]-{date}-[{link}]-{contact}@clients",
        key="EREC-456",
    ),
    Channel(
        UNDECLARED,
        "AL-88",
        0.015,
        referrers=("https://www.promo-radar.example/bons-plans",),
        landings=("product",),
        query="xtor=AL-88-[promo_radar]",
        key="AL-88",
    ),
    Channel(
        UNDECLARED,
        "flash_sale_tiktok",
        0.015,
        referrers=("https://www.tiktok.com/",),
        landings=("product",),
        query="utm_source=tiktok&utm_medium=social&utm_campaign=flash_sale_tiktok",
        key="flash_sale_tiktok",
    ),
)

DECLARATIONS: Final[tuple[Declaration, ...]] = (
    Declaration("EREC-123", "Black Friday newsletter", "mailer", "email", "email", "flat", 1500.0),
    Declaration("SEC-9", "Google Ads, generic keywords", "google_ads", "search", "cpc", "CPC", 0.45),
    Declaration("AL-72", "Cashback club", "cashback_club", "affiliation", "affiliate", "CPA", 8.0),
    Declaration("AD-3001", "Winter sale banners", "adserver", "display", "display", "CPM", 4.5),
    Declaration("weekly_newsletter", "Weekly newsletter", "mailer", "email", "email", None, None),
)

_TEMPLATES: Final[dict[str, str]] = {
    "EREC-123": "{base}/?xtor=EREC-123-[{{label}}]-{{date}}-[{{link}}]-{{contact}}@{{list}}",
    "SEC-9": "{base}/?xtor=SEC-9-GOO-[{{keyword}}]",
    "AL-72": "{base}/?xtor=AL-72-[{{partner}}]",
    "AD-3001": "{base}/?xtor=AD-3001-[{{creative}}]",
    "weekly_newsletter": "{base}/?utm_source=newsletter&utm_medium=email&utm_campaign=weekly_newsletter",
}

_USER_AGENTS: Final = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Mobile Safari/537",
    "Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0",
)

# --- CRM ------------------------------------------------------------------------------------------------

_FIRST_NAMES: Final = ("camille", "lea", "manon", "chloe", "hugo", "lucas", "louis", "nathan", "alex", "sasha")
_LAST_NAMES: Final = ("martin", "bernard", "dubois", "thomas", "robert", "richard", "petit", "durand", "leroy")
_CSP: Final = (
    ("executive", 0.20),
    ("intermediate_profession", 0.22),
    ("employee", 0.24),
    ("worker", 0.10),
    ("self_employed", 0.07),
    ("retired", 0.10),
    ("student", 0.07),
)
_LOYALTY: Final = (("none", 0.45), ("silver", 0.30), ("gold", 0.18), ("platinum", 0.07))
_GENDERS: Final = (("F", 0.49), ("M", 0.47), ("X", 0.04))


def _weighted(rng: random.Random, choices: Iterable[tuple[str, float]]) -> str:
    items = list(choices)
    return rng.choices([name for name, _ in items], weights=[w for _, w in items])[0]


# --- journeys -------------------------------------------------------------------------------------------


@dataclass
class Journey:
    """Everything one visitor did, with the facts tests and reports need without re-deriving them."""

    visitor_id: str
    channel: Channel
    events: list[dict[str, Any]]
    customer_id: str | None = None
    identified: bool = False
    orders: int = 0
    abandoned: bool = False
    """The visitor left with a non-empty cart and never ordered it."""
    returned: bool = False

    @property
    def kind(self) -> str:
        return self.channel.kind


@dataclass(frozen=True)
class FirstVisit:
    """What a visitor's first visit left, for a partner deciding what to do with them (a retargeting partner).

    Times are from the journey's start (its first hit is at 0); the journey is
    placed in the shop's window only afterwards.
    """

    index: int
    visitor_id: str
    end_ms: int
    """Time of the first visit's last hit."""
    room_ms: int
    """Time left in the window after ``end_ms``, two hours kept for a later visit to end in."""
    viewed: tuple[str, ...]
    """Product ids viewed, oldest first."""
    cart: tuple[str, ...]
    """Product ids left in the cart (empty: no cart, or it was ordered)."""
    ordered: bool


@dataclass(frozen=True)
class Revisit:
    """What follows a first visit when a partner decides it, instead of the shop's own return visit.

    ``visit`` False: no later visit at all. Otherwise a visit ``after_ms``
    after the first visit's last hit, landing on ``url`` from ``referrer``
    (a click on a banner), or typed in when ``url`` is None (a direct return).
    ``tail_ms``: the partner's own activity (impressions) lasts that long
    after the first visit, so the journey is placed with room for it.
    """

    after_ms: int = 0
    url: str | None = None
    referrer: str | None = None
    visit: bool = True
    tail_ms: int = 0


RevisitPlan = Callable[[FirstVisit], "Revisit | None"]
"""Called after each first visit; None keeps the shop's own return visit (and the journey unchanged)."""


@dataclass
class _Visitor:
    """The mutable state of one visitor while their visits are simulated."""

    rng: random.Random
    ids: random.Random
    visitor_id: str
    consent: dict[str, bool]
    user_agent: str
    ip: str
    account: str | None
    logged_in: bool = False
    cart: dict[str, int] = field(default_factory=dict)
    viewed: list[str] = field(default_factory=list)
    orders: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)


class Shop:
    """The shop: its catalog, the campaigns partners declared, its customers and its visitors.

    ``start_ms`` and ``span_ms`` bound every event time: visitors arrive
    anywhere in the window and a returning visitor's later visit stays in it.
    A collector keeps client times only within its replay window (24 hours by
    default), so a live run must use a span shorter than that.
    """

    def __init__(
        self,
        seed: int,
        start_ms: int,
        *,
        site: str = "shop.example",
        base_url: str | None = None,
        span_ms: int = DEFAULT_SPAN_MS,
        customers: int = 200,
    ) -> None:
        if span_ms < MIN_SPAN_MS:
            raise ValueError(f"span_ms must be at least {MIN_SPAN_MS} ms (6 hours), got {span_ms}")
        if customers < 1:
            raise ValueError(f"customers must be >= 1, got {customers}")
        self.seed = seed
        self.start_ms = start_ms
        self.span_ms = span_ms
        self.site = site
        self.base_url = (base_url or f"https://{site}").rstrip("/")
        self.customers = customers
        self.products = build_catalog(self.base_url)
        self._by_id = {p.id: p for p in self.products}
        self._categories = sorted({p.category for p in self.products})
        self._date = datetime.fromtimestamp(start_ms / 1000, UTC).strftime("%Y%m%d")

    # --- reference data ---------------------------------------------------------------------------------

    def customer_id(self, index: int) -> str:
        return f"C{100000 + index}"

    def campaigns(self) -> list[dict[str, Any]]:
        """The declared campaigns as ``Campaign`` Avro dicts; the undeclared tags are deliberately absent."""
        declared_at = self.start_ms - 3 * DAY
        records = []
        for i, decl in enumerate(DECLARATIONS):
            campaign = Campaign(
                key=decl.key,
                name=decl.name,
                partner=decl.partner,
                channel=decl.channel,
                medium=decl.medium,
                tagged_url_template=_TEMPLATES[decl.key].format(base=self.base_url),
                valid_from=self.start_ms - 2 * DAY,
                valid_to=self.start_ms + self.span_ms + 30 * DAY,
                cost_model=decl.cost_model,
                cost_amount=decl.cost_amount,
                currency=CURRENCY if decl.cost_amount is not None else None,
                declared_at=declared_at + i * MINUTE,
            )
            records.append(campaign.to_avro())
        return records

    def crm_profiles(self, n: int | None = None) -> list[dict[str, Any]]:
        """``CrmProfile`` Avro dicts of the first ``n`` customers (all of them by default)."""
        count = self.customers if n is None else min(n, self.customers)
        year = datetime.fromtimestamp(self.start_ms / 1000, UTC).year
        return [self._profile(i, year).to_avro() for i in range(count)]

    def _profile(self, index: int, year: int) -> CrmProfile:
        rng = random.Random(f"{self.seed}:crm:{index}")
        birth_year = rng.randint(year - 75, year - 18)
        first, last = rng.choice(_FIRST_NAMES), rng.choice(_LAST_NAMES)
        return CrmProfile(
            customer_id=self.customer_id(index),
            email=f"{first}.{last}.{index}@mail.example",
            gender=_weighted(rng, _GENDERS),
            birth_year=birth_year,
            age_band=age_band(birth_year, year),
            csp=_weighted(rng, _CSP),
            loyalty_tier=_weighted(rng, _LOYALTY),
            marketing_consent=rng.random() < P_MARKETING_CONSENT,
            updated_at=self.start_ms - rng.randint(1, 400) * DAY,
        )

    # --- visitors ---------------------------------------------------------------------------------------

    def journeys(self, visitors: int, revisit: RevisitPlan | None = None) -> Iterator[Journey]:
        """Journeys of visitors ``0..visitors-1``; each one's events are in time order."""
        for index in range(visitors):
            yield self.journey(index, revisit)

    def events(self, visitors: int) -> list[dict[str, Any]]:
        """Every visitor's events merged in event-time order, as a site's traffic reaches a collector.

        Held in memory (about 1 kB an event): the merge needs every visitor
        before it can emit the first event.
        """
        return merge_events(self.journeys(visitors))

    def journey(self, index: int, revisit: RevisitPlan | None = None) -> Journey:
        """The journey of visitor ``index``: one visit, sometimes a direct return visit hours or days later.

        ``revisit`` (a partner's plan) may decide what follows the first visit
        instead; when it returns None the journey is exactly the one without it.
        """
        rng = random.Random(f"{self.seed}:visitor:{index}")
        channel = rng.choices(CHANNELS, weights=[c.weight for c in CHANNELS])[0]
        visitor = _Visitor(
            rng=rng,
            ids=random.Random(f"{self.seed}:{self.start_ms}:ids:{index}"),
            visitor_id=f"v-{rng.getrandbits(80):020x}",
            consent={"analytics": True, "marketing": rng.random() < P_MARKETING_CONSENT},
            user_agent=rng.choice(_USER_AGENTS),
            ip=_ip(rng),
            account=self.customer_id(rng.randrange(self.customers)) if rng.random() < P_ACCOUNT else None,
        )
        url, referrer = self._arrival(rng, channel)
        end = self._visit(visitor, 0, url, referrer)
        first_visit_events = len(visitor.events)
        room = self.span_ms - end - 2 * HOUR  # the second visit needs room too
        plan = None
        if revisit is not None:
            first = FirstVisit(
                index=index,
                visitor_id=visitor.visitor_id,
                end_ms=end,
                room_ms=room,
                viewed=tuple(visitor.viewed),
                cart=tuple(visitor.cart),
                ordered=visitor.orders > 0,
            )
            plan = revisit(first)
        if plan is not None:
            returned = plan.visit
            if returned and plan.url is not None:
                self._visit(visitor, end + plan.after_ms, plan.url, plan.referrer)
            elif returned:
                self._return_visit(visitor, end + plan.after_ms)
        else:
            returned = rng.random() < P_RETURN
            if returned:
                gap = int(min(max(rng.lognormvariate(math.log(10 * HOUR), 1.0), HOUR), 3 * DAY))
                if gap > room:
                    gap = int(room * rng.uniform(0.5, 1.0))
                returned = gap > VISIT_TIMEOUT_MS + MINUTE
                if returned:
                    self._return_visit(visitor, end + gap)
        duration = visitor.events[-1]["event_time"]
        if plan is not None:
            duration = max(duration, end + plan.tail_ms)
        offset = self.start_ms + rng.randrange(max(1, self.span_ms - duration))
        for event in visitor.events:
            event["event_time"] += offset
        identified = any(e.get("customer_id") for e in visitor.events)
        return Journey(
            visitor_id=visitor.visitor_id,
            channel=channel,
            events=visitor.events,
            customer_id=next((e["customer_id"] for e in visitor.events if e.get("customer_id")), None),
            identified=identified,
            orders=visitor.orders,
            abandoned=bool(visitor.cart),
            returned=returned and len(visitor.events) > first_visit_events,
        )

    def _arrival(self, rng: random.Random, channel: Channel) -> tuple[str, str | None]:
        """Landing URL (with the channel's tags) and referrer of a visitor's first visit."""
        landing = rng.choice(channel.landings)
        category = rng.choice(self._categories)
        if landing == "product":
            product = rng.choice([p for p in self.products if p.category == category])
            path = product.url
        elif landing == "category":
            path = f"{self.base_url}/c/{category}"
        else:
            path = f"{self.base_url}/"
        keyword = rng.choice(_KEYWORDS[category])
        fill = {
            "date": self._date,
            "link": rng.choice(("hero", "product_grid", "footer", "cta")),
            "contact": f"{rng.getrandbits(32):08x}",
            "keyword": keyword,
            "gclid": f"EAIaIQob{rng.getrandbits(96):024x}",
        }
        url = path
        if channel.query:
            query = channel.query.format(**{k: quote(v, safe="-_.@") for k, v in fill.items()})
            url = f"{path}{'&' if '?' in path else '?'}{query}"
        referrer = rng.choice(channel.referrers)
        if referrer is not None:
            referrer = referrer.format(keyword=quote(keyword, safe=""))
        return url, referrer

    # --- visits -----------------------------------------------------------------------------------------

    def _emit(self, v: _Visitor, t: int, kind: str, url: str, referrer: str | None, page: str, **extra: Any) -> None:
        event: dict[str, Any] = {
            "event_id": str(uuid.UUID(int=v.ids.getrandbits(128), version=4)),
            "site": self.site,
            "visitor_id": v.visitor_id,
            "type": kind,
            "event_time": t,
            "url": url,
            "page": page,
            "consent": dict(v.consent),
            "user_agent": v.user_agent,
            "ip": v.ip,
        }
        if referrer is not None:
            event["referrer"] = referrer
        if v.logged_in and v.account:
            event["customer_id"] = v.account
        event.update(extra)
        v.events.append(event)

    def _login(self, v: _Visitor, t: int, url: str, referrer: str | None) -> None:
        """Log in (or create the account at checkout): the identify hit that stitches visitor and customer."""
        if v.account is None:
            v.account = self.customer_id(v.rng.randrange(self.customers))
        v.logged_in = True
        self._emit(v, t, "identify", url, referrer, "account::login")

    def _visit(self, v: _Visitor, t: int, url: str, referrer: str | None) -> int:
        """One visit from a landing page; returns the time of its last hit."""
        rng = v.rng
        product = self._product_of(url)
        self._emit(v, t, "page_view", url, referrer, self._page_name(url))
        if product is not None:
            t += rng.randint(1, 3) * SECOND
            self._view(v, t, product, url, referrer)
        previous = url
        if v.account and rng.random() < P_LOGIN_ON_ARRIVAL:
            t += _pause(rng)
            previous = f"{self.base_url}/account/login"
            self._login(v, t, previous, url)
        if rng.random() < P_BOUNCE:
            return v.events[-1]["event_time"]
        interest = product.category if product else self._category_of(url) or rng.choice(self._categories)
        t, previous = self._browse(v, t, previous, interest, rng.randint(1, 6))
        if rng.random() < P_CART:
            t, previous = self._fill_cart(v, t, previous)
            if rng.random() < P_ORDER:
                t = self._checkout(v, t, previous)
            elif rng.random() < 0.5:
                t += _pause(rng)
                self._emit(v, t, "page_view", f"{self.base_url}/cart", previous, "cart")
        return t

    def _return_visit(self, v: _Visitor, t: int) -> None:
        """A later visit, typed-in or bookmarked (no referrer, no tag): campaign persistence credits it."""
        rng = v.rng
        if v.cart and rng.random() < P_ORDER_ON_RETURN:
            cart_url = f"{self.base_url}/cart"
            self._emit(v, t, "page_view", cart_url, None, "cart")
            self._checkout(v, t, cart_url)
            return
        url = f"{self.base_url}/"
        self._emit(v, t, "page_view", url, None, "home")
        if rng.random() < P_BOUNCE:
            return
        t, previous = self._browse(v, t, url, rng.choice(self._categories), rng.randint(1, 4))
        if not v.cart and rng.random() < P_CART:
            t, previous = self._fill_cart(v, t, previous)
        if v.cart and rng.random() < P_ORDER:
            self._checkout(v, t, previous)

    def _browse(self, v: _Visitor, t: int, previous: str, interest: str, views: int) -> tuple[int, str]:
        rng = v.rng
        for _ in range(views):
            category = interest if rng.random() < 0.7 else rng.choice(self._categories)
            if rng.random() < 0.35:
                t += _pause(rng)
                listing = f"{self.base_url}/c/{category}"
                self._emit(v, t, "page_view", listing, previous, f"category::{category}")
                previous = listing
            product = rng.choice([p for p in self.products if p.category == category and p.url != previous])
            t += _pause(rng)
            self._emit(v, t, "page_view", product.url, previous, f"product::{product.id}")
            t += rng.randint(1, 3) * SECOND
            self._view(v, t, product, product.url, previous)
            previous = product.url
        return t, previous

    def _view(self, v: _Visitor, t: int, product: ShopProduct, url: str, referrer: str | None) -> None:
        self._emit(v, t, "product_view", url, referrer, f"product::{product.id}", product=product.event())
        if product.id in v.viewed:
            v.viewed.remove(product.id)
        v.viewed.append(product.id)

    def _fill_cart(self, v: _Visitor, t: int, previous: str) -> tuple[int, str]:
        rng = v.rng
        recent = list(dict.fromkeys(reversed(v.viewed)))[:4] or [rng.choice(self.products).id]
        for product_id in rng.sample(recent, k=rng.randint(1, min(3, len(recent)))):
            product = self._by_id[product_id]
            quantity = 2 if rng.random() < 0.15 else 1
            t += _pause(rng)
            self._emit(
                v, t, "cart_add", product.url, previous, f"product::{product.id}", product=product.event(quantity)
            )
            v.cart[product.id] = v.cart.get(product.id, 0) + quantity
        if len(v.cart) > 1 and rng.random() < P_REMOVE:
            removed = rng.choice(sorted(v.cart))
            t += _pause(rng)
            cart_url = f"{self.base_url}/cart"
            product = self._by_id[removed]
            self._emit(v, t, "cart_remove", cart_url, previous, "cart", product=product.event(v.cart.pop(removed)))
            previous = cart_url
        return t, previous

    def _checkout(self, v: _Visitor, t: int, previous: str) -> int:
        rng = v.rng
        checkout = f"{self.base_url}/checkout"
        t += _pause(rng)
        self._emit(v, t, "page_view", checkout, previous, "checkout")
        if not v.logged_in:
            t += _pause(rng)
            self._login(v, t, f"{self.base_url}/checkout/login", checkout)
        lines = [self._by_id[pid].event(qty) for pid, qty in sorted(v.cart.items())]
        revenue = round(sum(line["price"] * line["quantity"] for line in lines), 2)
        order_id = f"ORD-{v.ids.getrandbits(48):012X}"
        t += _pause(rng) + 20 * SECOND  # payment
        confirmation = f"{self.base_url}/checkout/confirmation"
        order = {"order_id": order_id, "revenue": revenue, "currency": CURRENCY, "lines": lines}
        self._emit(v, t, "order", confirmation, checkout, "checkout::confirmation", order=order)
        v.cart.clear()
        v.orders += 1
        return t

    # --- URLs -------------------------------------------------------------------------------------------

    def _product_of(self, url: str) -> ShopProduct | None:
        path = url.split("?", 1)[0]
        return next((p for p in self.products if p.url == path), None)

    def _category_of(self, url: str) -> str | None:
        path = url.split("?", 1)[0]
        prefix = f"{self.base_url}/c/"
        return path[len(prefix) :] if path.startswith(prefix) else None

    def _page_name(self, url: str) -> str:
        product = self._product_of(url)
        if product is not None:
            return f"product::{product.id}"
        category = self._category_of(url)
        return f"category::{category}" if category else "home"


def merge_events(journeys: Iterable[Journey]) -> list[dict[str, Any]]:
    """The journeys' events in one event-time order (each journey's own order kept on ties)."""
    return list(heapq.merge(*(j.events for j in journeys), key=lambda e: e["event_time"]))


def _pause(rng: random.Random) -> int:
    """Time between two hits of a visit: mostly seconds, sometimes minutes, never near the visit timeout."""
    return int(min(max(rng.lognormvariate(math.log(25), 0.8), 2.0), 600.0) * SECOND)


def _ip(rng: random.Random) -> str:
    """An address from the documentation ranges: realistic for the collector, nobody's real address."""
    if rng.random() < 0.15:
        return f"2001:db8:{rng.getrandbits(16):x}:{rng.getrandbits(16):x}::{rng.getrandbits(16):x}"
    return f"{rng.choice(('192.0.2', '198.51.100', '203.0.113'))}.{rng.randint(1, 254)}"


# --- what a run looks like ------------------------------------------------------------------------------


def mix(journeys: Iterable[Journey]) -> dict[str, float]:
    """Shares of visitors by arrival kind and outcome, for reports and for checking the model's proportions."""
    count = 0
    kinds: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    for journey in journeys:
        count += 1
        kinds[journey.kind] += 1
        outcomes["ordered"] += journey.orders > 0
        outcomes["abandoned"] += journey.abandoned
        outcomes["identified"] += journey.identified
        outcomes["returned"] += journey.returned
    if not count:
        return {}
    shares = {f"source.{kind}": kinds[kind] / count for kind in KINDS}
    shares.update({name: outcomes[name] / count for name in ("ordered", "abandoned", "identified", "returned")})
    return shares
