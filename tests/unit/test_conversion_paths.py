"""Conversion paths: the processor through the runtime's test driver, both halves.

Hits and post-views go to their visitor's partition; what the processor
writes to ``conversions.paths.events`` is read back on the partition of its
customer key, as the runner reads it (Avro-encoded and decoded, so the
contract judges it). Every output is encoded as the runner would
(``output_schemas``; the CRM topics as Connect JSON), so a record its schema
refuses fails the test. The attribution models themselves are tested in
``test_conversion_models.py`` (``models.py``); here, only that each path
carries them, consistent with the touchpoints.
"""

from __future__ import annotations

import io
import json
import zlib
from collections.abc import Iterable
from typing import Any

import fastavro
import pytest

from passerelle.commands import processor as command
from passerelle.schemas.catalog import load_catalog
from passerelle.schemas.models import ConversionPath as ConversionPathModel
from passerelle.settings import ConversionPathsSettings
from passerelle.streams.conversion_paths.models import MODELS
from passerelle.streams.conversion_paths.processor import (
    PERSONS,
    VISITORS,
    ConversionPathsProcessor,
    ConversionPathsTopics,
)
from passerelle.streams.conversion_paths.rules import DAY_MS, HOUR_MS, MINUTE_MS, Goal, PathsConfig, parse_goals
from passerelle.streams.runtime import OutRecord
from passerelle.streams.runtime.testing import ProcessorDriver, Step
from tests.records import enriched_hit

pytestmark = pytest.mark.unit

T0 = 1_795_082_400_000  # 2026-11-19T10:00:00Z
PARTITIONS = 3
CATALOG = load_catalog()
HITS, PV, EVENTS = "hits.enriched", "ads.postview", "conversions.paths.events"
PATHS, CRM_PATHS, CHANNELS = "conversions.paths", "crm.conversion_paths", "crm.customer_channels"
EVENT_SCHEMA = fastavro.parse_schema(json.loads(CATALOG.schema_text("PathEvent")))
SITE = "shop.example"


def hit(visitor: str, at: int, visit: int = 1, customer: str | None = None, order: tuple[str, float] | None = None,
        medium: str | None = None, campaign: str | None = None, url: str | None = None,
        n: int = 0) -> dict[str, Any]:  # fmt: skip
    """An ``EnrichedHit``; ``order`` = (order id, revenue)."""
    h = enriched_hit(visitor, at, event_id=f"e-{visitor}-{at}-{n}", visit=visit, customer=customer, order=order,
                     medium=medium, campaign=campaign)  # fmt: skip
    if url is not None:
        h["url"] = url
    return h


def postview(visitor: str, imp_at: int, visit_at: int, campaign: str = "DISP-1",
             customer: str | None = None) -> dict[str, Any]:  # fmt: skip
    """A ``PostView`` of a visit, crediting an impression served at ``imp_at``."""
    return {"postview_id": f"visit:{visitor}:{campaign}", "kind": "visit", "visitor_id": visitor,
            "customer_id": customer, "site": SITE, "campaign_key": campaign, "impression_id": f"i-{imp_at}",
            "impression_time": imp_at, "impressions": 1, "event_id": f"e-{visitor}-{visit_at}",
            "visit_id": f"{visitor}:1", "event_time": visit_at, "delay_ms": visit_at - imp_at,
            "visit_medium": "direct", "visit_campaign": None, "order_id": None, "revenue": None,
            "currency": None}  # fmt: skip


def erasure(customer: str | None = None, visitor: str | None = None) -> dict[str, Any]:
    return {"request_id": f"r-{customer}-{visitor}", "kind": "erasure", "customer_id": customer,
            "visitor_id": visitor, "marketing_consent": None, "requested_at": T0}  # fmt: skip


def partition(key: str) -> int:
    """A stand-in for the producer's partitioner: stable per key."""
    return zlib.crc32(key.encode()) % PARTITIONS


def wire(value: dict[str, Any]) -> dict[str, Any]:
    """An event written and read back as the runner would."""
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, EVENT_SCHEMA, value)
    buf.seek(0)
    decoded: Any = fastavro.schemaless_reader(buf, EVENT_SCHEMA, None)
    return decoded


