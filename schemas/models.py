"""Typed models of the Avro value records, for code that prefers objects to dicts.

Each model mirrors its ``.avsc`` field for field (same names, same defaults)
so that ``to_avro()`` gives exactly the dict fastavro writes and
``from_avro()`` accepts exactly what fastavro reads. Timestamps are int UTC
milliseconds, as on the wire; ``from_avro`` also accepts the ``datetime``
fastavro returns for ``timestamp-millis`` fields. The hot processors may keep
working on plain dicts: these models are the documented shape, checked against
the schemas by the tests.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum, StrEnum
from typing import Annotated, Any, ClassVar, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field


def _to_millis(value: Any) -> Any:
    """fastavro decodes timestamp-millis to an aware datetime; the models keep the wire's int millis."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("naive datetime: timestamps are UTC, give an aware datetime or int millis")
        return int(value.timestamp() * 1000)
    return value


EpochMillis = Annotated[int, BeforeValidator(_to_millis)]
"""UTC milliseconds since the epoch (Avro ``timestamp-millis``)."""


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


class AvroModel(BaseModel):
    """Base of every record model; ``schema_name`` is the ``.avsc`` stem of top-level records."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    schema_name: ClassVar[str] = ""

    def to_avro(self) -> dict[str, Any]:
        """The dict fastavro writes: enums as their symbol, timestamps as int millis, bytes as bytes."""
        result: dict[str, Any] = _plain(self.model_dump(mode="python"))
        return result

    @classmethod
    def from_avro(cls, data: dict[str, Any]) -> Self:
        """Build the model from a dict fastavro read (or one ``to_avro`` produced)."""
        return cls.model_validate(data)


# --- enums ---------------------------------------------------------------------------------------


class HitType(StrEnum):
    """What the visitor did (Avro enum ``passerelle.HitType``)."""

    PAGE_VIEW = "page_view"
    PRODUCT_VIEW = "product_view"
    CART_ADD = "cart_add"
    CART_REMOVE = "cart_remove"
    ORDER = "order"
    IDENTIFY = "identify"


class PrivacyRequestKind(StrEnum):
    """What a privacy request asks (Avro enum ``passerelle.PrivacyRequestKind``)."""

    ERASURE = "erasure"
    CONSENT_CHANGE = "consent_change"


# --- nested records ------------------------------------------------------------------------------


class Product(AvroModel):
    """A product as the site tag describes it."""

    id: str
    name: str | None = None
    price: float | None = None
    currency: str | None = None
    quantity: int = 1
    category: str | None = None
    url: str | None = None
    image_url: str | None = None


class Order(AvroModel):
    """An order confirmed on the site."""

    order_id: str
    revenue: float
    currency: str
    lines: list[Product] = Field(default_factory=list)


class Consent(AvroModel):
    """The visitor's consent choices at the time of a hit."""

    analytics: bool
    marketing: bool


class TrafficSource(AvroModel):
    """Where a visit came from."""

    medium: str
    source: str | None = None
    campaign: str | None = None
    term: str | None = None
    content: str | None = None
    click_id: str | None = None
    network: str | None = None


class DeclaredCampaign(AvroModel):
    """The declared campaign a hit's tags matched."""

    key: str
    name: str
    partner: str
    channel: str


class CrmAttributes(AvroModel):
    """CRM attributes copied onto hits and carts for segmentation."""

    gender: str | None = None
    age_band: str | None = None
    csp: str | None = None
    loyalty_tier: str | None = None
    marketing_consent: bool | None = None


class CartLine(AvroModel):
    """One line of a cart."""

    product_id: str
    name: str | None = None
    price: float
    quantity: int
    currency: str


class Promotion(AvroModel):
    """An incentive offered by a remarketing step."""

    code: str
    description: str
    discount_percent: float | None = None


class Touchpoint(AvroModel):
    """One marketing contact on the path to a conversion."""

    medium: str
    source: str | None = None
    campaign: str | None = None
    at: EpochMillis
    kind: str = "visit"
    channel: str = ""
    campaign_key: str | None = None
    visitor_id: str | None = None
    direct: bool = False


class ModelCredits(AvroModel):
    """The attribution of a conversion under one model (``ConversionPath.models``)."""

    model: str
    credits: list[float]
    revenue_cents: list[int]


class RecordHeader(AvroModel):
    """One Kafka header of a dead-lettered record."""

    key: str
    value: bytes | None = None


# --- top-level records ---------------------------------------------------------------------------


class Hit(AvroModel):
    """A raw web analytics hit (``Hit.avsc``)."""

    schema_name: ClassVar[str] = "Hit"

    event_id: str
    site: str
    visitor_id: str
    customer_id: str | None = None
    event_time: EpochMillis
    type: HitType
    url: str
    referrer: str | None = None
    page: str | None = None
    campaign_params: dict[str, str] = Field(default_factory=dict)
    product: Product | None = None
    order: Order | None = None
    consent: Consent
    user_agent: str | None = None
    ip_truncated: str | None = None


