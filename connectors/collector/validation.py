"""From what a tag sends to a ``Hit``: request models and pure conversion, no I/O.

Everything here is a pure function of its inputs (the request data, the
server's receive time, the peer address) so that the rules that decide what
reaches Kafka are unit-tested without a server or a broker. Two rules carry
most of the weight:

- identity: the client's event id is kept when it sends one, because a retry
  of the same event must carry the same id for consumers to deduplicate it;
  otherwise the collector draws a UUID4.
- privacy: the client IP is truncated here (IPv4 /24, IPv6 /48) and only the
  truncated form is put on the ``Hit``; the full address never leaves the
  process.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Annotated, Any, NamedTuple

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)

from passerelle.schemas.models import Hit, HitType, Order, Product
from passerelle.schemas.timeconv import parse_epoch_ms
from passerelle.streams.enrichment.params import normalize_params, parse_campaign_params

# --- field types -----------------------------------------------------------------------------------

Id = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=128)]
EventId = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=128, pattern=r"^[!-~]+$")]
"""Visible ASCII only: event ids end up in logs, headers and partner payloads."""
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=1024)]
Url = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=8192)]
Currency = Annotated[str, StringConstraints(strip_whitespace=True, pattern=r"^[A-Za-z]{3}$"), AfterValidator(str.upper)]
"""ISO 4217 code; tags send ``eur`` as often as ``EUR``."""
Amount = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Quantity = Annotated[int, Field(ge=1, le=100_000)]

MAX_CAMPAIGN_PARAMS = 64
MAX_CAMPAIGN_KEY = 128
MAX_CAMPAIGN_VALUE = 1024
"""Bounds of an explicit ``campaign_params`` entry (tag names are short, campaign labels under 1 KiB).

Parameters read from a URL are bounded by the URL's own limit (8 KiB).
"""
CampaignKey = Annotated[str, StringConstraints(max_length=MAX_CAMPAIGN_KEY)]
CampaignValue = Annotated[str, StringConstraints(max_length=MAX_CAMPAIGN_VALUE)]
MAX_ORDER_LINES = 500
MAX_LOCATION_PART = 64
"""Longest part of a field path in an error message: a 900 KB dict key must not come back in the answer."""


# --- errors and context ----------------------------------------------------------------------------


class InvalidEvent(ValueError):
    """One event cannot become a ``Hit``; ``errors`` are one-line messages naming the field."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class HitRules:
    """What the conversion needs from the configuration, so it stays testable without one."""

    sites: frozenset[str]
    default_site: str | None = None
    max_event_age_ms: int = 24 * 3600 * 1000
    max_clock_skew_ms: int = 300 * 1000
    keep_ip: bool = True
    ipv4_prefix: int = 24
    ipv6_prefix: int = 48

    def for_sites(self, sites: Collection[str]) -> HitRules:
        """The same rules restricted to ``sites``; a single site becomes the default of events naming none."""
        allowed = frozenset(sites)
        return replace(self, sites=allowed, default_site=next(iter(allowed)) if len(allowed) == 1 else None)


@dataclass(frozen=True)
class RequestContext:
    """What the server knows about the request an event came in, beyond the event itself."""

    received_at_ms: int
    client_ip: str | None = None
    user_agent: str | None = None
    referer: str | None = None
    new_id: Callable[[], str] = field(default=lambda: new_event_id())


_IDS_PER_DRAW = 256
_VARIANT = {c: "89ab"[int(c, 16) & 0x3] for c in "0123456789abcdef"}
"""The RFC 4122 variant digit (10xx) a random hex digit becomes."""
_ids: Iterator[str] = iter(())


def _forget_ids() -> None:
    global _ids
    _ids = iter(())


os.register_at_fork(after_in_child=_forget_ids)  # a forked worker must not hand out its parent's ids


