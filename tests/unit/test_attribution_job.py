"""The Markov job's pure parts: journeys of a period, stitched and cut at orders; the period options; the record."""

from __future__ import annotations

import argparse

import pytest

from passerelle.commands.attribution import compute, period_of
from passerelle.errors import PasserelleError
from passerelle.schemas.models import MarkovAttribution
from passerelle.streams.conversion_paths.journeys import journeys
from tests.records import enriched_hit

pytestmark = pytest.mark.unit

T0 = 1_764_547_200_000  # 2025-12-01T00:00Z
H = 3_600_000


def visit(visitor: str, n: int, at: int, campaign: str | None = None, customer: str | None = None,
          order: tuple[str, float] | None = None) -> dict:  # fmt: skip
    return enriched_hit(visitor, at, event_id=f"{visitor}-{n}-{at}", visit=n, customer=customer, campaign=campaign,
                        order=order)  # fmt: skip


def test_two_devices_joined_by_the_login_and_cut_at_the_order() -> None:
    hits = [
        visit("phone", 1, T0, campaign="EREC-1"),  # anonymous on the phone, from a newsletter
        visit("laptop", 1, T0 + H),  # direct on the laptop, anonymous
        visit("laptop", 1, T0 + H + 60_000, customer="c1"),  # logs in on the laptop: same visit, no new touch
        visit("phone", 2, T0 + 2 * H, customer="c1"),  # direct again on the phone, logged in
        visit("phone", 2, T0 + 2 * H + 60_000, customer="c1", order=("o1", 50.0)),
        visit("phone", 2, T0 + 2 * H + 90_000, customer="c1", order=("o1", 50.0)),  # the same order again
        visit("phone", 3, T0 + 3 * H, customer="c1", campaign="EREC-2"),  # after the order: not converted yet
        visit("stranger", 1, T0, campaign="EREC-1"),  # another person, never orders
    ]
    assert journeys(hits) == [
        (["email", "direct", "direct"], True),
        (["email"], False),
        (["email"], False),
    ]


def test_post_view_exposures_are_touchpoints_at_their_impression_time() -> None:
    hits = [visit("v1", 1, T0 + H), visit("v1", 1, T0 + H + 1, order=("o9", 10.0))]
    exposure = {"impression_id": "i1", "visitor_id": "v1", "customer_id": None, "impression_time": T0}
    assert journeys(hits, [exposure, exposure], "display (post-view)") == [(["display (post-view)", "direct"], True)]
    assert journeys(hits, [exposure], "") == [(["direct"], True)]


def test_a_touch_and_an_order_at_the_same_millisecond_count_the_touch_first() -> None:
    hits = [visit("v1", 1, T0, campaign="EREC-1", order=("o1", 5.0))]
    assert journeys(hits) == [(["email"], True)]


def test_the_record_by_hand() -> None:
    # Transitions: start->email 2, start->direct 1; email->direct 1, email->null 1; direct->order 1, direct->null 1.
    # P(direct) = 1/2, P(email) = 1/2 * 1/2 = 1/4, P = 2/3 * 1/4 + 1/3 * 1/2 = 1/3.
    # Without email: P = 1/3 * 1/2 = 1/6, removal effect 1 - (1/6)/(1/3) = 1/2. Without direct: P = 0, effect 1.
    # Credits 1/2 : 1 normalised = 1/3 email, 2/3 direct; one order. The path with no channel is not counted.
    paths = [(["email", "direct"], True), (["email"], False), (["direct"], False), ([], True)]
    record = compute(paths, "p", T0, T0 + 24 * H, T0 + 25 * H)
    MarkovAttribution.model_validate(record)
    assert (record["journeys"], record["conversions"]) == (3, 1)
    assert [c["channel"] for c in record["channels"]] == ["direct", "email"]  # by decreasing credit
    by = {c["channel"]: c for c in record["channels"]}
    assert by["email"]["removal_effect"] == pytest.approx(0.5) and by["direct"]["removal_effect"] == pytest.approx(1)
    assert by["email"]["credit"] == pytest.approx(1 / 3) and by["direct"]["credit"] == pytest.approx(2 / 3)
    assert by["email"]["conversions"] == pytest.approx(1 / 3) and by["direct"]["conversions"] == pytest.approx(2 / 3)


def test_no_order_gives_an_empty_record() -> None:
    record = compute([(["email"], False)], "p", T0, T0 + H, T0 + H)
    assert record["channels"] == [] and record["conversions"] == 0 and record["journeys"] == 1


def args(**given: object) -> argparse.Namespace:
    return argparse.Namespace(**{"days": 30, "since": None, "until": None, "label": None, **given})


def test_periods() -> None:
    now = T0 + 10 * 24 * H
    assert period_of(args(), now) == ("last-30-days", now - 30 * 24 * H, now)
    assert period_of(args(since="2025-12-01", until="2025-12-02"), now) == (
        "2025-12-01..2025-12-02", T0, T0 + 24 * H)  # fmt: skip
    assert period_of(args(since="2025-12-01T01:00+01:00", label="nov"), now) == ("nov", T0, now)
    for bad, message in ((args(days=0), "--days"), (args(until="2025-12-02"), "needs --since"),
                         (args(since="yesterday"), "ISO 8601"),
                         (args(since="2025-12-02", until="2025-12-01"), "empty")):  # fmt: skip
        with pytest.raises(PasserelleError, match=message):
            period_of(bad, now)
