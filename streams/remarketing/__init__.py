"""Remarketing: the two-step abandoned-cart email sequence.

``sequence`` holds the pure rules; the faust-streaming worker around them is
split by concern: ``config`` (topics, durations in milliseconds),
``commands`` (what the input agents forward), ``handler`` (applying commands
to the tables), ``gate`` (CRM profiles read before carts are judged),
``inputs`` (decoding and dead letters by the runtime's rules),
``durability`` (no offset committed before the table writes it depends on
are on their changelogs), ``metrics``,
``credentials`` (the client layer's security for aiokafka), ``app`` (the
faust wiring) and ``worker`` (running it). ``passerelle remarketing`` is the
one command line.
"""

from passerelle.streams.remarketing.sequence import (
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
