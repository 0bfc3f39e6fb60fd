"""Attribution models of conversion paths (issue 14): rule-based credits, revenue shares, Markov removal effects.

Every table below is computed by hand (the comments show how). Credits are multiples of 2**-53 (see
``models``), so a credit meant to be 1/3 is within 2**-52 of it: the tables compare with ``abs=1e-15``, and the
sums are asserted EXACTLY (``== 1.0``, in several orders of summation), which is the module's guarantee.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from fractions import Fraction
from unittest.mock import patch

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from passerelle.streams.conversion_paths import markov
from passerelle.streams.conversion_paths.markov import markov_credits, removal_effects
from passerelle.streams.conversion_paths.models import MODELS, ModelConfig, Touch, credits, revenue_shares

pytestmark = pytest.mark.unit

DAY = 86_400_000
CONV = 1_764_000_000_000  # conversion time (epoch ms)


def touch(channel: str, days_before: float, direct: bool | None = None) -> Touch:
    return Touch(channel, CONV - round(days_before * DAY), channel == "direct" if direct is None else direct)


def assert_exact_sum(values: Sequence[float]) -> None:
    assert sum(values) == 1.0
    assert sum(reversed(values)) == 1.0
    assert math.fsum(values) == 1.0
    assert all(v >= 0 and (v * 2**53).is_integer() for v in values)


def check(result: dict[str, list[float]], expected: dict[str, list[float]]) -> None:
    assert tuple(result) == MODELS
    for model in MODELS:
        assert result[model] == pytest.approx(expected[model], rel=0, abs=1e-15), model
        assert_exact_sum(result[model])


# --- the models, by hand ---------------------------------------------------------------------------------------


def test_no_touch_no_credit() -> None:
    assert credits([], CONV) == {}


def test_one_touch_gets_everything_under_every_model() -> None:
    result = credits([touch("email", 3)], CONV)
    assert result == {model: [1.0] for model in MODELS}


def test_two_touches() -> None:
    # cpc a half-life (7 days) before the conversion, then email at the conversion.
    # time decay: weights 2**-1 = 1/2 and 2**0 = 1, sum 3/2 -> 1/3, 2/3.
    # position based with 2 touches: 0.4 / 0.4 normalised -> 0.5 / 0.5.
    result = credits([touch("cpc", 7), touch("email", 0)], CONV)
    check(
        result,
        {
            "first_touch": [1, 0],
            "last_touch": [0, 1],
            "last_non_direct": [0, 1],
            "linear": [0.5, 0.5],
            "position_based": [0.5, 0.5],
            "time_decay": [1 / 3, 2 / 3],
        },
    )
    assert result["linear"] == [0.5, 0.5]  # dyadic: exact


def test_five_touches_mixing_direct_and_campaigns() -> None:
    # affiliate 28 d, direct 21 d, email 14 d, cpc 7 d, direct 0 d before the conversion.
    # last non-direct: the last direct touch is skipped -> cpc (index 3).
    # linear: 1/5 each. position based: 0.4 first, 0.4 last, (1 - 0.8) / 3 = 1/15 for each of the 3 middle ones.
    # time decay (half-life 7 d): weights 2**-4, 2**-3, 2**-2, 2**-1, 2**0 = (1, 2, 4, 8, 16) / 16, sum 31/16
    # -> 1/31, 2/31, 4/31, 8/31, 16/31.
    touches = [touch("affiliate", 28), touch("direct", 21), touch("email", 14), touch("cpc", 7), touch("direct", 0)]
    check(
        credits(touches, CONV),
        {
            "first_touch": [1, 0, 0, 0, 0],
            "last_touch": [0, 0, 0, 0, 1],
            "last_non_direct": [0, 0, 0, 1, 0],
            "linear": [0.2] * 5,
            "position_based": [0.4, 1 / 15, 1 / 15, 1 / 15, 0.4],
            "time_decay": [1 / 31, 2 / 31, 4 / 31, 8 / 31, 16 / 31],
        },
    )


def test_all_direct() -> None:
    # No non-direct touch: last non-direct falls back to the last touch (Google Analytics' rule).
    # time decay: 2**-2, 2**-1, 1 -> (1, 2, 4) / 7. position based: 0.4, 1 - 0.8 = 0.2, 0.4.
    touches = [touch("direct", 14), touch("direct", 7), touch("direct", 0)]
    check(
        credits(touches, CONV),
        {
            "first_touch": [1, 0, 0],
            "last_touch": [0, 0, 1],
            "last_non_direct": [0, 0, 1],
            "linear": [1 / 3] * 3,
            "position_based": [0.4, 0.2, 0.4],
            "time_decay": [1 / 7, 2 / 7, 4 / 7],
        },
    )


def test_post_view_in_the_middle() -> None:
    # social 14 d, a display impression (post-view, not direct) 7 d, a direct visit at the conversion:
    # last non-direct -> the post-view exposure.
    touches = [touch("social", 14), touch("display (post-view)", 7, direct=False), touch("direct", 0)]
    check(
        credits(touches, CONV),
        {
            "first_touch": [1, 0, 0],
            "last_touch": [0, 0, 1],
            "last_non_direct": [0, 1, 0],
            "linear": [1 / 3] * 3,
            "position_based": [0.4, 0.2, 0.4],
            "time_decay": [1 / 7, 2 / 7, 4 / 7],
        },
    )


def test_equal_timestamps_keep_their_order_and_get_equal_time_decay_weight() -> None:
    # email and cpc at the same instant 7 d before, then direct: not re-sorted, so email is the first touch and cpc
    # the last non-direct one; time decay: 1/2, 1/2, 1 -> 1/4, 1/4, 1/2 (the two equal ones get equal credit).
    touches = [touch("email", 7), touch("cpc", 7), touch("direct", 0)]
    expected: dict[str, list[float]] = {
        "first_touch": [1, 0, 0],
        "last_touch": [0, 0, 1],
        "last_non_direct": [0, 1, 0],
        "linear": [1 / 3] * 3,
        "position_based": [0.4, 0.2, 0.4],
        "time_decay": [0.25, 0.25, 0.5],
    }
    result = credits(touches, CONV)
    check(result, expected)
    assert result["time_decay"] == [0.25, 0.25, 0.5]
    # The same instant for all: time decay is linear; the order given decides first and last.
    same = [Touch("cpc", CONV - DAY, False), Touch("email", CONV - DAY, False)]
    result = credits(same, CONV)
    assert result["time_decay"] == [0.5, 0.5]
    assert result["first_touch"] == [1.0, 0.0]
    assert result["last_non_direct"] == [0.0, 1.0]
    assert credits(same[::-1], CONV)["first_touch"] == [1.0, 0.0]  # still the first given, now email


def test_a_touch_far_older_than_the_half_life_underflows_to_no_time_decay_credit() -> None:
    # 2**-1500 is below the smallest double: the old touch gets 0 under time decay, the rest is unaffected.
    # (Dropping touches older than the lookback window is the processor's job, not the models'.)
    touches = [touch("affiliate", 7 * 1500), touch("email", 0)]
    check(
        credits(touches, CONV),
        {
            "first_touch": [1, 0],
            "last_touch": [0, 1],
            "last_non_direct": [0, 1],
            "linear": [0.5, 0.5],
            "position_based": [0.5, 0.5],
            "time_decay": [0, 1],
        },
    )


def test_time_decay_depends_only_on_the_gaps_between_touches() -> None:
    touches = [touch("cpc", 9), touch("email", 2)]
    assert credits(touches, CONV)["time_decay"] == credits(touches, CONV + 30 * DAY)["time_decay"]
    # A touch stamped after the conversion (clock skew) does not overflow.
    late = [Touch("cpc", CONV, False), Touch("email", CONV + 10**15, False)]
    assert credits(late, CONV)["time_decay"] == [0.0, 1.0]


def test_configured_positions_and_half_life() -> None:
    # 30/10 with 2 touches: normalised -> 3/4, 1/4. Half-life 1 day, ages 1 d and 0: 1/2, 1 -> 1/3, 2/3.
    config = ModelConfig(position_first=0.3, position_last=0.1, half_life_ms=DAY)
    result = credits([touch("cpc", 1), touch("email", 0)], CONV, config)
    assert result["position_based"] == pytest.approx([0.75, 0.25], abs=1e-15)
    assert result["time_decay"] == pytest.approx([1 / 3, 2 / 3], abs=1e-15)
    # 25/25 with 4 touches: the middle two share 0.5 -> 0.25 each.
    config = ModelConfig(position_first=0.25, position_last=0.25)
    four = [touch("a", 3), touch("b", 2), touch("c", 1), touch("d", 0)]
    assert credits(four, CONV, config)["position_based"] == [0.25] * 4
    # 50/50 with 3 touches: the middle one gets nothing.
    config = ModelConfig(position_first=0.5, position_last=0.5)
    assert credits(four[:3], CONV, config)["position_based"] == [0.5, 0.0, 0.5]
    # 0/0: 2 touches share equally; with 3 the middle one takes it all.
    config = ModelConfig(position_first=0.0, position_last=0.0)
    assert credits(four[:2], CONV, config)["position_based"] == [0.5, 0.5]
    assert credits(four[:3], CONV, config)["position_based"] == [0.0, 1.0, 0.0]
    # position_last = 0: the remainder goes to the last touch WITH credit, never to a touch without.
    config = ModelConfig(position_first=0.3, position_last=0.0)
    positions = credits(four, CONV, config)["position_based"]
    assert positions[3] == 0.0
    assert positions == pytest.approx([0.3, 0.35, 0.35, 0.0], abs=1e-15)
    assert_exact_sum(positions)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"position_first": -0.1}, "position_first"),
        ({"position_first": math.nan}, "position_first"),
        ({"position_last": -1.0}, "position_last"),
        ({"position_last": math.inf}, "position_last"),
        ({"position_first": 0.6, "position_last": 0.5}, "position_first + position_last"),
        ({"half_life_ms": 0}, "half_life_ms"),
        ({"half_life_ms": -DAY}, "half_life_ms"),
    ],
)
def test_invalid_config_is_refused_naming_the_field(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ValueError, match=field.replace("+", r"\+")):
        ModelConfig(**kwargs)  # type: ignore[arg-type]


def test_the_defaults() -> None:
    config = ModelConfig()
    assert (config.position_first, config.position_last, config.half_life_ms) == (0.4, 0.4, 7 * DAY)
    ModelConfig(position_first=1.0, position_last=0.0)  # the bounds are allowed
    ModelConfig(position_first=0.7, position_last=0.3)


# --- revenue shares --------------------------------------------------------------------------------------------


def test_revenue_shares_by_hand() -> None:
    three = credits([touch("cpc", 2), touch("email", 1), touch("direct", 0)], CONV)
    # 100.00 linear over 3: 3333.33 -> 3333, 3333, and the remainder 10000 - 6666 = 3334 on the last touch.
    assert revenue_shares(three["linear"], 10_000) == [3333, 3333, 3334]
    # 9.99 position based 0.4/0.2/0.4: 399.6 -> 399, 199.8 -> 199, last 999 - 598 = 400 + 1 = 401.
    assert revenue_shares(three["position_based"], 999) == [399, 199, 401]
    # first touch: everything on the first; the touches without credit get nothing, not the remainder.
    assert revenue_shares(three["first_touch"], 1001) == [1001, 0, 0]
    # last non-direct = email: all of it there, nothing on the direct last touch.
    assert revenue_shares(three["last_non_direct"], 1001) == [0, 1001, 0]
    # 1 cent linear over 3: 0, 0, 1.
    assert revenue_shares(three["linear"], 1) == [0, 0, 1]


def test_revenue_shares_are_not_lost_to_the_credits_float_error() -> None:
    # 1/5 is stored as 0.19999999999999996: still 20 cents of 100 each, not 19, 19, 19, 19, 24.
    five = credits([touch("x", d) for d in (4, 3, 2, 1, 0)], CONV)
    assert five["linear"][0] < 0.2
    assert revenue_shares(five["linear"], 100) == [20] * 5
    # time decay 1/31, 2/31, 4/31, 8/31, 16/31 of 31.00.
    touches = [touch("affiliate", 28), touch("direct", 21), touch("email", 14), touch("cpc", 7), touch("direct", 0)]
    assert revenue_shares(credits(touches, CONV)["time_decay"], 3100) == [100, 200, 400, 800, 1600]


def test_revenue_shares_edge_cases() -> None:
    assert revenue_shares([1.0], 12_345) == [12_345]
    assert revenue_shares([0.5, 0.5], 0) == [0, 0]
    assert revenue_shares([1 / 3, 1 / 3, 1 / 3], -10_000) == [-3333, -3333, -3334]  # a refund: the mirror image
    assert revenue_shares([], 0) == []
    assert revenue_shares([2.0, 2.0], 3) == [1, 2]  # normalised by their sum
    # The snapping of near-whole cents can never push the others past the revenue: here (revenue 2**50, so a
    # product within 1 cent below a whole cent is snapped) the exact shares are 2**49 + 0.25, 2**49 - 0.5, 0.25;
    # snapping the first two would leave -1 for the last, so it falls back to rounding down: 2**49, 2**49 - 1, 1.
    assert revenue_shares([2**51 + 1, 2**51 - 2, 1], 2**50) == [2**49, 2**49 - 1, 1]
    with pytest.raises(ValueError):
        revenue_shares([], 100)
    with pytest.raises(ValueError):
        revenue_shares([0.0, 0.0], 100)
    with pytest.raises(ValueError):
        revenue_shares([1.5, -0.5], 100)
    with pytest.raises(ValueError):
        revenue_shares([math.nan, 1.0], 100)
    with pytest.raises(ValueError):
        revenue_shares([1.0], 10.5)  # type: ignore[arg-type]


# --- properties ------------------------------------------------------------------------------------------------

touches_st = st.lists(
    st.builds(
        Touch,
        channel=st.sampled_from(["email", "cpc", "affiliate", "social", "direct", "organic", "display (post-view)"]),
        at=st.integers(min_value=CONV - 400 * DAY, max_value=CONV),
        direct=st.booleans(),
    ),
    min_size=1,
    max_size=40,
).map(lambda ts: sorted(ts, key=lambda t: t.at))


@st.composite
def configs(draw: st.DrawFn) -> ModelConfig:
    first = draw(st.floats(min_value=0, max_value=1))
    last = draw(st.floats(min_value=0, max_value=1 - first))
    assume(first + last <= 1)
    half_life = draw(st.integers(min_value=1, max_value=365 * DAY))
    return ModelConfig(position_first=first, position_last=last, half_life_ms=half_life)


@settings(max_examples=300, deadline=None)
@given(touches=touches_st, config=configs())
def test_property_every_model_sums_to_exactly_one(touches: list[Touch], config: ModelConfig) -> None:
    # EXACT equality (== 1.0, in any order of summation), not a tolerance: the remainder rule guarantees it.
    result = credits(touches, CONV, config)
    assert tuple(result) == MODELS
    for model, values in result.items():
        assert len(values) == len(touches), model
        assert_exact_sum(values)
    assert result["first_touch"][0] == 1.0
    assert result["last_touch"][-1] == 1.0
    # Oldest first: time-decay credits never decrease; equal timestamps get equal credit (but for the remainder,
    # which only the last touch, the newest, gets).
    decay = result["time_decay"]
    assert decay == sorted(decay)
    for i in range(len(touches) - 2):
        if touches[i].at == touches[i + 1].at:
            assert decay[i] == decay[i + 1]


def reference_credits(touches: list[Touch], config: ModelConfig) -> dict[str, list[float]]:
    """The models' definition in exact rationals (``Fraction``), floored to 2**-53 with the remainder on the last
    credited touch: what the module's integer arithmetic must give, bit for bit."""
    n, newest = len(touches), max(t.at for t in touches)
    first, last = Fraction(config.position_first), Fraction(config.position_last)
    if n == 1:
        position = [Fraction(1)]
    elif n == 2:
        position = [first, last] if first + last > 0 else [Fraction(1), Fraction(1)]
    else:
        middle = max(Fraction(0), 1 - first - last) / (n - 2)
        position = [first] + [middle] * (n - 2) + [last]
    lnd = max((i for i, t in enumerate(touches) if not t.direct), default=n - 1)
    weights = {
        "first_touch": [Fraction(int(i == 0)) for i in range(n)],
        "last_touch": [Fraction(int(i == n - 1)) for i in range(n)],
        "last_non_direct": [Fraction(int(i == lnd)) for i in range(n)],
        "linear": [Fraction(1)] * n,
        "position_based": position,
        "time_decay": [Fraction(2.0 ** ((t.at - newest) / config.half_life_ms)) for t in touches],
    }
    out = {}
    for model, w in weights.items():
        total, units = sum(w), [math.floor(x * 2**53 / sum(w)) for x in w]
        at = max(i for i, x in enumerate(w) if x > 0)
        units[at] = 0
        units[at] = 2**53 - sum(units)
        out[model] = [u / 2**53 for u in units]
        assert total > 0
    return out


