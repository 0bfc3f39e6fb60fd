"""Applies one customer's commands to its state, profile and parked carts; the only writer of the three tables.

Kept apart from faust (tables are plain mappings here, the sender an async
callable, the clock a function) so the decisions it makes are visible, and
tested, in one place.

Parked carts. An abandoned cart is judged with the customer's CRM profile
(email, consent). When a worker starts, ``crm.profiles`` and
``carts.abandoned`` are read side by side from wherever the group left them,
so a cart may reach the command topic before the profile that was on
``crm.profiles`` long before it, and would be judged "no email". Until the
profiles present at start have all been read (``gate.ProfilesGate``), a cart
of a customer without a cached profile is parked instead: judged when the
customer's profile arrives, or, if none does, once the profiles are read
(the timer sends a tick for every parked customer).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from passerelle.streams.remarketing.commands import (
    ABANDONED,
    LINK,
    ORDER,
    PRIVACY,
    PROFILE,
    TICK,
    Command,
    dumps,
    loads,
)
from passerelle.streams.remarketing.metrics import RemarketingMetrics
from passerelle.streams.remarketing.sequence import Message, Outcome, Profile, Sequencer, State, profile_from_crm, to_ms

log = logging.getLogger("passerelle.remarketing")

PARKED = "parked"  # outcome of a cart kept until the profiles are read
VISITOR_PRIVACY = "visitor_privacy"  # the metric kind of a privacy request naming only a visitor


class CommandHandler:
    """Applies one command to one customer's state, profile and parked carts."""

    def __init__(
        self,
        sequencer: Sequencer,
        sequences: MutableMapping[str, bytes],
        profiles: MutableMapping[str, bytes],
        parked: MutableMapping[str, bytes],
        send: Callable[[str, Message], Awaitable[None]],
        metrics: RemarketingMetrics,
        clock: Callable[[], int],
        profiles_ready: Callable[[], bool] = lambda: True,
    ) -> None:
        self.sequencer = sequencer
        self.sequences = sequences
        self.profiles = profiles
        self.parked = parked
        self.send = send
        self.metrics = metrics
        self.clock = clock
        self.profiles_ready = profiles_ready

    async def handle(self, customer: str, command: Mapping[str, Any]) -> str:
        """Apply ``command``; returns the outcome label counted (an ``Outcome`` value, or what a tick did)."""
        seq = self.sequencer
        now = self.clock()
        before: State | None = loads(self.sequences.get(customer))
        parked_before: list[dict[str, Any]] = loads(self.parked.get(customer)) or []
        parked = list(parked_before)
        state = before
        messages: list[Message] = []
        outcome: Outcome | str
        kind = command.get("kind")
        ready = self.profiles_ready()
        erasure = (kind == PROFILE and command.get("profile") is None) or (
            kind == PRIVACY and command["request"].get("kind") == "erasure"
        )
        if erasure:
            parked = []  # nothing of the person is judged any more
        elif parked and ready and kind != PROFILE:
            state, messages = self._judge_parked(customer, state, parked, now)  # they came before this command
            parked = []
        if kind == ABANDONED:
            profile: Profile | None = loads(self.profiles.get(customer))
            if not ready and (profile is None or parked):
                parked.append(command["event"])  # behind the ones already parked: judged in order
                outcome = PARKED
                log.info("remarketing: cart of customer %s parked until crm.profiles is read", customer)
            else:
                state, sent, outcome = seq.on_abandoned(state, command["event"], profile, now)
                messages += sent
        elif kind == ORDER:
            state, outcome = seq.on_order(
                state, str(command["order_id"]), int(command["order_time"]), now,
                customer_id=customer, visitor_id=command.get("visitor_id"),
            )  # fmt: skip
        elif kind == PROFILE:
            state, outcome = self._profile(customer, state, command.get("profile"), now)
            if parked:  # what they waited for: judge them with it
                state, sent = self._judge_parked(customer, state, parked, now)
                messages += sent
                parked = []
        elif kind == PRIVACY:
            state, outcome = self._privacy(customer, state, command["request"], now)
        elif kind == TICK:
            state, sent = seq.on_tick(state, now)
            messages += sent
            outcome = "step2" if sent else "expired" if state is None and before is not None else "not_due"
        else:
            raise ValueError(f"unknown command kind {kind!r}")
        for message in messages:  # acknowledged by the broker before the state says it was sent
            await self.send(customer, message)
            self.metrics.messages.labels(str(message["step"])).inc()
            log.info("remarketing step %s for customer %s (message %s)", message["step"], customer,
                     message["message_id"])  # fmt: skip
        if state is None and before is not None:
            del self.sequences[customer]
        elif state is not None and state != before:
            self.sequences[customer] = dumps(state)
        if not parked and parked_before:
            del self.parked[customer]
        elif parked != parked_before:
            self.parked[customer] = dumps(parked)
        if outcome == Outcome.RECOVERED:
            self.metrics.recovered.inc()
        label = str(outcome)
        self.metrics.inputs.labels(str(kind), label).inc()
        return label

    def _judge_parked(
        self, customer: str, state: State | None, parked: list[dict[str, Any]], now: int
    ) -> tuple[State | None, list[Message]]:
        """The parked carts, in the order they came, with whatever profile is cached now."""
        profile: Profile | None = loads(self.profiles.get(customer))
        messages: list[Message] = []
        for event in parked:
            state, sent, outcome = self.sequencer.on_abandoned(state, event, profile, now)
            messages += sent
            self.metrics.inputs.labels(ABANDONED, str(outcome)).inc()
        return state, messages

    def _profile(
        self, customer: str, state: State | None, record: Mapping[str, Any] | None, now: int
    ) -> tuple[State | None, Outcome]:
        """A CRM profile: a tombstone erases; an update refreshes the cache and may withdraw consent."""
        if record is None:
            self._forget_profile(customer)
            return self.sequencer.on_erasure(state)
        incoming = profile_from_crm(record)
        cached: Profile | None = loads(self.profiles.get(customer))
        if cached is not None and cached["updated_at"] > incoming["updated_at"]:
            return state, Outcome.IGNORED  # an older version arriving late must not undo a newer one
        self.profiles[customer] = dumps(incoming)
        return self.sequencer.on_consent(state, incoming["marketing_consent"], now)

    def _privacy(
        self, customer: str, state: State | None, request: Mapping[str, Any], now: int
    ) -> tuple[State | None, Outcome]:
        """A privacy request: erasure forgets the person; a consent change updates the cache and may cancel."""
        if request.get("kind") == "erasure":
            self._forget_profile(customer)
            return self.sequencer.on_erasure(state)
        consent = request.get("marketing_consent")
        if consent is None:
            return state, Outcome.IGNORED
        cached: Profile | None = loads(self.profiles.get(customer))
        updated: Profile = (
            {**cached, "marketing_consent": consent}
            if cached is not None
            else {"email": None, "marketing_consent": consent, "updated_at": to_ms(request.get("requested_at") or 0)}
        )
        self.profiles[customer] = dumps(updated)
        return self.sequencer.on_consent(state, consent, now)

    def _forget_profile(self, customer: str) -> None:
        if self.profiles.get(customer) is not None:
            del self.profiles[customer]


