"""The CRM normalizer as pure logic: Debezium change events of the CRM database -> ``CrmProfile`` records.

The Debezium PostgreSQL source writes every change of the CRM's ``customers``
and ``consents`` tables (connectors/crm/migrations/001_crm.sql) to
``crm.cdc.customers`` and ``crm.cdc.consents``, both keyed by customer id. A
profile is one customer row joined with the customer's consent rows, so the
state per customer is the row (the few columns a profile needs, nothing else
of the person) and the consents by channel:

- a customer created, updated or read by a snapshot (``c``/``u``/``r``) gives
  its profile; a consent change recomputes it;
- a customer deleted (``d``) is erased: a tombstone on ``crm.profiles`` (the
  platform's erasure signal) and the state forgotten, so the consent deletes
  that ``ON DELETE CASCADE`` writes next find nothing to bring back;
- a consent may arrive before its customer's row (the two topics are read side
  by side, in no order relative to each other): it is kept, and nothing is
  emitted until the row arrives;
- a profile is emitted only when it differs from the last one emitted, so a
  snapshot read again after a connector restart emits nothing.

``marketing_consent`` is true only when the consent row of the configured
channel (email) exists and is granted: unknown is not consent.
``updated_at`` is the latest ``updated_at`` of the row and its consent rows,
and never goes back: a consent row deleted (consent withdrawn by deletion)
moves it to the deletion's commit time, and a profile never carries an older
time than the last one emitted. Readers drop a profile older than the one they
hold (the remarketing sequencer does), and must not drop a withdrawal.

An event the rules cannot apply (a truncate, an unknown op, a row without the
columns a profile needs or with another type, a key that is not the row's
customer) raises ``CdcError``: the runtime dead-letters it with its bytes and
this reason.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypedDict

from passerelle.schemas.models import age_band

CUSTOMERS = "customers"
CONSENTS = "consents"
OPS = ("c", "u", "r", "d")
"""Debezium ops applied: create, update, snapshot read, delete (``t``, truncate, is refused)."""

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_EPOCH_DAY = dt.date(1970, 1, 1)
_MS = dt.timedelta(milliseconds=1)


class CdcError(ValueError):
    """A change event the normalizer cannot apply; its message is the dead letter's reason."""


@dataclass(frozen=True)
class NormalizerConfig:
    """``consent_channel``: the ``consents.channel`` whose granted row makes ``marketing_consent`` true."""

    consent_channel: str = "email"


class CustomerRow(TypedDict):
    """What a profile needs of a ``customers`` row (names, address and value are not kept)."""

    email: str | None
    gender: str | None
    birth_year: int | None
    csp: str | None
    loyalty_tier: str | None
    updated_at: int


class Consent(TypedDict):
    granted: bool
    updated_at: int


class CustomerState(TypedDict):
    """One customer's state: their row (None until it arrives), their consents by channel, and ``floor``.

    ``floor``: the least ``updated_at`` the next profile may carry (the last
    one emitted, or a consent deletion's time).
    """

    customer_id: str
    row: CustomerRow | None
    consents: dict[str, Consent]
    floor: int


class Profile(TypedDict):
    """A ``CrmProfile`` record (``updated_at`` in UTC milliseconds)."""

    customer_id: str
    email: str | None
    gender: str | None
    birth_year: int | None
    age_band: str | None
    csp: str | None
    loyalty_tier: str | None
    marketing_consent: bool
    updated_at: int


@dataclass(frozen=True)
class Change:
    """One change event, checked: a customer row (``row``) or a consent (``channel``, ``consent``)."""

    table: str
    op: str
    customer_id: str
    row: CustomerRow | None = None
    channel: str | None = None
    consent: Consent | None = None
    at: int = 0
    """When the change was committed (Debezium's ``source.ts_ms``), for deletes."""


@dataclass(frozen=True)
class Outcome:
    """What a change does: the new state (None: forget the customer), a profile or an erasure, else why not."""

    state: CustomerState | None
    profile: Profile | None = None
    erase: bool = False
    skipped: str | None = None
    """Why nothing is emitted: ``unchanged``, ``pending`` (no customer row yet), ``gone`` (nothing known)."""


# --- reading change events ------------------------------------------------------------------------------------


def _field(row: Mapping[str, Any], table: str, name: str) -> Any:
    if name not in row:
        raise CdcError(f"{table} row without its '{name}' column")
    return row[name]


def _text(row: Mapping[str, Any], table: str, name: str, optional: bool = True) -> str | None:
    value = _field(row, table, name)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise CdcError(f"{table}.{name} is {value!r}, not a string")
    return value


def _timestamp(row: Mapping[str, Any], table: str, name: str) -> int:
    """A timestamptz as Debezium writes it (``io.debezium.time.ZonedTimestamp``): ISO-8601 with an offset -> ms."""
    value = _field(row, table, name)
    if not isinstance(value, str):
        raise CdcError(f"{table}.{name} is {value!r}, not an ISO-8601 timestamp (ZonedTimestamp)")
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise CdcError(f"{table}.{name} is {value!r}, not an ISO-8601 timestamp (ZonedTimestamp)") from None
    if parsed.tzinfo is None:
        raise CdcError(f"{table}.{name} is {value!r}: a ZonedTimestamp carries its offset")
    return (parsed - _EPOCH) // _MS


