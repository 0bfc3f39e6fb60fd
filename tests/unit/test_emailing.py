"""The emailing connector without a broker: payload mapping, retry decisions and budget, the partner client
over a mock transport, outcome records, atomic export files and the partner stand-in."""

from __future__ import annotations

import csv
import json
import random
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any, TextIO

import fastavro.validation
import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from passerelle.connectors.emailing.bridge import delivery_record, failure_message, partner_headers
from passerelle.connectors.emailing.client import (
    IDEMPOTENCY_HEADER,
    DeliveryResult,
    Interrupted,
    PartnerClient,
    encode_body,
)
from passerelle.connectors.emailing.config import (
    EmailingConfig,
    EmailingStartupError,
    PartnerAuth,
    RetryPolicy,
    config_from_mapping,
)
from passerelle.connectors.emailing.export import (
    CSV_COLUMNS,
    Exported,
    atomic_write,
    remove_stale_temporaries,
    stamp,
    window_name,
    write_window,
)
from passerelle.connectors.emailing.mapping import PayloadMapping, build_payload, lookup
from passerelle.connectors.emailing.metrics import EmailingMetrics
from passerelle.connectors.emailing.retry import (
    Verdict,
    backoff_delay,
    classify,
    next_delay,
    parse_retry_after,
    request_outcome,
)
from passerelle.connectors.emailing.standin import create_app, draw
from passerelle.schemas.catalog import parsed_schema
from passerelle.schemas.models import RemarketingDelivery
from passerelle.streams.runtime.deadletter import header_dict

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_732_800_000_000  # 2024-11-28T13:20:00Z
PRODUCT = {
    "id": "SKU-42",
    "name": "Trail shoes",
    "price": 89.9,
    "currency": "EUR",
    "quantity": 1,
    "category": "shoes/trail",
    "url": "https://shop.example/p/sku-42",
    "image_url": "https://cdn.example/sku-42.jpg",
}
LINE = {"product_id": "SKU-42", "name": "Trail shoes", "price": 89.9, "quantity": 2, "currency": "EUR"}
MESSAGE: dict[str, Any] = {
    "message_id": "seq-ep-4:2",
    "sequence_id": "seq-ep-4",
    "step": 2,
    "customer_id": "C-77",
    "email": "anna@example.org",
    "site": "shop.example",
    "products": [PRODUCT],
    "lines": [LINE],
    "promotion": {"code": "BACK10", "description": "10% off your cart", "discount_percent": 10.0},
    "created_at": T0,
}
URL = "https://partner.example/v1/messages"


def config(**overrides: Any) -> EmailingConfig:
    values: dict[str, Any] = {
        "bootstrap_servers": "127.0.0.1:1",
        "schema_registry_url": "http://127.0.0.1:2",
        "partner_url": URL,
        "retry": RetryPolicy(max_attempts=4, base_delay_s=0.01, max_delay_s=0.05, max_total_s=5, jitter=0.5),
        **overrides,
    }
    return EmailingConfig(**values)


class RecordingStop(threading.Event):
    """A stop event whose waits return at once and are recorded: tests see the delays without sleeping."""

    def __init__(self, stop_after: int | None = None) -> None:
        super().__init__()
        self.waits: list[float] = []
        self.stop_after = stop_after

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(float(timeout or 0))
        return self.stop_after is not None and len(self.waits) >= self.stop_after


