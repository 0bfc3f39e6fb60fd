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

import ipaddress
import uuid
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import Annotated, Any

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

from passerelle.schemas.models import Consent, Hit, HitType, Order, Product
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
    new_id: Callable[[], str] = field(default=lambda: str(uuid.uuid4()))


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


def _type_requirements(hit_type: HitType, has_product: bool, has_order: bool, has_customer: bool) -> str | None:
    """The part each hit type cannot do without; downstream processors (carts, orders) rely on it."""
    if hit_type in (HitType.PRODUCT_VIEW, HitType.CART_ADD, HitType.CART_REMOVE) and not has_product:
        return f"{hit_type.value} hits need a product"
    if hit_type is HitType.ORDER and not has_order:
        return "order hits need an order (order id, revenue, currency)"
    if hit_type is HitType.IDENTIFY and not has_customer:
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
    return parse_campaign_params(url)


def _ip_for_hit(ip: str | None, rules: HitRules) -> str | None:
    return truncate_ip(ip, rules.ipv4_prefix, rules.ipv6_prefix) if rules.keep_ip else None


def _user_agent(value: str | None) -> str | None:
    return value[:1024] if value else None


def pixel_to_hit(params: Mapping[str, str], ctx: RequestContext, rules: HitRules) -> Hit:
    """The ``Hit`` of one pixel request, or ``InvalidEvent`` listing every problem found."""
    try:
        pixel = PixelParams.model_validate({k: v for k, v in params.items() if v != ""})
    except ValidationError as exc:
        raise InvalidEvent(format_errors(exc)) from None
    site = _check_site(pixel.site, rules)
    url = pixel.url or (ctx.referer.strip()[:8192] if ctx.referer and ctx.referer.strip() else None)
    errors = [] if url else ["url: Field required (no url parameter and no Referer header)"]
    order, order_errors = pixel.order()
    errors += order_errors
    product = pixel.product()
    if order is not None:
        product = None  # an order's products are its lines
    problem = _type_requirements(pixel.type, product is not None, order is not None, pixel.customer_id is not None)
    if problem and not order_errors:
        errors.append(f"type: {problem}")
    if errors or url is None:
        raise InvalidEvent(errors)
    return Hit(
        event_id=pixel.event_id or ctx.new_id(),
        site=site,
        visitor_id=pixel.visitor_id,
        customer_id=pixel.customer_id,
        event_time=resolve_event_time(pixel.event_time, ctx.received_at_ms, rules),
        type=pixel.type,
        url=url,
        referrer=pixel.referrer,
        page=pixel.page,
        campaign_params=parse_campaign_params(url),
        product=product,
        order=order,
        consent=Consent(analytics=pixel.consent_analytics, marketing=pixel.consent_marketing),
        user_agent=_user_agent(ctx.user_agent),
        ip_truncated=_ip_for_hit(ctx.client_ip, rules),
    )


def event_to_hit(raw: Any, ctx: RequestContext, rules: HitRules) -> Hit:
    """The ``Hit`` of one JSON event, or ``InvalidEvent`` listing every problem found.

    An event may carry the visitor's ``ip`` and ``user_agent`` (server-side
    senders); otherwise the request's own are used.
    """
    if not isinstance(raw, dict):
        raise InvalidEvent([f"event must be a JSON object, got {type(raw).__name__}"])
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
    return Hit(
        event_id=event.event_id or ctx.new_id(),
        site=site,
        visitor_id=event.visitor_id,
        customer_id=event.customer_id,
        event_time=resolve_event_time(event.event_time, ctx.received_at_ms, rules),
        type=event.type,
        url=event.url,
        referrer=event.referrer,
        page=event.page,
        campaign_params=_campaign_params(event.campaign_params, event.url),
        product=event.product.to_model() if event.product else None,
        order=event.order.to_model() if event.order else None,
        consent=Consent(analytics=event.consent.analytics, marketing=event.consent.marketing),
        user_agent=_user_agent(event.user_agent or ctx.user_agent),
        ip_truncated=_ip_for_hit(event.ip or ctx.client_ip, rules),
    )
