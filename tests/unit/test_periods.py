"""The period resolver on fixed clocks: month ends, leap years, ISO weeks, DST days, time zones, errors."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from passerelle.connectors.data_query.periods import PeriodError, days, previous, resolve, utc_bounds
from passerelle.connectors.data_query.result import Period

pytestmark = pytest.mark.unit

PARIS = "Europe/Paris"
# Tuesday 1 December 2026, 10:00 UTC (11:00 in Paris).
NOW = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


def span(expression: str, now: datetime = NOW, timezone: str = PARIS) -> tuple[date, date]:
    period = resolve(expression, now, timezone)
    return period.start, period.end


def d(text: str) -> date:
    return date.fromisoformat(text)


@pytest.mark.parametrize(
    ("expression", "start", "end"),
    [
        ("2026-11-29", "2026-11-29", "2026-11-29"),
        ("2026-11-01,2026-11-30", "2026-11-01", "2026-11-30"),
        ("2026-11-01..2026-11-30", "2026-11-01", "2026-11-30"),
        (" 2026-11-01 , today ", "2026-11-01", "2026-12-01"),
        ("today", "2026-12-01", "2026-12-01"),
        ("yesterday", "2026-11-30", "2026-11-30"),
        ("last7", "2026-11-25", "2026-12-01"),  # Matomo: lastN includes today
        ("previous7", "2026-11-24", "2026-11-30"),  # Matomo: previousN ends yesterday
        ("last1", "2026-12-01", "2026-12-01"),
        ("previous30", "2026-11-01", "2026-11-30"),
        ("lastWeek", "2026-11-23", "2026-11-29"),  # Monday to Sunday
        ("lastmonth", "2026-11-01", "2026-11-30"),
        ("lastyear", "2025-01-01", "2025-12-31"),
        ("thisweek", "2026-11-30", "2026-12-01"),
        ("thismonth", "2026-12-01", "2026-12-01"),
        ("thisyear", "2026-01-01", "2026-12-01"),
        ("{R:{D:-1}}", "2026-11-30", "2026-11-30"),
        ("{R:{D:0}}", "2026-12-01", "2026-12-01"),
        ("{R:{D:{start:-7,end:-1}}}", "2026-11-24", "2026-11-30"),
        ("{R:{W:-1}}", "2026-11-23", "2026-11-29"),
        ("{R:{W:0}}", "2026-11-30", "2026-12-01"),  # the current week ends today
        ("{R:{M:-1}}", "2026-11-01", "2026-11-30"),
        ("{R:{M:{start:-12,end:-1}}}", "2025-12-01", "2026-11-30"),
        ("{R:{Q:-1}}", "2026-07-01", "2026-09-30"),
        ("{R:{Y:-1}}", "2025-01-01", "2025-12-31"),
        ('{"R":{"M":{"start":-2,"end":-1}}}', "2026-10-01", "2026-11-30"),  # real JSON
        ("{p1:{R:{D:-1}}}", "2026-11-30", "2026-11-30"),  # AT's period label
        ("{D:'2026-11-02'}", "2026-11-02", "2026-11-02"),
        ("{D:{start:'2026-11-02',end:'2026-11-08'}}", "2026-11-02", "2026-11-08"),
        ("{M:'2024-02'}", "2024-02-01", "2024-02-29"),
    ],
)
def test_expressions_on_a_fixed_now(expression: str, start: str, end: str) -> None:
    assert span(expression) == (d(start), d(end))


def test_resolved_period_keeps_the_expression_and_zone() -> None:
    period = resolve("  {R:{D:-1}} ", NOW, PARIS)
    assert period == Period(d("2026-11-30"), d("2026-11-30"), "{R:{D:-1}}", PARIS)


def test_month_ends_and_leap_years() -> None:
    jan31 = datetime(2026, 1, 31, 12, tzinfo=UTC)
    assert span("lastmonth", jan31) == (d("2025-12-01"), d("2025-12-31"))
    assert span("{R:{M:-1}}", datetime(2026, 3, 31, 12, tzinfo=UTC)) == (d("2026-02-01"), d("2026-02-28"))
    assert span("{R:{M:-1}}", datetime(2028, 3, 31, 12, tzinfo=UTC)) == (d("2028-02-01"), d("2028-02-29"))
    leap_day = datetime(2028, 2, 29, 12, tzinfo=UTC)
    assert span("yesterday", leap_day) == (d("2028-02-28"), d("2028-02-28"))
    assert span("last2", datetime(2028, 3, 1, 12, tzinfo=UTC)) == (d("2028-02-29"), d("2028-03-01"))
    assert span("{R:{Y:-1}}", leap_day) == (d("2027-01-01"), d("2027-12-31"))


def test_iso_weeks_across_year_boundaries() -> None:
    # Friday 1 January 2027 is in ISO week 53 of 2026 (Monday 28 December 2026).
    new_year = datetime(2027, 1, 1, 12, tzinfo=UTC)
    assert span("thisweek", new_year) == (d("2026-12-28"), d("2027-01-01"))
    assert span("lastweek", new_year) == (d("2026-12-21"), d("2026-12-27"))
    # Monday 4 January 2027 starts ISO week 1: the previous week is week 53 of 2026.
    week_one = datetime(2027, 1, 4, 12, tzinfo=UTC)
    start, end = span("{R:{W:-1}}", week_one)
    assert (start, end) == (d("2026-12-28"), d("2027-01-03"))
    assert start.isocalendar()[:2] == (2026, 53)


def test_local_today_depends_on_the_site_zone() -> None:
    late = datetime(2026, 11, 30, 22, 30, tzinfo=UTC)  # already 1 December 07:30 in Tokyo
    assert span("today", late, "Asia/Tokyo") == (d("2026-12-01"), d("2026-12-01"))
    assert span("today", late, "UTC") == (d("2026-11-30"), d("2026-11-30"))
    assert span("yesterday", late, "America/New_York") == (d("2026-11-29"), d("2026-11-29"))
    # a non-UTC "now" gives the same answer as the same instant in UTC
    assert span("today", late.astimezone(ZoneInfo("America/Los_Angeles")), "Asia/Tokyo") == (
        d("2026-12-01"),
        d("2026-12-01"),
    )


@pytest.mark.parametrize(
    ("timezone", "day", "hours"),
    [
        (PARIS, "2026-03-29", 23),  # spring forward
        (PARIS, "2026-10-25", 25),  # fall back
        (PARIS, "2026-11-29", 24),
        ("America/New_York", "2026-03-08", 23),
        ("America/New_York", "2026-11-01", 25),
    ],
)
def test_utc_bounds_of_dst_days(timezone: str, day: str, hours: int) -> None:
    lower, upper = utc_bounds(resolve(day, NOW, timezone))
    assert upper - lower == timedelta(hours=hours)
    assert lower.tzinfo is UTC
    assert lower.astimezone(ZoneInfo(timezone)).replace(tzinfo=None) == datetime.fromisoformat(day)


def test_utc_bounds_of_a_range_across_dst_and_of_a_late_evening() -> None:
    now = datetime(2026, 10, 25, 23, 30, tzinfo=UTC)  # 00:30 on 26 October in Paris
    period = resolve("yesterday", now, PARIS)
    assert (period.start, period.end) == (d("2026-10-25"), d("2026-10-25"))
    assert utc_bounds(period) == (datetime(2026, 10, 24, 22, tzinfo=UTC), datetime(2026, 10, 25, 23, tzinfo=UTC))
    march = resolve("2026-03-01..2026-03-31", NOW, PARIS)
    lower, upper = utc_bounds(march)
    assert (lower, upper) == (datetime(2026, 2, 28, 23, tzinfo=UTC), datetime(2026, 3, 31, 22, tzinfo=UTC))
    assert upper - lower == timedelta(days=31, hours=-1)


def test_utc_bounds_when_midnight_does_not_exist() -> None:
    # Chile springs forward at 00:00 (to 01:00) on Sunday 6 September 2026: the day starts at 01:00 local.
    lower, upper = utc_bounds(resolve("2026-09-06", NOW, "America/Santiago"))
    assert lower == datetime(2026, 9, 6, 4, tzinfo=UTC)
    assert upper - lower == timedelta(hours=23)


@pytest.mark.parametrize(
    ("expression", "previous_start", "previous_end"),
    [
        ("last7", "2026-11-18", "2026-11-24"),
        ("yesterday", "2026-11-29", "2026-11-29"),
        ("lastweek", "2026-11-16", "2026-11-22"),
        ("lastmonth", "2026-10-01", "2026-10-31"),  # November (30 days) → October (31 days)
        ("{R:{M:{start:-12,end:-1}}}", "2024-12-01", "2025-11-30"),
        ("lastyear", "2024-01-01", "2024-12-31"),
        ("thismonth", "2026-11-01", "2026-11-01"),  # month to date → the same days of the previous month
        ("{R:{Q:-1}}", "2026-04-01", "2026-06-30"),
    ],
)
def test_previous_period(expression: str, previous_start: str, previous_end: str) -> None:
    period = previous(resolve(expression, NOW, PARIS))
    assert (period.start, period.end) == (d(previous_start), d(previous_end))
    assert period.timezone == PARIS
    # the comparison's expression resolves to itself
    assert span(period.expression) == (period.start, period.end)


def test_previous_of_whole_months_across_leap_february() -> None:
    march = resolve("lastmonth", datetime(2028, 4, 15, tzinfo=UTC), PARIS)
    assert (previous(march).start, previous(march).end) == (d("2028-02-01"), d("2028-02-29"))
    month_to_date = resolve("thismonth", datetime(2026, 3, 31, 12, tzinfo=UTC), PARIS)
    assert (previous(month_to_date).start, previous(month_to_date).end) == (d("2026-02-01"), d("2026-02-28"))
    assert days(resolve("last30", NOW, PARIS)) == days(previous(resolve("last30", NOW, PARIS))) == 30


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("", "empty period"),
        ("2026-11-30,2026-11-01", "ends (2026-11-01) before it starts"),
        ("last0", "between 1 and 3660"),
        ("previous99999", "between 1 and 3660"),
        ("2000-01-01,2026-11-30", "at most 3660"),
        ("2026-02-30", "not a valid date"),
        ("next7", "unknown period 'next7'; accepted forms"),
        ("{R:{D:1}}", "in the future"),
        ("{R:{D:{start:-1,end:-3}}}", "end (-3) is before start (-1)"),
        ("{R:{H:-1}}", "unit 'H' is not supported"),
        ("{R:{D:'x'}}", "whole numbers"),
        ("{R:{D:-1}", "not a valid AT Internet period"),
        ("{R:{Y:-3000}}", "outside the calendar"),
        ("{R:{D:-1},M:-1}", "exactly one period"),
    ],
)
def test_errors_name_the_problem(expression: str, message: str) -> None:
    with pytest.raises(PeriodError, match=re.escape(message)):
        resolve(expression, NOW, PARIS)


def test_unknown_time_zone_is_named() -> None:
    with pytest.raises(PeriodError, match="unknown time zone 'Europe/Pariss'"):
        resolve("today", NOW, "Europe/Pariss")
    with pytest.raises(ValueError, match="aware"):
        resolve("today", datetime(2026, 12, 1), PARIS)
