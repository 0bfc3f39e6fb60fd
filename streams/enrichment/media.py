"""The closed medium vocabulary shared by campaign attribution and referrer classification.

One vocabulary for every family (xtor prefixes, click ids, referrers) lets reports group
visits by channel without each consumer re-mapping tool-specific names. It follows the
``TrafficSource.medium`` examples of ``EnrichedHit.avsc``. Values declared by a tag
(``utm_medium``, ``at_medium``, ``mtm_medium``…) are kept as written, so these constants
only cover what passerelle itself infers.
"""

from __future__ import annotations

from typing import Final

DIRECT: Final = "direct"
"""No referrer and no campaign tag."""
INTERNAL: Final = "internal"
"""The referrer is the site itself (or one of its subdomains)."""
ORGANIC: Final = "organic"
"""Unpaid search-engine result."""
SOCIAL: Final = "social"
"""Social network or messaging app (unpaid, or ``fbclid``)."""
REFERRAL: Final = "referral"
"""Any other linking website."""
EMAIL: Final = "email"
"""Email campaign (xtor ``EREC``/``EPR``/``ES``) or webmail referrer."""
CPC: Final = "cpc"
"""Paid search / paid click (xtor ``SEC``, ``gclid``, ``msclkid``…)."""
DISPLAY: Final = "display"
"""Display and sponsored ads (xtor ``AD``, ``dclid``)."""
AFFILIATE: Final = "affiliate"
"""Affiliation (xtor ``AL``)."""
RSS: Final = "rss"
"""RSS feed (xtor ``RSS``)."""
CUSTOM: Final = "custom"
"""AT Internet custom marketing source (xtor ``CS``, ``CS1``…``CSn``)."""
UNKNOWN: Final = "unknown"
"""A tag or referrer was there but could not be understood; the raw value is kept elsewhere."""
