"""The one marketing-consent rule, shared by the cart tracker and the remarketing sequencer."""

from __future__ import annotations


def marketing_allowed(site: bool | None, crm: bool | None) -> bool:
    """Whether a marketing message may go out: only when the site *and* the CRM both say yes.

    ``site`` is the marketing consent the visitor gave on the site (carried by
    the hits, from the consent banner); ``crm`` is the consent recorded in the
    CRM (the latest profile or privacy request). Either one refusing wins over
    the other saying yes: a refusal on the site is not undone by an older "yes"
    in the CRM, and the reverse.

    Unknown (``None``) is not consent: under the GDPR and the ePrivacy rules,
    consent to marketing must be a positive, recorded act, so a person whose
    choice we do not know is treated as one who refused. Missing data can only
    cost a message, never send one that was not allowed.
    """
    return site is True and crm is True