@settings(max_examples=300, deadline=None)
@given(touches=touches_st, config=configs())
def test_property_credits_equal_the_exact_rational_definition(touches: list[Touch], config: ModelConfig) -> None:
    assert credits(touches, CONV, config) == reference_credits(touches, config)


@settings(max_examples=300, deadline=None)
@given(touches=touches_st, config=configs(), revenue=st.integers(min_value=0, max_value=10**11))
def test_property_revenue_shares_sum_to_the_revenue(touches: list[Touch], config: ModelConfig, revenue: int) -> None:
    for model, values in credits(touches, CONV, config).items():
        shares = revenue_shares(values, revenue)
        assert sum(shares) == revenue, model
        assert all(s >= 0 for s in shares), model
        assert all(s == 0 for s, c in zip(shares, values, strict=True) if c == 0), model
        for share, credit in zip(shares, values, strict=True):  # within the remainder of the exact share
            assert abs(share - Fraction(credit) * revenue) <= len(values), model


@settings(max_examples=200, deadline=None)
@given(
    credit=st.lists(st.floats(min_value=0, max_value=1e6), min_size=1, max_size=30).filter(lambda c: sum(c) > 0),
    revenue=st.integers(min_value=-(10**12), max_value=10**12),
)
def test_property_revenue_shares_of_any_credits(credit: list[float], revenue: int) -> None:
    shares = revenue_shares(credit, revenue)
    assert sum(shares) == revenue
    assert all(s * revenue >= 0 for s in shares)  # same sign as the revenue


