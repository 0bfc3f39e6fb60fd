"""The sequencer's wiring without a broker: its settings, the order peek, decoding, dead letters, the profiles gate."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import fastavro
import pytest

from passerelle.commands.remarketing import remarketing_config
from passerelle.errors import PasserelleError
from passerelle.schemas.catalog import load_catalog
from passerelle.schemas.errors import RegistryUnavailableError
from passerelle.schemas.serde import AvroEncoder, LeadingField, SchemaCache, parse
from passerelle.settings import RemarketingSettings
from passerelle.streams.remarketing.config import RemarketingTopics
from passerelle.streams.remarketing.gate import Ends, ProfilesGate
from passerelle.streams.remarketing.inputs import InputDecoder, message_headers
from passerelle.streams.runtime.deadletter import (
    DEAD_LETTER_PREFIX,
    KEPT_BYTES,
    dead_letter_headers,
    dead_letter_record,
    header_dict,
)
from passerelle.streams.runtime.runner import NullValueError

pytestmark = pytest.mark.unit
CATALOG = load_catalog()


@pytest.fixture(autouse=True)
def _no_passerelle_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("PASSERELLE_"):
            monkeypatch.delenv(key)


# --- settings -> configuration ----------------------------------------------------------------------------


def test_every_runtime_setting_that_applies_reaches_the_sequencer(tmp_path: Path) -> None:
    settings = RemarketingSettings(
        instance_id="r7", processing_guarantee="at_least_once", commit_interval_ms=250, batch_size=50,
        metrics_port=9400, dead_letter_topic="dlq.remarketing", max_error_ratio=0.25, state_dir=tmp_path,
        remarketing_tick_seconds=0.5, remarketing_followup_hours=2,
    )  # fmt: skip
    config = remarketing_config(settings, "rm-app")
    assert (config.app_id, config.instance_id, config.client_id) == ("rm-app", "r7", "rm-app-r7")
    assert config.topics.dead_letters == "dlq.remarketing"
    assert (config.commit_interval_ms, config.batch_size, config.metrics_port) == (250, 50, 9400)
    assert config.error_budget.max_ratio == 0.25
    assert config.tick_ms == 500 and config.sequencer.followup_ms == 2 * 3_600_000
    assert config.data_dir == str(tmp_path / "remarketing" / "rm-app-r7")
    assert config.auto_register_schemas is False  # schemas are registered by `passerelle schemas register`


def test_unset_guarantee_is_at_least_once_and_exactly_once_is_refused() -> None:
    remarketing_config(RemarketingSettings())  # the runtime's default is not a request
    remarketing_config(RemarketingSettings(processing_guarantee="at_least_once"))
    with pytest.raises(PasserelleError, match=r"exactly_once cannot apply.*at least once.*idempotency") as err:
        remarketing_config(RemarketingSettings(processing_guarantee="exactly_once"))
    assert "\n" not in str(err.value)


def test_a_min_commit_interval_is_refused_as_meaningless_here() -> None:
    with pytest.raises(PasserelleError, match="PASSERELLE_MIN_COMMIT_INTERVAL_MS does not apply"):
        remarketing_config(RemarketingSettings(min_commit_interval_ms=10))


def test_other_topic_names_still_dead_letter_where_the_setting_says() -> None:
    topics = RemarketingTopics(carts_abandoned="c", dead_letters="d")
    config = remarketing_config(RemarketingSettings(dead_letter_topic="dlq.x"), "a", topics)
    assert config.topics == RemarketingTopics(carts_abandoned="c", dead_letters="dlq.x")


# --- the order peek (schemas.serde.LeadingField) ----------------------------------------------------------


def enriched_hit(type_: str, customer: str | None = "C1") -> dict[str, Any]:
    return {
        "event_id": "h1", "site": "shop.example", "visitor_id": "v1", "customer_id": customer, "event_time": 1,
        "type": type_, "url": "https://shop.example/", "referrer": None, "page": None, "campaign_params": {},
        "product": None, "order": None, "consent": {"analytics": True, "marketing": True}, "user_agent": None,
        "ip_truncated": None, "visit_id": "visit-1", "visit_number": 1,
        "traffic_source": {"medium": "direct", "source": None, "campaign": None, "term": None, "content": None,
                           "click_id": None, "network": None},
        "declared_campaign": None, "campaign_undeclared": False, "crm": None, "enriched_at": 2,
    }  # fmt: skip


def test_the_hit_type_is_read_without_decoding_the_hit() -> None:
    text = CATALOG.schema_text("EnrichedHit")
    encoder = AvroEncoder(7, text)
    peek = LeadingField({7: text}.__getitem__, "type")
    for type_ in ("page_view", "order", "product_view"):
        for customer in ("C1", None):
            assert peek.read(encoder.encode(enriched_hit(type_, customer))) == (True, type_)
    assert peek.read(None) == (False, None)
    assert peek.read(b"not framed") == (False, None)
    assert peek.read(encoder.encode(enriched_hit("order"))[:12]) == (False, None)  # truncated: decode in full


def test_a_registry_outage_is_not_remembered_by_the_peek() -> None:
    text = CATALOG.schema_text("EnrichedHit")
    answers: list[Any] = [RegistryUnavailableError("down"), text]

    def schema_text_of(schema_id: int) -> str:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return str(answer)

    peek = LeadingField(schema_text_of, "type")
    data = AvroEncoder(7, text).encode(enriched_hit("page_view"))
    assert peek.read(data) == (False, None)  # this one decoded in full (and waits for the registry there)
    assert peek.read(data) == (True, "page_view")


def test_a_schema_laid_out_otherwise_is_decoded_in_full() -> None:
    nested = {"type": "record", "name": "X", "fields": [
        {"name": "meta", "type": {"type": "record", "name": "M", "fields": [{"name": "a", "type": "string"}]}},
        {"name": "type", "type": {"type": "enum", "name": "T", "symbols": ["order"]}},
    ]}  # fmt: skip
    peek = LeadingField(lambda _: json.dumps(nested), "type")
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parse(nested), {"meta": {"a": "x"}, "type": "order"})
    assert peek.read(b"\x00\x00\x00\x00\x01" + buf.getvalue()) == (False, None)


def test_leading_fields_of_every_simple_kind() -> None:
    schema = {"type": "record", "name": "R", "fields": [
        {"name": "b", "type": "boolean"}, {"name": "f", "type": "float"}, {"name": "d", "type": "double"},
        {"name": "x", "type": {"type": "fixed", "name": "F", "size": 3}}, {"name": "by", "type": "bytes"},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "u", "type": ["null", "long", "string"]}, {"name": "s", "type": "string"},
    ]}  # fmt: skip
    record = {"b": True, "f": 1.5, "d": 2.25, "x": b"abc", "by": b"\x00\x01", "ts": 42, "u": "branch", "s": "é"}
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parse(schema), record)
    data = b"\x00\x00\x00\x00\x02" + buf.getvalue()
    for name in ("b", "f", "d", "x", "by", "u", "s"):
        assert LeadingField(lambda _: json.dumps(schema), name).read(data) == (True, record[name])
    assert LeadingField(lambda _: json.dumps(schema), "ts").read(data) == (True, 42)
    assert LeadingField(lambda _: json.dumps(schema), "absent").read(data) == (False, None)


# --- decoding by the runtime's rules ----------------------------------------------------------------------


def test_inputs_are_read_into_the_catalog_schema_and_only_crm_takes_tombstones() -> None:
    text = CATALOG.schema_text("EnrichedHit")
    cache = SchemaCache({1: text, 2: '"string"'}.__getitem__)
    decoder = InputDecoder(cache, {"hits": text, "crm": CATALOG.schema_text("CrmProfile")}, tombstone_topics=["crm"])
    assert decoder.value("hits", AvroEncoder(1, text).encode(enriched_hit("order")))["type"] == "order"
    assert decoder.value("crm", None) is None
    with pytest.raises(NullValueError):
        decoder.value("hits", None)
    assert decoder.key(b"C1") == "C1"  # another tool's plain key
    assert decoder.key(AvroEncoder(2, '"string"').encode("C2")) == "C2"
    assert message_headers({"a": b"1"}) == [("a", b"1")] and message_headers(None) == []


# --- dead letters: the runtime's format -------------------------------------------------------------------


def test_a_dead_letter_is_the_record_and_the_runtimes_headers() -> None:
    error = ValueError("bad")
    letter = dead_letter_record(topic="t", partition=1, offset=5, key=b"k", value=b"v", headers=[("h", b"1")],
                                error=error, stage="deserialize", processor="remarketing")  # fmt: skip
    assert (letter.key, letter.value, letter.truncated) == (b"k", b"v", False)
    assert letter.headers == dead_letter_headers(topic="t", partition=1, offset=5, stage="deserialize", error=error,
                                                 processor="remarketing", original=[("h", b"1")])  # fmt: skip
    assert header_dict(letter.headers)["processor"] == "remarketing"


def test_a_dead_letter_too_large_keeps_64_kib_its_size_and_digest() -> None:
    value = bytes(range(256)) * 8_000  # 2 MB
    letter = dead_letter_record(topic="t", partition=0, offset=1, key=b"k", value=value, headers=None,
                                error=ValueError("x"), stage="deserialize", processor="remarketing")  # fmt: skip
    assert letter.truncated and letter.value == value[:KEPT_BYTES]
    got = header_dict(letter.headers)
    assert got["original.size"] == str(len(value)) and got["truncated"] == "true"
    assert got["original.sha256"] == hashlib.sha256(value).hexdigest()
    assert not any(k.endswith("original.size") for k, _ in letter.bare_headers)
    assert all(k.startswith(DEAD_LETTER_PREFIX) for k, _ in letter.bare_headers)


# --- the profiles gate ------------------------------------------------------------------------------------


class FakeOffsets:
    def __init__(self, ends: Ends, committed: list[dict[int, int]], records: bool = True) -> None:
        self._ends, self._committed, self.records = ends, committed, records
        self.checked: list[tuple[int, int, int]] = []
        self.closed = False

    def ends(self) -> Ends:
        return self._ends

    def committed(self) -> dict[int, int]:
        return self._committed.pop(0) if len(self._committed) > 1 else self._committed[0]

    def has_records(self, partition: int, start: int, end: int) -> bool:
        self.checked.append((partition, start, end))
        return self.records

    def close(self) -> None:
        self.closed = True


class Clock:
    def __init__(self) -> None:
        self.ms = 0

    def __call__(self) -> int:
        self.ms += 100
        return self.ms


def run_gate(offsets: FakeOffsets, max_wait_ms: int = 60_000) -> ProfilesGate:
    gate = ProfilesGate(offsets, poll_ms=0, recheck_ms=300, max_wait_ms=max_wait_ms, clock=Clock())
    assert not gate.is_ready()
    asyncio.run(gate.run())
    return gate


def test_the_gate_opens_once_the_group_committed_the_ends_seen_at_start() -> None:
    offsets = FakeOffsets({0: (0, 5), 1: (0, 0), 2: (3, 3)}, [{}, {0: 2}, {0: 5}])
    gate = run_gate(offsets)
    assert gate.is_ready() and offsets.closed and offsets.checked == []  # it moved: no need to look


def test_a_partition_ending_in_a_gap_opens_the_gate_once_nothing_is_left_to_read() -> None:
    """A tombstone compacted away or a transaction marker: the committed offset stays short of the end."""
    offsets = FakeOffsets({0: (0, 5)}, [{0: 4}], records=False)
    assert run_gate(offsets).is_ready()
    assert offsets.checked[0] == (0, 4, 5)


def test_a_stuck_partition_opens_the_gate_after_the_longest_wait() -> None:
    offsets = FakeOffsets({0: (0, 5)}, [{0: 1}], records=True)
    gate = run_gate(offsets, max_wait_ms=2_000)
    assert gate.is_ready() and gate.waited_ms is not None and gate.waited_ms >= 2_000
