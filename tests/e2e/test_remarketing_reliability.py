"""The reliability check of issue 5: the remarketing flow under SIGKILLs and a partner failing 20% of requests.

The same private stack and CLI processes as ``test_remarketing_flow.py``, with many more visitors. While the
traffic is posted and the remarketing messages flow, a seeded chaos loop SIGKILLs ``carts``, ``remarketing``
and ``emailing bridge`` several times each, at random moments, restarting each at once with the same settings
(same ``PASSERELLE_INSTANCE_ID``). The partner stand-in answers 500 to a fifth of the requests.

Oracle (from the topics, read ``read_committed``, and the generator's own account of its shop):

- every distinct message id on ``remarketing.messages`` got exactly one 2xx at the partner, per idempotency key
  (``/_delivered``), no key the topic does not hold got any request, and each has a ``delivered`` outcome on
  ``remarketing.deliveries``. ``remarketing.messages`` itself may hold the same message id more than once
  (faust is at-least-once; a re-sent message keeps its deterministic id): the partner must still count one 2xx
  per id. The stand-in honours the ``Idempotency-Key`` as a real partner does: a key already delivered is
  answered again but not delivered twice (counted as a replay, reported in the summary), so a second delivery of
  a key fails the test;
- every step 1 belongs to one eligible abandoned cart (customer with consent and an email), at most one sequence
  per customer, and every customer with an eligible cart not followed by an order of theirs got one;
- every step 1 whose cart was not followed by an order got its step 2; no step 2 for a customer who ordered after
  abandoning, unless that order reached the collector less than ``LATE_ORDER_GRACE_S`` before the step 2 was made
  (the sequencer could not know it yet).

``PASSERELLE_RELIABILITY_VISITORS`` sets the number of visitors (default 10,000: about 3.5 minutes on 2 cores,
mostly the chaos window), ``PASSERELLE_RELIABILITY_SEED`` the chaos seed.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from passerelle.connectors.generator.send import EventSender, SendOptions, publish_campaigns, publish_profiles
from passerelle.connectors.generator.shop import HOUR, Shop
from passerelle.deploy.local.stack import free_port
from passerelle.streams.remarketing.sequence import message_id, sequence_id, to_ms
from tests.e2e.flow_helpers import (
    Partner,
    TopicTail,
    http_ok,
    may_be_emailed,
    metric_total,
    start_stack,
    stop_all,
    tails,
)
from tests.e2e.reliability_helpers import Chaos, Fleet, kill_schedule

pytestmark = pytest.mark.e2e

# The knobs are read with os.environ.get, not as PASSERELLE_* settings: the processes' environment drops them.
VISITORS = int(os.environ.get("PASSERELLE_RELIABILITY_VISITORS", "10000"))
CHAOS_SEED = int(os.environ.get("PASSERELLE_RELIABILITY_SEED", "5"))
SITE, API_KEY = "shop.example", "e2e-key"
SHOP_SEED = 11
CUSTOMERS = max(20, VISITORS // 2)
ABANDON_S = 10.0  # cart inactivity before abandonment (processing time: see streams/carts/tracker.py)
FOLLOWUP_S = 30.0 + VISITORS * 0.004  # step 2 after step 1: most of the traffic is posted by then
LATE_ORDER_GRACE_S = 45.0
PROMO_CODE = "COMEBACK10"
MAX_ATTEMPTS = 10  # 0.2**10: no message of the run spends its budget on injected 500s
KILLS_EACH = 3
KILLED = ("carts", "remarketing", "bridge")
POST_CHUNK = 2000  # events posted between two time stamps (when an order reached the collector)


@pytest.mark.timeout(900)
def test_remarketing_survives_sigkills_and_partner_failures(stack_env: dict[str, str], tmp_path: Path) -> None:
    env = stack_env
    started = time.monotonic()
    stack = start_stack(env)

    shop = Shop(SHOP_SEED, int(time.time() * 1000) - 8 * HOUR, site=SITE, span_ms=8 * HOUR, customers=CUSTOMERS)
    journeys = list(shop.journeys(VISITORS))
    profiles = {p["customer_id"]: p for p in shop.crm_profiles()}
    meant = {j.visitor_id for j in journeys  # the site's consent is the one the visitor's last hit carries
             if j.abandoned and j.customer_id
             and may_be_emailed(profiles.get(j.customer_id), j.events[-1]["consent"]["marketing"])}  # fmt: skip
    assert meant, f"seed {SHOP_SEED}: nobody who may be emailed abandons a cart; pick another seed"
    orders: dict[str, list[tuple[int, str]]] = {}  # customer -> (event time, event id) of their orders
    for journey in journeys:
        for event in journey.events:
            if event["type"] == "order" and event.get("customer_id"):
                orders.setdefault(event["customer_id"], []).append((int(event["event_time"]), event["event_id"]))
    events = shop.events(VISITORS)
    publish_campaigns(shop.campaigns(), stack.conn("generator"))
    publish_profiles(list(profiles.values()), stack.conn("generator"))

    logs = tmp_path / "logs"
    logs.mkdir()
    standin_port, collector_port, metrics_port = free_port(), free_port(), free_port()
    partner_url = f"http://127.0.0.1:{standin_port}"
    fleet = Fleet(logs)
    specs: list[tuple[str, list[str], dict[str, str]]] = [
        ("standin", ["emailing", "standin", "--port", str(standin_port)], {}),
        ("collector", ["collector"], {"PASSERELLE_COLLECTOR_SITES": json.dumps({SITE: API_KEY}),
                                      "PASSERELLE_COLLECTOR_PORT": str(collector_port)}),
        ("enrich", ["enrich"], {}),
        ("carts", ["carts"], {"PASSERELLE_CART_ABANDON_MINUTES": str(ABANDON_S / 60), "PASSERELLE_INSTANCE_ID": "c1"}),
        ("remarketing", ["remarketing"],
         {"PASSERELLE_REMARKETING_FOLLOWUP_HOURS": str(FOLLOWUP_S / 3600), "PASSERELLE_INSTANCE_ID": "r1",
          "PASSERELLE_REMARKETING_TICK_SECONDS": "1", "PASSERELLE_METRICS_PORT": str(metrics_port)}),
        ("bridge", ["emailing", "bridge"], {"PASSERELLE_EMAILING_PARTNER_URL": f"{partner_url}/v1/messages",
                                            "PASSERELLE_EMAILING_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
                                            "PASSERELLE_INSTANCE_ID": "b1"}),
    ]  # fmt: skip
    partner = Partner(partner_url)
    tails_: dict[str, TopicTail] = {}
    chaos: Chaos | None = None
    failed = True
    try:
        for name, args, extra in specs:
            fleet.start(name, args, {**env, **extra})

        def wait(predicate: Any, timeout: float, what: str, every: float = 0.5) -> float:
            begin = time.monotonic()
            while not predicate():
                dead = fleet.dead()
                assert not dead, f"{what}: {', '.join(dead)} exited"
                assert time.monotonic() - begin < timeout, f"timed out after {timeout:.0f}s waiting for {what}"
                time.sleep(every)
            return time.monotonic() - begin

        wait(lambda: http_ok(f"{partner_url}/_control"), 30, "the partner stand-in")
        wait(lambda: http_ok(f"http://127.0.0.1:{collector_port}/healthz"), 30, "the collector")
        partner.control(fail_ratio=0.2, status=500)

        def profiles_cached() -> bool:
            try:
                text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2).text
            except httpx.HTTPError:
                return False
            return metric_total(text, "passerelle_remarketing_inputs_total", kind="profile") >= len(profiles)

        wait(profiles_cached, 120, "the remarketing sequencer to read the CRM profiles")
        print(f"\nprocesses ready after {time.monotonic() - started:.1f}s; {VISITORS} visitors, {len(events)} events")

        # Kills spread over the posting, the abandonments, step 1 and step 2; each process at least 15 s apart.
        post_estimate = len(events) / 1500
        window = post_estimate + ABANDON_S + FOLLOWUP_S + 10
        plan = kill_schedule(random.Random(CHAOS_SEED), list(KILLED), KILLS_EACH, 3.0, window, 15.0)
        print("chaos plan: " + ", ".join(f"{name}@{at:.0f}s" for at, name in plan))
        chaos = Chaos(fleet, plan)
        chaos.start()

        accepted_at: dict[str, float] = {}  # order event id -> wall clock (ms) when the collector accepted it
        posted = time.monotonic()
        with EventSender(f"http://127.0.0.1:{collector_port}", API_KEY, SendOptions(batch_size=500),
                         progress=None) as sender:  # fmt: skip
            for i in range(0, len(events), POST_CHUNK):
                chunk = events[i : i + POST_CHUNK]
                sent = sender.send(chunk)
                now_ms = time.time() * 1000
                accepted_at.update((e["event_id"], now_ms) for e in chunk if e["type"] == "order")
        post_s = time.monotonic() - posted
        assert sent.accepted == sent.events == len(events) and sent.rejected == sent.failed == 0, sent.lines()
        print(f"posted {sent.events} events in {post_s:.1f}s ({sent.events / post_s:.0f}/s)")

        for topic in ("carts.abandoned", "remarketing.messages", "remarketing.deliveries"):
            tails_[topic] = TopicTail(stack.conn(), topic)

        def eligible_carts() -> dict[str, dict[str, Any]]:
            carts = {c["event_id"]: c for c in tails_["carts.abandoned"].values()}
            return {e: c for e, c in carts.items()
                    if may_be_emailed(profiles.get(c["customer_id"] or ""), c["site_marketing_consent"])}  # fmt: skip

        def ordered_after(cart: dict[str, Any]) -> list[tuple[int, str]]:
            """The customer's orders at or after the cart's last activity (event time)."""
            return [o for o in orders.get(cart["customer_id"], []) if o[0] >= to_ms(cart["last_activity_at"])]

        def unique(messages: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
            first: dict[str, dict[str, Any]] = {}
            for m in messages:
                first.setdefault(m["message_id"], m)
            return first

        def must_start() -> set[str]:
            return {c["customer_id"] for c in eligible_carts().values() if not ordered_after(c)}

        def flow_done() -> bool:
            for tail in tails_.values():
                tail.poll(0.2)
            if chaos is not None and chaos.is_alive():
                return False
            eligible = eligible_carts()
            if not meant <= {c["visitor_id"] for c in eligible.values()}:
                return False
            messages = unique(tails_["remarketing.messages"].values())
            step1 = {m["sequence_id"]: m for m in messages.values() if m["step"] == 1}
            step2 = {m["sequence_id"] for m in messages.values() if m["step"] == 2}
            if must_start() - {m["customer_id"] for m in step1.values()}:
                return False
            by_sequence = {sequence_id(c["customer_id"], e): c for e, c in eligible.items()}
            if {s for s in step1 if s in by_sequence and not ordered_after(by_sequence[s])} - step2:
                return False
            delivered = partner.delivered()
            outcomes = {o["message_id"] for o in tails_["remarketing.deliveries"].values()}
            return all(i in delivered and i in outcomes for i in messages)

        flow_timeout = window + 240
        waited = wait(flow_done, flow_timeout, "every expected message at the partner", every=1.0)
        print(f"flow complete {waited:.1f}s after the traffic was posted")
        time.sleep(5)  # settle: a late duplicate or a stray delivery shows up now
        for tail in tails_.values():
            tail.poll(0.5)
        carts = {c["event_id"]: c for c in tails_["carts.abandoned"].values()}
        eligible = eligible_carts()
        raw_messages = tails_["remarketing.messages"].poll(1.0)
        messages = unique(raw_messages)
        outcomes = tails_["remarketing.deliveries"].poll(1.0)
        delivered = partner.delivered()
        requests = partner.requests()
        statuses = Counter(r["status"] for r in requests)
        kills = dict(fleet.kills)
        problems: list[str] = []

        # --- the partner: every message id once (one 2xx per idempotency key), nothing else -----------------
        ids = set(messages)
        topic_dups = {i: n for i, n in Counter(m["message_id"] for m in raw_messages).items() if n > 1}
        if missing := ids - set(delivered):
            problems.append(f"{len(missing)} message(s) never got a 2xx: {sorted(missing)[:5]}")
        if stray := set(delivered) - ids:
            problems.append(f"{len(stray)} unexpected key(s) got a 2xx: {sorted(stray)[:5]}")
        if strange := {r["idempotency_key"] for r in requests} - ids:
            problems.append(f"requests with keys not on remarketing.messages: {sorted(strange)[:5]}")
        if bad := [r["seq"] for r in requests if (r["body"] or {}).get("message_id") != r["idempotency_key"]]:
            problems.append(f"requests whose body's message_id is not the idempotency key: {bad[:5]}")
        if set(statuses) - {202, 500}:
            problems.append(f"statuses other than 202/500: {dict(statuses)}")
        outcome_of: dict[str, set[str]] = {}
        for o in outcomes:
            outcome_of.setdefault(o["message_id"], set()).add(o["outcome"])
        if not_delivered := {i for i in ids if "delivered" not in outcome_of.get(i, set())}:
            problems.append(f"{len(not_delivered)} message(s) without a delivered outcome: {sorted(not_delivered)[:5]}")
        if dead := {i for i, o in outcome_of.items() if "dead_lettered" in o}:
            problems.append(f"{len(dead)} message(s) dead-lettered: {sorted(dead)[:5]}")
        twice = {k: n for k, n in delivered.items() if n != 1}
        if twice:
            detail = []
            for key in sorted(twice)[:5]:
                seen = [(r["seq"], r["status"], round(r["received_at"], 2)) for r in requests
                        if r["idempotency_key"] == key]  # fmt: skip
                detail.append(f"{key}: {twice[key]} x 2xx, on the topic {topic_dups.get(key, 1)}x, requests {seen}")
            problems.append(f"{len(twice)} idempotency key(s) got more than one 2xx at the partner "
                            f"(the stand-in does not deduplicate):\n  " + "\n  ".join(detail))  # fmt: skip

        # --- the messages: the ones the abandoned carts, the CRM and the orders call for --------------------
        step1 = [m for m in messages.values() if m["step"] == 1]
        step2 = [m for m in messages.values() if m["step"] == 2]
        if not step1 or not step2:
            problems.append(f"{len(step1)} step 1, {len(step2)} step 2: the scenario does not exercise both")
        per_customer = Counter(m["customer_id"] for m in step1)
        if several := {c: n for c, n in per_customer.items() if n > 1}:
            problems.append(f"customers with more than one sequence (the cap): {several}")
        if not_started := must_start() - set(per_customer):
            problems.append(f"customers with an eligible cart not followed by an order, no step 1: {not_started}")
        if not meant <= {c["visitor_id"] for c in eligible.values()}:
            problems.append(f"generator abandoners missing from carts.abandoned: {meant - {c['visitor_id'] for c in eligible.values()}}")  # noqa: E501
        cart_of: dict[str, dict[str, Any]] = {}
        for m in step1:
            customer = m["customer_id"]
            matches = [c for e, c in carts.items()
                       if c["customer_id"] == customer and sequence_id(customer, e) == m["sequence_id"]]  # fmt: skip
            if len(matches) != 1:
                problems.append(f"step 1 {m['message_id']} matches {len(matches)} CartAbandoned")
                continue
            cart = cart_of[m["sequence_id"]] = matches[0]
            profile = profiles.get(customer)
            if not (may_be_emailed(profile, cart["site_marketing_consent"]) and profile
                    and m["email"] == profile["email"]):  # fmt: skip
                problems.append(f"step 1 {m['message_id']} to a customer who may not be emailed, or wrong email")
            if m["message_id"] != message_id(m["sequence_id"], 1) or m["promotion"] is not None:
                problems.append(f"step 1 {m['message_id']}: wrong id or a promotion")
            if m["lines"] != cart["lines"] or m["site"] != SITE:
                problems.append(f"step 1 {m['message_id']}: lines or site differ from its cart")
        step2_of = {m["sequence_id"]: m for m in step2}
        owed = {s for s, cart in cart_of.items() if not ordered_after(cart)}
        if unsent := owed - set(step2_of):
            problems.append(f"{len(unsent)} step 2 owed and not sent: {sorted(unsent)[:5]}")
        late_orders = 0
        for s, m in step2_of.items():
            if s not in cart_of:
                problems.append(f"step 2 {m['message_id']} without a step 1")
                continue
            if m["message_id"] != message_id(s, 2) or (m["promotion"] or {}).get("code") != PROMO_CODE:
                problems.append(f"step 2 {m['message_id']}: wrong id or promotion")
            first = next(x for x in step1 if x["sequence_id"] == s)
            if to_ms(m["created_at"]) - to_ms(first["created_at"]) < FOLLOWUP_S * 1000 - 1:
                problems.append(f"step 2 {m['message_id']} earlier than the follow-up delay")
            after = ordered_after(cart_of[s])
            if after:
                known = [accepted_at[e] for _, e in after if e in accepted_at]
                if known and min(known) + LATE_ORDER_GRACE_S * 1000 < to_ms(m["created_at"]):
                    ahead = (to_ms(m["created_at"]) - min(known)) / 1000
                    problems.append(f"step 2 {m['message_id']} for customer {m['customer_id']} who ordered after "
                                    f"abandoning; the order reached the collector {ahead:.0f}s before it")  # fmt: skip
                else:
                    late_orders += 1
        if chaos is not None and chaos.errors:
            problems.append(f"chaos errors: {chaos.errors}")
        if short := {n: kills.get(n, 0) for n in KILLED if kills.get(n, 0) < KILLS_EACH}:
            problems.append(f"fewer kills than planned: {short}")
        if dead_now := fleet.dead():
            problems.append(f"processes exited on their own: {dead_now}")

        print(
            f"summary: {VISITORS} visitors, {len(events)} events posted in {post_s:.1f}s; {len(carts)} carts "
            f"abandoned ({len(eligible)} of customers who may be emailed); {len(ids)} messages ({len(step1)} step 1, "
            f"{len(step2)} step 2, {late_orders} step 2 before a late order), {len(raw_messages)} records on "
            f"remarketing.messages ({len(topic_dups)} ids more than once); kills {kills} at "
            f"{chaos.done if chaos else []}; partner: {len(requests)} requests, {statuses.get(202, 0)} x 202, "
            f"{statuses.get(500, 0)} x 500, {sum(delivered.values())} 2xx over {len(delivered)} keys; "
            f"duration {time.monotonic() - started:.1f}s"
        )
        assert not problems, "\n".join(problems)
        failed = False
    finally:
        if chaos is not None:
            chaos.stop()
            chaos.join(60)
        for tail in tails_.values():
            tail.close()
        partner.close()
        procs = fleet.current()
        codes = stop_all(procs)
        if failed:
            print(tails(procs))
    clean = {name: -signal.SIGTERM if name == "standin" else 0 for name in codes}
    assert codes == clean, f"{codes}\n{tails(procs)}"