def _draw_ids() -> list[str]:
    """256 version 4 UUIDs, from one ``os.urandom`` call (the same source as ``uuid.uuid4``)."""
    h = os.urandom(16 * _IDS_PER_DRAW).hex()
    return [
        f"{h[i : i + 8]}-{h[i + 8 : i + 12]}-4{h[i + 13 : i + 16]}-{_VARIANT[h[i + 16]]}{h[i + 17 : i + 20]}-"
        f"{h[i + 20 : i + 32]}"
        for i in range(0, len(h), 32)
    ]


def new_event_id() -> str:
    """A random (version 4) UUID in its usual text form, as ``str(uuid.uuid4())`` but at a fraction of its cost.

    The randomness is the same (``os.urandom``), drawn 256 ids at a time
    instead of one system call per event, and formatted in one pass.
    ``next()`` on a list iterator is atomic: threads never share an id, and
    a forked child draws its own.
    """
    global _ids
    drawn = next(_ids, None)
    if drawn is None:
        _ids = iter(_draw_ids())
        drawn = next(_ids)
    return drawn


# --- IP addresses ----------------------------------------------------------------------------------


def parse_ip(value: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address in a peer or ``X-Forwarded-For`` value (ports, brackets and zones tolerated), else None."""
    if not value:
        return None
    text = value.strip()
    if text.startswith("["):  # [v6]:port
        end = text.find("]")
        text = text[1:end] if end > 0 else text[1:]
    elif text.count(":") == 1:  # v4:port
        text = text.partition(":")[0]
    text = text.partition("%")[0]  # fe80::1%eth0
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def truncate_ip(value: str | None, ipv4_prefix: int = 24, ipv6_prefix: int = 48) -> str | None:
    """The network part of an address (``_truncate_ip``), remembered for the last 4,096 addresses.

    Parsing with ``ipaddress`` costs more than the rest of a pixel's validation,
    and a burst comes from few addresses (a proxy, a server-side sender, one
    office): each is parsed once. The cache holds truncated answers keyed by
    the value seen; it lives in the process memory only, as the request does.
    """
    if not value:
        return None
    return _truncate_ip_cached(value, ipv4_prefix, ipv6_prefix)


def _truncate_ip(value: str | None, ipv4_prefix: int = 24, ipv6_prefix: int = 48) -> str | None:
    """The network part of an address: IPv4 /24 (last octet zeroed), IPv6 /48 (last 80 bits zeroed).

    Prefixes longer than /24 and /48 are clamped, never honoured. IPv4-mapped
    and 6to4 addresses carry a whole IPv4 address inside their first 48 bits,
    so they are truncated as the IPv4 address they embed. An unparsable value
    gives None: a string that is not an address must not travel either.
    """
    addr = parse_ip(value)
    if addr is None:
        return None
    if isinstance(addr, ipaddress.IPv6Address):
        embedded = addr.ipv4_mapped or addr.sixtofour
        if embedded is not None:
            addr = embedded
    v4 = isinstance(addr, ipaddress.IPv4Address)
    prefix = max(0, min(ipv4_prefix, 24)) if v4 else max(0, min(ipv6_prefix, 48))
    return str(ipaddress.ip_network((addr, prefix), strict=False).network_address)


_truncate_ip_cached = functools.lru_cache(maxsize=4096)(_truncate_ip)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _trusted(value: str | None, proxies: tuple[Network, ...]) -> bool:
    addr = parse_ip(value)
    return addr is not None and any(addr in network for network in proxies)


def client_ip(peer: str | None, forwarded_for: str | None, proxies: tuple[Network, ...]) -> str | None:
    """The visitor's address: the peer, unless the peer is a trusted proxy that says who it forwards.

    ``X-Forwarded-For`` is read from the right: each proxy appends the address
    it received from, so the hops left of the last untrusted one were written
    by the client itself and prove nothing. The first hop that is not one of
    ``proxies`` is the client; a hop that is not an address gives None (the
    proxy's own address would be a wrong answer). No ``proxies``: the header
    is never read, whoever sends it.
    """
    if not proxies or not forwarded_for or not _trusted(peer, proxies):
        return peer
    hops = [hop.strip() for hop in forwarded_for.split(",")]
    for hop in reversed(hops):
        if not _trusted(hop, proxies):
            return hop if parse_ip(hop) is not None else None
    return hops[0]  # every hop is one of our proxies: the farthest one is the best we know


# --- event time ------------------------------------------------------------------------------------


def parse_event_time(value: Any) -> int | None:
    """Epoch milliseconds from what a tag sends (``parse_epoch_ms``); None when absent or empty."""
    if value is None or value == "":
        return None
    try:
        return parse_epoch_ms(value)
    except ValueError as exc:
        raise ValueError(f"event_time {exc}") from None


def resolve_event_time(client_ms: int | None, received_at_ms: int, rules: HitRules) -> int:
    """The client's time when it is plausible, else the receive time.

    A client clock far in the future, or a time older than the replay window,
    would put the hit in the wrong visit or outside retention; the server's
    receive time is the better estimate then.
    """
    if client_ms is None:
        return received_at_ms
    if client_ms > received_at_ms + rules.max_clock_skew_ms or client_ms < received_at_ms - rules.max_event_age_ms:
        return received_at_ms
    return client_ms


# --- request models --------------------------------------------------------------------------------


_PAGE_VIEW, _ORDER, _IDENTIFY = HitType.PAGE_VIEW, HitType.ORDER, HitType.IDENTIFY
_NEED_PRODUCT = (HitType.PRODUCT_VIEW, HitType.CART_ADD, HitType.CART_REMOVE)
"""Members as module constants: ``HitType.X`` is a class attribute lookup through the enum's metaclass,
about a microsecond each, several times per event on the hot path."""


def _type_requirements(hit_type: HitType, has_product: bool, has_order: bool, has_customer: bool) -> str | None:
    """The part each hit type cannot do without; downstream processors (carts, orders) rely on it."""
    if hit_type is _PAGE_VIEW:  # most hits; identity tests, not enum equality (a Python-level __eq__)
        return None
    if (hit_type is _NEED_PRODUCT[0] or hit_type is _NEED_PRODUCT[1] or hit_type is _NEED_PRODUCT[2]) and (
        not has_product
    ):
        return f"{hit_type._value_} hits need a product"
    if hit_type is _ORDER and not has_order:
        return "order hits need an order (order id, revenue, currency)"
    if hit_type is _IDENTIFY and not has_customer:
        return "identify hits need a customer id"
    return None


class ProductIn(BaseModel):
    """A product in a JSON event."""

    model_config = ConfigDict(extra="forbid")

    id: Id = Field(validation_alias=AliasChoices("id", "product_id"))
    name: Text | None = None
    price: Amount | None = None
    currency: Currency | None = None
    quantity: Quantity = 1
    category: Text | None = None
    url: Url | None = None
    image_url: Url | None = None

    def to_model(self) -> Product:
        return Product(**self.model_dump())


class OrderIn(BaseModel):
    """An order in a JSON event."""

    model_config = ConfigDict(extra="forbid")

    order_id: Id = Field(validation_alias=AliasChoices("order_id", "id"))
    revenue: Amount
    currency: Currency
    lines: list[ProductIn] = Field(default_factory=list, max_length=MAX_ORDER_LINES)

    def to_model(self) -> Order:
        return Order(
            order_id=self.order_id,
            revenue=self.revenue,
            currency=self.currency,
            lines=[line.to_model() for line in self.lines],
        )


class ConsentIn(BaseModel):
    """Consent flags; a flag not sent is a consent not given."""

    model_config = ConfigDict(extra="forbid")

    analytics: bool = False
    marketing: bool = False


class EventIn(BaseModel):
    """One event of ``POST /v1/events``; unknown fields are rejected so typos do not lose data silently."""

    model_config = ConfigDict(extra="forbid")

    event_id: EventId | None = None
    site: Id | None = None
    visitor_id: Id = Field(validation_alias=AliasChoices("visitor_id", "vid"))
    customer_id: Id | None = None
    type: HitType = Field(default=HitType.PAGE_VIEW, validation_alias=AliasChoices("type", "event"))
    event_time: int | None = None
    url: Url
    referrer: Url | None = None
    page: Text | None = None
    campaign_params: dict[CampaignKey, CampaignValue] | None = Field(default=None, max_length=MAX_CAMPAIGN_PARAMS)
    product: ProductIn | None = None
    order: OrderIn | None = None
    consent: ConsentIn = Field(default_factory=ConsentIn)
    user_agent: Text | None = None
    ip: str | None = Field(default=None, max_length=64, description="visitor IP for server-side senders")

    @field_validator("event_time", mode="before")
    @classmethod
    def _event_time(cls, value: Any) -> int | None:
        return parse_event_time(value)

    @field_validator("ip")
    @classmethod
    def _ip(cls, value: str | None) -> str | None:
        if value is not None and parse_ip(value) is None:
            raise ValueError("not an IP address")
        return value


class PixelParams(BaseModel):
    """Query parameters of ``GET /hit``; short names first (tags keep pixel URLs short).

    Unknown parameters are ignored (cache busters, tag versions); empty ones
    count as absent, because tags send ``ref=`` when there is no referrer.
    """

    model_config = ConfigDict(extra="ignore")

    site: Id
    visitor_id: Id = Field(validation_alias=AliasChoices("vid", "visitor_id"))
    type: HitType = Field(default=HitType.PAGE_VIEW, validation_alias=AliasChoices("type", "event"))
    event_id: EventId | None = Field(default=None, validation_alias=AliasChoices("eid", "event_id"))
    event_time: int | None = Field(default=None, validation_alias=AliasChoices("ts", "event_time"))
    url: Url | None = None
    referrer: Url | None = Field(default=None, validation_alias=AliasChoices("ref", "referrer"))
    page: Text | None = None
    customer_id: Id | None = Field(default=None, validation_alias=AliasChoices("cid", "customer_id"))
    product_id: Id | None = Field(default=None, validation_alias=AliasChoices("pid", "product_id"))
    product_name: Text | None = Field(default=None, validation_alias=AliasChoices("pname", "product_name"))
    price: Amount | None = None
    currency: Currency | None = None
    quantity: Quantity = Field(default=1, validation_alias=AliasChoices("qty", "quantity"))
    category: Text | None = None
    product_url: Url | None = Field(default=None, validation_alias=AliasChoices("purl", "product_url"))
    image_url: Url | None = Field(default=None, validation_alias=AliasChoices("pimg", "image_url"))
    order_id: Id | None = Field(default=None, validation_alias=AliasChoices("oid", "order_id"))
    revenue: Amount | None = None
    consent_analytics: bool = Field(default=False, validation_alias=AliasChoices("ca", "consent_analytics"))
    consent_marketing: bool = Field(default=False, validation_alias=AliasChoices("cm", "consent_marketing"))

    @field_validator("event_time", mode="before")
    @classmethod
    def _event_time(cls, value: Any) -> int | None:
        return parse_event_time(value)

    def product(self) -> Product | None:
        if self.product_id is None:
            return None
        return Product(
            id=self.product_id,
            name=self.product_name,
            price=self.price,
            currency=self.currency,
            quantity=self.quantity,
            category=self.category,
            url=self.product_url,
            image_url=self.image_url,
        )

    def order(self) -> tuple[Order | None, list[str]]:
        """The order, or the missing order fields when some order field was sent."""
        if self.order_id is None and self.revenue is None and self.type is not HitType.ORDER:
            return None, []
        missing = [name for name, value in (("oid", self.order_id), ("revenue", self.revenue)) if value is None]
        if self.currency is None:
            missing.append("currency")
        if missing:
            return None, [f"{name}: required for an order" for name in missing]
        product = self.product()
        assert self.order_id is not None and self.revenue is not None and self.currency is not None
        order = Order(
            order_id=self.order_id,
            revenue=self.revenue,
            currency=self.currency,
            lines=[product] if product is not None else [],
        )
        return order, []


# --- conversion ------------------------------------------------------------------------------------


def format_errors(exc: ValidationError) -> list[str]:
    """pydantic's errors as ``field: message`` lines, without echoing the input values back."""
    lines = []
    for err in exc.errors(include_url=False, include_input=False):
        where = ".".join(_location_part(part) for part in err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        lines.append(f"{where}: {message}" if where else message)
    return lines


def _location_part(part: str | int) -> str:
    text = str(part)  # dict keys are part of the location: a client chooses them, and their length
    return text if len(text) <= MAX_LOCATION_PART else f"{text[:MAX_LOCATION_PART]}...({len(text)} chars)"


def _check_site(site: str | None, rules: HitRules) -> str:
    if site is None:
        if rules.default_site is None:
            raise InvalidEvent(["site: Field required"])
        return rules.default_site
    if site not in rules.sites:
        raise InvalidEvent([f"site: unknown site {site!r}"])
    return site


def _campaign_params(explicit: Mapping[str, str] | None, url: str) -> dict[str, str]:
    """Explicit parameters win; otherwise those of the landing URL. Only campaign families are kept."""
    if explicit is not None:
        return normalize_params(explicit)
    return url_campaign_params(url)


def url_campaign_params(url: str) -> dict[str, str]:
    """``parse_campaign_params``: none for a URL with neither query nor fragment (most page views), else the
    parameters of its query and fragment, remembered for the last 4,096 of them.

    The parameters depend only on what follows the first ``?`` or ``#``, and
    a burst lands on few of those (a newsletter's link, an ad's, a campaign's
    landing page on every path of a site): each is parsed once, as
    ``truncate_ip`` parses each address once. URLs carrying a click id
    (``gclid``...) differ per click and are parsed every time. A copy is
    returned: the cached map is never handed out.
    """
    return dict(_shared_campaign_params(url))


def _shared_campaign_params(url: str) -> dict[str, str]:
    """``url_campaign_params`` without the copy: the cache's own map, for a row that is only written as Avro."""
    query = url.find("?")
    fragment = url.find("#")
    if query < 0:
        if fragment < 0:
            return _NO_PARAMS
        start = fragment
    else:
        start = query if fragment < 0 else min(query, fragment)
    return _tail_campaign_params(url[start:])


_NO_PARAMS: dict[str, str] = {}


@functools.lru_cache(maxsize=4096)
def _tail_campaign_params(tail: str) -> dict[str, str]:
    """The campaign parameters of a URL's query and fragment (``tail`` starts with ``?`` or ``#``)."""
    return parse_campaign_params(tail)


def _ip_for_hit(ip: str | None, rules: HitRules) -> str | None:
    return truncate_ip(ip, rules.ipv4_prefix, rules.ipv6_prefix) if rules.keep_ip else None


def _user_agent(value: str | None) -> str | None:
    return value[:1024] if value else None


def _product_record(pixel: PixelParams) -> dict[str, Any] | None:
    if pixel.product_id is None:
        return None
    return {
        "id": pixel.product_id,
        "name": pixel.product_name,
        "price": pixel.price,
        "currency": pixel.currency,
        "quantity": pixel.quantity,
        "category": pixel.category,
        "url": pixel.product_url,
        "image_url": pixel.image_url,
    }


def pixel_to_record(params: Mapping[str, str], ctx: RequestContext, rules: HitRules) -> dict[str, Any]:
    """The Avro value of the ``Hit`` of one pixel request (``pixel_to_hit`` without the model), or ``InvalidEvent``.

    The collector's hot path: the dict is what ``Hit(...).to_avro()`` gives,
    built directly, because the model costs more than the validation itself.
    """
    try:
        pixel = PixelParams.model_validate({k: v for k, v in params.items() if v != ""})
    except ValidationError as exc:
        raise InvalidEvent(format_errors(exc)) from None
    site = _check_site(pixel.site, rules)
    url = pixel.url or (ctx.referer.strip()[:8192] if ctx.referer and ctx.referer.strip() else None)
    errors = [] if url else ["url: Field required (no url parameter and no Referer header)"]
    order: dict[str, Any] | None = None
    order_errors: list[str] = []
    product = _product_record(pixel)
    if pixel.order_id is not None or pixel.revenue is not None or pixel.type is _ORDER:
        missing = [name for name, value in (("oid", pixel.order_id), ("revenue", pixel.revenue)) if value is None]
        if pixel.currency is None:
            missing.append("currency")
        order_errors = [f"{name}: required for an order" for name in missing]
        if not order_errors:
            order = {
                "order_id": pixel.order_id,
                "revenue": pixel.revenue,
                "currency": pixel.currency,
                "lines": [product] if product is not None else [],
            }
            product = None  # an order's products are its lines
    errors += order_errors
    problem = _type_requirements(pixel.type, product is not None, order is not None, pixel.customer_id is not None)
    if problem and not order_errors:
        errors.append(f"type: {problem}")
    if errors or url is None:
        raise InvalidEvent(errors)
    return {
        "event_id": pixel.event_id or ctx.new_id(),
        "site": site,
        "visitor_id": pixel.visitor_id,
        "customer_id": pixel.customer_id,
        "event_time": resolve_event_time(pixel.event_time, ctx.received_at_ms, rules),
        "type": pixel.type._value_,  # the symbol; ``.value`` is a property, several times slower
        "url": url,
        "referrer": pixel.referrer,
        "page": pixel.page,
        "campaign_params": url_campaign_params(url),
        "product": product,
        "order": order,
        "consent": {"analytics": pixel.consent_analytics, "marketing": pixel.consent_marketing},
        "user_agent": _user_agent(ctx.user_agent),
        "ip_truncated": _ip_for_hit(ctx.client_ip, rules),
    }


def pixel_to_hit(params: Mapping[str, str], ctx: RequestContext, rules: HitRules) -> Hit:
    """The ``Hit`` of one pixel request, or ``InvalidEvent`` listing every problem found."""
    return Hit.from_avro(pixel_to_record(params, ctx, rules))


_FAST_KEYS = frozenset(
    {"event_id", "site", "visitor_id", "customer_id", "type", "event_time", "url", "referrer", "page", "consent",
     "user_agent", "ip"}
)  # fmt: skip
"""The fields an event may carry and still take the fast path (no product, order, campaign map, alias)."""
_FAST_TEXT = {"site": 128, "visitor_id": 128, "customer_id": 128, "url": 8192, "referrer": 8192, "page": 1024,
              "user_agent": 1024}  # fmt: skip
"""The text fields of the fast path and their longest length (``Id``, ``Url``, ``Text``)."""
_HIT_TYPES = {member._value_: member for member in HitType}
_VISIBLE_ASCII = re.compile(r"[!-~]+")
_CONSENT_KEYS = frozenset({"analytics", "marketing"})
_NO_CONSENT: dict[str, bool] = {}


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


class _Request(NamedTuple):
    """What every event of one request shares, worked out once per request rather than once per event."""

    received_at_ms: int
    new_id: Callable[[], str]
    user_agent: str | None
    ip_truncated: str | None

    @classmethod
    def of(cls, ctx: RequestContext, rules: HitRules) -> _Request:
        return cls(ctx.received_at_ms, ctx.new_id, _user_agent(ctx.user_agent), _ip_for_hit(ctx.client_ip, rules))


HIT_FIELDS = (
    "event_id", "site", "visitor_id", "customer_id", "event_time", "type", "url", "referrer", "page",
    "campaign_params", "product", "order", "consent", "user_agent", "ip_truncated",
)  # fmt: skip
"""The fields of a ``Hit`` record in the schema's order: a row (``events_to_rows``) holds their values so."""
ROW_EVENT_ID, ROW_VISITOR_ID, ROW_EVENT_TIME = 0, 2, 4
_CONSENTS = {(a, m): {"analytics": a, "marketing": m} for a in (False, True) for m in (False, True)}
"""Every consent map a plain event can have, shared by the rows (read-only: only written as Avro)."""


def _fast_event_record(
    raw: dict[str, Any], ctx: RequestContext, rules: HitRules, request: _Request | None = None
) -> dict[str, Any] | None:
    """``_fast_event_row`` as a record dict of its own (no map shared with other records), or None."""
    row = _fast_event_row(raw, ctx, rules, request)
    if row is None:
        return None
    record = dict(zip(HIT_FIELDS, row, strict=True))
    record["campaign_params"] = dict(record["campaign_params"])
    record["consent"] = dict(record["consent"])
    return record


def _fast_event_row(
    raw: dict[str, Any], ctx: RequestContext, rules: HitRules, request: _Request | None = None
) -> tuple[Any, ...] | None:
    """The record of an event every field of which is plainly valid, as a row (``HIT_FIELDS``), else None.

    ``EventIn`` then decides.

    Most events a tag or a server sends are plain: strings within bounds,
    booleans for consent, an integer time. For those, checking each field
    here costs a fraction of building the pydantic model, and gives the same
    record (the unit tests compare both paths on valid and invalid events).
    Anything unusual (an alias, a product, an order, a campaign map, a value
    to strip or to coerce, any invalid value) returns None, so the errors a
    client reads are always pydantic's.
    """
    if not raw.keys() <= _FAST_KEYS:
        return None
    # Text a field's constraints accept as it is: a str, not empty, within its limit, nothing to strip. Python's
    # isspace covers every character pydantic strips (and a few more, which then take the slow path); text that
    # is not valid Unicode (a lone surrogate, which JSON can carry) is pydantic's to refuse, in its words. Only
    # the fields sent are looked at: this loop is the hot one of a batch.
    for name, value in raw.items():
        limit = _FAST_TEXT.get(name)
        if limit is not None and value is not None:
            if type(value) is not str or not 0 < len(value) <= limit or value[0].isspace() or value[-1].isspace():
                return None
            if not value.isascii() and not _encodable(value):
                return None
    get = raw.get
    visitor_id, url = get("visitor_id"), get("url")
    if visitor_id is None or url is None:
        return None
    event_id = get("event_id")
    if event_id is not None and not (
        type(event_id) is str and len(event_id) <= 128 and _VISIBLE_ASCII.fullmatch(event_id)
    ):
        return None
    type_name = get("type", "page_view")
    hit_type = _HIT_TYPES.get(type_name) if type(type_name) is str else None
    if hit_type is None:
        return None
    event_time = get("event_time")
    if event_time is not None:
        try:
            event_time = parse_event_time(event_time)
        except ValueError:
            return None
    consent = get("consent", _NO_CONSENT)
    if consent is _NO_CONSENT:
        analytics = marketing = False
    else:
        if type(consent) is not dict or not consent.keys() <= _CONSENT_KEYS:
            return None
        analytics, marketing = consent.get("analytics", False), consent.get("marketing", False)
        if type(analytics) is not bool or type(marketing) is not bool:
            return None
    ip = get("ip")
    if ip is not None and (type(ip) is not str or len(ip) > 64 or not ip.isascii() or parse_ip(ip) is None):
        return None
    site = get("site")
    if site is None or site not in rules.sites:
        site = _check_site(site, rules)
    customer_id = get("customer_id")
    if hit_type is not _PAGE_VIEW:
        problem = _type_requirements(hit_type, False, False, bool(customer_id))
        if problem:
            raise InvalidEvent([f"type: {problem}"])
    if request is None:
        request = _Request.of(ctx, rules)
    user_agent = get("user_agent")
    received = request.received_at_ms
    return (  # HIT_FIELDS' order; the maps are shared and read-only (the campaign parameters are the cache's)
        event_id or request.new_id(),
        site,
        visitor_id,
        customer_id,
        received if event_time is None else resolve_event_time(event_time, received, rules),
        type_name,
        url,
        get("referrer"),
        get("page"),
        _shared_campaign_params(url),
        None,
        None,
        _CONSENTS[analytics, marketing],
        request.user_agent if user_agent is None else user_agent,  # within 1,024 (checked above)
        request.ip_truncated if ip is None else _ip_for_hit(ip, rules),
    )


def event_to_record(raw: Any, ctx: RequestContext, rules: HitRules) -> dict[str, Any]:
    """The Avro value of the ``Hit`` of one JSON event (``event_to_hit`` without the model), or ``InvalidEvent``.

    The collector's hot path, as ``pixel_to_record``; plain events take a faster one still (``_fast_event_record``).
    """
    if not isinstance(raw, dict):
        raise InvalidEvent([f"event must be a JSON object, got {type(raw).__name__}"])
    fast = _fast_event_record(raw, ctx, rules)
    if fast is not None:
        return fast
    return validated_event_record(raw, ctx, rules)


def events_to_records(
    events: Sequence[Any], ctx: RequestContext, rules: HitRules
) -> list[dict[str, Any] | InvalidEvent]:
    """``event_to_record`` of each event of a batch, in order: its record, or the ``InvalidEvent`` it raised.

    What the events of one request share (receive time, the request's user
    agent and truncated IP) is worked out once for the batch.
    """
    request = _Request.of(ctx, rules)
    fast = _fast_event_record
    out: list[dict[str, Any] | InvalidEvent] = []
    append = out.append
    for raw in events:
        try:
            if type(raw) is not dict:
                append(event_to_record(raw, ctx, rules))  # not an object: refused, in event_to_record's words
                continue
            record = fast(raw, ctx, rules, request)
            append(record if record is not None else validated_event_record(raw, ctx, rules))
        except InvalidEvent as exc:
            append(exc)
    return out


def events_to_rows(events: Sequence[Any], ctx: RequestContext, rules: HitRules) -> list[tuple[Any, ...] | InvalidEvent]:
    """``events_to_records`` as rows (``HIT_FIELDS``' order), what the producer writes without a dict in between.

    A row's maps may be shared with other rows and with the campaign
    parameters' cache: they are only ever read (written as Avro).
    """
    request = _Request.of(ctx, rules)
    fast = _fast_event_row
    out: list[tuple[Any, ...] | InvalidEvent] = []
    append = out.append
    for raw in events:
        try:
            row = fast(raw, ctx, rules, request) if type(raw) is dict else None
            if row is None:  # not an object (refused in event_to_record's words), or not plain: the model decides
                record = event_to_record(raw, ctx, rules) if type(raw) is not dict else validated_event_record(
                    raw, ctx, rules
                )
                row = tuple([record[name] for name in HIT_FIELDS])
            append(row)
        except InvalidEvent as exc:
            append(exc)
    return out


def validated_event_record(raw: dict[str, Any], ctx: RequestContext, rules: HitRules) -> dict[str, Any]:
    """``event_to_record`` through the ``EventIn`` model, whatever the event: the reference the fast path matches."""
    try:
        event = EventIn.model_validate(raw)
    except ValidationError as exc:
        raise InvalidEvent(format_errors(exc)) from None
    site = _check_site(event.site, rules)
    problem = _type_requirements(
        event.type, event.product is not None, event.order is not None, bool(event.customer_id)
    )
    if problem:
        raise InvalidEvent([f"type: {problem}"])
    return {
        "event_id": event.event_id or ctx.new_id(),
        "site": site,
        "visitor_id": event.visitor_id,
        "customer_id": event.customer_id,
        "event_time": resolve_event_time(event.event_time, ctx.received_at_ms, rules),
        "type": event.type._value_,
        "url": event.url,
        "referrer": event.referrer,
        "page": event.page,
        "campaign_params": _campaign_params(event.campaign_params, event.url),
        "product": event.product.model_dump() if event.product else None,
        "order": event.order.model_dump() if event.order else None,
        "consent": {"analytics": event.consent.analytics, "marketing": event.consent.marketing},
        "user_agent": _user_agent(event.user_agent or ctx.user_agent),
        "ip_truncated": _ip_for_hit(event.ip or ctx.client_ip, rules),
    }


def event_to_hit(raw: Any, ctx: RequestContext, rules: HitRules) -> Hit:
    """The ``Hit`` of one JSON event, or ``InvalidEvent`` listing every problem found.

    An event may carry the visitor's ``ip`` and ``user_agent`` (server-side
    senders); otherwise the request's own are used.
    """
    return Hit.from_avro(event_to_record(raw, ctx, rules))
