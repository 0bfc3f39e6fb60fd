"""The remarketing flow end to end, through the real CLI processes, on a private stack of its own.

Generated shop traffic goes to the HTTP collector; ``enrich``, ``carts``, ``remarketing`` (faust) and
``emailing bridge`` run as ``python -m passerelle ...`` processes with compressed delays; the partner is the
stand-in, answering 500 to a fifth of the requests. What reached the partner is judged against what the topics
(``carts.abandoned``, ``remarketing.messages``) and the generator's journeys say should have: a message only for
a customer whose site-level consent (on the hits) and CRM consent both say yes. Once every step 1 is out, one
customer asks for erasure with a privacy request naming only their visitor id: their step 2 never comes, and
the cart tracker's and the enrichment's state of that visitor is deleted.
"""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from passerelle.connectors.generator.send import (
    EventSender,
    SendOptions,
    publish,
    publish_campaigns,
    publish_profiles,
)
from passerelle.connectors.generator.shop import HOUR, Shop
from passerelle.deploy.local.stack import free_port
from passerelle.streams.remarketing.sequence import message_id, sequence_id, to_ms
from tests.e2e.flow_helpers import (
    Partner,
    Proc,
    TopicTail,
    http_ok,
    latest_by_key,
    may_be_emailed,
    metric_total,
    start_stack,
    stop_all,
    tails,
    wait_until,
)

pytestmark = pytest.mark.e2e

SITE, API_KEY = "shop.example", "e2e-key"
SEED = 126  # its journeys: 4 customers who may be emailed abandon a cart, 1 refused on the site (checked below)
VISITORS, CUSTOMERS = 40, 20
ABANDON_MINUTES = "0.1"  # 6 s without activity: the whole traffic is posted and enriched well within it
FOLLOWUP_HOURS = "0.004"  # step 2 14.4 s after step 1: room for the erasure to overtake one
PROMO_CODE = "COMEBACK10"  # the default of PASSERELLE_REMARKETING_PROMO_CODE
FLOW_TIMEOUT_S = 90


COMPONENT = {"collector": "collector", "enrich": "enrich", "carts": "carts", "remarketing": "remarketing",
             "bridge": "emailing"}  # fmt: skip
"""Which credentials each process runs with on the secured stack (the stand-in does not touch Kafka)."""


