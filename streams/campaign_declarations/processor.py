"""Campaign declarations on Kafka, and automatic declarations: -> ``campaigns`` on the runtime.

Wiring only; the rules are in ``rules.py`` (and ``campaign_rules.py``, shared
with the partner API, so both paths accept exactly the same declarations).

Inputs, both of one partition (co-partitioned, as the runtime requires):

- ``campaigns.declarations``: a partner's ``Campaign`` record, keyed by the
  campaign key, its ``partner`` field naming the declaring partner. Valid
  (``validate_declaration`` against the current table): published on
  ``campaigns`` under the same key, ``declared_at`` set to the processing
  time; a declaration identical to the current one (``declared_at`` aside)
  publishes nothing. Invalid, another partner's key, an unknown partner (no
  unrevoked ``partners.keys`` key with scope ``campaigns:write``): the record
  goes to the dead-letter topic, its message listing every ``field: reason``
  (``DeclarationRejected``). A tombstone deletes the campaign (a tombstone on
  ``campaigns``) if its ``partner`` header names the campaign's partner; a
  tombstone without that header, or naming another partner, is dead-lettered;
  one for a key not declared does nothing.
- ``campaigns.undeclared``: a tag the enrichment saw and nobody declared.
  If no campaign has its key and a rule of the rules file matches it, it is
  declared for the rule's partner (``rules.auto_declaration``); the
  enrichment, which reads ``campaigns``, stops flagging it. A draft a rule
  matches but whose declaration the rules refuse is dead-lettered with the
  rule and the fields. No rule: nothing happens.

Trust: Kafka does not tell a consumer who produced a record, so the
``partner`` field (or header) is only as trustworthy as the principals
allowed to write ``campaigns.declarations``: the ACLs must grant WRITE on it
only to principals trusted for every partner id they may write (one
integration principal per partner platform that publishes its own, or a
gateway), never to a principal shared by partners who must not declare for
each other.

Concurrency: ``campaigns`` is read as a lookup table, and the table shows
this processor's writes only after their transaction committed and the table
read them back. So that two declarations of one key in one batch (or in the
next batches) cannot both pass the ownership check, what this processor
wrote is kept in the ``written`` store until the table shows it (or for
``pending_ms`` at most: a write another writer overtook is never shown as
written); a key's current owner is the store's entry if there is one, the
table's otherwise. The partner API writes ``campaigns`` too: between two
writers of one key, the last one wins, as between two API instances.

Erasure: nothing personal is kept (campaigns and partner ids).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter as PromCounter

from passerelle.streams.campaign_declarations.rules import (
    PARTNER_HEADER,
    DeclarationRejected,
    DeclarationsConfig,
    auto_declaration,
    declaring_partners,
    judge,
    judge_deletion,
    matching_rule,
    normalized,
    same_campaign,
)
from passerelle.streams.runtime import Context, InRecord, OutRecord, Processor, StoreSpec, TableSpec

WRITTEN: StoreSpec[dict[str, Any]] = StoreSpec("written", ttl_ms=None)  # deleted once the table shows it
"""Per campaign key: ``{"record": the Campaign written (None: a deletion), "at": when}``, until the table shows it."""
CAMPAIGNS = "campaigns"
PARTNERS = "partners"
DECLARATION_OUTCOMES = ("declared", "unchanged", "deleted", "absent", "rejected")
AUTO_OUTCOMES = ("declared", "already_declared", "no_rule", "rejected")


@dataclass(frozen=True)
class DeclarationsTopics:
    """Topic names, overridable so tests and several deployments can share a cluster."""

    declarations: str = "campaigns.declarations"
    undeclared: str = "campaigns.undeclared"
    campaigns: str = "campaigns"
    partners_keys: str | None = "partners.keys"
    """None: the declaring partner is not checked against the keys table."""


class CampaignDeclarationsProcessor(Processor):
    """Publishes valid declarations and rule-matching undeclared tags on ``campaigns``."""

    name = "campaign-declarations"
    stores = (WRITTEN,)

    def __init__(self, topics: DeclarationsTopics | None = None, config: DeclarationsConfig | None = None) -> None:
        self.topics = t = topics or DeclarationsTopics()
        self.config = config or DeclarationsConfig()
        self.inputs = (t.declarations, t.undeclared)
        self.tombstone_inputs = (t.declarations, t.undeclared)
        self.outputs = (t.campaigns,)
        self.tables = (
            TableSpec(CAMPAIGNS, t.campaigns),
            *((TableSpec(PARTNERS, t.partners_keys),) if t.partners_keys else ()),
        )
        self._partners: frozenset[str] | None = None  # cache of the keys table, dropped when it changes
        self.declarations = PromCounter(
            "passerelle_campaign_declarations_total",
            "Records of campaigns.declarations, by outcome: declared, unchanged (identical to the current one), "
            "deleted, absent (a deletion of a key not declared), rejected (dead-lettered)",
            ["outcome"], registry=None,
        )  # fmt: skip
        self._declared = {o: self.declarations.labels(o) for o in DECLARATION_OUTCOMES}
        self.auto = PromCounter(
            "passerelle_campaign_auto_declarations_total",
            "Undeclared tags read, by outcome: declared (by a rule), already_declared, no_rule, rejected "
            "(a rule matched but the declaration is invalid: dead-lettered)",
            ["outcome"], registry=None,
        )  # fmt: skip
        self._auto = {o: self.auto.labels(o) for o in AUTO_OUTCOMES}
        self.metrics = (self.declarations, self.auto)

    # --- records -------------------------------------------------------------------------------------------

    def process_one(self, record: InRecord, ctx: Context) -> Iterable[OutRecord] | None:
        if record.topic == self.topics.declarations:
            try:
                return self._declaration(record, ctx)
            except DeclarationRejected:
                self._declared["rejected"].inc()
                raise
        return self._undeclared(record, ctx)

    def _declaration(self, record: InRecord, ctx: Context) -> list[OutRecord] | None:
        key, now = record.key, ctx.now()
        current = self._current(key, ctx) if isinstance(key, str) else None
        if record.value is None:
            if not judge_deletion(key, _header(record, PARTNER_HEADER), current, self._allowed(ctx)):
                self._declared["absent"].inc()
                return None
            self._declared["deleted"].inc()
            return self._write(key, None, ctx)
        campaign = judge(key, record.value, current, now, self._allowed(ctx))
        if same_campaign(campaign, current):
            self._declared["unchanged"].inc()
            return None
        self._declared["declared"].inc()
        return self._write(key, campaign, ctx)

    def _undeclared(self, record: InRecord, ctx: Context) -> list[OutRecord] | None:
        draft, key = record.value, record.key
        if draft is None or not isinstance(key, str) or not self.config.rules:
            return None
        if self._current(key, ctx) is not None:
            self._auto["already_declared"].inc()
            return None
        rule = matching_rule(self.config.rules, key, draft)
        if rule is None:
            self._auto["no_rule"].inc()
            return None
        try:
            campaign = auto_declaration(key, draft, rule, ctx.now())
        except DeclarationRejected:
            self._auto["rejected"].inc()
            raise
        self._auto["declared"].inc()
        return self._write(key, campaign, ctx)

    # --- the table and this processor's own writes ------------------------------------------------------------

    def _current(self, key: str, ctx: Context) -> dict[str, Any] | None:
        """The campaign ``key`` names now: this processor's last write if the table has not shown it yet."""
        written = ctx.store(WRITTEN)
        mine = written.get(key)
        if mine is not None:
            if ctx.now() - mine["at"] < self.config.pending_ms:
                record: dict[str, Any] | None = mine["record"]
                return record
            written.delete(key)  # overtaken by another writer, or the table lags beyond reason
        return normalized(ctx.table(CAMPAIGNS).get(key))

    def _write(self, key: str, campaign: dict[str, Any] | None, ctx: Context) -> list[OutRecord]:
        ctx.store(WRITTEN).put(key, {"record": campaign, "at": ctx.now()})
        return [OutRecord(self.topics.campaigns, key, campaign)]

    def _allowed(self, ctx: Context) -> frozenset[str] | None:
        if self.topics.partners_keys is None:
            return None
        if self._partners is None:
            self._partners = declaring_partners(ctx.table(PARTNERS))
        return self._partners

    def on_table_change(self, table: str, key: Any, old: Any, new: Any, ctx: Context) -> Iterable[OutRecord]:
        if table == PARTNERS:
            self._partners = None
        elif table == CAMPAIGNS:
            self._forget_shown(ctx, key, new)
        return ()

    def on_partition_restored(self, ctx: Context) -> Iterable[OutRecord] | None:
        """Writes the table (read to its end before processing) already shows are no longer pending."""
        table = ctx.table(CAMPAIGNS)
        for key in list(ctx.store(WRITTEN)):
            self._forget_shown(ctx, key, table.get(key))
        return None

    @staticmethod
    def _forget_shown(ctx: Context, key: Any, shown: Any) -> None:
        written = ctx.store(WRITTEN)
        mine = written.get(key) if isinstance(key, str) else None
        if mine is not None and normalized(shown) == mine["record"]:
            written.delete(key)


def _header(record: InRecord, name: str) -> str | None:
    for header, value in record.headers or ():
        if header == name and value is not None:
            return value.decode("utf-8", errors="replace")
    return None