class EnrichedHit(Hit):
    """A hit with its visit, traffic source, campaign and CRM attributes (``EnrichedHit.avsc``).

    Every field of ``Hit``, in its order, then the enrichment's: the enricher
    passes the hit through whole, so a field added to ``Hit`` (and to both
    ``.avsc`` files, which the contract tests check) reaches enriched hits.
    ``customer_id`` may come from the visitor's identity link rather than the hit.
    """

    schema_name: ClassVar[str] = "EnrichedHit"

    visit_id: str
    visit_number: int
    traffic_source: TrafficSource
    declared_campaign: DeclaredCampaign | None = None
    campaign_undeclared: bool = False
    crm: CrmAttributes | None = None
    enriched_at: EpochMillis


AGE_BANDS: tuple[tuple[int, str], ...] = ((17, "<18"), (24, "18-24"), (34, "25-34"), (49, "35-49"), (64, "50-64"))
"""Upper age (inclusive) of each band of ``CrmProfile.age_band`` / ``CrmAttributes.age_band``; older is ``65+``."""


def age_band(birth_year: int, year: int) -> str:
    """The age band, in ``year``, of someone born in ``birth_year``.

    One definition for whoever derives it (the enrichment when a profile has
    no band, the shop generator writing profiles): the CRM and the hits must
    put a customer in the same segment.
    """
    age = year - birth_year
    return next((band for limit, band in AGE_BANDS if age <= limit), "65+")


class CrmProfile(AvroModel):
    """A customer's CRM profile (``CrmProfile.avsc``)."""

    schema_name: ClassVar[str] = "CrmProfile"

    customer_id: str
    email: str | None = None
    gender: str | None = None
    birth_year: int | None = None
    age_band: str | None = None
    csp: str | None = None
    loyalty_tier: str | None = None
    marketing_consent: bool
    updated_at: EpochMillis


class IdentityLink(AvroModel):
    """A visitor id linked to a customer id (``IdentityLink.avsc``)."""

    schema_name: ClassVar[str] = "IdentityLink"

    visitor_id: str
    customer_id: str
    site: str
    linked_at: EpochMillis
    source: str


class Campaign(AvroModel):
    """A declared (or undeclared, awaiting declaration) campaign (``Campaign.avsc``)."""

    schema_name: ClassVar[str] = "Campaign"

    key: str
    name: str
    partner: str
    channel: str
    medium: str
    tagged_url_template: str
    valid_from: EpochMillis | None = None
    valid_to: EpochMillis | None = None
    cost_model: str | None = None
    cost_amount: float | None = None
    currency: str | None = None
    declared_at: EpochMillis


class AdImpression(AvroModel):
    """A banner impression from the ad server (``AdImpression.avsc``)."""

    schema_name: ClassVar[str] = "AdImpression"

    impression_id: str
    visitor_id: str
    site: str
    campaign_key: str | None = None
    creative: str | None = None
    placement: str | None = None
    ad_server: str
    event_time: EpochMillis


class PartnerMetric(AvroModel):
    """A daily figure reported by a partner (``PartnerMetric.avsc``)."""

    schema_name: ClassVar[str] = "PartnerMetric"

    metric_id: str
    partner: str
    campaign_key: str | None = None
    date: str = Field(pattern=r"^\d{4}-\d{2}-\d{2}$")
    metric: str
    value: float
    currency: str | None = None
    received_at: EpochMillis


class CartAbandoned(AvroModel):
    """A cart left without an order (``CartAbandoned.avsc``)."""

    schema_name: ClassVar[str] = "CartAbandoned"

    event_id: str
    visitor_id: str
    site: str
    customer_id: str | None = None
    email: str | None = None
    episode_id: str
    lines: list[CartLine]
    value: float
    currency: str
    viewed_products: list[Product] = Field(default_factory=list)
    crm: CrmAttributes | None = None
    marketing_consent: bool
    site_marketing_consent: bool | None = None
    last_activity_at: EpochMillis
    detected_at: EpochMillis


class RemarketingMessage(AvroModel):
    """One email of the remarketing sequence (``RemarketingMessage.avsc``)."""

    schema_name: ClassVar[str] = "RemarketingMessage"

    message_id: str
    sequence_id: str
    step: int = Field(ge=1, le=2)
    customer_id: str
    email: str
    site: str
    products: list[Product] = Field(default_factory=list)
    lines: list[CartLine] = Field(default_factory=list)
    promotion: Promotion | None = None
    created_at: EpochMillis


