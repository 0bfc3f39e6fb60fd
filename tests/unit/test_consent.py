"""The one marketing-consent rule shared by the cart tracker and the remarketing sequencer."""

from __future__ import annotations

import pytest

from passerelle.streams.consent import marketing_allowed

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("site", "crm", "allowed"),
    [
        (True, True, True),
        (False, True, False),  # a site-level refusal is not undone by the CRM's yes
        (True, False, False),  # nor a CRM refusal by the site's yes
        (False, False, False),
        (None, True, False),  # unknown is not consent
        (True, None, False),
        (None, None, False),
    ],
)
def test_both_the_site_and_the_crm_must_say_yes(site: bool | None, crm: bool | None, allowed: bool) -> None:
    assert marketing_allowed(site, crm) is allowed


def test_the_tracker_and_the_sequencer_call_the_same_function() -> None:
    from passerelle.streams.carts import tracker
    from passerelle.streams.remarketing import sequence

    assert tracker.marketing_allowed is marketing_allowed and sequence.marketing_allowed is marketing_allowed
