"""Turn a period expression into local days of a site, and compute the comparison period.

A report template keeps its period *relative* (``last7``, ``{R:{D:-1}}``) so
a refreshable URL (an Excel web query, a dashboard) brings new days each time it
is called; this module resolves the expression against "now" in the site's time
zone. Three families are accepted, case-insensitively:

* absolute days: ``2026-11-29``, ``2026-11-01,2026-11-30``, ``2026-11-01..2026-11-30``
  (either end of a range may also be ``today`` or ``yesterday``, as Matomo allows);
* Matomo keywords: ``today``, ``yesterday``, ``lastN`` (the N days ending today,
  today included, as Matomo's ``period=range&date=lastN``), ``previousN`` (the N
  days before today), ``lastweek``/``lastmonth``/``lastyear`` (the previous whole
  ISO week Monday-Sunday, calendar month, calendar year), ``thisweek``/``thismonth``/
  ``thisyear`` (from the start of the current one to today);
* AT Internet relative periods ``{R:{<unit>:<offset>}}`` and
  ``{R:{<unit>:{start:<offset>,end:<offset>}}}`` with the units D(ay), W(eek, ISO),
  M(onth), Q(uarter), Y(ear): ``{R:{D:-1}}`` is yesterday, ``{R:{W:-1}}`` the previous
  ISO week, ``{R:{M:{start:-12,end:-1}}}`` the 12 previous whole months. Offset 0
  (the current day/week/…) ends today: days after today have no data and a
  comparison with a "to date" period must compare like with like. AT's fixed forms
  ``{D:'2026-11-29'}``, ``{D:{start:'…',end:'…'}}``, ``{M:'2026-02'}``, ``{Y:'2026'}``
  and a ``p1:`` wrapper are accepted too. Keys may be unquoted and strings single-
  or double-quoted (AT writes ``{R:{D:-1}}``; real JSON ``{"R":{"D":-1}}`` works too).

AT resolves relative periods against "the last minute of available data"; we
resolve them against ``now`` (the caller passes the clock), which is the same for
a live pipeline and makes results reproducible in tests.

The period is a pair of local *dates*; :func:`utc_bounds` gives the UTC instants a
database filter needs (a local day across a daylight-saving change lasts 23 or 25
hours, so never add 24 h to a UTC instant to get the next day).
"""

from __future__ import annotations

import calendar
import json
import re
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from passerelle.connectors.data_query.result import Period

MAX_DAYS = 3660
"""The longest period accepted (about ten years): longer is a typo or a runaway query."""

ACCEPTED_FORMS = (
    "accepted forms: YYYY-MM-DD, YYYY-MM-DD,YYYY-MM-DD, YYYY-MM-DD..YYYY-MM-DD, today, yesterday, lastN, previousN, "
    "lastweek, lastmonth, lastyear, thisweek, thismonth, thisyear, {R:{D:-1}}, {R:{W:-1}}, {R:{M:-1}}, {R:{Q:-1}}, "
    "{R:{Y:-1}}, {R:{M:{start:-12,end:-1}}}"
)


class PeriodError(ValueError):
    """A period expression, range or time zone the user must correct (answered as HTTP 400)."""


