"""Post-view: the rules alone, then the processor through the runtime's test driver.

Tables are hand-computed: impressions at known offsets before (or after) a
visit or an order, what is credited, and to which impression. The driver
encodes every output with the ``PostView`` schema (``output_schemas``), as the
runner would, so a record the contract refuses fails the test.
"""

from __future__ import annotations

import zlib
from typing import Any

import pytest

from passerelle.commands import processor as command
from passerelle.schemas.catalog import load_catalog
from passerelle.schemas.models import PostView as PostViewModel
from passerelle.settings import PostViewSettings
from passerelle.streams.postview.processor import SWEEP, VISITORS, PostViewProcessor, PostViewTopics
from passerelle.streams.postview.rules import ALL, HOUR_MS, MINUTE_MS, PostView, PostViewConfig
from passerelle.streams.runtime import OutRecord
from passerelle.streams.runtime.testing import ProcessorDriver, Step
from tests.records import enriched_hit

pytestmark = pytest.mark.unit

T0 = 1_795_082_400_000  # 2026-11-19T10:00:00Z
PARTITIONS = 3
CATALOG = load_catalog()
IMPS, HITS, OUT = "ads.impressions", "hits.enriched", "ads.postview"
SITE = "shop.example"


# --- records as the inputs carry them ----------------------------------------------------------------------


def imp(visitor: str, at: int, campaign: str | None = "DISP-1", imp_id: str | None = None,
        site: str = SITE) -> dict[str, Any]:  # fmt: skip
    """An ``AdImpression``."""
    return {"impression_id": imp_id or f"i-{visitor}-{campaign}-{at}", "visitor_id": visitor, "site": site,
            "campaign_key": campaign, "creative": "300x250", "placement": "news-top", "ad_server": "ads.example",
            "event_time": at}  # fmt: skip


def hit(visitor: str, at: int, visit: int = 1, customer: str | None = None, order: tuple[str, float] | None = None,
        medium: str = "direct", campaign: str | None = None, site: str = SITE) -> dict[str, Any]:  # fmt: skip
    """An ``EnrichedHit``; ``order`` = (order id, revenue)."""
    return enriched_hit(visitor, at, event_id=f"e-{visitor}-{at}", visit=visit, customer=customer, order=order,
                        medium=medium, campaign=campaign, site=site, campaign_name=campaign,
                        channel=medium)  # fmt: skip


def erasure(customer: str | None = None, visitor: str | None = None, kind: str = "erasure") -> dict[str, Any]:
    return {"request_id": f"r-{customer}-{visitor}", "kind": kind, "customer_id": customer, "visitor_id": visitor,
            "marketing_consent": None, "requested_at": T0}  # fmt: skip


def partition(key: str) -> int:
    """A stand-in for the producer's partitioner: stable per key."""
    return zlib.crc32(key.encode()) % PARTITIONS


class Pipeline:
    """The processor on a driver: records on their visitor's partition, outputs encoded as the runner would."""

    def __init__(self, config: PostViewConfig | None = None, now: int = T0, privacy: bool = True) -> None:
        topics = PostViewTopics(privacy_requests="privacy.requests" if privacy else None)
        self.proc = PostViewProcessor(topics, config)
        self.driver = ProcessorDriver(self.proc, partitions=range(PARTITIONS), now=now,
                                      output_schemas={OUT: CATALOG.schema_text("PostView")})  # fmt: skip

    def _take(self, step: Step) -> list[dict[str, Any]]:
        assert not step.dead_letters, step.dead_letters
        assert not step.given_up and not step.retried
        for o in step.outputs:
            assert o.topic == OUT and o.key == o.value["visitor_id"]
            PostViewModel.from_avro(o.value)  # the contract's model accepts it
        return [o.value for o in step.outputs]

    def send(self, *records: tuple[str, dict[str, Any]], now: int | None = None) -> list[dict[str, Any]]:
        """One step with these (topic, value) records, each on its visitor's partition, in this order."""
        batch = [self.driver.record(t, v["visitor_id"], v, v["event_time"], partition(v["visitor_id"]))
                 for t, v in records]  # fmt: skip
        return self._take(self.driver.feed(*batch, now=now))

    def imp(self, *imps: dict[str, Any], now: int | None = None) -> list[dict[str, Any]]:
        return self.send(*((IMPS, i) for i in imps), now=now)

    def hit(self, *hits: dict[str, Any], now: int | None = None) -> list[dict[str, Any]]:
        return self.send(*((HITS, h) for h in hits), now=now)

    def advance(self, now: int) -> list[dict[str, Any]]:
        return self._take(self.driver.advance(now))

    def table(self, table: str, key: str, value: dict[str, Any] | None) -> list[dict[str, Any]]:
        return self._take(self.driver.table_update(table, key, value))

    def visitors(self) -> dict[str, Any]:
        return {k: v for p in range(PARTITIONS) for k, v in self.driver.store(VISITORS, p).items()}

    def changelog(self) -> dict[str, Any]:
        return {k: v for p in range(PARTITIONS) for k, v in self.driver.changelog(VISITORS, p).items()}

    def metric(self, name: str, **labels: str) -> float | None:
        return self.driver.metric(name, **labels)


