"""Impressions and partner metrics, pure parts: the API's item rules, the CSV file, the /imp pixel, the ACLs."""

from __future__ import annotations

import io
from datetime import UTC, date, datetime
from typing import Any

import pytest

from passerelle.connectors.collector.impressions import pixel_to_impression
from passerelle.connectors.collector.validation import HitRules, InvalidEvent, RequestContext
from passerelle.connectors.partner_api import batches, impressions, metrics_routes
from passerelle.connectors.partner_api.campaign_rules import FieldError
from passerelle.connectors.partner_api.impression_rules import validate_impression
from passerelle.connectors.partner_api.metric_rules import METRICS, metric_id, validate_metric
from passerelle.connectors.partner_api.metrics_csv import MetricsImportError, judge_file
from passerelle.deploy.local import acls
from tests.unit.test_acls import allowed

pytestmark = pytest.mark.unit

NOW = int(datetime(2026, 11, 30, 12, tzinfo=UTC).timestamp() * 1000)
TODAY = date(2026, 11, 30)
CAMPAIGNS = {"RT-1": {"partner": "retargeter"}, "EREC-9": {"partner": "mailer"}}


# --- impressions (POST /v1/impressions) ----------------------------------------------------------------------


def imp(**changes: Any) -> dict[str, Any]:
    item = {"impression_id": "imp-1", "visitor_id": "v-1", "site": "shop.example", "campaign_key": "RT-1",
            "creative": "b-300x250", "placement": "news/top", "event_time": "2026-11-30T12:00:00+01:00"}  # fmt: skip
    item.update(changes)
    return {k: v for k, v in item.items() if v is not ...}


@pytest.mark.parametrize(
    ("item", "event_time"),
    [
        (imp(), NOW - 3600_000),
        (imp(event_time="2026-11-30T11:00:00Z"), NOW - 3600_000),
        (imp(event_time=NOW - 5), NOW - 5),
        (imp(event_time=str(NOW)), NOW),
        (imp(campaign_key=None, creative=None, placement=None), NOW - 3600_000),
        (imp(campaign_key=..., creative=..., placement=...), NOW - 3600_000),
        (imp(visitor_id="  v-1  "), NOW - 3600_000),
    ],
)
def test_a_valid_impression_becomes_its_record(item: dict[str, Any], event_time: int) -> None:
    record, errors = validate_impression(item, "retargeter", NOW)
    assert errors == [] and record is not None
    assert record["ad_server"] == "retargeter" and record["event_time"] == event_time
    assert record["visitor_id"] == "v-1" and record["impression_id"] == "imp-1"


@pytest.mark.parametrize(
    ("item", "field"),
    [
        (imp(impression_id=...), "impression_id"),
        (imp(impression_id="has space"), "impression_id"),
        (imp(impression_id="x" * 129), "impression_id"),
        (imp(visitor_id=...), "visitor_id"),
        (imp(visitor_id=""), "visitor_id"),
        (imp(visitor_id=42), "visitor_id"),
        (imp(site=None), "site"),
        (imp(campaign_key="a\nb"), "campaign_key"),
        (imp(creative="x" * 257), "creative"),
        (imp(placement=["x"]), "placement"),
        (imp(event_time=...), "event_time"),
        (imp(event_time="2026-11-30T12:00:00"), "event_time"),
        (imp(event_time="yesterday"), "event_time"),
        (imp(event_time=True), "event_time"),
        (imp(event_time=NOW + 3600_000), "event_time"),
        (imp(event_time=NOW - 31 * 86400_000), "event_time"),
        (imp(ad_server="someone"), "ad_server"),
        (imp(colour="red"), "colour"),
    ],
)
def test_an_invalid_impression_names_its_field(item: dict[str, Any], field: str) -> None:
    record, errors = validate_impression(item, "retargeter", NOW)
    assert record is None
    assert field in [e.field for e in errors], errors


