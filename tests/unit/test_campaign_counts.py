"""The live campaign counter: its rules alone, then the processor through the runtime's test driver.

The driver runs both halves as the runner would: hits on the partition of
their visitor, deltas fed back on the partition of their counter (the
runner reads them back from campaigns.live.deltas), wall-clock timers fired
as the clock moves, state rebuilt from the changelogs on restore.
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
from passerelle.schemas.models import CampaignCounts
from passerelle.settings import CampaignCountsSettings, load
from passerelle.streams.campaign_counts.processor import COUNTERS, VISITORS, CampaignCountsProcessor
from passerelle.streams.campaign_counts.rules import DAY_MS, HOUR_MS, MINUTE_MS, CampaignCounter, CampaignCountsConfig
from passerelle.streams.runtime import OutRecord
from passerelle.streams.runtime.testing import ProcessorDriver, Step
from passerelle.streams.runtime.timers import TIMER_STORE

pytestmark = pytest.mark.unit

DAY0 = 1_795_046_400_000  # 2026-11-19T00:00:00Z, a UTC midnight
T0 = DAY0 + 10 * HOUR_MS
PARTITIONS = 3
SCHEMA = fastavro.parse_schema(json.loads(load_catalog().schema_text("CampaignCounts")))
HITS, DELTAS, LIVE = "hits.enriched", "campaigns.live.deltas", "campaigns.live"


def declared(key: str) -> dict[str, str]:
    return {"key": key, "name": f"Campaign {key}", "partner": "mailer", "channel": "email"}


def hit(visitor: str, at: int, visit: int = 1, campaign: str | None = "EREC-1", type_: str = "page_view",
        order: tuple[str, float, str] | None = None) -> dict[str, Any]:  # fmt: skip
    """An ``EnrichedHit`` as fastavro decodes it; ``order`` = (order id, revenue, currency)."""
    return {
        "event_id": f"e-{visitor}-{at}", "site": "shop.example", "visitor_id": visitor, "customer_id": None,
        "event_time": at, "type": "order" if order else type_, "url": "https://shop.example/", "referrer": None,
        "page": None, "campaign_params": {}, "product": None,
        "order": {"order_id": order[0], "revenue": order[1], "currency": order[2], "lines": []} if order else None,
        "consent": {"analytics": True, "marketing": True}, "user_agent": None, "ip_truncated": None,
        "visit_id": f"{visitor}:{visit}", "visit_number": visit,
        "traffic_source": {"medium": "email", "source": "newsletter", "campaign": campaign, "term": None,
                           "content": None, "click_id": None, "network": None},
        "declared_campaign": declared(campaign) if campaign else None, "campaign_undeclared": False,
        "crm": None, "enriched_at": at,
    }  # fmt: skip


def wire(value: dict[str, Any]) -> dict[str, Any]:
    """A ``CampaignCounts`` written and read back as the runner would (timestamps come back as datetimes)."""
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, SCHEMA, value)
    buf.seek(0)
    decoded: Any = fastavro.schemaless_reader(buf, SCHEMA, None)
    CampaignCounts.from_avro(decoded)
    return decoded


def partition(key: str) -> int:
    """A stand-in for the producer's partitioner: stable per key."""
    return zlib.crc32(key.encode()) % PARTITIONS


