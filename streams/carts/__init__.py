"""Abandoned-cart tracking over ``hits.enriched``: pure logic (``tracker``) and its runtime wiring (``processor``)."""

from passerelle.streams.carts.tracker import CartConfig, CartState, CartTracker, Step, episode_event_id

__all__ = ["CartConfig", "CartState", "CartTracker", "Step", "episode_event_id"]