def test_an_impression_batch_keeps_the_good_items_and_names_the_bad_ones() -> None:
    outcome = impressions.judge([imp(), "nope", imp(visitor_id=""), imp(impression_id="imp-2")], "rt", NOW)
    assert [(i, key) for i, key, _, _ in outcome.records] == [(0, "v-1"), (3, "v-1")]
    assert [(e["index"], e["field"]) for e in outcome.errors] == [(1, "impressions[1]"),
                                                                  (2, "impressions[2].visitor_id")]  # fmt: skip
    assert outcome.status() == 207


# --- metrics (POST /v1/metrics, CSV import) ------------------------------------------------------------------


def metric(**changes: Any) -> dict[str, Any]:
    item = {"date": "2026-11-29", "campaign_key": "RT-1", "metric": "cost", "value": 12.5, "currency": "EUR"}
    item.update(changes)
    return {k: v for k, v in item.items() if v is not ...}


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        (metric(), {"value": 12.5, "currency": "EUR", "campaign_key": "RT-1"}),
        (metric(metric="revenue", currency="usd"), {"currency": "USD"}),
        (metric(metric="clicks", value=340, currency=None), {"value": 340.0, "currency": None}),
        (metric(metric="impressions", value="1200", currency=""), {"value": 1200.0, "currency": None}),
        (metric(metric="conversions", value=0, currency=...), {"value": 0.0}),
        (metric(campaign_key=None), {"campaign_key": None, "metric_id": "retargeter||2026-11-29|cost"}),
        (metric(campaign_key=""), {"campaign_key": None}),
        (metric(campaign_key=...), {"campaign_key": None}),
        (metric(date="2026-12-01"), {"date": "2026-12-01"}),  # tomorrow: a partner ahead of UTC
        (metric(value="12.5"), {"value": 12.5}),
    ],
)
def test_a_valid_metric_becomes_its_record(item: dict[str, Any], expected: dict[str, Any]) -> None:
    verdict = validate_metric(item, "retargeter", CAMPAIGNS, TODAY, NOW)
    assert verdict.errors == [] and verdict.record is not None
    assert verdict.record.items() >= expected.items()
    record = verdict.record
    assert record["metric_id"] == metric_id("retargeter", record["campaign_key"], record["date"], record["metric"])
    assert record["partner"] == "retargeter" and record["received_at"] == NOW


@pytest.mark.parametrize(
    ("item", "field"),
    [
        (metric(date="2026-02-30"), "date"),
        (metric(date="29/11/2026"), "date"),
        (metric(date="2026-1-5"), "date"),
        (metric(date=20261129), "date"),
        (metric(date="2026-12-02"), "date"),  # beyond tomorrow
        (metric(date="1999-12-31"), "date"),
        (metric(date=...), "date"),
        (metric(metric="Cost"), "metric"),
        (metric(metric="ctr"), "metric"),
        (metric(metric=None), "metric"),
        (metric(value=-1), "value"),
        (metric(value=float("nan")), "value"),
        (metric(value=float("inf")), "value"),
        (metric(value="1e999"), "value"),
        (metric(value="12,5"), "value"),
        (metric(value=True), "value"),
        (metric(value=None), "value"),
        (metric(currency=None), "currency"),  # an amount needs one
        (metric(currency="EURO"), "currency"),
        (metric(currency="XXX"), "currency"),
        (metric(metric="clicks", value=3), "currency"),  # a count refuses one
        (metric(campaign_key="a\tb"), "campaign_key"),
        (metric(campaign_key="EREC-9"), "campaign_key"),  # another partner's
        (metric(partner="rival"), "partner"),
    ],
)
def test_an_invalid_metric_names_its_field(item: dict[str, Any], field: str) -> None:
    verdict = validate_metric(item, "retargeter", CAMPAIGNS, TODAY, NOW)
    assert verdict.record is None
    assert field in [e.field for e in verdict.errors], verdict.errors


def test_campaign_ownership_declared_undeclared_foreign() -> None:
    mine = validate_metric(metric(), "retargeter", CAMPAIGNS, TODAY, NOW)
    assert mine.record is not None and mine.undeclared is None
    nobody = validate_metric(metric(campaign_key="NEW-1"), "retargeter", CAMPAIGNS, TODAY, NOW)
    assert nobody.record is not None and nobody.undeclared == "NEW-1"
    theirs = validate_metric(metric(campaign_key="EREC-9"), "retargeter", CAMPAIGNS, TODAY, NOW)
    assert theirs.record is None and theirs.foreign and "another partner" in theirs.errors[0].reason
    both = validate_metric(metric(campaign_key="EREC-9", value=-1), "retargeter", CAMPAIGNS, TODAY, NOW)
    assert not both.foreign  # invalid anyway: 422, not 403


