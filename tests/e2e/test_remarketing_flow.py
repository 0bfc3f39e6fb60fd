"""The remarketing flow end to end, through the real CLI processes, on a private stack of its own.

Generated shop traffic goes to the HTTP collector; ``enrich``, ``carts``, ``remarketing`` (faust) and
``emailing bridge`` run as ``python -m passerelle ...`` processes with compressed delays; the partner is the
stand-in, answering 500 to a fifth of the requests. What reached the partner is judged against what the topics
(``carts.abandoned``, ``remarketing.messages``) and the generator's journeys say should have.
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

from passerelle.connectors.generator.send import EventSender, SendOptions, publish_campaigns, publish_profiles
from passerelle.connectors.generator.shop import HOUR, Shop
from passerelle.deploy.local.stack import free_port
from passerelle.streams.remarketing.sequence import message_id, sequence_id, to_ms
from tests.e2e.flow_helpers import (
    Partner,
    Proc,
    TopicTail,
    http_ok,
    may_be_emailed,
    metric_total,
    start_stack,
    stop_all,
    tails,
    wait_until,
)

pytestmark = pytest.mark.e2e

SITE, API_KEY = "shop.example", "e2e-key"
SEED = 32  # its journeys: several identified customers with consent and an email abandon a cart (checked below)
VISITORS, CUSTOMERS = 40, 20
ABANDON_MINUTES = "0.1"  # 6 s without activity: the whole traffic is posted and enriched well within it
FOLLOWUP_HOURS = "0.002"  # step 2 7.2 s after step 1
PROMO_CODE = "COMEBACK10"  # the default of PASSERELLE_REMARKETING_PROMO_CODE
FLOW_TIMEOUT_S = 90


COMPONENT = {"collector": "collector", "enrich": "enrich", "carts": "carts", "remarketing": "remarketing",
             "bridge": "emailing"}  # fmt: skip
"""Which credentials each process runs with on the secured stack (the stand-in does not touch Kafka)."""


@pytest.mark.timeout(300)
@pytest.mark.parametrize("secure", [False, True], ids=["plaintext", "secured"])
def test_abandoned_carts_become_remarketing_emails_delivered_once_each(
    stack_env: dict[str, str], tmp_path: Path, secure: bool
) -> None:
    """On the secured stack (SASL_SSL, ACLs, registry with basic auth over HTTPS) every process has its own user."""
    env = stack_env
    stack = start_stack(env, secure=secure)

    # The generator's own account of who abandons a cart, and the CRM it publishes.
    shop = Shop(SEED, int(time.time() * 1000) - 8 * HOUR, site=SITE, span_ms=8 * HOUR, customers=CUSTOMERS)
    journeys = list(shop.journeys(VISITORS))
    profiles = {p["customer_id"]: p for p in shop.crm_profiles()}
    meant = {j.visitor_id: j.customer_id for j in journeys
             if j.abandoned and j.customer_id and may_be_emailed(profiles.get(j.customer_id))}  # fmt: skip
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
            eligible = {e: c for e, c in carts.items() if may_be_emailed(profiles.get(c["customer_id"] or ""))}
            return carts, eligible

        def step2_due(cart: dict[str, Any]) -> bool:
            """Step 2 is owed unless the customer ordered after the abandoned cart's last activity."""
            return not any(t >= to_ms(cart["last_activity_at"]) for t in orders.get(cart["customer_id"], []))

        def flow_done() -> bool:
            _, eligible = expected()
            messages = tails_["remarketing.messages"].poll()
            if not set(meant) <= {c["visitor_id"] for c in eligible.values()}:
                return False
            step1 = {m["sequence_id"]: m for m in messages if m["step"] == 1}
            step2 = {m["sequence_id"] for m in messages if m["step"] == 2}
            if {c["customer_id"] for c in eligible.values()} - {m["customer_id"] for m in step1.values()}:
                return False
            by_sequence = {sequence_id(c["customer_id"], e): c for e, c in eligible.items()}
            owed = {s for s in step1 if s in by_sequence and step2_due(by_sequence[s])}
            if owed - step2:
                return False
            delivered = partner.delivered()
            return all(m["message_id"] in delivered for m in messages)

        def poll_all() -> None:
            for tail in tails_.values():
                tail.poll(0.2)

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
        cart_of: dict[str, dict[str, Any]] = {}
        for m in step1:
            # The sequence id is derived from the customer and the CartAbandoned event id.
            customer = m["customer_id"]
            matches = [c for e, c in carts.items()
                       if c["customer_id"] == customer and sequence_id(customer, e) == m["sequence_id"]]  # fmt: skip
            assert len(matches) == 1, f"step 1 {m['message_id']} matches no CartAbandoned on carts.abandoned"
            cart = cart_of[m["sequence_id"]] = matches[0]
            profile = profiles[m["customer_id"]]
            assert may_be_emailed(profile) and m["email"] == profile["email"]
            assert m["message_id"] == message_id(m["sequence_id"], 1) and m["promotion"] is None
            assert m["lines"] == cart["lines"] and m["site"] == SITE
            assert [p["id"] for p in m["products"]] == [p["id"] for p in cart["viewed_products"]][:6]
        owed = {s for s, cart in cart_of.items() if step2_due(cart)}
        assert owed, "no customer left without ordering: step 2 is not exercised"
        assert {m["sequence_id"] for m in step2} >= owed
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