def client_for(
    answers: list[int | Exception | tuple[int, dict[str, str]]], cfg: EmailingConfig | None = None, **kw: Any
) -> tuple[PartnerClient, list[httpx.Request], RecordingStop]:
    """A partner client over a mock transport answering ``answers`` in turn (the last one repeats)."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = answers[min(len(seen) - 1, len(answers) - 1)]
        if isinstance(answer, Exception):
            raise answer
        status, headers = answer if isinstance(answer, tuple) else (answer, {})
        return httpx.Response(status, json={"status": status, "detail": "from the mock"}, headers=headers)

    stop = RecordingStop(**kw)
    client = PartnerClient(
        cfg or config(), EmailingMetrics(), stop=stop, rng=random.Random(1), transport=httpx.MockTransport(handler)
    )
    return client, seen, stop


# --- payload mapping ------------------------------------------------------------------------------


def test_default_payload_carries_ids_recipient_step_products_lines_and_promotion() -> None:
    body = build_payload(MESSAGE)
    assert body == {
        "message_id": "seq-ep-4:2",
        "sequence_id": "seq-ep-4",
        "step": 2,
        "site": "shop.example",
        "customer_id": "C-77",
        "email": "anna@example.org",
        "products": [PRODUCT],
        "cart_lines": [LINE],
        "promotion": {"code": "BACK10", "description": "10% off your cart", "discount_percent": 10.0},
        "created_at": "2024-11-28T13:20:00.000Z",
    }
    json.dumps(body, allow_nan=False)  # plain JSON


def test_default_payload_of_a_step_1_message_read_by_fastavro() -> None:
    # fastavro gives timestamp-millis back as aware datetimes.
    created = datetime.fromtimestamp(T0 / 1000, tz=UTC)
    body = build_payload({**MESSAGE, "step": 1, "promotion": None, "lines": [], "created_at": created})
    assert body["promotion"] is None and body["cart_lines"] == [] and body["step"] == 1
    assert body["created_at"] == "2024-11-28T13:20:00.000Z"


def test_configured_mapping_renames_nests_indexes_and_adds_constants() -> None:
    mapping = PayloadMapping(
        fields={
            "id": "message_id",
            "recipient.address": "email",
            "recipient.external_id": "customer_id",
            "vars.first_product": "products.0.name",
            "vars.last_product_image": "products.-1.image_url",
            "vars.code": "promotion.code",
            "vars.missing": "products.5.id",
            "sent_at": "created_at_iso",
        },
        constants={"template": "cart-reminder", "vars.brand": "Shop"},
    )
    assert build_payload(MESSAGE, mapping) == {
        "template": "cart-reminder",
        "vars": {
            "brand": "Shop",
            "first_product": "Trail shoes",
            "last_product_image": "https://cdn.example/sku-42.jpg",
            "code": "BACK10",
            "missing": None,
        },
        "id": "seq-ep-4:2",
        "recipient": {"address": "anna@example.org", "external_id": "C-77"},
        "sent_at": "2024-11-28T13:20:00.000Z",
    }


def test_lookup_is_none_for_anything_missing() -> None:
    assert lookup(MESSAGE, "promotion.nope") is None
    assert lookup({**MESSAGE, "promotion": None}, "promotion.code") is None
    assert lookup(MESSAGE, "products.x") is None
    assert lookup(MESSAGE, "step.deeper") is None


def test_the_same_message_always_gives_the_same_bytes() -> None:
    # Retries and redeliveries must send the very same body with the same idempotency key.
    assert encode_body(build_payload(MESSAGE)) == encode_body(build_payload(json.loads(json.dumps(MESSAGE))))


# --- retry decisions and budget -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "verdict", "label"),
    [
        (200, Verdict.DELIVERED, "delivered"),
        (201, Verdict.DELIVERED, "delivered"),
        (202, Verdict.DELIVERED, "delivered"),
        (204, Verdict.DELIVERED, "delivered"),
        (301, Verdict.REJECTED, "client_error"),
        (400, Verdict.REJECTED, "client_error"),
        (401, Verdict.REJECTED, "client_error"),
        (403, Verdict.REJECTED, "client_error"),
        (404, Verdict.REJECTED, "client_error"),
        (409, Verdict.REJECTED, "client_error"),
        (422, Verdict.REJECTED, "client_error"),
        (429, Verdict.RETRY, "throttled"),
        (500, Verdict.RETRY, "server_error"),
        (502, Verdict.RETRY, "server_error"),
        (503, Verdict.RETRY, "server_error"),
        (504, Verdict.RETRY, "server_error"),
        (None, Verdict.RETRY, "transport_error"),
    ],
)
def test_retry_decision_per_status(status: int | None, verdict: Verdict, label: str) -> None:
    assert classify(status) is verdict
    assert request_outcome(status) == label


def test_a_configured_already_delivered_status_counts_as_delivered() -> None:
    assert classify(409, frozenset({409})) is Verdict.DELIVERED
    assert request_outcome(409, frozenset({409})) == "duplicate"


def test_backoff_grows_exponentially_within_jitter_bounds_and_caps() -> None:
    policy = RetryPolicy(base_delay_s=0.5, multiplier=2.0, max_delay_s=8.0, jitter=0.5)
    rng = random.Random(42)
    for attempt in range(1, 12):
        ceiling = min(8.0, 0.5 * 2 ** (attempt - 1))
        for _ in range(200):
            delay = backoff_delay(attempt, policy, rng)
            assert ceiling * 0.5 <= delay <= ceiling
    assert backoff_delay(1000, policy, rng) <= 8.0  # no overflow on huge attempt numbers
    exact = RetryPolicy(base_delay_s=0.5, multiplier=3.0, max_delay_s=100.0, jitter=0.0)
    assert [backoff_delay(n, exact) for n in (1, 2, 3)] == [0.5, 1.5, 4.5]
    with pytest.raises(ValueError):
        backoff_delay(0, policy)


def test_jitter_spreads_the_delays() -> None:
    policy = RetryPolicy(base_delay_s=1.0, jitter=1.0)
    delays = {round(backoff_delay(3, policy, random.Random(seed)), 6) for seed in range(50)}
    assert len(delays) > 40


def test_budget_ends_at_max_attempts_or_max_total_seconds() -> None:
    policy = RetryPolicy(max_attempts=3, base_delay_s=1.0, multiplier=2.0, max_delay_s=10, max_total_s=10, jitter=0)
    assert next_delay(1, 0.0, policy) == 1.0
    assert next_delay(2, 1.0, policy) == 2.0
    assert next_delay(3, 3.0, policy) is None  # three attempts made
    assert next_delay(2, 8.5, policy) is None  # 8.5 + 2 > 10 s
    assert next_delay(2, 8.0, policy) == 2.0  # ends right at the budget


def test_retry_after_replaces_the_backoff_but_never_stretches_the_budget() -> None:
    policy = RetryPolicy(max_attempts=5, base_delay_s=1.0, max_total_s=30, max_retry_after_s=20, jitter=0)
    assert next_delay(1, 0.0, policy, retry_after_s=7.0) == 7.0
    assert next_delay(1, 0.0, policy, retry_after_s=0.0) == 0.0
    assert next_delay(1, 0.0, policy, retry_after_s=25.0) is None  # above max_retry_after_s
    assert next_delay(1, 15.0, policy, retry_after_s=18.0) is None  # past max_total_s


def test_retry_after_parsing() -> None:
    now = datetime(2024, 11, 28, 13, 20, tzinfo=UTC)
    assert parse_retry_after("5", now) == 5.0
    assert parse_retry_after(" 120 ", now) == 120.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now) == 30.0
    assert parse_retry_after("Thu, 28 Nov 2024 13:21:00 GMT", now) == 60.0
    assert parse_retry_after(format_datetime(now - timedelta(minutes=5), usegmt=True), now) == 0.0
    for garbled in (None, "", "soon", "-3", "1.5", "Thu, 99 Nov"):
        assert parse_retry_after(garbled, now) is None


# --- the partner client ---------------------------------------------------------------------------


def test_retries_5xx_then_delivers_with_one_idempotency_key_and_one_body() -> None:
    client, seen, stop = client_for([500, 503, 502, 202])
    result = client.deliver(build_payload(MESSAGE), "seq-ep-4:2")
    assert (result.delivered, result.reason, result.attempts, result.last_status) == (True, "delivered", 4, 202)
    assert {r.headers[IDEMPOTENCY_HEADER] for r in seen} == {"seq-ep-4:2"}
    assert len({r.content for r in seen}) == 1
    assert json.loads(seen[0].content) == build_payload(MESSAGE)
    assert seen[0].headers["content-type"] == "application/json" and seen[0].method == "POST"
    assert len(stop.waits) == 3
    assert all(0.005 <= w <= 0.05 for w in stop.waits)
    text = client.metrics.render().decode()
    assert 'passerelle_emailing_requests_total{outcome="server_error"} 3.0' in text
    assert 'passerelle_emailing_requests_total{outcome="delivered"} 1.0' in text
    assert "passerelle_emailing_request_seconds_count 4.0" in text


def test_4xx_is_not_retried() -> None:
    client, seen, stop = client_for([422])
    result = client.deliver(build_payload(MESSAGE), "k")
    assert (result.delivered, result.reason, result.attempts, result.last_status) == (False, "rejected", 1, 422)
    assert len(seen) == 1 and stop.waits == []
    assert '"detail":"from the mock"' in result.last_answer


def test_429_honours_retry_after() -> None:
    client, _, stop = client_for([(429, {"Retry-After": "3"}), 200])
    result = client.deliver(build_payload(MESSAGE), "k")
    assert result.delivered and result.attempts == 2
    assert stop.waits == [3.0]


def test_budget_spent_gives_the_last_answer() -> None:
    client, seen, _ = client_for([500])
    result = client.deliver(build_payload(MESSAGE), "k")
    assert (result.delivered, result.reason, result.attempts, result.last_status) == (
        False,
        "retries_exhausted",
        4,
        500,
    )
    assert len(seen) == 4
    assert "from the mock" in result.last_answer


def test_connection_errors_and_timeouts_are_retried() -> None:
    client, _, _ = client_for([httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), 201])
    result = client.deliver(build_payload(MESSAGE), "k")
    assert result.delivered and result.attempts == 3
    client, _, _ = client_for([httpx.ConnectError("refused")])
    result = client.deliver(build_payload(MESSAGE), "k")
    assert (result.reason, result.last_status) == ("retries_exhausted", None)
    assert "ConnectError" in result.last_answer


def test_stopping_during_a_backoff_leaves_the_message_undecided() -> None:
    client, seen, _ = client_for([500], stop_after=1)
    with pytest.raises(Interrupted):
        client.deliver(build_payload(MESSAGE), "k")
    assert len(seen) == 1


@pytest.mark.parametrize(
    ("auth", "header", "value"),
    [
        (PartnerAuth("bearer", SecretStr("t0ken")), "authorization", "Bearer t0ken"),
        (PartnerAuth("basic", SecretStr("pw"), username="shop"), "authorization", "Basic c2hvcDpwdw=="),
        (PartnerAuth("api_key", SecretStr("k3y"), header="X-Partner-Key"), "x-partner-key", "k3y"),
    ],
)
def test_auth_headers(auth: PartnerAuth, header: str, value: str) -> None:
    client, seen, _ = client_for([200], config(auth=auth, extra_headers={"X-Account": "42"}))
    client.deliver(build_payload(MESSAGE), "k")
    assert seen[0].headers[header] == value
    assert seen[0].headers["x-account"] == "42"


def test_secrets_never_show_in_reprs() -> None:
    cfg = config(auth=PartnerAuth("bearer", SecretStr("super-secret-token")))
    assert "super-secret-token" not in repr(cfg) and "super-secret-token" not in str(cfg)


def test_config_checks_and_json_form(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(EmailingStartupError, match="partner_url"):
        config(partner_url="ftp://x")
    with pytest.raises(EmailingStartupError, match="needs a secret"):
        config(auth=PartnerAuth("bearer"))
    with pytest.raises(EmailingStartupError, match="max_attempts"):
        config(retry=RetryPolicy(max_attempts=0))
    with pytest.raises(EmailingStartupError, match="unknown"):
        config_from_mapping({"bootstrap_servers": "b", "schema_registry_url": "r", "partner_url": URL, "typo": 1})
    monkeypatch.setenv("TEST_PARTNER_SECRET", "from-env")
    cfg = config_from_mapping(
        {
            "bootstrap_servers": "b",
            "schema_registry_url": "r",
            "partner_url": URL,
            "auth": {"kind": "bearer", "secret_env": "TEST_PARTNER_SECRET"},
            "retry": {"max_attempts": 2},
            "mapping": {"fields": {"id": "message_id"}},
            "already_delivered": [409],
        }
    )
    assert cfg.auth.headers() == {"Authorization": "Bearer from-env"}
    assert cfg.retry.max_attempts == 2 and cfg.already_delivered == frozenset({409})
    assert build_payload(MESSAGE, cfg.mapping) == {"id": "seq-ep-4:2"}


# --- outcome records and dead-letter headers ------------------------------------------------------


def test_outcome_record_matches_its_schema() -> None:
    result = DeliveryResult(False, "retries_exhausted", 4, 500, '{"error":"down"}', 3.25, T0)
    record = delivery_record(MESSAGE, result, "mailer", 2, 41, T0 + 3300)
    assert isinstance(record, RemarketingDelivery)
    data = record.to_avro()
    assert data["outcome"] == "dead_lettered" and data["latency_ms"] == 3250 and data["last_status"] == 500
    assert fastavro.validation.validate(data, parsed_schema("RemarketingDelivery"), raise_errors=True)
    ok = delivery_record(MESSAGE, DeliveryResult(True, "delivered", 1, 202, "", 0.01, T0), "mailer", 0, 0, T0)
    assert (ok.outcome, ok.last_answer) == ("delivered", None)


def test_dead_letter_names_the_partner_answer() -> None:
    result = DeliveryResult(False, "retries_exhausted", 4, 500, '{"error":"down"}', 3.25, T0)
    message = failure_message(result, "mailer")
    assert "mailer answered 500 after 4 attempt(s)" in message and '{"error":"down"}' in message
    assert header_dict(partner_headers(result, "mailer")) == {
        "partner.name": "mailer",
        "partner.reason": "retries_exhausted",
        "partner.attempts": "4",
        "partner.answer": '{"error":"down"}',
        "partner.status": "500",
    }
    rejected = DeliveryResult(False, "rejected", 1, 400, "bad email", 0.1, T0)
    assert "rejected the message with 400" in failure_message(rejected, "mailer")
    silent = DeliveryResult(False, "retries_exhausted", 3, None, "ConnectError: refused", 1.0, T0)
    assert "no answer from mailer" in failure_message(silent, "mailer")
    assert "partner.status" not in header_dict(partner_headers(silent, "mailer"))


# --- export files ---------------------------------------------------------------------------------


def test_atomic_write_replaces_whole_files(tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    atomic_write(target, lambda f: f.write("a,b\r\n1,2\r\n"))
    assert target.read_bytes() == b"a,b\r\n1,2\r\n"
    assert oct(target.stat().st_mode & 0o777) == oct(0o600)  # email addresses inside
    atomic_write(target, lambda f: f.write("new"))
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]


def test_a_failure_mid_write_leaves_no_partial_file_and_keeps_the_old_one(tmp_path: Path) -> None:
    def half(out: TextIO) -> None:
        out.write("message_id\r\n" + "x" * 100_000)
        raise OSError("disk full")

    fresh = tmp_path / "fresh.csv"
    with pytest.raises(OSError, match="disk full"):
        atomic_write(fresh, half)
    assert not fresh.exists()
    old = tmp_path / "old.csv"
    old.write_text("complete")
    with pytest.raises(OSError):
        atomic_write(old, half)
    assert old.read_text() == "complete"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.csv"]  # no temporary left


def test_a_process_killed_mid_write_leaves_no_partial_file(tmp_path: Path) -> None:
    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from connectors.emailing.export import atomic_write\n"
        "def half(out):\n"
        "    out.write('x' * 100000); out.flush()\n"
        "    os._exit(9)  # dies like kill -9: no cleanup, no rename\n"
        f"atomic_write(Path({str(tmp_path / 'remarketing-w.csv')!r}), half)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, timeout=60)
    assert proc.returncode == 9, proc.stderr
    names = [p.name for p in tmp_path.iterdir()]
    assert "remarketing-w.csv" not in names
    assert len(names) == 1 and names[0].startswith(".remarketing-w.csv.")  # hidden from *.csv globs
    assert remove_stale_temporaries(tmp_path, "remarketing") == 1
    assert list(tmp_path.iterdir()) == []


def test_window_files_are_named_after_their_bounds_and_hold_every_message(tmp_path: Path) -> None:
    assert stamp(T0 + 7) == "20241128T132000.007Z"
    assert window_name("remarketing", T0, T0 + 3_600_000) == "remarketing-20241128T132000.000Z--20241128T142000.000Z"
    items = [
        Exported({**MESSAGE, "message_id": f"m-{i}", "email": f'x{i}@example.org, "quoted"'}, i % 3, i, T0 + i)
        for i in range(5)
    ]
    items.append(Exported({**MESSAGE, "message_id": "m-bare", "promotion": None, "products": []}, 0, 99, T0))
    csv_path, jsonl_path = write_window(tmp_path / "out", "remarketing", T0, T0 + 60_000, items, PayloadMapping())
    assert csv_path.name == "remarketing-20241128T132000.000Z--20241128T132100.000Z.csv"
    assert jsonl_path.with_suffix(".csv") == csv_path
    with csv_path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(CSV_COLUMNS)
    assert [r["message_id"] for r in rows] == [f"m-{i}" for i in range(5)] + ["m-bare"]
    assert rows[1]["email"] == 'x1@example.org, "quoted"'
    assert rows[0]["product_ids"] == "SKU-42" and json.loads(rows[0]["cart_lines"]) == [LINE]
    assert rows[0]["promotion_discount_percent"] == "10.0" and rows[-1]["promotion_code"] == ""
    assert rows[0]["created_at"] == "2024-11-28T13:20:00.000Z"
    lines = jsonl_path.read_text().splitlines()
    assert [json.loads(line) for line in lines] == [build_payload(i.message) for i in items]


# --- the partner stand-in -------------------------------------------------------------------------


def standin(seed: int = 0) -> TestClient:
    return TestClient(create_app(seed))


def post_all(client: TestClient, keys: list[str]) -> list[int]:
    return [client.post("/v1/send", json={"k": k}, headers={"Idempotency-Key": k}).status_code for k in keys]


def test_standin_records_requests_and_delivered_keys() -> None:
    with standin() as client:
        assert client.post("/v1/send?x=1", json={"a": 1}, headers={"Idempotency-Key": "k1"}).status_code == 202
        client.put("/other", json=[1], headers={"Idempotency-Key": "k1"})
        client.post("/v1/send", content=b"not json", headers={"Idempotency-Key": "k2"})
        recorded = client.get("/_requests").json()
        assert recorded["count"] == 3
        first = recorded["requests"][0]
        assert (first["method"], first["path"], first["query"], first["body"]) == ("POST", "/v1/send", "x=1", {"a": 1})
        assert first["idempotency_key"] == "k1" and first["headers"]["idempotency-key"] == "k1"
        assert first["status"] == 202 and first["received_at"] > 0
        assert recorded["requests"][2]["status"] == 400 and recorded["requests"][2]["raw"] == "not json"
        # The second k1 is a replay: answered 202 again, delivered once (Idempotency-Key semantics).
        assert client.get("/_delivered").json() == {"count": 1, "keys": {"k1": 1}, "replays": {"k1": 1}}
        assert recorded["requests"][1]["replay"] is True and recorded["requests"][1]["status"] == 202
        assert client.get("/_requests", params={"key": "k2"}).json()["count"] == 1
        client.delete("/_requests")
        assert client.get("/_requests").json()["count"] == 0
        assert client.get("/_delivered").json()["count"] == 0


def test_standin_failure_injection_is_deterministic_per_seed() -> None:
    keys = [f"m-{i}" for i in range(200)]
    runs = []
    for _ in range(2):
        with standin(seed=7) as client:
            client.post("/_control", json={"fail_ratio": 0.2, "status": 503})
            runs.append(post_all(client, keys) + post_all(client, keys))
    assert runs[0] == runs[1]
    failures = runs[0][:200].count(503)
    assert 20 <= failures <= 60 and set(runs[0]) == {202, 503}
    expected = [503 if draw(7, k, 0) < 0.2 else 202 for k in keys]
    assert runs[0][:200] == expected
    with standin(seed=8) as client:
        client.post("/_control", json={"fail_ratio": 0.2, "status": 503})
        assert post_all(client, keys) != runs[0][:200]


def test_standin_fails_for_a_while_then_recovers() -> None:
    with standin() as client:
        state = client.post("/_control", json={"fail_for_s": 30, "status": 500, "retry_after": "2"}).json()
        assert 29 < state["fail_for_s"] <= 30
        response = client.post("/x", json={}, headers={"Idempotency-Key": "k"})
        assert response.status_code == 500 and response.headers["retry-after"] == "2"
        client.post("/_control", json={"fail_for_s": 0, "retry_after": None})
        assert post_all(client, ["k"]) == [202]
        assert client.post("/_control", json={"bogus": 1}).status_code == 400
        assert client.post("/_control", json={"fail_ratio": 2}).status_code == 400


def test_standin_can_require_credentials() -> None:
    with standin() as client:
        client.post("/_control", json={"require_headers": {"Authorization": "Bearer t0ken"}})
        assert post_all(client, ["k"]) == [401]
        ok = client.post("/x", json={}, headers={"Idempotency-Key": "k", "Authorization": "Bearer t0ken"})
        assert ok.status_code == 202


def test_standin_runs_as_a_module() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "passerelle.connectors.emailing.standin", "--help"],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 0 and b"--port" in proc.stdout