def test_the_metric_id_is_stable_and_documented() -> None:
    assert metric_id("p", "RT-1", "2026-11-29", "cost") == "p|RT-1|2026-11-29|cost"
    assert metric_id("p", None, "2026-11-29", "cost") == "p||2026-11-29|cost"
    assert METRICS == ("cost", "revenue", "clicks", "impressions", "conversions")


def test_metric_batches_answer_403_only_when_every_item_is_another_partners() -> None:
    foreign, _ = metrics_routes.judge([metric(campaign_key="EREC-9")] * 2, "retargeter", CAMPAIGNS, TODAY, NOW)
    assert foreign.status() == 403 and foreign.errors[0]["field"] == "metrics[0].campaign_key"
    mixed, _ = metrics_routes.judge([metric(campaign_key="EREC-9"), metric(value=-1)], "retargeter", CAMPAIGNS,
                                    TODAY, NOW)  # fmt: skip
    assert mixed.status() == 422
    some, undeclared = metrics_routes.judge([metric(campaign_key="NEW-1"), metric(campaign_key="EREC-9")],
                                            "retargeter", CAMPAIGNS, TODAY, NOW)  # fmt: skip
    assert some.status() == 207 and undeclared == ["NEW-1"]
    assert batches.Outcome("x").status() == 200


def test_an_unacknowledged_record_is_a_503_and_an_unencodable_one_a_refusal() -> None:
    class Writer:
        def write_many(self, records: list[Any]) -> list[str | None]:
            return [None, "not acknowledged by Kafka in time", "rejected: cannot be encoded"][: len(records)]

    outcome = batches.Outcome("metrics", records=[(0, "a", {}, None), (1, "b", {}, None), (2, "c", {}, None)])
    outcome.publish(Writer())  # type: ignore[arg-type]
    assert outcome.accepted == 1 and outcome.failed == 1 and outcome.status() == 503
    assert "send the batch again" in outcome.errors[0]["reason"] and outcome.errors[1]["field"] == "metrics[2]"
    refused = batches.Outcome("metrics")
    refused.refuse(0, [FieldError("value", "bad")])
    assert refused.response().status_code == 422


# --- the CSV file --------------------------------------------------------------------------------------------


def judge(text: str) -> Any:
    return judge_file(io.StringIO(text, newline=""), "retargeter", CAMPAIGNS, TODAY, NOW)


def test_a_csv_file_is_judged_line_by_line_with_the_apis_rules() -> None:
    text = (
        "date,campaign_key,metric,value,currency\n"
        "2026-11-29,RT-1,cost,12.5,EUR\n"  # 2
        "2026-11-29,RT-1,clicks,340,\n"  # 3
        "\n"  # 4: blank, skipped
        "2026-02-30,RT-1,clicks,1,\n"  # 5: date
        "2026-11-29,EREC-9,cost,3,EUR\n"  # 6: another partner's
        '2026-11-29,"NEW,1",impressions,100,\n'  # 7: undeclared, quoted
        "2026-11-29,,cost,-2,\n"  # 8: value and currency
        "2026-11-29,RT-1,cost\n"  # 9: short
    )
    judged = judge(text)
    assert judged.lines == 7
    assert [line for line, _ in judged.records] == [2, 3, 7]
    assert {(p.line, p.column) for p in judged.problems} == {
        (5, "date"), (6, "campaign_key"), (8, "value"), (8, "currency"), (9, ""),
    }  # fmt: skip
    assert judged.rejected_lines == 4 and judged.undeclared == {"NEW,1"}
    assert str(judged.problems[0]).startswith("line 5, column date: ")