def credits(out: list[dict[str, Any]]) -> list[tuple[str, str, str, int]]:
    """(postview id, campaign, impression id, impressions) of each post-view."""
    return [(pv["postview_id"], pv["campaign_key"], pv["impression_id"], pv["impressions"]) for pv in out]


# --- the rules alone -------------------------------------------------------------------------------------


WINDOW = 24 * HOUR_MS


@pytest.mark.parametrize(
    ("impression_at", "credited"),
    [
        (T0 - WINDOW, True),  # exactly the window before: just inside
        (T0 - WINDOW - 1, False),  # one millisecond more: just outside
        (T0 - 1, True),  # the millisecond before
        (T0, False),  # at the same millisecond: not before it
        (T0 + 1, False),  # after the visit started: never
    ],
)
def test_the_window_is_above_zero_and_at_most_the_window_before_the_visit(impression_at: int, credited: bool) -> None:
    rules = PostView()
    state = rules.on_impression(None, imp("v1", impression_at), T0).state
    step = rules.on_hit(state, hit("v1", T0), T0)
    assert [pv["delay_ms"] for pv in step.postviews] == ([T0 - impression_at] if credited else [])


def test_the_most_recent_impression_wins_or_one_per_campaign() -> None:
    imps = [
        imp("v1", T0 - 3 * HOUR_MS, "DISP-A", "a1"),
        imp("v1", T0 - 2 * HOUR_MS, "DISP-B", "b1"),
        imp("v1", T0 - HOUR_MS, "DISP-A", "a2"),
        imp("v1", T0 + HOUR_MS, "DISP-C", "c1"),  # after the visit
        imp("v1", T0 - 30 * MINUTE_MS, "DISP-D", "d1", site="other.example"),
    ]  # another advertiser's site
    want = {
        "last": [("visit:v1:1:DISP-A", "DISP-A", "a2", 2)],
        "all": [("visit:v1:1:DISP-A", "DISP-A", "a2", 2), ("visit:v1:1:DISP-B", "DISP-B", "b1", 1)],
    }
    for attribution, expected in want.items():
        rules = PostView(PostViewConfig(attribution=ALL if attribution == "all" else "last"))
        state = None
        for i in imps:
            state = rules.on_impression(state, i, T0).state
        assert credits(list(rules.on_hit(state, hit("v1", T0), T0).postviews)) == expected, attribution


def test_impressions_without_campaign_expired_or_duplicate_are_not_kept() -> None:
    rules = PostView(PostViewConfig(window_ms=HOUR_MS, grace_ms=10 * MINUTE_MS))
    assert rules.on_impression(None, imp("v1", T0, campaign=None), T0).outcome == "no_campaign"
    assert rules.on_impression(None, imp("v1", T0 - 70 * MINUTE_MS), T0).outcome == "expired"
    kept = rules.on_impression(None, imp("v1", T0 - 69 * MINUTE_MS, imp_id="x"), T0)
    assert kept.outcome == "kept" and kept.state is not None
    again = rules.on_impression(kept.state, imp("v1", T0 - 69 * MINUTE_MS, imp_id="x"), T0)
    assert again.outcome == "duplicate" and again.state is kept.state
    bounded = PostView(PostViewConfig(max_impressions=3))
    state = None
    for n in range(5):
        state = bounded.on_impression(state, imp("v1", T0 - 10 + n, imp_id=f"i{n}"), T0).state
    assert state is not None and [i[2] for i in state["imps"]] == ["i2", "i3", "i4"]  # the newest


