"""The rules one cell of a CRM export must follow, one parser per ``CrmProfile`` field.

CRMs export the same fact in many spellings (``oui``/``Yes``/``1``, a birth
date in either day order, ``1985.0`` from a spreadsheet); each parser accepts
the spellings seen in real exports and turns them into the contract's value,
or raises ``ValueError`` whose message is the reason the error report shows
next to the cell. They see one stripped cell and nothing else (no file, no
line, no Kafka), so every rule can be read and tested on its own.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime

CUSTOMER_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
MAX_EMAIL_CHARS = 254
MIN_BIRTH_YEAR = 1900
GENDERS = {"f": "F", "m": "M", "x": "X", "female": "F", "male": "M"}
CONSENT = {
    "true": True, "yes": True, "y": True, "1": True, "oui": True,
    "false": False, "no": False, "n": False, "0": False, "non": False, "": False,
}  # fmt: skip
MAX_FUTURE_MS = 24 * 3600 * 1000
"""An ``updated_at`` later than this after now is a typo: it would make every later import look older."""

_YEAR = re.compile(r"(\d{4})(?:\.0+)?")  # 1985, or 1985.0 as spreadsheets export numbers
_YMD = re.compile(r"(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})(?:[T ].*)?")
_DMY = re.compile(r"(\d{1,2})[-/.](\d{1,2})[-/.](\d{4})(?: .*)?")


def parse_customer_id(text: str) -> str:
    """The key of the compacted topic: a conservative alphabet, so that every system downstream can hold it."""
    if not text:
        raise ValueError("required")
    if not CUSTOMER_ID.fullmatch(text):
        raise ValueError("must be 1 to 64 characters among A-Z a-z 0-9 _ . : -")
    return text


def parse_email(text: str) -> str | None:
    """Only an address's shape: deliverability is the emailing's business, a typo in a name is not ours to guess."""
    if text and (len(text) > MAX_EMAIL_CHARS or not EMAIL.fullmatch(text)):
        raise ValueError("not an email address")
    return text or None


def parse_gender(text: str) -> str | None:
    """F, M or X in any case, or female / male; empty is unknown."""
    if not text:
        return None
    try:
        return GENDERS[text.lower()]
    except KeyError:
        raise ValueError("expected F, M or X (or female, male)") from None


def _real_date(year: int, month: int, day: int) -> bool:
    try:
        date(year, month, day)
    except ValueError:
        return False
    return True


def parse_birth_year(text: str, this_year: int) -> int | None:
    """A year, or a date (1985-07-14, 14/07/1985 or 07/14/1985: only the year is kept, so either order will do)."""
    if not text:
        return None
    if (m := _YEAR.fullmatch(text)) or ((m := _YMD.fullmatch(text)) and _real_date(int(m[1]), int(m[2]), int(m[3]))):
        year = int(m[1])
    elif (m := _DMY.fullmatch(text)) and (
        _real_date(int(m[3]), int(m[2]), int(m[1])) or _real_date(int(m[3]), int(m[1]), int(m[2]))
    ):
        year = int(m[3])
    else:
        raise ValueError("not a year or a date (e.g. 1985, 1985-07-14, 14/07/1985)")
    if not MIN_BIRTH_YEAR <= year <= this_year:
        raise ValueError(f"year {year} out of range {MIN_BIRTH_YEAR}-{this_year}")
    return year


def parse_consent(text: str) -> bool:
    """true/false, yes/no, y/n, 1/0, oui/non in any case; empty is False (unknown is not consent)."""
    try:
        return CONSENT[text.lower()]
    except KeyError:
        raise ValueError("expected true/false, yes/no, y/n, 1/0 or oui/non") from None


def parse_updated_at(text: str, now_ms: int) -> int | None:
    """ISO-8601 date or date-time (a time without offset is UTC) as UTC milliseconds; empty: None."""
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError("not an ISO-8601 date-time (e.g. 2024-05-31T14:02:00Z)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    ms = round(when.timestamp() * 1000)
    if ms > now_ms + MAX_FUTURE_MS:
        raise ValueError("in the future")
    return ms


def parse_text(text: str) -> str | None:
    """Free text (age band, CSP, loyalty tier): kept as the CRM writes it, empty is unknown."""
    return text or None