def test_the_header_is_checked_before_any_line() -> None:
    assert [line for line, _ in judge("METRIC;Value;date;currency;campaign_key\nclicks;3;2026-11-29;;\n").records] == [
        2
    ]
    for header, needle in (("date,campaign_key,metric,value\n", "missing currency"),
                           ("date,campaign_key,metric,value,currency,notes\n", "unknown 'notes'"),
                           ("date,date,campaign_key,metric,value,currency\n", "repeated date"),
                           ("", "empty")):  # fmt: skip
        with pytest.raises(MetricsImportError, match=needle):
            judge(header)


# --- GET /imp ------------------------------------------------------------------------------------------------

RULES = HitRules(sites=frozenset({"shop.example"}))
CTX = RequestContext(received_at_ms=NOW, new_id=lambda: "drawn-id")


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"site": "shop.example", "vid": "v1", "as": "rt"},
         {"impression_id": "drawn-id", "event_time": NOW, "campaign_key": None, "ad_server": "rt"}),
        ({"site": "shop.example", "visitor_id": "v1", "ad_server": "rt", "c": "RT-1", "cr": "b1", "pl": "p1",
          "iid": "imp-9", "ts": str(NOW - 1000), "_": "123"},
         {"impression_id": "imp-9", "event_time": NOW - 1000, "campaign_key": "RT-1", "creative": "b1",
          "placement": "p1"}),
        ({"site": "shop.example", "vid": "v1", "as": "rt", "campaign": "RT-2", "creative": "b", "placement": "p",
          "impression_id": "i", "event_time": "2026-11-30T11:59:00Z"},
         {"campaign_key": "RT-2", "impression_id": "i", "event_time": NOW - 60_000}),
        ({"site": "shop.example", "vid": "v1", "as": "rt", "ts": str(NOW + 3600_000), "c": ""},
         {"event_time": NOW, "campaign_key": None}),  # implausible ts: the receive time, as /hit
    ],
)  # fmt: skip
def test_the_impression_pixel_reads_its_parameters(params: dict[str, str], expected: dict[str, Any]) -> None:
    record = pixel_to_impression(params, CTX, RULES).to_avro()
    assert record.items() >= expected.items() and record["visitor_id"] == "v1" and record["site"] == "shop.example"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"vid": "v1", "as": "rt"}, "site"),
        ({"site": "blog.example", "vid": "v1", "as": "rt"}, "site"),
        ({"site": "shop.example", "as": "rt"}, "vid"),
        ({"site": "shop.example", "vid": "v1"}, "as"),
        ({"site": "shop.example", "vid": "v1", "as": "rt", "iid": "a b"}, "iid"),
        ({"site": "shop.example", "vid": "v1", "as": "rt", "ts": "soon"}, "ts"),
        ({"site": "shop.example", "vid": "v1", "as": "rt", "c": "x" * 200}, "c"),
    ],
)
def test_a_bad_impression_pixel_names_its_parameter(params: dict[str, str], field: str) -> None:
    with pytest.raises(InvalidEvent) as refused:
        pixel_to_impression(params, CTX, RULES)
    assert any(e.startswith(f"{field}:") for e in refused.value.errors), refused.value.errors


# --- who may write what --------------------------------------------------------------------------------------


def test_the_acls_let_each_writer_write_its_topic_and_no_more() -> None:
    from passerelle.commands import metrics

    assert allowed("collector", acls.TOPIC, "ads.impressions", "WRITE")
    for topic in ("ads.impressions", "partners.metrics"):
        assert allowed("api", acls.TOPIC, topic, "WRITE")
    importer = {(r, n, op) for r, n, _, op, _ in acls.bindings("metrics-import")}
    assert importer == {
        (acls.TOPIC, "partners.keys", "READ"), (acls.TOPIC, "campaigns", "READ"),
        (acls.TOPIC, "partners.metrics", "WRITE"), (acls.GROUP, metrics.GROUP_ID, "READ"),
    }  # fmt: skip
    assert not allowed("metrics-import", acls.TOPIC, "campaigns", "WRITE")
    assert not allowed("collector", acls.TOPIC, "partners.metrics", "WRITE")
    assert acls.registry_role("metrics-import") == "read"