# --- the processor ---------------------------------------------------------------------------------------


def test_a_visit_and_its_order_are_credited_once_whatever_the_visits_source() -> None:
    p = Pipeline()
    assert p.imp(imp("v1", T0 - 2 * HOUR_MS, "DISP-1", "i1")) == []
    [visit] = p.hit(hit("v1", T0, medium="email", campaign="EREC-7"), now=T0)
    assert visit == {
        "postview_id": "visit:v1:1:DISP-1", "kind": "visit", "visitor_id": "v1", "customer_id": None,
        "site": SITE, "campaign_key": "DISP-1", "impression_id": "i1", "impression_time": T0 - 2 * HOUR_MS,
        "impressions": 1, "event_id": f"e-v1-{T0}", "visit_id": "v1:1", "event_time": T0, "delay_ms": 2 * HOUR_MS,
        "visit_medium": "email", "visit_campaign": "EREC-7", "order_id": None, "revenue": None, "currency": None,
    }  # fmt: skip
    assert p.hit(hit("v1", T0 + 1), hit("v1", T0 + 2)) == []  # the same visit: credited once
    [order] = p.hit(hit("v1", T0 + 3, customer="c1", order=("O-1", 129.9)))
    assert (order["postview_id"], order["kind"], order["order_id"], order["revenue"], order["currency"],
            order["customer_id"], order["delay_ms"]) == (
        "order:shop.example:O-1:DISP-1", "order", "O-1", 129.9, "EUR", "c1", 2 * HOUR_MS + 3)  # fmt: skip
    assert p.hit(hit("v1", T0 + 4, customer="c1", order=("O-1", 129.9))) == []  # confirmation page reloaded
    [second] = p.hit(hit("v1", T0 + HOUR_MS, visit=2))  # a new visit: credited again, the customer kept
    assert (second["postview_id"], second["customer_id"]) == ("visit:v1:2:DISP-1", "c1")
    assert p.metric("passerelle_postview_emitted_total", kind="visit") == 2
    assert p.metric("passerelle_postview_emitted_total", kind="order") == 1


def test_an_impression_served_after_the_visit_counts_only_for_what_follows_it() -> None:
    p = Pipeline()
    p.imp(imp("v1", T0 + 10 * MINUTE_MS, "DISP-1", "after"))  # received first, but served after the visit start
    assert p.hit(hit("v1", T0)) == []
    [order] = p.hit(hit("v1", T0 + 20 * MINUTE_MS, order=("O-9", 10.0)))  # the order came after it
    assert credits([order]) == [("order:shop.example:O-9:DISP-1", "DISP-1", "after", 1)]


def test_a_late_impression_is_not_credited_to_the_visit_already_judged_but_to_the_next() -> None:
    p = Pipeline()
    assert p.hit(hit("v1", T0)) == []  # no impression yet
    p.imp(imp("v1", T0 - HOUR_MS, "DISP-1", "late"))  # served before the visit, received after it was processed
    assert p.metric("passerelle_postview_impressions_total", outcome="late") == 1
    assert p.hit(hit("v1", T0 + 1)) == []  # the visit is not judged again
    assert credits(p.hit(hit("v1", T0 + 2 * HOUR_MS, visit=2))) == [("visit:v1:2:DISP-1", "DISP-1", "late", 1)]


def test_an_impression_arriving_mid_visit_does_not_make_the_next_hit_a_visit_start() -> None:
    p = Pipeline()
    p.hit(hit("v1", T0))  # the visit is known although nothing is credited
    p.imp(imp("v1", T0 + 5 * MINUTE_MS))
    assert p.hit(hit("v1", T0 + 6 * MINUTE_MS)) == []


