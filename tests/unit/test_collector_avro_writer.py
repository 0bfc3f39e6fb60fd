"""The collector's compiled Avro writer writes fastavro's bytes, and refuses what fastavro refuses."""

from __future__ import annotations

import io
from typing import Any

import fastavro
import pytest

from passerelle.connectors.collector.avro_writer import compile_row_writer, compile_writer
from passerelle.connectors.collector.validation import (
    HIT_FIELDS,
    HitRules,
    RequestContext,
    event_to_record,
    pixel_to_record,
)
from passerelle.schemas.catalog import load_catalog
from passerelle.schemas.errors import SerializationError
from passerelle.schemas.models import AdImpression, Hit
from passerelle.schemas.serde import AvroEncoder, decode_body, parse

pytestmark = pytest.mark.unit

CATALOG = load_catalog(None)
RULES = HitRules(sites=frozenset({"shop.example"}))
CTX = RequestContext(received_at_ms=1_750_000_000_000, client_ip="2001:db8:1:2::9", user_agent="Mozilla/5.0")
PRODUCT = {"id": "sku-1", "name": "Bol à thé", "price": 12.5, "currency": "eur", "quantity": 3, "category": "tea"}


def schema_text(topic: str) -> str:
    return CATALOG.schema_text(CATALOG.topic(topic).value_schema)


def fastavro_bytes(text: str, record: Any) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, parse(text), record)
    return out.getvalue()


HITS = [
    pixel_to_record(
        {"site": "shop.example", "vid": "v-1", "url": "https://shop.example/?utm_source=n&gclid=x"}, CTX, RULES
    ),
    pixel_to_record(
        {
            "site": "shop.example",
            "vid": "v-2",
            "url": "https://shop.example/p",
            "type": "order",
            "oid": "o-1",
            "revenue": "99.9",
            "currency": "EUR",
            "pid": "sku-1",
            "qty": "2",
            "cid": "c-1",
            "ca": "1",
        },
        CTX,
        RULES,
    ),
    event_to_record(
        {
            "site": "shop.example",
            "visitor_id": "v-3",
            "url": "https://shop.example/ünïcode",
            "type": "product_view",
            "product": PRODUCT,
            "referrer": "https://search.example/",
            "page": "Produit",
            "event_time": -1,
        },
        CTX,
        RULES,
    ),
    event_to_record(
        {
            "site": "shop.example",
            "vid": "v-4",
            "url": "https://shop.example/",
            "type": "order",
            "order": {"order_id": "o-2", "revenue": 0, "currency": "usd", "lines": [PRODUCT, {"id": "sku-2"}]},
            "campaign_params": {"utm_campaign": "soldes", "xtor": "EREC-1"},
            "ip": "198.51.100.7",
        },
        CTX,
        RULES,
    ),
]


@pytest.mark.parametrize("record", HITS, ids=["pixel", "pixel-order", "event-product", "event-order"])
def test_hits_are_written_as_fastavro_writes_them(record: dict[str, Any]) -> None:
    text = schema_text("hits.raw")
    written = compile_writer(text)(record)
    assert written == fastavro_bytes(text, record)
    assert Hit.from_avro(decode_body(written, parse(text))) == Hit.from_avro(record)


def test_impressions_and_keys_too() -> None:
    text = schema_text("ads.impressions")
    imp = AdImpression(
        impression_id="i-1", visitor_id="v-1", site="shop.example", campaign_key=None, creative="cr",
        placement=None, ad_server="as", event_time=1_750_000_000_000,
    ).to_avro()  # fmt: skip
    assert compile_writer(text)(imp) == fastavro_bytes(text, imp)
    assert compile_writer('"string"')("visitor-é") == fastavro_bytes('"string"', "visitor-é")


def test_the_prefix_is_the_confluent_header() -> None:
    text = schema_text("hits.raw")
    encoder = AvroEncoder(42, text)
    assert compile_writer(text, prefix=encoder.header)(HITS[0]) == encoder.encode(HITS[0])


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"url": "https://shop.example/\ud800"}, "surrogates not allowed"),
        ({"type": "bogus"}, "not a symbol"),
        ({"event_time": "yesterday"}, "integer"),
        ({"consent": {"analytics": True}}, "marketing"),
        ({"product": 7}, "no branch|get"),
    ],
)
def test_what_cannot_be_encoded_is_a_serialization_error(change: dict[str, Any], why: str) -> None:
    with pytest.raises(SerializationError, match=why):
        compile_writer(schema_text("hits.raw"))({**HITS[0], **change})


