"""The vocabulary of partner metrics, without the rules: what ``--help`` shows loads nothing else."""

from __future__ import annotations

from typing import Final

AMOUNTS: Final = ("cost", "revenue")
COUNTS: Final = ("clicks", "impressions", "conversions")
METRICS: Final = (*AMOUNTS, *COUNTS)
"""The metrics a partner may report: amounts (with a currency) and counts (without)."""
FIELDS: Final = ("date", "campaign_key", "metric", "value", "currency")
"""The fields of one figure; the CSV header names exactly these columns."""
HEADER: Final = ",".join(FIELDS)