def test_several_campaigns_last_wins_or_one_record_each() -> None:
    for attribution, want in (
        ("last", [("visit:v1:1:DISP-B", "DISP-B", "b1", 1)]),
        ("all", [("visit:v1:1:DISP-A", "DISP-A", "a2", 2), ("visit:v1:1:DISP-B", "DISP-B", "b1", 1)]),
    ):
        p = Pipeline(PostViewConfig(attribution=ALL if attribution == "all" else "last"))
        p.imp(imp("v1", T0 - 5 * HOUR_MS, "DISP-A", "a1"), imp("v1", T0 - 4 * HOUR_MS, "DISP-A", "a2"),
              imp("v1", T0 - HOUR_MS, "DISP-B", "b1"))  # fmt: skip
        assert credits(p.hit(hit("v1", T0))) == want, attribution


def test_impressions_expire_after_the_window_and_the_grace_then_the_visitor_is_forgotten() -> None:
    config = PostViewConfig(window_ms=HOUR_MS, grace_ms=10 * MINUTE_MS, visitor_ttl_ms=30 * MINUTE_MS)
    assert config.sweep_interval_ms == 7 * MINUTE_MS + 30_000  # min(window, ttl) / 4
    p = Pipeline(config)
    p.imp(imp("v1", T0, "DISP-1", "i1"), imp("v2", T0 - 50 * MINUTE_MS, "DISP-1", "i2"))
    p.hit(hit("v3", T0))  # no impression: remembered for the TTL only
    p.advance(T0 + 22 * MINUTE_MS + 30_000)  # the sweep due at 7.5 min fires now: i2 expired at 20 min
    assert sorted(p.visitors()) == ["v1", "v2", "v3"] and p.visitors()["v2"]["imps"] == []
    p.advance(T0 + 37 * MINUTE_MS + 30_000)  # v2 and v3: no impression, no change for 30 min
    assert sorted(p.visitors()) == ["v1"] and sorted(p.changelog()) == ["v1"]
    assert credits(p.hit(hit("v1", T0 + HOUR_MS), now=T0 + 45 * MINUTE_MS)) == [
        ("visit:v1:1:DISP-1", "DISP-1", "i1", 1)]  # fmt: skip
    p.advance(T0 + 67 * MINUTE_MS + 30_000)  # i1 kept until 70 min
    assert [i[2] for i in p.visitors()["v1"]["imps"]] == ["i1"]
    p.advance(T0 + 75 * MINUTE_MS)  # i1 expired, and v1 unchanged since 45 min: forgotten
    assert p.visitors() == {} and p.changelog() == {}  # gone from the store and the changelog
    assert all(p.driver.context(part).timers.get(SWEEP, kind="wall") is None for part in range(PARTITIONS))
    assert p.metric("passerelle_postview_visitors_expired_total") == 3


def test_a_crm_tombstone_forgets_every_visitor_of_the_customer() -> None:
    p = Pipeline()
    p.imp(imp("v1", T0 - HOUR_MS), imp("v2", T0 - HOUR_MS), imp("v3", T0 - HOUR_MS))
    p.hit(hit("v1", T0 - 30 * MINUTE_MS, customer="c1"), hit("v2", T0 - 30 * MINUTE_MS, customer="c1"),
          hit("v3", T0 - 30 * MINUTE_MS, customer="c2"))  # fmt: skip
    assert p.table("crm", "c1", None) == []  # nothing to retract: post-views are a stream
    assert sorted(p.visitors()) == ["v3"] and sorted(p.changelog()) == ["v3"]
    assert p.metric("passerelle_postview_erasures_total") == 2
    p.imp(imp("v1", T0 - 10 * MINUTE_MS))  # the cookie's next impression: a pseudonymous visitor again
    assert p.hit(hit("v1", T0, visit=2, customer="c1")) == []  # a hit enriched before the erasure: ignored
    assert p.visitors()["v1"]["customer_id"] is None


def test_a_privacy_request_erases_a_customer_or_only_a_visitor() -> None:
    p = Pipeline()
    p.imp(imp("v1", T0 - HOUR_MS), imp("v2", T0 - HOUR_MS), imp("v3", T0 - HOUR_MS))
    p.hit(hit("v1", T0 - 30 * MINUTE_MS, customer="c1"), hit("v2", T0 - 30 * MINUTE_MS, customer="c1"))
    p.table("privacy", "c9", erasure("c9", kind="consent_change"))  # not an erasure
    p.table("privacy", "v3", erasure(visitor="v3"))
    assert sorted(p.visitors()) == ["v1", "v2"]
    p.table("privacy", "c1", erasure("c1"))
    assert p.visitors() == {} and p.changelog() == {}
    p.imp(imp("v3", T0 - 10 * MINUTE_MS))  # an impression of the erased visitor, arriving later: ignored
    assert p.visitors() == {}
    assert p.metric("passerelle_postview_impressions_total", outcome="erased") == 1
    assert p.hit(hit("v3", T0, visit=2)) == [] and p.visitors() == {}