class Pipeline:
    """The processor on the driver, with its deltas fed back as the runner reads them from the internal topic."""

    def __init__(self, config: CampaignCountsConfig | None = None, now: int = T0) -> None:
        self.config = config or CampaignCountsConfig()
        self.proc = CampaignCountsProcessor(config=self.config)
        self.driver = ProcessorDriver(self.proc, partitions=range(PARTITIONS), now=now)
        self.deltas: list[OutRecord] = []  # produced, not read back yet
        self.live: list[OutRecord] = []  # everything published to campaigns.live

    def _take(self, step: Step) -> list[OutRecord]:
        assert not step.dead_letters, step.dead_letters
        assert not step.given_up and not step.retried
        self.deltas += [o for o in step.outputs if o.topic == DELTAS]
        live = [o for o in step.outputs if o.topic == LIVE]
        for out in live:
            assert out.key == CampaignCounter(self.config).key(out.value["campaign_key"], out.value["window_start"])
            wire(out.value)
        self.live += live
        return live

    def send(self, *hits: dict[str, Any], now: int | None = None) -> list[OutRecord]:
        """One runner step with these hits (each on its visitor's partition), then one reading the deltas back."""
        records = [self.driver.record(HITS, h["visitor_id"], h, h["event_time"], partition(h["visitor_id"]))
                   for h in hits]  # fmt: skip
        out = self._take(self.driver.feed(*records, now=now))
        return out + self.read_deltas()

    def read_deltas(self) -> list[OutRecord]:
        """The step in which the runner reads back what the last ones produced to campaigns.live.deltas."""
        pending, self.deltas = self.deltas, []
        if not pending:
            return []
        records = [self.driver.record(DELTAS, d.key, wire(d.value), self.driver.now, partition(d.key))
                   for d in pending]  # fmt: skip
        return self._take(self.driver.feed(*records))

    def advance(self, now: int) -> list[OutRecord]:
        return self._take(self.driver.advance(now))

    def totals(self) -> dict[str, tuple[int, int, dict[str, float]]]:
        """The latest published record per key, as a compacted topic keeps it: (visits, orders, revenue)."""
        latest = {o.key: o.value for o in self.live}
        return {k: (v["visits"], v["orders"], v["revenue"]) for k, v in latest.items()}

    def counters(self) -> dict[str, Any]:
        return {k: v for p in range(PARTITIONS) for k, v in self.driver.store(COUNTERS, p).items()}

    def visitors(self) -> dict[str, Any]:
        return {k: v for p in range(PARTITIONS) for k, v in self.driver.store(VISITORS, p).items()}

    def metric(self, name: str, **labels: str) -> float | None:
        return self.driver.metric(name, **labels)


def values(outputs: Iterable[OutRecord]) -> list[tuple[str, int, int, bool]]:
    return [(o.key, o.value["visits"], o.value["orders"], o.value["final"]) for o in outputs]


# --- the rules alone -------------------------------------------------------------------------------------


def test_windows_are_utc_days_by_default_and_keys_name_campaign_and_window() -> None:
    rules = CampaignCounter()
    assert rules.window(T0) == (DAY0, DAY0 + DAY_MS)
    assert rules.window(DAY0) == (DAY0, DAY0 + DAY_MS)
    assert rules.window(DAY0 - 1) == (DAY0 - DAY_MS, DAY0)
    assert rules.key("EREC-1", DAY0) == "EREC-1@2026-11-19"
    hourly = CampaignCounter(CampaignCountsConfig(window_ms=HOUR_MS))
    assert hourly.window(T0 + 5 * MINUTE_MS) == (T0, T0 + HOUR_MS)
    assert hourly.key("EREC-1", T0) == "EREC-1@2026-11-19T10:00Z"
    weekly = CampaignCounter(CampaignCountsConfig(window_ms=7 * DAY_MS))
    assert weekly.key("X", weekly.window(DAY0 + 3 * DAY_MS)[0]) == "X@2026-11-19"


@pytest.mark.parametrize("bad", [dict(window_ms=7 * HOUR_MS), dict(window_ms=0), dict(grace_ms=-1),
                                 dict(emit_interval_ms=0), dict(visitor_ttl_ms=0)])  # fmt: skip