@pytest.mark.timeout(300)
def test_abandoned_carts_become_remarketing_emails_delivered_once_each(
    stack_env: dict[str, str], tmp_path: Path
) -> None:
    """On the secured stack (SASL_SSL, ACLs, registry with basic auth over HTTPS) every process has its own user.

    The secured stack only: the same processes on the plaintext stack run in
    ``test_remarketing_reliability.py`` (10,000 visitors, SIGKILLs) and in the
    demo's test, and a plaintext run of this one cost 70 s of the suite for no
    code path the secured run misses.
    """
    env = stack_env
    stack = start_stack(env, secure=True)

    # The generator's own account of who abandons a cart, and the CRM it publishes.
    shop = Shop(SEED, int(time.time() * 1000) - 8 * HOUR, site=SITE, span_ms=8 * HOUR, customers=CUSTOMERS)
    journeys = list(shop.journeys(VISITORS))
    profiles = {p["customer_id"]: p for p in shop.crm_profiles()}
    meant = {j.visitor_id: j.customer_id for j in journeys  # the site's consent: the one of the visitor's last hit
             if j.abandoned and j.customer_id
             and may_be_emailed(profiles.get(j.customer_id), j.events[-1]["consent"]["marketing"])}  # fmt: skip
    assert meant, f"seed {SEED}: no identified customer with consent and email abandons a cart; pick another seed"
    orders: dict[str, list[int]] = {}
    for journey in journeys:
        for event in journey.events:
            if event["type"] == "order" and event.get("customer_id"):
                orders.setdefault(event["customer_id"], []).append(int(event["event_time"]))
    publish_campaigns(shop.campaigns(), stack.conn("generator"))
    publish_profiles(list(profiles.values()), stack.conn("generator"))

    logs = tmp_path / "logs"
    logs.mkdir()
    standin_port, collector_port, metrics_port = free_port(), free_port(), free_port()
    partner_url = f"http://127.0.0.1:{standin_port}"
    specs: list[tuple[str, list[str], dict[str, str]]] = [
        ("standin", ["emailing", "standin", "--port", str(standin_port)], {}),
        ("collector", ["collector"], {"PASSERELLE_COLLECTOR_SITES": json.dumps({SITE: API_KEY}),
                                      "PASSERELLE_COLLECTOR_PORT": str(collector_port)}),
        ("enrich", ["enrich"], {}),
        ("carts", ["carts"], {"PASSERELLE_CART_ABANDON_MINUTES": ABANDON_MINUTES}),
        ("remarketing", ["remarketing"],
         {"PASSERELLE_REMARKETING_FOLLOWUP_HOURS": FOLLOWUP_HOURS, "PASSERELLE_REMARKETING_TICK_SECONDS": "1",
          "PASSERELLE_METRICS_PORT": str(metrics_port)}),
        ("bridge", ["emailing", "bridge"], {"PASSERELLE_EMAILING_PARTNER_URL": f"{partner_url}/v1/messages"}),
    ]  # fmt: skip
    procs: list[Proc] = []
    partner = Partner(partner_url)
    tails_: dict[str, TopicTail] = {}
    failed = True
    started = time.monotonic()
    try:
        for name, args, extra in specs:
            base = stack.env_for(COMPONENT[name]) if name in COMPONENT else env
            procs.append(Proc(name, args, {**base, **extra}, logs))
        wait_until(lambda: http_ok(f"{partner_url}/_control"), 30, "the partner stand-in", procs)
        wait_until(lambda: http_ok(f"http://127.0.0.1:{collector_port}/healthz"), 30, "the collector", procs)
        partner.control(fail_ratio=0.2, status=500)

        def profiles_cached() -> bool:  # else an abandonment could be judged before its CRM profile is known
            try:
                text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2).text
            except httpx.HTTPError:
                return False
            return metric_total(text, "passerelle_remarketing_inputs_total", kind="profile") >= len(profiles)

        waited = wait_until(profiles_cached, 60, "the remarketing sequencer to read the CRM profiles", procs)
        print(f"processes ready after {time.monotonic() - started:.1f}s (profiles cached in {waited:.1f}s)")

        with EventSender(f"http://127.0.0.1:{collector_port}", API_KEY, SendOptions(batch_size=100),
                         progress=None) as sender:  # fmt: skip
            sent = sender.send(shop.events(VISITORS))
        assert sent.accepted == sent.events > 0 and sent.rejected == sent.failed == 0, sent.lines()
        print(f"posted {sent.events} events of {VISITORS} visitors in {sent.elapsed_s:.1f}s")

        for topic in ("carts.abandoned", "remarketing.messages", "remarketing.deliveries"):
            tails_[topic] = TopicTail(stack.conn(), topic)

        def expected() -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
            """From carts.abandoned: the carts that must start a sequence (by event id), and who may be emailed."""
            carts = {c["event_id"]: c for c in tails_["carts.abandoned"].values()}
            eligible = {e: c for e, c in carts.items()
                        if may_be_emailed(profiles.get(c["customer_id"] or ""),
                                          c["site_marketing_consent"])}  # fmt: skip
            return carts, eligible

        erased: dict[str, str] = {}  # the customer erased by visitor id: customer, visitor, sequence

        def step2_due(cart: dict[str, Any]) -> bool:
            """Step 2 is owed unless the customer ordered after the abandoned cart's last activity."""
            return not any(t >= to_ms(cart["last_activity_at"]) for t in orders.get(cart["customer_id"], []))

        def steps_1_done() -> bool:
            _, eligible = expected()
            messages = tails_["remarketing.messages"].poll()
            if not set(meant) <= {c["visitor_id"] for c in eligible.values()}:
                return False
            step1 = {m["customer_id"] for m in messages if m["step"] == 1}
            return not {c["customer_id"] for c in eligible.values()} - step1

        def flow_done() -> bool:
            if not steps_1_done():
                return False
            _, eligible = expected()
            messages = tails_["remarketing.messages"].poll()
            step1 = {m["sequence_id"]: m for m in messages if m["step"] == 1}
            step2 = {m["sequence_id"] for m in messages if m["step"] == 2}
            by_sequence = {sequence_id(c["customer_id"], e): c for e, c in eligible.items()}
            owed = {s for s in step1 if s in by_sequence and step2_due(by_sequence[s])} - {erased.get("sequence")}
            if owed - step2:
                return False
            delivered = partner.delivered()
            return all(m["message_id"] in delivered for m in messages)

        def poll_all() -> None:
            for tail in tails_.values():
                tail.poll(0.2)

        waited = wait_until(lambda: (poll_all(), steps_1_done())[1], FLOW_TIMEOUT_S, "every step 1", procs)
        # Privacy by visitor: a customer with one cart and a step 2 owed asks for erasure, naming only the visitor.
        _, eligible = expected()
        single = Counter(c["customer_id"] for c in eligible.values())
        victim = next(c for e, c in sorted(eligible.items()) if single[c["customer_id"]] == 1 and step2_due(c))
        erased.update(customer=victim["customer_id"], visitor=victim["visitor_id"],
                      sequence=sequence_id(victim["customer_id"], victim["event_id"]))  # fmt: skip
        publish([{"request_id": f"erase-{victim['visitor_id']}", "kind": "erasure", "customer_id": None,
                  "visitor_id": victim["visitor_id"], "marketing_consent": None,
                  "requested_at": int(time.time() * 1000)}], conn=stack.conn(), topic="privacy.requests",
                catalog_topic="privacy.requests", key_field="visitor_id", time_field="requested_at")  # fmt: skip
        print(f"every step 1 after {waited:.1f}s; erasure requested by visitor id for customer {erased['customer']}")

        waited = wait_until(lambda: (poll_all(), flow_done())[1], FLOW_TIMEOUT_S,
                            "the partner to receive every expected remarketing message", procs, every=1.0)  # fmt: skip
        print(f"flow complete {waited:.1f}s after the traffic was posted")
        # Settle: a step sent twice, a late duplicate or a stray delivery would show up now.
        time.sleep(3)
        poll_all()
        carts, eligible = expected()
        messages = tails_["remarketing.messages"].poll(1.0)
        outcomes = tails_["remarketing.deliveries"].poll(1.0)
        delivered = partner.delivered()
        requests = partner.requests()
        alive = {p.name: p.alive() for p in procs}

        # --- what the partner received -----------------------------------------------------------------
        ids = {m["message_id"] for m in messages}
        assert delivered == dict.fromkeys(ids, 1), "every message delivered with a 2xx exactly once, nothing else"
        statuses = Counter(r["status"] for r in requests)
        assert set(statuses) <= {202, 500} and statuses[202] == len(ids), statuses
        by_id = {m["message_id"]: m for m in messages}
        for request in requests:
            assert request["idempotency_key"] in by_id, request
            assert request["body"]["message_id"] == request["idempotency_key"]
        assert {o["message_id"] for o in outcomes if o["outcome"] == "delivered"} >= ids
        print(f"partner: {len(ids)} messages, {len(requests)} requests ({dict(statuses)})")

        # --- which messages: the ones the abandoned carts and the CRM call for ---------------------------
        step1 = [m for m in messages if m["step"] == 1]
        step2 = [m for m in messages if m["step"] == 2]
        assert step1, "no step 1 at all"
        assert Counter(m["message_id"] for m in messages) == Counter(ids)  # no message twice on the topic
        assert len({m["customer_id"] for m in step1}) == len(step1)  # one sequence per customer (the cap)
        assert {m["customer_id"] for m in step1} == {c["customer_id"] for c in eligible.values()}
        assert set(meant) <= {c["visitor_id"] for c in eligible.values()}  # the generator's abandoners
        # One consent rule: refused on the site, yes in the CRM (with an email) is no message.
        refused = {
            c["customer_id"]
            for c in carts.values()
            if c["customer_id"]
            and not c["site_marketing_consent"]
            and may_be_emailed(profiles.get(c["customer_id"]), True)
        } - {m["customer_id"] for m in step1}
        assert refused, f"seed {SEED}: no customer refused on the site with the CRM's yes; pick another seed"
        assert all(not c["marketing_consent"] for c in carts.values() if c["customer_id"] in refused)
        cart_of: dict[str, dict[str, Any]] = {}
        for m in step1:
            # The sequence id is derived from the customer and the CartAbandoned event id.
            customer = m["customer_id"]
            matches = [c for e, c in carts.items()
                       if c["customer_id"] == customer and sequence_id(customer, e) == m["sequence_id"]]  # fmt: skip
            assert len(matches) == 1, f"step 1 {m['message_id']} matches no CartAbandoned on carts.abandoned"
            cart = cart_of[m["sequence_id"]] = matches[0]
            profile = profiles[m["customer_id"]]
            assert may_be_emailed(profile, cart["site_marketing_consent"]) and m["email"] == profile["email"]
            assert m["message_id"] == message_id(m["sequence_id"], 1) and m["promotion"] is None
            assert m["lines"] == cart["lines"] and m["site"] == SITE
            assert [p["id"] for p in m["products"]] == [p["id"] for p in cart["viewed_products"]][:6]
        owed = {s for s, cart in cart_of.items() if step2_due(cart)} - {erased["sequence"]}
        assert owed, "no customer left without ordering: step 2 is not exercised"
        assert {m["sequence_id"] for m in step2} >= owed
        # Privacy by visitor: the erased customer's sequence stopped, the visitor's state is gone.
        assert erased["sequence"] not in {m["sequence_id"] for m in step2}, "step 2 sent after the erasure"

        def state_deleted() -> bool:
            key = erased["visitor"].encode()
            return all(key in (latest := latest_by_key(stack.conn(), changelog)) and latest[key] is None
                       for changelog in ("passerelle-carts-carts-changelog",
                                         "passerelle-enrichment-visitors-changelog"))  # fmt: skip

        wait_until(state_deleted, 30, "the erased visitor's cart and enrichment state to be deleted", procs)
        for m in step2:
            assert m["sequence_id"] in cart_of, f"step 2 {m['message_id']} without a step 1"
            assert m["message_id"] == message_id(m["sequence_id"], 2)
            assert m["promotion"] is not None and m["promotion"]["code"] == PROMO_CODE
            first = next(s for s in step1 if s["sequence_id"] == m["sequence_id"])
            assert to_ms(m["created_at"]) - to_ms(first["created_at"]) >= float(FOLLOWUP_HOURS) * 3_600_000 - 1
        assert all(alive.values()), alive
        print(f"{len(carts)} carts abandoned, {len(eligible)} of customers who may be emailed; "
              f"{len(step1)} step 1, {len(step2)} step 2; whole flow {time.monotonic() - started:.1f}s")  # fmt: skip
        failed = False
    finally:
        for tail in tails_.values():
            tail.close()
        partner.close()
        codes = stop_all(procs)
        if failed:
            print(tails(procs))
    # Clean stops; uvicorn (the stand-in) re-raises the SIGTERM it handled gracefully, hence -15 there.
    clean = {name: -signal.SIGTERM if name == "standin" else 0 for name in codes}
    assert codes == clean, f"{codes}\n{tails(procs)}"