class ConversionPath(AvroModel):
    """The marketing sources that led to a conversion (``ConversionPath.avsc``)."""

    schema_name: ClassVar[str] = "ConversionPath"

    conversion_id: str
    visitor_id: str
    customer_id: str | None = None
    order_id: str | None = None
    revenue: float
    currency: str | None = None
    touchpoints: list[Touchpoint]
    converted_at: EpochMillis
    goal: str | None = None
    revenue_cents: int = 0
    path_length: int = 0
    time_to_conversion_ms: int = 0
    revision: int = 0
    models: list[ModelCredits] = Field(default_factory=list)


class PrivacyRequest(AvroModel):
    """An erasure request or a consent change (``PrivacyRequest.avsc``)."""

    schema_name: ClassVar[str] = "PrivacyRequest"

    request_id: str
    kind: PrivacyRequestKind
    customer_id: str | None = None
    visitor_id: str | None = None
    marketing_consent: bool | None = None
    requested_at: EpochMillis


class DeadLetter(AvroModel):
    """A record that failed, with its original bytes (``DeadLetter.avsc``)."""

    schema_name: ClassVar[str] = "DeadLetter"

    source_topic: str
    partition: int
    offset: int
    stage: str
    error_class: str
    error_message: str
    processor: str | None = None
    key: bytes | None = None
    value: bytes | None = None
    headers: list[RecordHeader] = Field(default_factory=list)
    failed_at: EpochMillis


MODELS: dict[str, type[AvroModel]] = {
    model.schema_name: model
    for model in (
        Hit,
        EnrichedHit,
        CrmProfile,
        IdentityLink,
        Campaign,
        AdImpression,
        PartnerMetric,
        CartAbandoned,
        RemarketingMessage,
        ConversionPath,
        PrivacyRequest,
        DeadLetter,
    )
}
"""Model of each value schema, by ``.avsc`` stem."""


def model_for(schema_stem: str) -> type[AvroModel]:
    """The model of a value schema; lets generic code (serde, dead letters) go from a catalog entry to a type."""
    try:
        return MODELS[schema_stem]
    except KeyError:
        raise KeyError(f"no model for schema {schema_stem!r}; known: {', '.join(MODELS)}") from None


class RemarketingDelivery(AvroModel):
    """What became of one remarketing message at the emailing partner (``RemarketingDelivery.avsc``)."""

    schema_name: ClassVar[str] = "RemarketingDelivery"

    message_id: str
    sequence_id: str
    step: int
    customer_id: str
    partner: str
    outcome: str
    reason: str
    attempts: int = Field(ge=0)
    last_status: int | None = None
    last_answer: str | None = None
    latency_ms: int
    source_partition: int
    source_offset: int
    first_attempt_at: EpochMillis
    decided_at: EpochMillis


MODELS[RemarketingDelivery.schema_name] = RemarketingDelivery


class CampaignCounts(AvroModel):
    """Visits, orders and revenue of a declared campaign over a window (``CampaignCounts.avsc``)."""

    schema_name: ClassVar[str] = "CampaignCounts"

    campaign_key: str
    campaign_name: str
    partner: str
    channel: str
    window_start: EpochMillis
    window_end: EpochMillis
    visits: int = Field(ge=0)
    orders: int = Field(ge=0)
    revenue: dict[str, float] = Field(default_factory=dict)
    final: bool = False
    updated_at: EpochMillis


MODELS[CampaignCounts.schema_name] = CampaignCounts


class WebActivityKind(StrEnum):
    """What a ``WebActivityDelta`` counts (Avro enum ``passerelle.WebActivityKind``)."""

    VISIT = "visit"
    ORDER = "order"
    ABANDONED_CART = "abandoned_cart"
    MESSAGE = "message"


class WebActivity(AvroModel):
    """One customer's web activity for the CRM's ``web_activity`` table (``WebActivity.avsc``)."""

    schema_name: ClassVar[str] = "WebActivity"

    customer_id: str
    last_visit_at: EpochMillis | None = None
    last_campaign: str | None = None
    visits_30d: int = Field(ge=0)
    orders_30d: int = Field(ge=0)
    revenue_30d: float
    abandoned_carts_30d: int = Field(ge=0)
    remarketing_messages: int = Field(ge=0)
    recovered_orders: int = Field(ge=0)
    updated_at: EpochMillis


MODELS[WebActivity.schema_name] = WebActivity


class WebActivityDelta(AvroModel):
    """One event of a customer's web activity, re-keyed by customer (``WebActivityDelta.avsc``, internal)."""

    schema_name: ClassVar[str] = "WebActivityDelta"

    event_id: str
    customer_id: str
    kind: WebActivityKind
    at: EpochMillis
    campaign: str | None = None
    revenue: float | None = None


MODELS[WebActivityDelta.schema_name] = WebActivityDelta


