"""Remarketing: the two-step abandoned-cart email sequence (pure rules in ``sequence``, faust wiring in ``app``)."""

from streams.remarketing.sequence import (
    Outcome,
    Profile,
    Promotion,
    Sequencer,
    SequencerConfig,
    message_id,
    next_due,
    profile_from_crm,
    sequence_id,
)

__all__ = [
    "Outcome",
    "Profile",
    "Promotion",
    "Sequencer",
    "SequencerConfig",
    "message_id",
    "next_due",
    "profile_from_crm",
    "sequence_id",
]