def test_unsupported_schemas_are_refused_at_compile_time() -> None:
    with pytest.raises(ValueError, match="unknown Avro type"):
        compile_writer('{"type": "record", "name": "R", "fields": [{"name": "f", "type": "Nope"}]}')


def test_long_strings_and_maps_take_several_length_bytes() -> None:
    text = schema_text("hits.raw")
    record = {**HITS[0], "url": "https://shop.example/" + "é" * 5_000, "campaign_params": {"utm_term": "t" * 200}}
    assert compile_writer(text)(record) == fastavro_bytes(text, record)


@pytest.mark.parametrize("key", ["", "v", "visitor-é", "k" * 63, "k" * 64, "é" * 40, "x" * 10_000])
def test_keys_are_written_as_fastavro_writes_them_after_the_header(key: str) -> None:
    header = AvroEncoder(7, '"string"').header
    assert compile_writer('"string"', prefix=header)(key) == header + fastavro_bytes('"string"', key)


@pytest.mark.parametrize("key", [None, 42, "v\ud800"])
def test_a_key_that_is_not_text_is_a_serialization_error(key: Any) -> None:
    with pytest.raises(SerializationError, match="cannot encode record"):
        compile_writer('"string"')(key)


def test_fields_left_out_take_their_defaults_and_one_without_is_refused() -> None:
    """The writer tries the record as complete first: one with fields left out is written from the defaults."""
    text = schema_text("hits.raw")
    sparse = {k: v for k, v in HITS[0].items() if k not in ("referrer", "page", "campaign_params", "product")}
    assert compile_writer(text)(sparse) == fastavro_bytes(text, {**sparse, "referrer": None, "page": None,
                                                                 "campaign_params": {}, "product": None})  # fmt: skip
    with pytest.raises(SerializationError, match="'url': no value and no default"):
        compile_writer(text)({k: v for k, v in HITS[0].items() if k != "url"})


@pytest.mark.parametrize("record", HITS, ids=["pixel", "pixel-order", "event-product", "event-order"])
def test_rows_are_written_as_their_records_are(record: dict[str, Any]) -> None:
    """``compile_row_writer``: a row of the fields' values in the schema's order, fastavro's bytes of the record."""
    text = schema_text("hits.raw")
    names, encode_row = compile_row_writer(text, prefix=b"\x00head")
    assert names == HIT_FIELDS  # the order validation.events_to_rows writes rows in
    assert encode_row(tuple(record[name] for name in names)) == b"\x00head" + fastavro_bytes(text, record)


def test_a_row_that_does_not_fit_is_a_serialization_error() -> None:
    names, encode_row = compile_row_writer(schema_text("hits.raw"))
    row = tuple(HITS[0][name] for name in names)
    with pytest.raises(SerializationError, match="surrogates not allowed"):
        encode_row(tuple("https://shop.example/\ud800" if n == "url" else v for n, v in zip(names, row, strict=True)))
    with pytest.raises(SerializationError):
        encode_row(row[:-1])  # a field short
    with pytest.raises(ValueError, match="record schema"):
        compile_row_writer('"string"')


def test_rows_are_written_only_for_a_schema_in_the_rows_order() -> None:
    """Another ``Hit`` field order (a schema that evolved) makes the producer write rows through their dicts."""
    import json

    from passerelle.connectors.collector.producer import CompiledEncoder

    text = schema_text("hits.raw")
    assert CompiledEncoder(AvroEncoder(7, text)).encode_row is not None
    reordered = json.loads(text)
    fields = reordered["fields"]
    fields[7], fields[8] = fields[8], fields[7]  # referrer and page: both optional strings, named types untouched
    assert CompiledEncoder(AvroEncoder(7, json.dumps(reordered))).encode_row is None
    assert CompiledEncoder(AvroEncoder(7, '"string"')).encode_row is None