class Pipeline:
    """The processor on a driver: inputs on their visitor's partition, events read back on their customer's."""

    def __init__(self, config: PathsConfig | None = None, now: int = T0) -> None:
        self.proc = ConversionPathsProcessor(ConversionPathsTopics(), config)
        schemas = {EVENTS: CATALOG.schema_text("PathEvent"), PATHS: CATALOG.schema_text("ConversionPath"),
                   CRM_PATHS: CATALOG.schema_text("CrmConversionPath"),
                   CHANNELS: CATALOG.schema_text("CustomerChannels")}  # fmt: skip
        self.driver = ProcessorDriver(self.proc, partitions=range(PARTITIONS), now=now, output_schemas=schemas,
                                      wire_formats={CRM_PATHS: "connect-json", CHANNELS: "connect-json"})  # fmt: skip
        self.out: list[OutRecord] = []  # everything published but the events

    def _take(self, step: Step) -> list[OutRecord]:
        assert not step.dead_letters, step.dead_letters
        assert not step.given_up and not step.retried
        events = [o for o in step.outputs if o.topic == EVENTS]
        for o in step.outputs:
            if o.topic == PATHS:
                ConversionPathModel.from_avro(o.value)
        self.out += [o for o in step.outputs if o.topic != EVENTS]
        return events

    def send(self, *records: tuple[str, dict[str, Any]], now: int | None = None) -> None:
        """One step with these (topic, value) records, then the steps reading the events back."""
        batch = [self.driver.record(t, v["visitor_id"], v, self.driver.now, partition(v["visitor_id"]))
                 for t, v in records]  # fmt: skip
        events = self._take(self.driver.feed(*batch, now=now))
        while events:
            back = [self.driver.record(EVENTS, e.key, wire(e.value), self.driver.now, partition(e.key))
                    for e in events]  # fmt: skip
            events = self._take(self.driver.feed(*back, now=now))

    def hits(self, *hits: dict[str, Any]) -> None:
        """Each hit in its own step, the wall clock at its event time."""
        for h in hits:
            self.send((HITS, h), now=max(self.driver.now, h["event_time"]))

    def table(self, table: str, key: str, value: dict[str, Any] | None) -> None:
        self._take(self.driver.table_update(table, key, value))

    def paths(self) -> list[dict[str, Any]]:
        return [o.value for o in self.out if o.topic == PATHS]

    def crm(self) -> dict[str, dict[str, Any] | None]:
        """The compacted view of crm.conversion_paths: latest row per conversion id (None: deleted)."""
        return {o.key: o.value for o in self.out if o.topic == CRM_PATHS}

    def channels(self) -> dict[str, dict[str, Any] | None]:
        return {o.key: o.value for o in self.out if o.topic == CHANNELS}

    def metric(self, name: str, **labels: str) -> float | None:
        return self.driver.metric(name, **labels)


def channels(path: dict[str, Any]) -> list[str]:
    return [t["channel"] for t in path["touchpoints"]]


