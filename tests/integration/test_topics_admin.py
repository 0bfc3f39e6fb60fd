"""``ensure_topics`` against a real broker: creates once, then reports exists or drift, never changes."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Iterator

import pytest

from passerelle.schemas.catalog import Catalog, load_catalog
from passerelle.schemas.clients import Connection
from passerelle.schemas.topics_admin import AdminError, KafkaAdmin, ensure_topics

pytestmark = pytest.mark.integration


def prefixed_catalog(prefix: str) -> Catalog:
    """The shipped catalog with every topic name prefixed, so runs never clash."""
    catalog = load_catalog()
    specs = tuple(dataclasses.replace(s, name=f"{prefix}{s.name}") for s in catalog.topics)
    return dataclasses.replace(catalog, specs=specs)


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}."


@pytest.fixture
def admin(kafka_bootstrap: str, prefix: str) -> Iterator[KafkaAdmin]:
    admin = KafkaAdmin(Connection.plain(kafka_bootstrap))
    yield admin
    # The broker may be shared: remove what this test created.
    mine = [t for t in admin.client.list_topics(timeout=10).topics if t.startswith(prefix)]
    if mine:
        for future in admin.client.delete_topics(mine, operation_timeout=10).values():
            future.result(timeout=20)


def test_create_then_exists_then_drift(admin: KafkaAdmin, prefix: str) -> None:
    catalog = prefixed_catalog(prefix)

    first = ensure_topics(admin, catalog)
    assert first.created == catalog.names
    assert not first.has_drift
    rf = min(3, admin.broker_count())
    assert first.lines()[0] == f"{prefix}hits.raw: created (6 partitions, replication {rf}, delete)"

    states = admin.describe(catalog.names)
    assert states[f"{prefix}hits.raw"].partitions == 6
    assert states[f"{prefix}crm.profiles"].configs["cleanup.policy"] == "compact"
    assert states[f"{prefix}errors.deadletters"].configs["retention.ms"] == str(30 * 86_400_000)

    second = ensure_topics(admin, catalog)
    assert second.existing == catalog.names
    assert second.created == [] and not second.has_drift
    assert second.lines()[0] == f"{prefix}hits.raw: exists"

    raw = catalog.topic(f"{prefix}hits.raw")
    changed = dataclasses.replace(
        catalog,
        specs=tuple(dataclasses.replace(s, partitions=12) if s.name == raw.name else s for s in catalog.topics),
    )
    third = ensure_topics(admin, changed, [raw.name, f"{prefix}campaigns"])
    assert third.drifted == [raw.name]
    assert third.existing == [f"{prefix}campaigns"]
    assert third.outcome(raw.name).line() == (f"{raw.name}: DRIFT: partitions 6 on the broker, 12 in the catalog")
    assert admin.describe([raw.name])[raw.name].partitions == 6  # reported, not "fixed"


def test_only_named_topics_are_created(admin: KafkaAdmin, prefix: str) -> None:
    catalog = prefixed_catalog(prefix)
    report = ensure_topics(admin, catalog, [f"{prefix}campaigns"])
    assert report.created == [f"{prefix}campaigns"]
    assert set(admin.describe(catalog.names)) == {f"{prefix}campaigns"}


def test_unknown_topic_fails_before_creating_anything(admin: KafkaAdmin, prefix: str) -> None:
    from passerelle.schemas.errors import ContractError

    catalog = prefixed_catalog(prefix)
    with pytest.raises(ContractError, match=r"no\.such\.topic"):
        ensure_topics(admin, catalog, [f"{prefix}campaigns", "no.such.topic"])
    assert admin.describe(catalog.names) == {}


def test_unreachable_broker_fails_fast_naming_the_servers() -> None:
    started = time.monotonic()
    with pytest.raises(AdminError, match=r"127\.0\.0\.1:1") as info:
        ensure_topics(KafkaAdmin(Connection.plain("127.0.0.1:1"), timeout_s=3), load_catalog())
    assert time.monotonic() - started < 10
    assert "\n" not in str(info.value)
    assert info.value.user_error
