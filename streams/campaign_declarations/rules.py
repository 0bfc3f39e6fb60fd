"""Campaign declarations published on Kafka, and automatic declaration rules, as pure logic.

Two ways a campaign reaches the ``campaigns`` table besides the partner API:

- a partner publishes its declaration (a ``Campaign`` record) on
  ``campaigns.declarations``; it is judged by the very rules the API applies
  (``campaign_rules.validate_declaration``) against the current table;
- an undeclared tag the enrichment reported on ``campaigns.undeclared``
  matches a rule of the operator's rules file: it is declared for the rule's
  partner, the record built from the enrichment's draft as the API's
  "declare an undeclared tag" endpoint builds it (:func:`draft_declaration`).

No I/O, no clock: the processor passes ``now`` and the tables in.

The rules file (TOML, ``PASSERELLE_CAMPAIGN_DECLARATIONS_AUTO_RULES``)::

    [[rule]]
    partner = "retarget"   # required: the partner the matching tags are declared for (a partner id)
    prefix = "RT-"         # required: the campaign key starts with it (case-sensitive)
    min = 1000             # optional: with max (or alone), the rest of the key is a number in min..max
    max = 1999
    family = "utm"         # optional: only tags of this family (xtor, at, utm, mtm)
    source = "retarget"    # optional: only tags whose source (utm_source, mtm_source, at_platform) is this
    medium = "display"     # optional: the declaration's medium (default: the tag's, or the xtor prefix's)
    channel = "display"    # optional: the declaration's channel (default: the medium's)

Rules are tried in file order; the first that matches declares. A tag no rule
matches is left alone (a partner declares it, or nobody). A key already in the
table is never touched, whatever the rules say.
"""

from __future__ import annotations

import datetime as dt
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from passerelle.connectors.partner_api import campaign_rules as rules
from passerelle.connectors.partner_api.tagging import (
    TAG_FAMILIES,
    CampaignTag,
    read_tag,
)
from passerelle.errors import PasserelleError
from passerelle.schemas.timeconv import to_millis

PARTNER_HEADER: Final = "partner"
"""The header naming the partner on a deletion (a tombstone has no value to name it)."""
TIMESTAMP_FIELDS: Final = ("valid_from", "valid_to", "declared_at")
RULE_FIELDS: Final = ("partner", "prefix", "min", "max", "family", "source", "medium", "channel")


class DeclarationRejected(Exception):
    """A declaration refused: its dead letter's message lists every ``field: reason``."""

    def __init__(self, errors: Sequence[rules.FieldError], prefix: str = "") -> None:
        self.errors = list(errors)
        super().__init__(prefix + "; ".join(f"{e.field}: {e.reason}" for e in self.errors))


class RulesFileError(PasserelleError):
    """The auto-declaration rules file cannot be used: one line naming the rule and the field."""


# --- records --------------------------------------------------------------------------------------------------