def model(path: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [m for m in path["models"] if m["model"] == name]
    return found


def check_models(path: dict[str, Any]) -> None:
    """Every model present, one credit and one share per touchpoint, credits summing to 1, cents to the revenue."""
    assert [m["model"] for m in path["models"]] == list(MODELS)
    for m in path["models"]:
        assert len(m["credits"]) == len(m["revenue_cents"]) == path["path_length"] == len(path["touchpoints"])
        if path["path_length"]:
            assert sum(m["credits"]) == pytest.approx(1.0)
            assert sum(m["revenue_cents"]) == path["revenue_cents"]


def only(items: Iterable[dict[str, Any]]) -> dict[str, Any]:
    (item,) = list(items)
    return item


# --- a single device --------------------------------------------------------------------------------------


def test_a_single_device_path_with_direct_and_campaign_visits() -> None:
    p = Pipeline()
    p.hits(
        hit("v1", T0, visit=1, campaign="EREC-1"),  # email, declared campaign
        hit("v1", T0 + 5 * MINUTE_MS, visit=1, campaign="EREC-1", n=1),  # same visit: no touchpoint
        hit("v1", T0 + DAY_MS, visit=2),  # direct
        hit("v1", T0 + DAY_MS + 10 * MINUTE_MS, visit=2, order=("O-1", 100.0)),
    )
    path = only(p.paths())
    assert path["conversion_id"] == "order:shop.example:O-1" and path["order_id"] == "O-1" and path["goal"] is None
    assert path["visitor_id"] == "v1" and path["customer_id"] is None
    assert channels(path) == ["email", "direct"]
    assert [t["direct"] for t in path["touchpoints"]] == [False, True]
    assert [t["campaign_key"] for t in path["touchpoints"]] == ["EREC-1", None]
    assert [t["kind"] for t in path["touchpoints"]] == ["visit", "visit"]
    assert path["path_length"] == 2 and path["revision"] == 0
    assert path["time_to_conversion_ms"] == DAY_MS + 10 * MINUTE_MS
    assert path["revenue_cents"] == 10_000
    check_models(path)
    assert model(path, "first_touch")["revenue_cents"] == [10_000, 0]
    assert model(path, "last_touch")["credits"] == [0.0, 1.0]
    assert model(path, "last_non_direct")["credits"] == [1.0, 0.0]  # the direct visit skipped
    assert model(path, "linear")["revenue_cents"] == [5_000, 5_000]
    assert p.crm() == {} and p.channels() == {}  # anonymous: no CRM row
    # the order's page reloaded: not a second conversion
    p.hits(hit("v1", T0 + DAY_MS + 11 * MINUTE_MS, visit=2, order=("O-1", 100.0), n=2))
    assert len(p.paths()) == 1


def test_post_view_exposures_are_touchpoints_and_identified_customers_get_crm_rows() -> None:
    p = Pipeline()
    p.hits(hit("v1", T0, visit=1, customer="c1", medium="cpc"))
    p.send((PV, postview("v1", T0 + HOUR_MS, T0 + 2 * HOUR_MS)), now=T0 + 2 * HOUR_MS)
    p.hits(hit("v1", T0 + 2 * HOUR_MS, visit=2, customer="c1"),
           hit("v1", T0 + 3 * HOUR_MS, visit=2, customer="c1", order=("O-9", 59.99)))  # fmt: skip
    path = only(p.paths())
    assert path["customer_id"] == "c1"
    assert channels(path) == ["cpc", "display (post-view)", "direct"]
    assert [t["kind"] for t in path["touchpoints"]] == ["visit", "postview", "visit"]
    assert path["touchpoints"][1]["campaign_key"] == "DISP-1" and path["touchpoints"][1]["at"] == T0 + HOUR_MS
    check_models(path)
    row = p.crm()["order:shop.example:O-9"]
    assert row is not None
    assert row["customer_id"] == "c1" and row["path_length"] == 3 and row["revenue"] == 59.99
    assert row["channels"] == "cpc > display (post-view) > direct"
    assert row["first_channel"] == "cpc" and row["last_channel"] == "direct" and row["revision"] == 0
    credits = json.loads(row["credits"])
    assert set(credits) == set(MODELS) and sum(credits["linear"]["revenue_cents"]) == 5_999
    summary = p.channels()["c1"]
    assert summary is not None
    assert summary["touchpoints"] == 3 and summary["first_channel"] == "cpc" and summary["last_channel"] == "direct"
    assert summary["channels"] == "direct, display (post-view), cpc"
    assert summary["last_conversion_id"] == "order:shop.example:O-9"
    assert summary["last_conversion_at"] == T0 + 3 * HOUR_MS


def test_touchpoints_older_than_the_lookback_are_dropped() -> None:
    p = Pipeline(PathsConfig(lookback_ms=30 * DAY_MS))
    p.hits(hit("v1", T0, visit=1, campaign="EREC-1"),
           hit("v1", T0 + 20 * DAY_MS, visit=2, medium="organic"),
           hit("v1", T0 + 31 * DAY_MS, visit=3, order=("O-1", 10.0)))  # fmt: skip
    path = only(p.paths())
    assert channels(path) == ["organic", "direct"]
    assert path["time_to_conversion_ms"] == 11 * DAY_MS


def test_goals_convert_once_per_visit_with_their_value() -> None:
    goals = parse_goals('[{"name": "signup", "page_pattern": "/welcome", "value": 5},'
                        ' {"name": "ident", "hit_type": "identify"}]')  # fmt: skip
    assert goals == (Goal("signup", page_pattern="/welcome", value=5.0), Goal("ident", hit_type="identify"))
    p = Pipeline(PathsConfig(goals=goals))
    p.hits(hit("v1", T0, visit=1, campaign="EREC-1"),
           hit("v1", T0 + MINUTE_MS, visit=1, url="https://shop.example/welcome"),
           hit("v1", T0 + 2 * MINUTE_MS, visit=1, url="https://shop.example/welcome?again", n=1))  # fmt: skip
    path = only(p.paths())
    assert path["goal"] == "signup" and path["order_id"] is None and path["currency"] is None
    assert path["conversion_id"] == f"goal:signup:e-v1-{T0 + MINUTE_MS}-0"
    assert path["revenue"] == 5.0 and path["revenue_cents"] == 500 and channels(path) == ["email"]
    check_models(path)
    p.hits(hit("v1", T0 + DAY_MS, visit=2, url="https://shop.example/welcome"))  # a new visit: again
    assert [x["goal"] for x in p.paths()] == ["signup", "signup"]
    assert channels(p.paths()[1]) == ["direct"]  # reset after the first one
    assert p.metric("passerelle_conversion_paths_conversions_total", kind="goal", outcome="converted") == 2


@pytest.mark.parametrize("reset", [True, False])
def test_the_path_resets_after_a_conversion_unless_configured_not_to(reset: bool) -> None:
    p = Pipeline(PathsConfig(reset_after_conversion=reset))
    p.hits(hit("v1", T0, visit=1, campaign="EREC-1"),
           hit("v1", T0 + MINUTE_MS, visit=1, order=("O-1", 10.0)),
           hit("v1", T0 + DAY_MS, visit=2, medium="organic"),
           hit("v1", T0 + DAY_MS + MINUTE_MS, visit=2, order=("O-2", 20.0)))  # fmt: skip
    first, second = p.paths()
    assert channels(first) == ["email"]
    assert channels(second) == (["organic"] if reset else ["email", "organic"])


# --- late and out of order ----------------------------------------------------------------------------------


def test_a_late_touchpoint_within_the_grace_period_re_emits_the_path_with_a_revision() -> None:
    p = Pipeline(PathsConfig(grace_ms=HOUR_MS))
    p.hits(hit("v1", T0, visit=1, customer="c1", campaign="EREC-1"),
           hit("v1", T0 + 10 * MINUTE_MS, visit=1, customer="c1", order=("O-1", 30.0)))  # fmt: skip
    # the post-view of the visit arrives after the order (the post-view processor lagged)
    p.send((PV, postview("v1", T0 - HOUR_MS, T0, customer="c1")), now=T0 + 20 * MINUTE_MS)
    first, revised = p.paths()
    assert first["revision"] == 0 and channels(first) == ["email"]
    assert revised["revision"] == 1 and channels(revised) == ["display (post-view)", "email"]
    assert revised["conversion_id"] == first["conversion_id"]
    check_models(revised)
    row = p.crm()["order:shop.example:O-1"]
    assert row is not None and row["revision"] == 1 and row["path_length"] == 2  # the CRM row overwritten
    assert p.metric("passerelle_conversion_paths_touchpoints_total", outcome="attached") == 1
    assert p.metric("passerelle_conversion_paths_published_total", revision="revised") == 1


def test_a_touchpoint_later_than_the_grace_period_is_counted_late_and_attached_to_nothing() -> None:
    p = Pipeline(PathsConfig(grace_ms=HOUR_MS))
    p.hits(hit("v1", T0, visit=1, campaign="EREC-1"),
           hit("v1", T0 + 10 * MINUTE_MS, visit=1, order=("O-1", 30.0)))  # fmt: skip
    p.send((PV, postview("v1", T0 - HOUR_MS, T0)), now=T0 + 3 * HOUR_MS)
    assert len(p.paths()) == 1
    assert p.metric("passerelle_conversion_paths_touchpoints_total", outcome="late") == 1
    p.hits(hit("v1", T0 + DAY_MS, visit=2, order=("O-2", 1.0)))  # nor to the next path (reset)
    assert channels(p.paths()[1]) == ["direct"]


def test_an_out_of_order_conversion_takes_only_the_touchpoints_before_it() -> None:
    p = Pipeline()
    p.hits(hit("v1", T0, visit=1, customer="c1", campaign="EREC-1"),
           hit("v1", T0 + DAY_MS, visit=2, customer="c1", medium="organic"))  # fmt: skip
    p.hits(hit("v1", T0 + HOUR_MS, visit=1, customer="c1", order=("O-1", 5.0)))  # placed before visit 2
    assert channels(only(p.paths())) == ["email"]


# --- identity and devices -----------------------------------------------------------------------------------


def test_a_path_spans_two_devices_and_the_anonymous_visits_before_login() -> None:
    laptop, phone = "v-laptop", "v-phone"
    assert partition(laptop) != partition(phone)  # the devices' states live on different partitions
    p = Pipeline()
    p.hits(hit(laptop, T0, visit=1, customer="c1", campaign="EREC-1"))  # identified on the laptop
    p.hits(hit(phone, T0 + DAY_MS, visit=1, medium="social"),  # anonymous on the phone
           hit(phone, T0 + 2 * DAY_MS, visit=2, medium="cpc"),
           hit(phone, T0 + 2 * DAY_MS + MINUTE_MS, visit=2, customer="c1"),  # login on the phone
           hit(phone, T0 + 2 * DAY_MS + 5 * MINUTE_MS, visit=2, customer="c1", order=("O-1", 80.0)))  # fmt: skip
    path = only(p.paths())
    assert path["customer_id"] == "c1" and path["visitor_id"] == phone
    assert channels(path) == ["email", "social", "cpc"]
    assert [t["visitor_id"] for t in path["touchpoints"]] == [laptop, phone, phone]
    assert path["revision"] == 0  # the anonymous visits were handed over before the order
    check_models(path)
    assert only(v for v in p.crm().values())["path_length"] == 3  # type: ignore[index]
    stored = {k for part in range(PARTITIONS) for k in p.driver.store(PERSONS, part)}
    assert stored == {"c1"}
    phone_state = p.driver.store(VISITORS, partition(phone))[phone]
    assert phone_state["person"] is None and phone_state["customer_id"] == "c1"


def test_crm_rows_only_for_identified_customers() -> None:
    p = Pipeline()
    p.hits(hit("anon", T0, visit=1, order=("O-1", 10.0)), hit("known", T0, visit=1, customer="c2", order=("O-2", 10.0)))
    assert {x["conversion_id"] for x in p.paths()} == {"order:shop.example:O-1", "order:shop.example:O-2"}
    assert set(p.crm()) == {"order:shop.example:O-2"} and set(p.channels()) == {"c2"}


# --- erasure ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["crm_tombstone", "privacy_request"])
def test_erasure_forgets_the_person_and_deletes_their_crm_rows(how: str) -> None:
    p = Pipeline()
    p.hits(hit("v1", T0, visit=1, customer="c1", campaign="EREC-1"),
           hit("v1", T0 + MINUTE_MS, visit=1, customer="c1", order=("O-1", 10.0)),
           hit("v1", T0 + DAY_MS, visit=2, customer="c1", order=("O-2", 10.0)),
           hit("v2", T0, visit=1, customer="c2", order=("O-3", 10.0)))  # fmt: skip
    assert set(p.crm()) == {"order:shop.example:O-1", "order:shop.example:O-2", "order:shop.example:O-3"}
    if how == "crm_tombstone":
        p.table("crm", "c1", None)
    else:
        p.table("privacy", "c1", erasure(customer="c1"))  # keyed by customer id
    assert p.crm() == {"order:shop.example:O-1": None, "order:shop.example:O-2": None,
                       "order:shop.example:O-3": p.crm()["order:shop.example:O-3"]}  # fmt: skip
    assert p.crm()["order:shop.example:O-3"] is not None
    assert p.channels()["c1"] is None and p.channels()["c2"] is not None
    assert all("c1" not in p.driver.store(PERSONS, part) for part in range(PARTITIONS))
    assert all("v1" not in p.driver.store(VISITORS, part) for part in range(PARTITIONS))
    assert p.metric("passerelle_conversion_paths_erasures_total") == 1
    before = len(p.out)
    p.hits(hit("v1", T0 + 2 * DAY_MS, visit=3, customer="c1", order=("O-4", 10.0)))  # a late hit of the person
    assert len(p.out) == before


def test_a_privacy_request_naming_a_visitor_forgets_their_anonymous_path() -> None:
    p = Pipeline()
    p.hits(hit("v1", T0, visit=1, campaign="EREC-1"))
    p.table("privacy", "v1", erasure(visitor="v1"))
    assert all("v1" not in p.driver.store(VISITORS, part) for part in range(PARTITIONS))
    p.hits(hit("v1", T0 + MINUTE_MS, visit=1, order=("O-1", 1.0)))
    assert p.paths() == []


def test_erasures_that_happened_while_a_partition_was_away_are_enforced_at_restore() -> None:
    p = Pipeline()
    p.hits(hit("v1", T0, visit=1, customer="c1", order=("O-1", 10.0)))
    part = partition("c1")
    p.driver.revoke(part)
    p.table("crm", "c1", None)
    step = p.driver.restore(part)
    assert {(o.topic, o.key, o.value) for o in step.outputs} == {(CRM_PATHS, "order:shop.example:O-1", None),
                                                                (CHANNELS, "c1", None)}  # fmt: skip


# --- state, timers, settings ----------------------------------------------------------------------------------


def test_the_sweep_forgets_old_touchpoints_but_keeps_a_customers_conversion_ids() -> None:
    config = PathsConfig(lookback_ms=2 * DAY_MS, grace_ms=HOUR_MS)
    p = Pipeline(config)
    p.hits(hit("anon", T0, visit=1), hit("v1", T0, visit=1, customer="c1", order=("O-1", 10.0)))
    p.driver.advance(T0 + 10 * DAY_MS)
    persons = {k: v for part in range(PARTITIONS) for k, v in p.driver.store(PERSONS, part).items()}
    assert list(persons) == ["c1"]
    assert persons["c1"]["touches"] == [] and persons["c1"]["crm"] == ["order:shop.example:O-1"]
    assert all(len(p.driver.store(VISITORS, part)) == 0 for part in range(PARTITIONS))


def test_state_survives_a_restore_from_the_changelogs() -> None:
    p = Pipeline()
    p.hits(hit("v1", T0, visit=1, customer="c1", campaign="EREC-1"), hit("v2", T0, visit=1, campaign="EREC-2"))
    for part in range(PARTITIONS):
        p.driver.revoke(part)
        p.driver.restore(part)
    p.hits(hit("v1", T0 + HOUR_MS, visit=1, customer="c1", order=("O-1", 1.0)),
           hit("v2", T0 + HOUR_MS, visit=1, order=("O-2", 1.0)))  # fmt: skip
    assert [channels(x) for x in p.paths()] == [["email"], ["email"]]


def test_settings_become_the_config_and_bad_goals_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PASSERELLE_PATHS_LOOKBACK_DAYS", "10")
    monkeypatch.setenv("PASSERELLE_PATHS_GOALS", '[{"name": "signup", "page_pattern": "/welcome"}]')
    monkeypatch.setenv("PASSERELLE_PATHS_POSITION_FIRST", "0.3")
    monkeypatch.setenv("PASSERELLE_PATHS_HALF_LIFE_DAYS", "2")
    monkeypatch.setenv("PASSERELLE_PATHS_RESET_AFTER_CONVERSION", "false")
    monkeypatch.setenv("PASSERELLE_PATHS_GRACE_MINUTES", "5")
    config = ConversionPathsSettings().to_config()
    assert config.lookback_ms == 10 * DAY_MS and config.goals == (Goal("signup", page_pattern="/welcome"),)
    assert config.model.position_first == 0.3 and config.model.half_life_ms == 2 * DAY_MS
    assert not config.reset_after_conversion and config.grace_ms == 5 * MINUTE_MS
    for bad in ('[{"name": "x"}]', "not json", '[{"name": "x", "hit_type": "order", "colour": 1}]'):
        monkeypatch.setenv("PASSERELLE_PATHS_GOALS", bad)
        with pytest.raises(ValueError, match="PASSERELLE_PATHS_GOALS"):
            ConversionPathsSettings()
    monkeypatch.setenv("PASSERELLE_PATHS_GOALS", "")
    monkeypatch.setenv("PASSERELLE_PATHS_POSITION_LAST", "0.8")
    with pytest.raises(ValueError, match="at most 1"):
        ConversionPathsSettings()


def test_the_command_builds_the_processor_on_the_catalogs_topics() -> None:
    from passerelle.commands import conversion_paths

    proc = conversion_paths.build(ConversionPathsSettings())
    assert isinstance(proc, ConversionPathsProcessor)
    assert list(proc.inputs) == [HITS, PV, EVENTS]
    assert set(proc.outputs) == {EVENTS, PATHS, CRM_PATHS, CHANNELS}
    topics = {t.name: t for t in CATALOG.topics}
    assert {topics[t].partitions for t in proc.inputs} == {6}  # co-partitioned, as the runtime requires
    assert topics[EVENTS].value_schema == "PathEvent"
    assert command.add_processor_parser is not None


def test_two_conversions_processed_out_of_order_each_get_the_touchpoints_before_them() -> None:
    p = Pipeline()
    p.hits(hit("v1", T0, visit=1, customer="c1", campaign="EREC-1"),
           hit("v1", T0 + DAY_MS, visit=2, customer="c1", medium="organic"),
           hit("v1", T0 + DAY_MS + MINUTE_MS, visit=2, customer="c1", order=("O-2", 5.0)))  # fmt: skip
    p.hits(hit("v1", T0 + HOUR_MS, visit=1, customer="c1", order=("O-1", 5.0)))  # placed first, read last
    late, early = p.paths()
    assert channels(late) == ["email", "organic"] and channels(early) == ["email"]


def test_a_privacy_request_naming_a_visitor_drops_their_touchpoints_from_the_customers_path() -> None:
    laptop, phone = "v-laptop", "v-phone"
    p = Pipeline()
    p.hits(hit(laptop, T0, visit=1, customer="c1", campaign="EREC-1"),
           hit(phone, T0 + HOUR_MS, visit=1, customer="c1", medium="social"))  # fmt: skip
    p.table("privacy", laptop, erasure(visitor=laptop))
    p.hits(hit(laptop, T0 + 2 * HOUR_MS, visit=2, customer="c1", medium="cpc"),  # ignored: the visitor is erased
           hit(phone, T0 + 3 * HOUR_MS, visit=1, customer="c1", order=("O-1", 10.0)))  # fmt: skip
    path = only(p.paths())
    assert [t["visitor_id"] for t in path["touchpoints"]] == [phone]
    # and at a restore, for a partition that was elsewhere when the request came
    p.hits(hit("v-tablet", T0 + 4 * HOUR_MS, visit=1, customer="c1", medium="organic"))
    p.driver.revoke(partition("c1"))
    p.table("privacy", "v-tablet", erasure(visitor="v-tablet"))
    p.driver.restore(partition("c1"))
    state = p.driver.store(PERSONS, partition("c1"))["c1"]
    assert {t["visitor_id"] for t in state["touches"]} == {phone}