# --- Markov removal effect -------------------------------------------------------------------------------------


def test_markov_by_hand() -> None:
    # Paths: [A, B] converted, [A] not, [B] not.
    # Transition counts: start->A 2, start->B 1; A->B 1, A->null 1; B->conversion 1, B->null 1.
    # Transition matrix (rows sum to 1):
    #             A     B     conv  null
    #   start    2/3   1/3    0     0
    #   A         0    1/2    0    1/2
    #   B         0     0    1/2   1/2
    # Conversion probability from each state: x_B = 1/2; x_A = 1/2 * x_B = 1/4;
    # P = x_start = 2/3 * 1/4 + 1/3 * 1/2 = 1/6 + 1/6 = 1/3.
    # Without A (start->A goes to null): P_-A = 1/3 * x_B = 1/6 -> RE(A) = 1 - (1/6) / (1/3) = 1/2.
    # Without B (start->B and A->B go to null): nothing converts, P_-B = 0 -> RE(B) = 1 - 0 = 1.
    # Credits: RE normalised: A = (1/2) / (3/2) = 1/3, B = 1 / (3/2) = 2/3. One conversion -> 1/3 and 2/3 of it.
    paths = [(["A", "B"], True), (["A"], False), (["B"], False)]
    assert removal_effects(paths) == pytest.approx({"A": 0.5, "B": 1.0})
    assert markov_credits(paths, 1) == pytest.approx({"A": 1 / 3, "B": 2 / 3})
    assert markov_credits(iter(paths), 30) == pytest.approx({"A": 10.0, "B": 20.0})  # any iterable, read once


