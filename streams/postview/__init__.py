"""Post-view: visits and orders credited to the display impressions before them (rules, processor wiring)."""

from passerelle.streams.postview.rules import HitStep, ImpressionStep, PostView, PostViewConfig, VisitorState

__all__ = ["HitStep", "ImpressionStep", "PostView", "PostViewConfig", "VisitorState"]
