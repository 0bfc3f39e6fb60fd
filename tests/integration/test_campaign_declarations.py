"""Campaign declarations on the real broker and registry: declarations, rejections, deletions, auto-declaration.

The processor runs in a thread of the test (the runner, exactly-once, on
topics of its own). Partners publish ``Campaign`` records on the declarations
topic; what the processor accepts appears on the campaigns topic, what it
refuses on the dead-letter topic with its reason in the error headers; an
undeclared tag matching a rule becomes a campaign of the rule's partner.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from passerelle.schemas.catalog import load_catalog
from passerelle.schemas.clients import Connection, producer, registry_client
from passerelle.schemas.serde import AvroEncoder
from passerelle.streams.campaign_declarations.processor import CampaignDeclarationsProcessor, DeclarationsTopics
from passerelle.streams.campaign_declarations.rules import AutoRule, DeclarationsConfig
from passerelle.streams.runtime import Runner, RunnerConfig
from passerelle.streams.runtime.deadletter import header_dict
from tests.integration.kafka_helpers import STRING_KEY, TopicReader, create_topics, produce_avro

pytestmark = pytest.mark.integration
CATALOG = load_catalog()
CAMPAIGN = CATALOG.schema_text("Campaign")
NOW = int(time.time() * 1000)


def campaign(key: str, partner: str, **fields: Any) -> dict[str, Any]:
    record = {
        "key": key, "name": f"campaign {key}", "partner": partner, "channel": "email", "medium": "email",
        "tagged_url_template": f"https://shop.example/news?xtor={key}", "valid_from": None, "valid_to": None,
        "cost_model": "flat", "cost_amount": 1500.0, "currency": "EUR", "declared_at": NOW,
    }  # fmt: skip
    return {**record, **fields}


def partner_key(key_id: str, partner: str) -> dict[str, Any]:
    return {"key_id": key_id, "partner": partner, "scopes": ["campaigns:write", "campaigns:read"],
            "secret_hash": "scrypt$n=2,r=1,p=1$x$y", "created_at": NOW, "revoked_at": None, "label": None}  # fmt: skip


@dataclass
class Flow:
    topics: DeclarationsTopics
    dlq: str
    bootstrap: str
    registry: str
    runner: Runner
    thread: threading.Thread

    def declare(self, *records: tuple[str, dict[str, Any]]) -> None:
        produce_avro(self.bootstrap, self.registry, self.topics.declarations, CAMPAIGN, records)

    def delete(self, key: str, partner: str) -> None:
        """A tombstone naming its partner in the ``partner`` header."""
        conn = Connection.plain(self.bootstrap, self.registry)
        keys = AvroEncoder.for_subject(registry_client(conn), f"{self.topics.declarations}-key", STRING_KEY)
        target = producer(conn)
        target.produce(self.topics.declarations, None, keys.encode(key), headers=[("partner", partner.encode())])
        assert target.flush(30) == 0


@pytest.fixture
def flow(unique: Callable[[str], str], kafka_bootstrap: str, schema_registry_url: str) -> Iterator[Flow]:
    t = DeclarationsTopics(declarations=unique("campaigns.declarations"), undeclared=unique("campaigns.undeclared"),
                           campaigns=unique("campaigns"), partners_keys=unique("partners.keys"))  # fmt: skip
    dlq = unique("dlq")
    assert t.partners_keys is not None
    create_topics(kafka_bootstrap, {t.declarations: 1, dlq: 1})
    create_topics(kafka_bootstrap, {t.undeclared: 1, t.campaigns: 1, t.partners_keys: 1}, {"cleanup.policy": "compact"})
    produce_avro(kafka_bootstrap, schema_registry_url, t.partners_keys, CATALOG.schema_text("PartnerKey"),
                 [("00000000000000a1", partner_key("00000000000000a1", "mailer")),
                  ("00000000000000a2", partner_key("00000000000000a2", "ads"))])  # fmt: skip
    rules = (AutoRule("retarget", "RT-", index=1), AutoRule("mailer", "EREC-", min=1000, max=1999, index=2))
    config = RunnerConfig(
        app_id=unique("campaign-declarations"),
        bootstrap_servers=kafka_bootstrap,
        schema_registry_url=schema_registry_url,
        input_schemas={t.declarations: CAMPAIGN, t.undeclared: CAMPAIGN},
        output_schemas={t.campaigns: CAMPAIGN},
        dead_letter_topic=dlq,
    )
    runner = Runner(CampaignDeclarationsProcessor(t, DeclarationsConfig(rules=rules)), config)
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    yield Flow(t, dlq, kafka_bootstrap, schema_registry_url, runner, thread)
    runner.stop()
    thread.join(30)


def test_declarations_rejections_deletions_and_auto_declarations_on_the_broker(flow: Flow) -> None:
    t = flow.topics
    # two partners declare one key in one go: the first wins, the second is a clash; one declaration is invalid
    flow.declare(("EREC-123", campaign("EREC-123", "mailer")), ("EREC-123", campaign("EREC-123", "ads")),
                 ("EREC-124", campaign("EREC-124", "mailer", medium="cpc", currency="eur")))  # fmt: skip
    # undeclared tags: one a prefix rule matches, one no rule matches, then one in a rule's range (after the
    # unmatched one in the same partition: once it is declared, the unmatched one was judged, in order)
    produce_avro(flow.bootstrap, flow.registry, t.undeclared, CAMPAIGN, [
        ("RT-1042", campaign("RT-1042", "retarget", name="RT-1042", channel="display", medium="display",
                             tagged_url_template="https://shop.example/p?utm_source=retarget&utm_medium=display"
                                                 "&utm_campaign=RT-1042", cost_model=None, cost_amount=None,
                             currency=None)),
        ("SEC-7", campaign("SEC-7", "unknown", medium="cpc", channel="cpc",
                           tagged_url_template="https://shop.example/?xtor=SEC-7")),
        ("EREC-1500", campaign("EREC-1500", "unknown", tagged_url_template="https://shop.example/?xtor=EREC-1500")),
    ])  # fmt: skip

    campaigns = TopicReader(flow.bootstrap, flow.registry, t.campaigns)
    dead = TopicReader(flow.bootstrap, flow.registry, flow.dlq, decode=False)
    try:
        by_key = {str(v["key"]): v for _, v in campaigns.read(until=3, timeout=60)}
        assert flow.thread.is_alive()
        letters = dead.read(until=2, timeout=60)
        assert set(by_key) == {"EREC-123", "RT-1042", "EREC-1500"}  # not SEC-7: no rule
        assert by_key["EREC-1500"]["partner"] == "mailer" and by_key["EREC-1500"]["medium"] == "email"
        assert by_key["EREC-123"]["partner"] == "mailer" and by_key["EREC-123"]["cost_amount"] == 1500.0
        assert by_key["RT-1042"]["partner"] == "retarget" and by_key["RT-1042"]["medium"] == "display"
        errors = sorted(header_dict(m.headers())["exception.message"] for m, _ in letters)
        assert errors[0] == "key: already declared by another partner"
        assert errors[1].startswith("medium: an xtor EREC campaign's medium is email") and "currency: " in errors[1]
        assert all(m.value() is not None and header_dict(m.headers())["topic"] == t.declarations for m, _ in letters)

        # the owner deletes its campaign: a tombstone on campaigns
        flow.delete("EREC-123", "mailer")
        records = campaigns.read(until=4, timeout=60)
        assert len(records) == 4 and records[-1][1] is None
        # the tombstone is processed after the declarations (one partition): their dead letters are all in
        assert len(dead.read(until=3, timeout=1, idle=0.5)) == 2
    finally:
        campaigns.close()
        dead.close()
