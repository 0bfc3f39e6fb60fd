"""Live visits, orders and revenue per declared campaign: pure rules (``rules``), runtime wiring (``processor``)."""

from passerelle.streams.campaign_counts.rules import (
    CampaignCounter,
    CampaignCountsConfig,
    Counter,
    Counts,
    HitStep,
    VisitorState,
)

__all__ = ["CampaignCounter", "CampaignCountsConfig", "Counter", "Counts", "HitStep", "VisitorState"]