def test_markov_with_a_cycle_by_hand() -> None:
    # Paths: [A, B, A] converted, [B] not.
    # Counts: start->A 1, start->B 1; A->B 1, A->conversion 1; B->A 1, B->null 1.
    #             A     B     conv  null
    #   start    1/2   1/2    0     0
    #   A         0    1/2   1/2    0
    #   B        1/2    0     0    1/2
    # x_A = 1/2 + 1/2 x_B, x_B = 1/2 x_A -> x_A = 1/2 + 1/4 x_A -> x_A = 2/3, x_B = 1/3;
    # P = 1/2 * 2/3 + 1/2 * 1/3 = 1/2.
    # Without A: B->A goes to null, x_B = 0, P_-A = 0 -> RE(A) = 1.
    # Without B: A->B goes to null, x_A = 1/2, P_-B = 1/2 * 1/2 = 1/4 -> RE(B) = 1 - (1/4) / (1/2) = 1/2.
    # Credits: A = 1 / (3/2) = 2/3, B = (1/2) / (3/2) = 1/3.
    paths = [(["A", "B", "A"], True), (["B"], False)]
    assert removal_effects(paths) == pytest.approx({"A": 1.0, "B": 0.5})
    assert markov_credits(paths, 1) == pytest.approx({"A": 2 / 3, "B": 1 / 3})