def _birth_year(row: Mapping[str, Any], table: str) -> int | None:
    """A date as Debezium writes it (``io.debezium.time.Date``): days since 1970-01-01 -> its year."""
    days = _field(row, table, "birth_date")
    if days is None:
        return None
    if not isinstance(days, int) or isinstance(days, bool):
        raise CdcError(f"{table}.birth_date is {days!r}, not a number of days since 1970-01-01 (Date)")
    try:
        return (_EPOCH_DAY + dt.timedelta(days=days)).year
    except OverflowError:
        raise CdcError(f"{table}.birth_date is {days}: out of range") from None


def _committed_at(event: Mapping[str, Any], table: str) -> int:
    source = event.get("source")
    for at in (source.get("ts_ms") if isinstance(source, Mapping) else None, event.get("ts_ms")):
        if isinstance(at, int) and not isinstance(at, bool):
            return at
    raise CdcError(f"{table} delete without its time (source.ts_ms)")


def parse_change(table: str, event: Any, key: Any) -> Change:
    """Check one Debezium change event (the envelope's payload) of ``table``, keyed by ``key``."""
    if not isinstance(event, Mapping):
        raise CdcError(f"not a Debezium change event: the value is {type(event).__name__}")
    op = event.get("op")
    if op == "t":
        raise CdcError(
            f"truncate of {table} is not applied: it names no customer to erase; erase them by deleting the rows "
            f"(each delete is an erasure), or rebuild crm.profiles from a new snapshot"
        )
    if op not in OPS:
        raise CdcError(f"unknown Debezium op {op!r} (applied: {', '.join(OPS)})")
    source = event.get("source")
    origin = source.get("table") if isinstance(source, Mapping) else None
    if origin is not None and origin != table:
        raise CdcError(f"a change of table {origin!r} on the {table} topic")
    side = "before" if op == "d" else "after"
    row = event.get(side)
    if not isinstance(row, Mapping):
        raise CdcError(f"{table} op {op!r} without its '{side}' row")
    customer = _text(row, table, "customer_id", optional=False)
    assert customer is not None
    if key != customer:
        raise CdcError(f"key {key!r} is not the row's customer_id {customer!r}")
    if table == CUSTOMERS:
        if op == "d":
            return Change(table, op, customer)
        return Change(table, op, customer, row=CustomerRow(
            email=_text(row, table, "email"),
            gender=_text(row, table, "gender"),
            birth_year=_birth_year(row, table),
            csp=_text(row, table, "csp"),
            loyalty_tier=_text(row, table, "loyalty_tier"),
            updated_at=_timestamp(row, table, "updated_at"),
        ))  # fmt: skip
    channel = _text(row, table, "channel", optional=False)
    if op == "d":
        return Change(table, op, customer, channel=channel, at=_committed_at(event, table))
    granted = _field(row, table, "granted")
    if not isinstance(granted, bool):
        raise CdcError(f"{table}.granted is {granted!r}, not a boolean")
    return Change(table, op, customer, channel=channel, consent=Consent(
        granted=granted, updated_at=_timestamp(row, table, "updated_at"),
    ))  # fmt: skip


# --- profiles ---------------------------------------------------------------------------------------------------


def _year(ms: int) -> int:
    return (_EPOCH + dt.timedelta(milliseconds=ms)).year


class CrmNormalizer:
    """Applies checked changes to a customer's state and says what to emit."""

    def __init__(self, config: NormalizerConfig | None = None) -> None:
        self.config = config or NormalizerConfig()

    def profile(self, state: CustomerState | None) -> Profile | None:
        """The customer's profile, or None while their row has not arrived."""
        if state is None or state["row"] is None:
            return None
        row, consents = state["row"], state["consents"]
        updated = max(row["updated_at"], state["floor"], *(c["updated_at"] for c in consents.values()))
        consent = consents.get(self.config.consent_channel)
        birth_year = row["birth_year"]
        return Profile(
            customer_id=state["customer_id"],
            email=row["email"],
            gender=row["gender"],
            birth_year=birth_year,
            age_band=None if birth_year is None else age_band(birth_year, _year(updated)),
            csp=row["csp"],
            loyalty_tier=row["loyalty_tier"],
            marketing_consent=consent is not None and consent["granted"] is True,
            updated_at=updated,
        )

    def apply(self, state: CustomerState | None, change: Change) -> Outcome:
        """The outcome of ``change`` on ``state`` (new values; the stored ones are never mutated)."""
        customer = change.customer_id
        if change.table == CUSTOMERS:
            if change.op == "d":
                return Outcome(None, erase=True)
            new = CustomerState(
                customer_id=customer,
                row=change.row,
                consents=state["consents"] if state else {},
                floor=state["floor"] if state else 0,
            )
        else:
            if state is None and change.op == "d":
                return Outcome(None, skipped="gone")  # after the customer's delete (ON DELETE CASCADE)
            base = state or CustomerState(customer_id=customer, row=None, consents={}, floor=0)
            consents, floor = dict(base["consents"]), base["floor"]
            assert change.channel is not None
            if change.op == "d":
                consents.pop(change.channel, None)
                floor = max(floor, change.at)
            else:
                assert change.consent is not None
                consents[change.channel] = change.consent
            if base["row"] is None and not consents:
                return Outcome(None, skipped="pending")
            new = CustomerState(customer_id=customer, row=base["row"], consents=consents, floor=floor)
        before, after = self.profile(state), self.profile(new)
        if after is None:
            return Outcome(new, skipped="pending")
        if after == before:
            return Outcome(new, skipped="unchanged")
        emitted = CustomerState(
            customer_id=customer, row=new["row"], consents=new["consents"], floor=after["updated_at"]
        )
        return Outcome(emitted, profile=after)