def normalized(record: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A ``Campaign`` as plain data: timestamps in UTC milliseconds (the decoder gives datetimes)."""
    if record is None:
        return None
    out = dict(record)
    for name in TIMESTAMP_FIELDS:
        if isinstance(out.get(name), dt.datetime):
            out[name] = to_millis(out[name])
    return out


def same_campaign(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool:
    """Whether two declarations say the same thing (``declared_at`` aside)."""
    if a is None or b is None:
        return a is b
    return {k: v for k, v in a.items() if k != "declared_at"} == {k: v for k, v in b.items() if k != "declared_at"}


def judge(
    key: Any, value: Mapping[str, Any], current: Mapping[str, Any] | None, now: int, partners: frozenset[str] | None
) -> dict[str, Any]:
    """The record to publish on ``campaigns`` for a declaration read on ``campaigns.declarations``.

    ``current``: what the table (or this processor's own recent write) holds
    for the key; ``partners``: the partners allowed to declare (None: not
    checked). ``declared_at`` becomes ``now``, as the API does: a partner
    cannot date its own declaration. Raises :class:`DeclarationRejected`.
    """
    record = normalized(value)
    assert record is not None
    partner = record.get("partner")
    errors: list[rules.FieldError] = []
    if not isinstance(key, str) or not key:
        errors.append(rules.FieldError("key", "the record has no Kafka key: it must be the campaign key"))
    elif record.get("key") != key:
        errors.append(rules.FieldError("key", f"differs from the record's Kafka key {key!r}"))
    partner_error = partner_problem(partner, partners)
    if partner_error:
        errors.append(rules.FieldError("partner", partner_error))
    candidate = {**record, "declared_at": now}
    found = rules.validate_declaration(candidate, {str(record.get("key")): current}, str(partner))
    errors += [e for e in found if not (e.field == "partner" and partner_error)]
    if errors:
        raise DeclarationRejected(errors)
    return candidate


def judge_deletion(key: Any, partner: str | None, current: Mapping[str, Any] | None,
                   partners: frozenset[str] | None) -> bool:  # fmt: skip
    """Whether a tombstone deletes ``key`` (False: nothing to delete); raises :class:`DeclarationRejected`.

    A tombstone has no value to say whose it is: the ``partner`` header must
    name the campaign's partner.
    """
    if not isinstance(key, str) or not key:
        raise DeclarationRejected([rules.FieldError("key", "a deletion needs the campaign key as its Kafka key")])
    if partner is None:
        reason = f"a deletion (tombstone) must carry a {PARTNER_HEADER!r} header naming the campaign's partner"
        raise DeclarationRejected([rules.FieldError("partner", reason)])
    problem = partner_problem(partner, partners)
    if problem:
        raise DeclarationRejected([rules.FieldError("partner", problem)])
    if current is None:
        return False
    if current.get("partner") != partner:
        raise DeclarationRejected([rules.FieldError("key", f"campaign {key!r} belongs to another partner")])
    return True


def partner_problem(partner: Any, partners: frozenset[str] | None) -> str | None:
    """Why ``partner`` may not declare (None: it may)."""
    if not isinstance(partner, str) or not rules.PARTNER_ID.fullmatch(partner):
        return "a partner id: a-z 0-9 _ . - (at most 64, lower-case)"
    if partners is not None and partner not in partners:
        return f"unknown partner {partner!r}: no valid key with scope campaigns:write in partners.keys"
    return None


def declaring_partners(keys: Mapping[Any, Mapping[str, Any]]) -> frozenset[str]:
    """Partners holding an unrevoked ``partners.keys`` key with scope ``campaigns:write``."""
    return frozenset(
        str(k["partner"])
        for k in keys.values()
        if k is not None and k.get("revoked_at") is None and "campaigns:write" in (k.get("scopes") or ())
    )


# --- auto-declaration -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AutoRule:
    """One rule of the rules file (see the module's docstring)."""

    partner: str
    prefix: str
    min: int | None = None
    max: int | None = None
    family: str | None = None
    source: str | None = None
    medium: str | None = None
    channel: str | None = None
    index: int = 1
    """1-based position in the file, for messages."""

    def matches(self, key: str, tag: CampaignTag | None, draft: Mapping[str, Any]) -> bool:
        if not key.startswith(self.prefix):
            return False
        if self.min is not None or self.max is not None:
            rest = key[len(self.prefix) :]
            if not rest.isascii() or not rest.isdigit():
                return False
            number = int(rest)
            if (self.min is not None and number < self.min) or (self.max is not None and number > self.max):
                return False
        if self.family is not None and (tag is None or tag.family != self.family):
            return False
        if self.source is None:
            return True
        return (tag.source if tag is not None else draft.get("partner")) == self.source

    def describe(self) -> str:
        return f"rule {self.index} (partner {self.partner!r}, prefix {self.prefix!r})"


def parse_rules(text: str, origin: str = "rules file") -> tuple[AutoRule, ...]:
    """The rules of a TOML rules file; :class:`RulesFileError` naming the rule and the field otherwise."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RulesFileError(f"{origin}: not TOML: {exc}") from None
    extra = sorted(set(data) - {"rule"})
    if extra:
        raise RulesFileError(f"{origin}: unknown top-level key {extra[0]!r}; rules are [[rule]] tables")
    entries = data.get("rule", [])
    if not isinstance(entries, list):
        raise RulesFileError(f"{origin}: 'rule' must be an array of tables: [[rule]]")
    return tuple(_rule(entry, n, origin) for n, entry in enumerate(entries, start=1))


def _rule(entry: Any, n: int, origin: str) -> AutoRule:
    def bad(field: str, reason: str) -> RulesFileError:
        return RulesFileError(f"{origin}: rule {n}, field {field!r}: {reason}")

    if not isinstance(entry, dict):
        raise RulesFileError(f"{origin}: rule {n}: must be a table")
    unknown = sorted(set(entry) - set(RULE_FIELDS))
    if unknown:
        raise bad(unknown[0], f"unknown field; a rule has {', '.join(RULE_FIELDS)}")
    partner, prefix = entry.get("partner"), entry.get("prefix")
    if not isinstance(partner, str) or not rules.PARTNER_ID.fullmatch(partner):
        raise bad("partner", "required, a partner id (a-z 0-9 _ . -, lower-case)")
    if not isinstance(prefix, str) or not prefix or any(ord(c) < 33 or ord(c) == 127 for c in prefix):
        raise bad("prefix", "required, a non-empty string without spaces (the start of the campaign keys)")
    bounds: dict[str, int | None] = {}
    for name in ("min", "max"):
        value = entry.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise bad(name, "an integer >= 0 (the numeric id after the prefix)")
        bounds[name] = value
    low, high = bounds["min"], bounds["max"]
    if low is not None and high is not None and low > high:
        raise bad("max", f"below min ({high} < {low})")
    family = entry.get("family")
    if family is not None and family not in TAG_FAMILIES:
        raise bad("family", f"one of {', '.join(TAG_FAMILIES)}")
    for name in ("source",):
        value = entry.get(name)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise bad(name, "a non-empty string")
    medium, channel = entry.get("medium"), entry.get("channel")
    if medium is not None and medium not in rules.CAMPAIGN_MEDIA:
        raise bad("medium", f"one of {', '.join(rules.CAMPAIGN_MEDIA)}")
    if channel is not None and channel not in rules.CHANNELS:
        raise bad("channel", f"one of {', '.join(rules.CHANNELS)}")
    return AutoRule(partner, prefix, low, high, family, entry.get("source"), medium, channel, n)


def matching_rule(rules_: Sequence[AutoRule], key: str, draft: Mapping[str, Any]) -> AutoRule | None:
    """The first rule matching an undeclared tag, or None."""
    if not rules_:
        return None
    seen = str(draft.get("tagged_url_template") or "")
    tag = read_tag(seen) if seen else None
    return next((rule for rule in rules_ if rule.matches(key, tag, draft)), None)


def draft_declaration(key: str, draft: Mapping[str, Any], rule: AutoRule, now: int
                      ) -> tuple[dict[str, Any], list[rules.FieldError]]:  # fmt: skip
    """The ``Campaign`` record declaring an undeclared tag for ``rule.partner``, and the problems found building it.

    As the API's ``build_record`` with ``campaign_rules.draft_defaults``: the family the tag
    was seen with (else xtor for an xtor-shaped key, utm otherwise), the
    medium the rule gives, else the tag's, else the xtor prefix's or the
    channel's; the channel the rule gives, else the medium's; the source the
    tag carried, else the partner id; the landing URL the tag was seen on,
    without its campaign parameters, tagged anew.
    """
    data = rules.draft_defaults(draft)
    data["name"] = str(data.get("name") or key)[: rules.MAX_NAME]
    if rule.medium is not None:
        data["medium"] = rule.medium
    if rule.channel is not None:
        data["channel"] = rule.channel
    for dropped in ("valid_from", "valid_to", "cost_model", "cost_amount", "currency"):
        data.pop(dropped, None)
    return rules.campaign_record(key, data, rule.partner, now, landing_field="tagged_url_template",
                                 medium_hint=": the tag has none, give the rule one")  # fmt: skip


def auto_declaration(key: str, draft: Mapping[str, Any], rule: AutoRule, now: int) -> dict[str, Any]:
    """The declaration of an undeclared tag for ``rule`` (the key is not in the table): built, then judged by
    ``validate_declaration`` as the API would; :class:`DeclarationRejected` naming the rule and the fields."""
    record, errors = draft_declaration(key, draft, rule, now)
    named = {e.field for e in errors}
    found = rules.validate_declaration(record, {key: None}, rule.partner)
    skipped = (
        named | ({"channel"} if "medium" in named else set()) | ({"tagged_url_template"} if "key" in named else set())
    )
    errors += [e for e in found if e.field not in skipped]
    if errors:
        raise DeclarationRejected(errors, prefix=f"auto-declaration by {rule.describe()}: ")
    return record


def read_rules_file(path: str) -> tuple[AutoRule, ...]:
    """:func:`parse_rules` on a file; a missing or unreadable file is one :class:`RulesFileError` too."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesFileError(f"campaign auto-declaration rules {path}: cannot read: {exc}") from None
    return parse_rules(text, f"campaign auto-declaration rules {path}")


@dataclass(frozen=True)
class DeclarationsConfig:
    """``rules``: the auto-declaration rules (none: tags are never declared automatically). ``pending_ms``: how
    long a write of this processor shadows the table while the table has not shown it yet (far longer than a
    commit and the table's read take; a write the table never shows, because another one overtook it, stops
    shadowing after it)."""

    rules: tuple[AutoRule, ...] = ()
    pending_ms: int = 60_000