def test_markov_channel_that_changes_nothing_gets_no_credit() -> None:
    # The first example plus [C] not converted: start->A 2/4, ->B 1/4, ->C 1/4; x_C = 0 (C->null).
    # P = 1/2 * 1/4 + 1/4 * 1/2 = 1/4; without C: still 1/4 -> RE(C) = 0.
    # Without A: 1/4 * 1/2 = 1/8 -> RE(A) = 1/2; without B: 0 -> RE(B) = 1. Credits 1/3, 2/3, 0.
    paths = [(["A", "B"], True), (["A"], False), (["B"], False), (["C"], False)]
    assert removal_effects(paths) == pytest.approx({"A": 0.5, "B": 1.0, "C": 0.0})
    assert markov_credits(paths, 3) == pytest.approx({"A": 1.0, "B": 2.0, "C": 0.0})


def test_markov_without_any_conversion_is_empty() -> None:
    assert removal_effects([]) == {}
    assert removal_effects([(["A", "B"], False), (["A"], False)]) == {}
    assert markov_credits([(["A"], False)], 10) == {}
    assert markov_credits([], 0) == {}


def test_markov_ignores_paths_without_a_channel() -> None:
    paths = [(["A", "B"], True), (["A"], False), (["B"], False)]
    assert removal_effects([*paths, ([], True), ([], False)]) == removal_effects(paths)


