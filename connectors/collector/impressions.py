"""From what a banner's pixel sends (``GET /imp``) to an ``AdImpression``: the request model, pure conversion.

The same conventions as ``GET /hit`` (``validation.py``): short parameter
names first, unknown parameters ignored (cache busters), empty ones absent,
errors as ``field: message`` lines, the site one of the configured sites, the
client's time kept only when plausible (same bounds as a hit's ``ts``),
otherwise the receive time; an impression id drawn (UUID4) when the pixel
sends none. The record is keyed by visitor id on ``ads.impressions``, where
the post-view processor joins it with the visitor's visits and orders.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator

from passerelle.connectors.collector.validation import (
    EventId,
    HitRules,
    Id,
    InvalidEvent,
    RequestContext,
    _check_site,
    format_errors,
    parse_event_time,
    resolve_event_time,
)
from passerelle.schemas.models import AdImpression


class ImpressionParams(BaseModel):
    """Query parameters of ``GET /imp``: ``site``, ``vid``, ``as`` required; the others optional."""

    model_config = ConfigDict(extra="ignore")

    site: Id
    visitor_id: Id = Field(validation_alias=AliasChoices("vid", "visitor_id"))
    ad_server: Id = Field(validation_alias=AliasChoices("as", "ad_server"))
    campaign_key: Id | None = Field(default=None, validation_alias=AliasChoices("c", "campaign"))
    creative: Id | None = Field(default=None, validation_alias=AliasChoices("cr", "creative"))
    placement: Id | None = Field(default=None, validation_alias=AliasChoices("pl", "placement"))
    impression_id: EventId | None = Field(default=None, validation_alias=AliasChoices("iid", "impression_id"))
    event_time: int | None = Field(default=None, validation_alias=AliasChoices("ts", "event_time"))

    @field_validator("event_time", mode="before")
    @classmethod
    def _event_time(cls, value: Any) -> int | None:
        return parse_event_time(value)


def pixel_to_impression(params: Mapping[str, str], ctx: RequestContext, rules: HitRules) -> AdImpression:
    """The ``AdImpression`` of one ``GET /imp`` request, or ``InvalidEvent`` listing every problem found."""
    try:
        pixel = ImpressionParams.model_validate({k: v for k, v in params.items() if v != ""})
    except ValidationError as exc:
        raise InvalidEvent(format_errors(exc)) from None
    site = _check_site(pixel.site, rules)
    return AdImpression(
        impression_id=pixel.impression_id or ctx.new_id(),
        visitor_id=pixel.visitor_id,
        site=site,
        campaign_key=pixel.campaign_key,
        creative=pixel.creative,
        placement=pixel.placement,
        ad_server=pixel.ad_server,
        event_time=resolve_event_time(pixel.event_time, ctx.received_at_ms, rules),
    )