class CrmConversionPath(AvroModel):
    """One conversion and its path for the CRM's ``conversion_paths`` table (``CrmConversionPath.avsc``)."""

    schema_name: ClassVar[str] = "CrmConversionPath"

    conversion_id: str
    customer_id: str
    order_id: str | None = None
    goal: str | None = None
    converted_at: EpochMillis
    revenue: float
    currency: str | None = None
    path_length: int = Field(ge=0)
    time_to_conversion_ms: int = Field(ge=0)
    first_channel: str | None = None
    last_channel: str | None = None
    channels: str
    credits: str
    revision: int = Field(ge=0)
    updated_at: EpochMillis


MODELS[CrmConversionPath.schema_name] = CrmConversionPath


class CustomerChannels(AvroModel):
    """The channels that brought one customer, for the CRM's ``customer_channels`` table (``CustomerChannels.avsc``)."""

    schema_name: ClassVar[str] = "CustomerChannels"

    customer_id: str
    first_channel: str | None = None
    last_channel: str | None = None
    touchpoints: int = Field(ge=0)
    channels: str
    last_conversion_id: str | None = None
    last_conversion_at: EpochMillis | None = None
    updated_at: EpochMillis


MODELS[CustomerChannels.schema_name] = CustomerChannels


class PostViewKind(StrEnum):
    """What followed a display impression (Avro enum ``passerelle.PostViewKind``)."""

    VISIT = "visit"
    ORDER = "order"


class PostView(AvroModel):
    """A visit or an order preceded by a display impression within the post-view window (``PostView.avsc``)."""

    schema_name: ClassVar[str] = "PostView"

    postview_id: str
    kind: PostViewKind
    visitor_id: str
    customer_id: str | None = None
    site: str
    campaign_key: str
    impression_id: str
    impression_time: EpochMillis
    impressions: int = Field(ge=1)
    event_id: str
    visit_id: str
    event_time: EpochMillis
    delay_ms: int = Field(gt=0)
    visit_medium: str
    visit_campaign: str | None = None
    order_id: str | None = None
    revenue: float | None = None
    currency: str | None = None


MODELS[PostView.schema_name] = PostView


class PartnerKey(AvroModel):
    """A partner API key, stored hashed, keyed by key id (``PartnerKey.avsc``, topic ``partners.keys``)."""

    schema_name: ClassVar[str] = "PartnerKey"

    key_id: str
    partner: str
    scopes: list[str]
    secret_hash: str
    created_at: EpochMillis
    revoked_at: EpochMillis | None = None
    label: str | None = None


MODELS[PartnerKey.schema_name] = PartnerKey


class MarkovChannel(AvroModel):
    """One channel's Markov attribution (``MarkovAttribution.channels``)."""

    channel: str
    removal_effect: float = Field(ge=0, le=1)
    credit: float = Field(ge=0, le=1)
    conversions: float = Field(ge=0)


class MarkovAttribution(AvroModel):
    """Data-driven attribution of one period (``MarkovAttribution.avsc``, topic ``attribution.markov``)."""

    schema_name: ClassVar[str] = "MarkovAttribution"

    period: str
    period_start: EpochMillis
    period_end: EpochMillis
    computed_at: EpochMillis
    journeys: int = Field(ge=0)
    conversions: int = Field(ge=0)
    channels: list[MarkovChannel]


MODELS[MarkovAttribution.schema_name] = MarkovAttribution


class PathTouch(AvroModel):
    """A touchpoint as conversion-paths keeps it (``PathEvent.touchpoints``)."""

    id: str
    kind: str
    channel: str
    medium: str
    source: str | None = None
    campaign: str | None = None
    campaign_key: str | None = None
    at: int
    visitor_id: str
    direct: bool


class PathConversion(AvroModel):
    """A conversion as conversion-paths keeps it (``PathEvent.conversion``)."""

    conversion_id: str
    order_id: str | None = None
    goal: str | None = None
    revenue: float
    currency: str | None = None
    at: int
    event_id: str
    visitor_id: str


class PathEvent(AvroModel):
    """A touchpoint, conversion or hand-over re-keyed by customer (``PathEvent.avsc``, internal to conversion-paths)."""

    schema_name: ClassVar[str] = "PathEvent"

    kind: str
    customer_id: str
    visitor_id: str
    touchpoints: list[PathTouch] = Field(default_factory=list)
    conversion: PathConversion | None = None


MODELS[PathEvent.schema_name] = PathEvent


class QueryTemplate(AvroModel):
    """A saved report template of the partner API, keyed by template id (``QueryTemplate.avsc``)."""

    schema_name: ClassVar[str] = "QueryTemplate"

    template_id: str
    partner: str
    name: str
    query: str
    version: int = Field(ge=1)
    created_at: EpochMillis
    updated_at: EpochMillis
    updated_by: str | None = None
    token_hash: str


MODELS[QueryTemplate.schema_name] = QueryTemplate