def test_config_refuses_windows_that_do_not_fit_the_day_and_non_positive_delays(bad: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        CampaignCountsConfig(**bad)


def test_a_visit_counts_on_its_first_hit_only_and_an_order_once_per_order_id() -> None:
    rules = CampaignCounter()
    first = rules.on_hit(None, hit("v1", T0), T0)
    assert first.delta is not None and (first.delta["visits"], first.delta["orders"]) == (1, 0)
    assert first.state == {"visit": 1, "orders": [], "seen": T0}
    again = rules.on_hit(first.state, hit("v1", T0 + MINUTE_MS), T0 + MINUTE_MS)
    assert again.delta is None and again.state is not None and again.state["seen"] == T0 + MINUTE_MS
    order = rules.on_hit(again.state, hit("v1", T0 + 2 * MINUTE_MS, order=("O-1", 99.9, "EUR")), T0)
    assert order.delta is not None and (order.delta["visits"], order.delta["orders"]) == (0, 1)
    assert order.delta["revenue"] == {"EUR": 99.9}
    reloaded = rules.on_hit(order.state, hit("v1", T0 + 3 * MINUTE_MS, order=("O-1", 99.9, "EUR")), T0)
    assert reloaded.delta is None  # the confirmation page again: not a second order
    both = rules.on_hit(reloaded.state, hit("v1", T0 + HOUR_MS, visit=2, order=("O-2", 5.0, "USD")), T0)
    assert both.delta is not None and (both.delta["visits"], both.delta["orders"], both.delta["revenue"]) == (
        1, 1, {"USD": 5.0},
    )  # fmt: skip
    assert both.state == {"visit": 2, "orders": ["O-1", "O-2"], "seen": T0}


def test_hits_without_a_declared_campaign_are_neither_counted_nor_remembered() -> None:
    step = CampaignCounter().on_hit(None, hit("v1", T0, campaign=None, order=("O-1", 10.0, "EUR")), T0)
    assert step.state is None and step.delta is None and not step.late


def test_a_hit_whose_window_is_closed_is_late_but_its_visit_is_remembered() -> None:
    rules = CampaignCounter(CampaignCountsConfig(grace_ms=HOUR_MS))
    now = DAY0 + DAY_MS + HOUR_MS  # yesterday closed just now
    late = rules.on_hit(None, hit("v1", DAY0 + 23 * HOUR_MS), now)
    assert late.late and late.delta is None and late.state is not None
    in_time = rules.on_hit(None, hit("v1", DAY0 + 23 * HOUR_MS), now - 1)
    assert not in_time.late and in_time.delta is not None


def test_counters_add_deltas_and_revenue_per_currency_without_float_noise() -> None:
    rules = CampaignCounter()
    deltas = [rules.on_hit(None, hit(f"v{i}", T0, order=(f"O{i}", amount, cur)), T0).delta
              for i, (amount, cur) in enumerate([(0.1, "EUR"), (0.2, "EUR"), (3.0, "USD")])]  # fmt: skip
    counter = None
    for delta in deltas:
        assert delta is not None
        counter = rules.add(counter, wire(dict(delta)))
    assert counter is not None
    assert (counter["visits"], counter["orders"], counter["revenue"]) == (3, 3, {"EUR": 0.3, "USD": 3.0})
    assert counter["pending"] and counter["window_start"] == DAY0
    published = rules.published(counter, T0 + 5, final=True)
    assert "pending" not in published and published["final"] and published["updated_at"] == T0 + 5


# --- the processor on the driver -------------------------------------------------------------------------


def test_visitors_of_every_partition_are_counted_in_one_counter_published_once_per_interval() -> None:
    p = Pipeline()
    visitors = [f"v{i}" for i in range(30)]
    assert len({partition(v) for v in visitors}) == PARTITIONS  # the campaign's visitors are on every partition
    hits = [hit(v, T0 + i) for i, v in enumerate(visitors)]
    hits += [hit(v, T0 + 100 + i) for i, v in enumerate(visitors)]  # their second hits: same visits
    hits += [hit("v0", T0 + 200, order=("O-1", 40.0, "EUR")), hit("v1", T0 + 201, order=("O-2", 2.5, "EUR"))]
    assert p.send(*hits) == []  # nothing published before the interval
    assert p.metric("passerelle_campaign_counts_visits_total") == 30
    assert p.metric("passerelle_campaign_counts_orders_total") == 2
    assert list(p.counters()) == ["EREC-1@2026-11-19"]  # one counter, on one partition
    assert p.advance(T0 + 999) == []
    out = p.advance(T0 + 1_000)
    assert values(out) == [("EREC-1@2026-11-19", 30, 2, False)]  # one record for 62 hits
    value = CampaignCounts.from_avro(out[0].value)
    assert (value.revenue, value.campaign_name, value.partner, value.channel) == (
        {"EUR": 42.5}, "Campaign EREC-1", "mailer", "email",
    )  # fmt: skip
    assert (value.window_start, value.window_end, value.updated_at) == (DAY0, DAY0 + DAY_MS, T0 + 1_000)
    assert p.advance(T0 + 10_000) == []  # unchanged: not published again
    assert p.metric("passerelle_campaign_counts_updates_total") == 1


def test_each_campaign_and_window_is_its_own_counter() -> None:
    p = Pipeline(now=DAY0 + DAY_MS + 10 * MINUTE_MS)  # just after midnight: yesterday is still open (grace)
    p.send(
        hit("a", DAY0 + DAY_MS - MINUTE_MS, campaign="EREC-1"),  # yesterday
        hit("b", DAY0 + DAY_MS + MINUTE_MS, campaign="EREC-1"),  # today
        hit("c", DAY0 + DAY_MS + MINUTE_MS, campaign="DISP-9"),
        hit("d", DAY0 + DAY_MS + 2 * MINUTE_MS, campaign="DISP-9"),
    )
    out = p.advance(p.driver.now + 1_000)
    assert sorted(values(out)) == [
        ("DISP-9@2026-11-20", 2, 0, False), ("EREC-1@2026-11-19", 1, 0, False), ("EREC-1@2026-11-20", 1, 0, False),
    ]  # fmt: skip


def test_a_visit_across_midnight_counts_once_in_the_day_it_started() -> None:
    p = Pipeline(now=DAY0 + DAY_MS - MINUTE_MS)
    p.send(hit("v1", DAY0 + DAY_MS - MINUTE_MS))
    p.send(hit("v1", DAY0 + DAY_MS + MINUTE_MS), now=DAY0 + DAY_MS + MINUTE_MS)
    p.advance(DAY0 + DAY_MS + 2 * MINUTE_MS)
    assert p.totals() == {"EREC-1@2026-11-19": (1, 0, {})}


def test_a_window_closes_after_the_grace_final_then_forgotten_and_late_deltas_are_dropped() -> None:
    p = Pipeline(CampaignCountsConfig(grace_ms=HOUR_MS))
    p.send(hit("v1", T0), hit("v2", T0, order=("O-1", 10.0, "EUR")))
    assert values(p.advance(T0 + 1_000)) == [("EREC-1@2026-11-19", 2, 1, False)]
    closes = DAY0 + DAY_MS + HOUR_MS
    # a hit counted just before the close, whose delta is read back only after it
    p._take(p.driver.send(HITS, "v3", hit("v3", DAY0 + DAY_MS - 1), DAY0, partition=partition("v3"), now=closes - 1))
    assert len(p.deltas) == 1
    out = p.advance(closes)
    assert values(out) == [("EREC-1@2026-11-19", 2, 1, True)]  # the final record
    assert p.counters() == {} and p.driver.changelog(COUNTERS, partition("EREC-1@2026-11-19")) == {}
    assert p.metric("passerelle_campaign_counts_closed_total") == 1
    assert p.read_deltas() == [] and p.counters() == {}  # never reopened: the final record stays the last
    assert p.metric("passerelle_campaign_counts_late_total", input="deltas") == 1
    p.send(hit("v4", DAY0 + DAY_MS - 2), now=closes + 2)  # a hit for the closed day: dropped at once
    assert p.metric("passerelle_campaign_counts_late_total", input="hits") == 1
    p.send(hit("v4", DAY0 + DAY_MS + 2 * HOUR_MS, visit=2), now=closes + 3)
    assert values(p.advance(closes + 2_000)) == [("EREC-1@2026-11-20", 1, 0, False)]  # today starts from zero


def test_idle_visitors_are_forgotten_and_the_sweep_stops_when_none_is_left() -> None:
    ttl = 2 * HOUR_MS
    p = Pipeline(CampaignCountsConfig(visitor_ttl_ms=ttl))
    p.send(hit("v1", T0), hit("v2", T0))
    p.send(hit("v2", T0 + HOUR_MS), now=T0 + HOUR_MS)
    p.advance(T0 + ttl)  # the sweep due since TTL/4 runs: v1 has been idle for the TTL
    assert list(p.visitors()) == ["v2"]
    p.advance(T0 + HOUR_MS + ttl + ttl // 4)
    assert p.visitors() == {}
    timers = [k for part in range(PARTITIONS) for k in p.driver.store(TIMER_STORE, part)]
    assert "wall|sweep" not in timers
    p.send(hit("v1", T0 + 5 * HOUR_MS), now=T0 + 5 * HOUR_MS)  # forgotten: the same visit counts again
    p.advance(T0 + 5 * HOUR_MS + 1_000)
    assert p.totals() == {"EREC-1@2026-11-19": (3, 0, {})}  # hence a TTL much longer than a visit


def test_counters_visitors_and_timers_survive_a_restore_from_the_changelogs() -> None:
    p = Pipeline()
    p.send(hit("v1", T0), hit("v2", T0, order=("O-1", 10.0, "EUR")))
    for part in range(PARTITIONS):  # every partition moves away, and comes back (as after a crash)
        p.driver.revoke(part)
        p.driver.restore(part)
    assert values(p.advance(T0 + 1_000)) == [("EREC-1@2026-11-19", 2, 1, False)]  # the pending flush fired
    p.send(hit("v1", T0 + MINUTE_MS), hit("v2", T0 + MINUTE_MS, order=("O-1", 10.0, "EUR")))
    p.send(hit("v3", T0 + MINUTE_MS))
    assert values(p.advance(T0 + 2_000)) == [("EREC-1@2026-11-19", 3, 1, False)]  # v1, v2 and O-1 not again


def test_a_hit_that_cannot_be_counted_is_a_dead_letter_and_changes_nothing() -> None:
    p = Pipeline()
    broken = hit("v1", T0)
    del broken["visit_number"]
    step = p.driver.send(HITS, "v1", broken, T0, partition=partition("v1"))
    assert [(r.key, stage) for r, _, stage in step.dead_letters] == [("v1", "process")]
    assert step.outputs == [] and p.visitors() == {}
    delta = p.proc.counter.on_hit(None, hit("v1", T0), T0).delta
    assert delta is not None
    keyless = p.driver.send(DELTAS, None, wire(dict(delta)), T0)
    assert [stage for _, _, stage in keyless.dead_letters] == ["process"] and p.counters() == {}


# --- settings and command ----------------------------------------------------------------------------------


def test_settings_count_in_milliseconds() -> None:
    config = CampaignCountsSettings(
        campaign_counts_window_minutes=60, campaign_counts_grace_minutes=5, campaign_counts_emit_seconds=0.5,
        campaign_counts_visitor_ttl_hours=2,
    ).to_config()  # fmt: skip
    assert config == CampaignCountsConfig(window_ms=HOUR_MS, grace_ms=5 * MINUTE_MS, emit_interval_ms=500,
                                          visitor_ttl_ms=2 * HOUR_MS)  # fmt: skip
    assert CampaignCountsSettings().to_config() == CampaignCountsConfig()


def test_a_window_that_does_not_fit_the_day_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PASSERELLE_CAMPAIGN_COUNTS_WINDOW_MINUTES", "7")
    with pytest.raises(Exception, match="WINDOW_MINUTES=7: must divide 1440") as err:
        load(CampaignCountsSettings)
    assert "\n" not in str(err.value)


def test_the_command_builds_the_counter_and_runs_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from passerelle.cli import build_parser

    seen: list[tuple[Any, ...]] = []
    monkeypatch.setattr(command, "run_processor", lambda *a: seen.append(a) or 0)
    monkeypatch.setenv("PASSERELLE_CAMPAIGN_COUNTS_EMIT_SECONDS", "5")
    args = build_parser().parse_args(["campaign-counts"])
    assert args.func(args) == 0
    [(settings, processor, app_id, what)] = seen
    assert isinstance(settings, CampaignCountsSettings) and isinstance(processor, CampaignCountsProcessor)
    assert processor.config.emit_interval_ms == 5_000
    assert (app_id, what) == ("passerelle-campaign-counts", "campaign counter")
    epilog = command.settings_epilog(CampaignCountsSettings, width=100)
    assert "PASSERELLE_CAMPAIGN_COUNTS_WINDOW_MINUTES (default: 1440)" in epilog


def test_runner_config_reads_both_inputs_and_writes_both_outputs_with_the_catalog_schemas() -> None:
    catalog = load_catalog()
    config = CampaignCountsSettings().runner_config("a", CampaignCountsProcessor(), catalog)
    counts = catalog.schema_text("CampaignCounts")
    assert dict(config.input_schemas) == {HITS: catalog.schema_text("EnrichedHit"), DELTAS: counts}
    assert dict(config.output_schemas) == {DELTAS: counts, LIVE: counts}
    deltas, hits = catalog.topic(DELTAS), catalog.topic(HITS)
    assert deltas.partitions == hits.partitions  # co-partitioned, or the runner refuses to start
    assert catalog.topic(LIVE).cleanup_policy == "compact"