def test_state_and_timers_survive_a_revoke_and_restore_and_erasures_meanwhile_apply() -> None:
    p = Pipeline()
    p.imp(imp("v1", T0 - HOUR_MS, "DISP-1", "i1"), imp("v2", T0 - HOUR_MS, "DISP-1", "i2"))
    p.hit(hit("v1", T0 - 2 * HOUR_MS, customer="c1"), hit("v2", T0 - 2 * HOUR_MS, customer="c2"))
    for part in range(PARTITIONS):
        p.driver.revoke(part)
    p.driver.table_update("crm", "c2", None)  # while nothing is held
    for part in range(PARTITIONS):
        p.driver.restore(part)
    assert sorted(p.visitors()) == ["v1"]  # c2's visitor erased at restore
    assert p.driver.context(partition("v1")).timers.get(SWEEP, kind="wall") is not None
    assert credits(p.hit(hit("v1", T0, visit=2, customer="c1"))) == [("visit:v1:2:DISP-1", "DISP-1", "i1", 1)]
    p.driver.revoke(partition("v1"))
    p.driver.restore(partition("v1"))
    assert p.hit(hit("v1", T0 + 1, visit=2, customer="c1")) == []  # the visit seen before the restore


def test_a_broken_record_is_a_dead_letter_and_leaves_no_state() -> None:
    p = Pipeline()
    broken = hit("v1", T0)
    del broken["visit_number"]
    step = p.driver.feed(p.driver.record(HITS, "v1", broken, T0, partition("v1")))
    assert len(step.dead_letters) == 1 and p.visitors() == {}


# --- settings, command, catalog --------------------------------------------------------------------------


def test_settings_count_in_milliseconds_and_refuse_an_unknown_attribution() -> None:
    config = PostViewSettings(postview_window_hours=2, postview_attribution="all", postview_grace_minutes=5,
                              postview_visitor_ttl_hours=1.5).to_config()  # fmt: skip
    assert config == PostViewConfig(window_ms=2 * HOUR_MS, attribution="all", grace_ms=5 * MINUTE_MS,
                                    visitor_ttl_ms=90 * MINUTE_MS)  # fmt: skip
    assert PostViewSettings().to_config() == PostViewConfig()
    with pytest.raises(ValueError):
        PostViewSettings(postview_attribution="first")


def test_the_command_builds_the_processor_and_runs_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from passerelle.cli import build_parser

    seen: list[tuple[Any, ...]] = []
    monkeypatch.setattr(command, "run_processor", lambda *args: seen.append(args) or 0)
    monkeypatch.setenv("PASSERELLE_POSTVIEW_ATTRIBUTION", "all")
    args = build_parser().parse_args(["postview"])
    assert args.func(args) == 0
    [(settings, proc, app_id, _)] = seen
    assert isinstance(settings, PostViewSettings) and isinstance(proc, PostViewProcessor)
    assert proc.config.attribution == "all" and app_id == "passerelle-postview"
    assert "PASSERELLE_POSTVIEW_WINDOW_HOURS (default: 24" in command.settings_epilog(PostViewSettings, 100)


def test_the_runner_takes_its_schemas_from_the_catalog_and_the_inputs_are_co_partitioned() -> None:
    proc = PostViewProcessor()
    config = PostViewSettings().runner_config("passerelle-postview", proc, CATALOG)
    assert config.input_schemas == {IMPS: CATALOG.schema_text("AdImpression"), HITS: CATALOG.schema_text("EnrichedHit")}
    assert config.output_schemas == {OUT: CATALOG.schema_text("PostView")}
    assert config.exactly_once
    assert {CATALOG.topic(t).partitions for t in (IMPS, HITS)} == {6}
    assert [t.topic for t in proc.tables] == ["crm.profiles", "privacy.requests"]
    assert isinstance(OutRecord(OUT, "v1", {}), OutRecord)
