"""The benchmark job shared by every implementation: decode a hit, join CRM attributes, encode.

Kept in one place so the raw loop, the passerelle processor and the Faust
agent do exactly the same work per record; only the machinery around it
differs, which is what the benchmark measures.
"""

from __future__ import annotations

import json
from typing import Any

HIT_FIELDS = [
    {"name": "event_id", "type": "string"},
    {"name": "site", "type": "string"},
    {"name": "visitor_id", "type": "string"},
    {"name": "event_time", "type": "long"},
    {"name": "type", "type": "string"},
    {"name": "url", "type": "string"},
]

HIT_SCHEMA = json.dumps({"type": "record", "name": "BenchHit", "namespace": "passerelle.bench", "fields": HIT_FIELDS})

ENRICHED_SCHEMA = json.dumps(
    {
        "type": "record",
        "name": "BenchEnrichedHit",
        "namespace": "passerelle.bench",
        "fields": [
            *HIT_FIELDS,
            {"name": "gender", "type": ["null", "string"], "default": None},
            {"name": "age_band", "type": ["null", "string"], "default": None},
            {"name": "csp", "type": ["null", "string"], "default": None},
        ],
    }
)

VISITORS = 10_000
TYPES = ("page_view", "product_view", "cart_add", "page_view", "page_view")


def visitor(i: int) -> str:
    return f"v{i % VISITORS:05d}"


def hit(i: int, now_ms: int) -> dict[str, Any]:
    """A hit of about 80 bytes of Avro, like the architecture's measurement."""
    return {
        "event_id": f"{i:012d}",
        "site": "shop-1",
        "visitor_id": visitor(i * 7919),
        "event_time": now_ms,
        "type": TYPES[i % len(TYPES)],
        "url": f"/p/{i % 977}",
    }


def crm_table() -> dict[str, dict[str, str]]:
    """Half the visitors are identified customers with CRM attributes."""
    genders, bands, csps = (
        ("f", "m", "x"),
        ("18-24", "25-34", "35-49", "50-64", "65+"),
        ("cadre", "employe", "retraite"),
    )
    return {
        visitor(i): {"gender": genders[i % 3], "age_band": bands[i % 5], "csp": csps[i % 3]}
        for i in range(0, VISITORS, 2)
    }


def join(value: dict[str, Any], crm: dict[str, dict[str, str]]) -> dict[str, Any]:
    """The per-record work every implementation does."""
    attrs = crm.get(value["visitor_id"])
    if attrs is not None:
        value.update(attrs)
    else:
        value["gender"] = value["age_band"] = value["csp"] = None
    return value