def test_markov_a_single_channel_gets_all_the_credit() -> None:
    assert removal_effects([(["email"], True), (["email", "email"], False)]) == {"email": 1.0}
    assert markov_credits([(["email"], True)], 4) == {"email": 4.0}


def test_markov_repeats_kept_or_collapsed_give_the_same_result() -> None:
    # A self-loop does not change where the chain is absorbed: keeping repeats (the module's choice) or
    # collapsing them gives the same removal effects.
    kept = [(["A", "A", "B"], True), (["A", "C", "C", "A"], False), (["B", "B"], False), (["C", "B"], True)]
    collapsed = [(["A", "B"], True), (["A", "C", "A"], False), (["B"], False), (["C", "B"], True)]
    assert removal_effects(kept) == pytest.approx(removal_effects(collapsed), rel=1e-12)


def test_markov_refuses_a_bad_total() -> None:
    for total in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="conversions_total"):
            markov_credits([(["A"], True)], total)


def _naive_removal_effects(paths: list[tuple[list[str], bool]]) -> dict[str, float]:
    """Independent check: remove each channel and iterate x = Q x + b to convergence (value iteration)."""
    counts: dict[str, dict[str, int]] = {}
    for channels, converted in paths:
        if not channels:
            continue
        states = ["(start)", *channels, "(conversion)" if converted else "(null)"]
        for s, t in itertools.pairwise(states):
            counts.setdefault(s, {}).setdefault(t, 0)
            counts[s][t] += 1

    def p_conversion(removed: str | None) -> float:
        x = dict.fromkeys(counts, 0.0)
        for _ in range(100_000):
            new = {}
            for s, out in counts.items():
                total = sum(out.values())
                new[s] = sum(
                    c / total * (1.0 if t == "(conversion)" else 0.0 if t in ("(null)", removed) else x[t])
                    for t, c in out.items()
                )
            if max(abs(new[s] - x[s]) for s in x) < 1e-15:
                return new["(start)"]
            x = new
        raise AssertionError("no convergence")

    if not counts:
        return {}
    p = p_conversion(None)
    if p == 0:
        return {}
    seen = {c for path, _ in paths for c in path}
    return {c: 1 - p_conversion(c) / p for c in seen}