class VisitorRouter:
    """Keeps the visitor -> customer links of ``identity.links``; routes a request naming only a visitor.

    The only writer of the ``links`` table (visitor id -> ``{"customer_id",
    "linked_at"}``), which is co-partitioned with the visitor topic: a link
    and a request of the same visitor are applied in the order they were
    forwarded. A privacy request is sent on to the customer the visitor is
    linked to, as a ``privacy`` command (the same as one naming the customer);
    an erasure also forgets the link. A visitor with no link known (never
    identified, or the link not read yet) leaves nothing to erase here: the
    request is counted (``outcome="unlinked"``) and the first one logged.
    """

    def __init__(
        self,
        links: MutableMapping[str, bytes],
        forward: Callable[[str, Command], Awaitable[None]],
        metrics: RemarketingMetrics,
    ) -> None:
        self.links = links
        self.forward = forward
        self.metrics = metrics
        self._warned = False

    async def handle(self, visitor: str, command: Mapping[str, Any]) -> str:
        """Apply ``command``; returns the outcome label counted."""
        kind = command.get("kind")
        if kind == LINK:
            customer = command.get("customer_id")
            if customer is None:
                if self.links.get(visitor) is not None:
                    del self.links[visitor]
                outcome, label = "forgotten", LINK
            else:
                self.links[visitor] = dumps({"customer_id": str(customer), "linked_at": command.get("linked_at")})
                outcome, label = "linked", LINK
        elif kind == PRIVACY:
            label = VISITOR_PRIVACY
            link = loads(self.links.get(visitor))
            request = command["request"]
            if link is None:
                outcome = "unlinked"
                if not self._warned:
                    self._warned = True
                    log.warning(
                        "remarketing: a privacy request names visitor %s, linked to no customer known here: nothing "
                        "to apply (further ones are only counted: passerelle_remarketing_inputs_total"
                        '{kind="visitor_privacy",outcome="unlinked"})',
                        visitor,
                    )
            else:
                customer = str(link["customer_id"])
                await self.forward(customer, {"kind": PRIVACY, "request": {
                    key: request.get(key) for key in ("kind", "marketing_consent", "requested_at")
                }})  # fmt: skip
                if request.get("kind") == "erasure":
                    del self.links[visitor]
                outcome = "routed"
                log.info("remarketing: privacy request of visitor %s routed to customer %s", visitor, customer)
        else:
            raise ValueError(f"unknown visitor command kind {kind!r}")
        self.metrics.inputs.labels(label, outcome).inc()
        return outcome