def resolve(expression: str, now: datetime, timezone: str) -> Period:
    """The local days ``expression`` designates when it is ``now`` (an aware datetime) in ``timezone``."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be an aware datetime (a naive one has no meaning across time zones)")
    today = now.astimezone(_zone(timezone)).date()
    text = expression.strip()
    if not text:
        raise PeriodError(f"empty period; {ACCEPTED_FORMS}")
    if text.startswith("{"):
        start, end = _at_internet(text, today)
    else:
        start, end = _matomo_or_absolute(text, today)
    _check_range(start, end, text)
    return Period(start=start, end=end, expression=text, timezone=timezone)


def previous(period: Period) -> Period:
    """The comparison period just before ``period``.

    * Whole calendar months (``lastmonth``, ``{R:{M:{start:-12,end:-1}}}``, ``lastyear``)
      compare with the same number of whole months before: March 2026 → February
      2026 (28 days, not the 31 days before March).
    * A month to date (``thismonth``: the 1st to today, within one month) compares
      with the same days of the previous month, clipped to its end (March 1-31 when
      today is 31 → February 1-28).
    * Anything else compares with the same number of days ending the day before
      (``last7`` → the 7 days before; ISO weeks land on the previous ISO week).

    The expression of the result is its absolute range, so it can be resolved again.
    """
    start, end = period.start, period.end
    if start.day == 1 and _is_month_end(end):
        months = (end.year - start.year) * 12 + end.month - start.month + 1
        new_start = _add_months(start, -months)
        new_end = start - timedelta(days=1)
    elif start.day == 1 and (start.year, start.month) == (end.year, end.month):
        new_start = _add_months(start, -1)
        last = calendar.monthrange(new_start.year, new_start.month)[1]
        new_end = new_start.replace(day=min(end.day, last))
    else:
        length = (end - start).days + 1
        new_end = start - timedelta(days=1)
        new_start = new_end - timedelta(days=length - 1)
    return Period(
        start=new_start,
        end=new_end,
        expression=f"{new_start.isoformat()},{new_end.isoformat()}",
        timezone=period.timezone,
    )


def utc_bounds(period: Period) -> tuple[datetime, datetime]:
    """The UTC instants of the local start of ``period.start`` and of the day after ``period.end``.

    Half-open ``[start, end)`` bounds for a ``timestamp`` filter; a day that
    changes daylight-saving time lasts 23 or 25 hours. A local midnight skipped
    by a change (zones that switch at 00:00) maps to the first instant of the day.
    """
    zone = _zone(period.timezone)
    lower = datetime.combine(period.start, time(0), tzinfo=zone).astimezone(UTC)
    upper = datetime.combine(period.end + timedelta(days=1), time(0), tzinfo=zone).astimezone(UTC)
    return lower, upper


def days(period: Period) -> int:
    """How many local days ``period`` covers, both ends included."""
    return (period.end - period.start).days + 1


# --- time zone and checks --------------------------------------------------------------------------------------


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise PeriodError(f"unknown time zone {name!r}: expected an IANA name such as Europe/Paris or UTC") from exc


def _check_range(start: date, end: date, text: str) -> None:
    if end < start:
        raise PeriodError(f"period {text!r} ends ({end}) before it starts ({start})")
    length = (end - start).days + 1
    if length > MAX_DAYS:
        raise PeriodError(f"period {text!r} covers {length} days; at most {MAX_DAYS} are accepted")


# --- Matomo keywords and absolute dates ------------------------------------------------------------------------

_DATE = r"\d{4}-\d{2}-\d{2}"
_RANGE = re.compile(rf"^\s*({_DATE}|today|yesterday)\s*(?:,|\.\.)\s*({_DATE}|today|yesterday)\s*$")
_LAST = re.compile(r"^(last|previous)(\d+)$")


def _matomo_or_absolute(text: str, today: date) -> tuple[date, date]:
    word = text.lower().replace("_", "")
    if re.fullmatch(_DATE, word):
        day = _parse_date(word, text)
        return day, day
    match = _RANGE.match(word)
    if match:
        return _endpoint(match.group(1), today, text), _endpoint(match.group(2), today, text)
    match = _LAST.match(word)
    if match:
        count = int(match.group(2))
        if count <= 0 or count > MAX_DAYS:
            raise PeriodError(f"period {text!r}: the number of days must be between 1 and {MAX_DAYS}")
        if match.group(1) == "last":
            return today - timedelta(days=count - 1), today
        return today - timedelta(days=count), today - timedelta(days=1)
    if word in ("today", "yesterday"):
        day = _endpoint(word, today, text)
        return day, day
    if word == "lastweek":
        return _week(today, -1)
    if word == "thisweek":
        return _week(today, 0)[0], today
    if word == "lastmonth":
        return _months(today, -1, -1)
    if word == "thismonth":
        return today.replace(day=1), today
    if word == "lastyear":
        return date(today.year - 1, 1, 1), date(today.year - 1, 12, 31)
    if word == "thisyear":
        return date(today.year, 1, 1), today
    raise PeriodError(f"unknown period {text!r}; {ACCEPTED_FORMS}")


def _endpoint(word: str, today: date, text: str) -> date:
    if word == "today":
        return today
    if word == "yesterday":
        return today - timedelta(days=1)
    return _parse_date(word, text)


def _parse_date(value: str, text: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise PeriodError(f"period {text!r}: {value!r} is not a valid date (YYYY-MM-DD)") from exc


# --- AT Internet -----------------------------------------------------------------------------------------------

_KEY = re.compile(r"([{,]\s*)([A-Za-z_][A-Za-z0-9_]*)\s*:")
_BARE_DATE = re.compile(r"(:\s*)(\d{4}(?:-\d{2}){0,2})(?=\s*[,}])")
_UNITS = {"D": "day", "W": "week", "M": "month", "Q": "quarter", "Y": "year"}


def _at_internet(text: str, today: date) -> tuple[date, date]:
    tree = _parse_at(text)
    if len(tree) == 1:
        ((key, value),) = tree.items()
        if re.fullmatch(r"p\d", key, flags=re.IGNORECASE) and isinstance(value, dict):
            tree = value  # {p1:{R:{D:-1}}}: the period label, as AT names the main period
    if len(tree) != 1:
        raise PeriodError(f"period {text!r}: expected exactly one period (such as {{R:{{D:-1}}}}); {ACCEPTED_FORMS}")
    ((key, value),) = tree.items()
    if key.upper() == "R":
        if not isinstance(value, dict) or len(value) != 1:
            raise PeriodError(
                f"period {text!r}: R needs one unit, as in {{R:{{D:-1}}}} or {{R:{{M:{{start:-12,end:-1}}}}}}"
            )
        ((unit, offsets),) = value.items()
        try:
            return _relative(unit.upper(), offsets, today, text)
        except PeriodError:
            raise
        except (ValueError, OverflowError) as exc:  # a date before year 1: the offset is absurd
            raise PeriodError(f"period {text!r} reaches outside the calendar ({exc})") from exc
    return _fixed(key.upper(), value, text)


def _parse_at(text: str) -> dict[str, Any]:
    """AT's lenient notation as JSON: quote bare keys and bare dates, turn single quotes into double ones."""
    candidate = text.replace("'", '"')
    candidate = _KEY.sub(lambda m: f'{m.group(1)}"{m.group(2)}":', candidate)
    candidate = _BARE_DATE.sub(lambda m: f'{m.group(1)}"{m.group(2)}"', candidate)
    try:
        tree = json.loads(candidate)
    except json.JSONDecodeError as exc:
        raise PeriodError(f"period {text!r} is not a valid AT Internet period ({exc.msg}); {ACCEPTED_FORMS}") from exc
    if not isinstance(tree, dict):
        raise PeriodError(f"period {text!r}: expected an object such as {{R:{{D:-1}}}}")
    return tree