paths_st = st.lists(
    st.tuples(st.lists(st.sampled_from("ABCDE"), max_size=5), st.booleans()),
    max_size=25,
)


@settings(max_examples=150, deadline=None)
@given(paths=paths_st)
def test_property_markov_matches_brute_force(paths: list[tuple[list[str], bool]]) -> None:
    effects = removal_effects(paths)
    expected = _naive_removal_effects(paths)
    assert effects.keys() == expected.keys()
    for channel, value in effects.items():
        assert value == pytest.approx(expected[channel], abs=1e-9), channel
        assert 0.0 <= value <= 1.0
    shares = markov_credits(paths, 1.0)
    if shares:
        assert math.fsum(shares.values()) == pytest.approx(1.0, abs=1e-12)
        assert all(v >= 0 for v in shares.values())


@settings(max_examples=100, deadline=None)
@given(paths=paths_st)
def test_property_float_and_exact_solves_agree(paths: list[tuple[list[str], bool]]) -> None:
    exact = removal_effects(paths)
    with patch.object(markov, "EXACT_CHANNELS", 0):  # force the floating-point solve
        floating = removal_effects(paths)
    assert floating == pytest.approx(exact, abs=1e-12)


def test_markov_many_channels_uses_floats_and_stays_consistent() -> None:
    # 60 channels in a ring (beyond EXACT_CHANNELS): each path walks a few steps; every 3rd converts.
    names = [f"c{i:02d}" for i in range(60)]
    paths = [([names[(i + k) % 60] for k in range(1 + i % 4)], i % 3 == 0) for i in range(600)]
    effects = removal_effects(paths)
    assert len(effects) == 60
    assert all(0.0 <= v <= 1.0 for v in effects.values())
    assert effects == pytest.approx(_naive_removal_effects(paths), abs=1e-9)