def _offset(value: Any, text: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PeriodError(f"period {text!r}: offsets must be whole numbers such as -1 or 0, got {value!r}")
    if value > 0:
        raise PeriodError(f"period {text!r}: offset {value} is in the future; use 0 (current) or a negative number")
    if value < -MAX_DAYS:
        raise PeriodError(f"period {text!r}: offset {value} is too far back (at most {MAX_DAYS})")
    return value


def _relative(unit: str, offsets: Any, today: date, text: str) -> tuple[date, date]:
    if unit not in _UNITS:
        raise PeriodError(
            f"period {text!r}: unit {unit!r} is not supported (periods are whole days); use one of D, W, M, Q, Y"
        )
    if isinstance(offsets, dict):
        if set(offsets) != {"start", "end"}:
            raise PeriodError(f"period {text!r}: a relative range needs exactly start and end, as {{start:-12,end:-1}}")
        first, last = _offset(offsets["start"], text), _offset(offsets["end"], text)
        if last < first:
            raise PeriodError(f"period {text!r}: end ({last}) is before start ({first})")
    else:
        first = last = _offset(offsets, text)
    if unit == "D":
        return today + timedelta(days=first), today + timedelta(days=last)
    if unit == "W":
        start, end = _week(today, first)[0], _week(today, last)[1]
    elif unit == "M":
        start, end = _months(today, first, last)
    elif unit == "Q":
        quarter_start = date(today.year, 3 * ((today.month - 1) // 3) + 1, 1)
        start = _add_months(quarter_start, 3 * first)
        end = _add_months(quarter_start, 3 * last + 3) - timedelta(days=1)
    else:
        start, end = date(today.year + first, 1, 1), date(today.year + last, 12, 31)
    return start, min(end, today)  # the current unit ends today: no data after it


def _fixed(unit: str, value: Any, text: str) -> tuple[date, date]:
    if unit == "D":
        if isinstance(value, dict) and set(value) == {"start", "end"}:
            return _parse_date(str(value["start"]), text), _parse_date(str(value["end"]), text)
        if isinstance(value, str):
            day = _parse_date(value, text)
            return day, day
    elif unit == "M" and isinstance(value, str) and re.fullmatch(r"\d{4}-\d{2}", value):
        first = _parse_date(f"{value}-01", text)
        return _months(first, 0, 0)
    elif unit == "Y" and isinstance(value, str | int) and re.fullmatch(r"\d{4}", str(value)):
        year = int(value)
        return date(year, 1, 1), date(year, 12, 31)
    raise PeriodError(f"unknown period {text!r}; {ACCEPTED_FORMS}")


# --- calendar helpers ------------------------------------------------------------------------------------------


def _week(today: date, offset: int) -> tuple[date, date]:
    """The ISO week (Monday-Sunday) ``offset`` weeks from the one holding ``today``."""
    monday = today - timedelta(days=today.weekday()) + timedelta(weeks=offset)
    return monday, monday + timedelta(days=6)


def _add_months(first_of_month: date, months: int) -> date:
    index = first_of_month.year * 12 + first_of_month.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


def _months(today: date, first: int, last: int) -> tuple[date, date]:
    """Whole calendar months from ``first`` to ``last`` months away from the month holding ``today``."""
    this_month = today.replace(day=1)
    start = _add_months(this_month, first)
    end = _add_months(this_month, last + 1) - timedelta(days=1)
    return start, end


def _is_month_end(day: date) -> bool:
    return (day + timedelta(days=1)).day == 1
